"""Resume never reuses a staging dir or checkpoint made from other upstream data or weights: the
content of the DVC outputs a stage reads enters its fingerprint (flows/stages.py Stage.fingerprint)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.stages import BY_NAME
from tasks.common import Paths, upstream_digest
from tests.conftest import REPO, TINY
from udcguard.config import params_from_dict
from udcguard.io.atomic import staged_output, staging_dir

STAGES = ("train_restorer", "train_purifier", "purify_train", "attack", "purify", "finetune", "adaptive")


def _fill(paths: list[Path]) -> list[Path]:
    """One small file in (or at) each upstream path; returns the files."""
    files = []
    for p in paths:
        f = p if p.suffix == ".json" else p / "sub" / "weights.bin"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(bytes(range(64)))
        files.append(f)
    return files


def _flip(f: Path) -> None:
    b = bytearray(f.read_bytes())
    b[7] ^= 1
    f.write_bytes(bytes(b))


def test_digest_reads_content_names_and_manifests(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "w.bin").write_bytes(b"0123")
    d0 = upstream_digest(tmp_path / "a")
    (tmp_path / "a" / ".partial").write_bytes(b"x")  # hidden entries (staging leftovers) do not count
    assert upstream_digest(tmp_path / "a") == d0
    (tmp_path / "a" / "w.bin").write_bytes(b"0124")
    assert upstream_digest(tmp_path / "a") != d0
    (tmp_path / "a" / "w.bin").rename(tmp_path / "a" / "v.bin")
    assert len({d0, upstream_digest(tmp_path / "a"), upstream_digest(tmp_path / "missing")}) == 3
    split = tmp_path / "udc" / "train"
    (split / "lq").mkdir(parents=True)
    (split / "manifest.json").write_text('{"pairs": [{"sha256": {"lq": "aa"}}]}')
    (split / "lq" / "x.npy").write_bytes(b"big")
    d1 = upstream_digest(tmp_path / "udc")
    (split / "lq" / "x.npy").write_bytes(b"not read: the manifest holds its sha256")
    assert upstream_digest(tmp_path / "udc") == d1
    (split / "manifest.json").write_text('{"pairs": [{"sha256": {"lq": "ab"}}]}')
    assert upstream_digest(tmp_path / "udc") != d1


def test_resumable_flows_take_their_fingerprint_from_the_stage_table() -> None:
    flows = "".join((REPO / "flows" / f).read_text() for f in ("defend.py", "train.py"))
    for name in STAGES:
        assert f'BY_NAME["{name}"].fingerprint(' in flows, f"{name}: flow does not use its Stage.fingerprint"
    assert "import fingerprint" not in flows and "fingerprint(params," not in flows.replace("].fingerprint(", "")


def _killed_run(final: Path, fp: str) -> None:
    """A run killed after one shard: its staging dir is kept for resuming."""
    with pytest.raises(RuntimeError), staged_output(final, fp) as stage_dir:
        (stage_dir / ".shards").mkdir()
        (stage_dir / ".shards" / "a.pt").write_bytes(b"shard")
        raise RuntimeError("killed")


@pytest.mark.parametrize("stage", STAGES)
def test_stale_partial_is_discarded_when_upstream_changes(tmp_path: Path, stage: str) -> None:
    params, paths, final = params_from_dict(TINY), Paths(tmp_path / "data"), tmp_path / "out"
    fp = lambda: BY_NAME[stage].fingerprint(params, "unet", extra="unet", data_dir=paths.data)
    for f in _fill(BY_NAME[stage].upstream(paths.data, "unet")):
        before = fp()
        _killed_run(final, before)
        assert fp() == before  # same upstream: the partial would be resumed
        _flip(f)  # e.g. the restorer's weights were retrained
        after = fp()
        assert after != before, f"{stage}: {f.relative_to(tmp_path)} not in the fingerprint"
        with staged_output(final, after) as stage_dir:
            assert not (stage_dir / ".shards").exists(), "stale shard reused"
        assert final.exists() and not staging_dir(final).exists()

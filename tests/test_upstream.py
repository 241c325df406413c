"""Resume never reuses a staging dir or checkpoint made from other upstream data or weights: the
content of the DVC outputs a stage reads enters its fingerprint (tasks/common.py upstream)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tasks.common import Paths, fingerprint, upstream, upstream_digest
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


def test_upstream_is_the_stages_data_deps_in_dvc_yaml() -> None:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    flows = "".join((REPO / "flows" / f).read_text() for f in ("defend.py", "train.py"))
    for name in STAGES:
        stage = stages[name].get("do", stages[name])
        data = {d for d in stage["deps"] if d.startswith("data/")}
        assert {str(p) for p in upstream(Paths("data"), name, "${key}")} == data, name
        assert re.search(rf'upstream=upstream\(paths, "{name}"', flows), f"{name}: flow does not use upstream()"


def _killed_run(final: Path, fp: str) -> None:
    """A run killed after one shard: its staging dir is kept for resuming."""
    with pytest.raises(RuntimeError), staged_output(final, fp) as stage_dir:
        (stage_dir / ".shards").mkdir()
        (stage_dir / ".shards" / "a.pt").write_bytes(b"shard")
        raise RuntimeError("killed")


@pytest.mark.parametrize("stage", STAGES)
def test_stale_partial_is_discarded_when_upstream_changes(tmp_path: Path, stage: str) -> None:
    params, paths, final = params_from_dict(TINY), Paths(tmp_path / "data"), tmp_path / "out"
    fp = lambda: fingerprint(params, "seed", extra="unet", upstream=upstream(paths, stage, "unet"))
    for f in _fill(upstream(paths, stage, "unet")):
        before = fp()
        _killed_run(final, before)
        assert fp() == before  # same upstream: the partial would be resumed
        _flip(f)  # e.g. the restorer's weights were retrained
        after = fp()
        assert after != before, f"{stage}: {f.relative_to(tmp_path)} not in the fingerprint"
        with staged_output(final, after) as stage_dir:
            assert not (stage_dir / ".shards").exists(), "stale shard reused"
        assert final.exists() and not staging_dir(final).exists()

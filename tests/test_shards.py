"""Sharded attack and purify stages: outputs independent of runner and sharding; resume; config."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import TINY
from udcguard.config import params_from_dict
from udcguard.errors import ConfigError

RESTORER = "discnet"
#: The reference run: one batch per shard, in this process, one torch thread.
SEQUENTIAL = {"parallel.runner": "sequential", "parallel.shard_images": 1, "parallel.torch_threads": 1}
#: Two Dask worker processes (one torch thread each), two batches per shard.
DASK = {"parallel.runner": "dask", "parallel.workers": 2, "parallel.shard_images": 4, "parallel.torch_threads": 1}


def _tree(root: Path) -> dict[str, object]:
    """Every input set (tensor) and records.json (minus timing) under root."""
    from udcguard.io.datasets import load_inputs

    out: dict[str, object] = {}
    for manifest in sorted(root.rglob("manifest.json")):
        x, ids, extra = load_inputs(manifest.parent)
        out[str(manifest.parent.relative_to(root))] = (x, ids, extra)
    if (root / "records.json").exists():
        out["records"] = [{k: v for k, v in r.items() if k != "seconds"}
                          for r in json.loads((root / "records.json").read_text())]
    return out


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if key == "records":
            assert a[key] == b[key]
        else:
            (xa, ia, ea), (xb, ib, eb) = a[key], b[key]
            assert ia == ib and ea == eb and torch.equal(xa, xb), key


def _copy_inputs(src: Path, dst: Path, *names: str) -> Path:
    for name in names:
        shutil.copytree(src / name, dst / name)
    return dst


@pytest.fixture(scope="module")
def base(prefect_harness, tmp_path_factory) -> Path:
    """TINY data, one trained restorer and the purifier, then the sequential reference stages."""
    from flows.defend import attack_flow, purify_flow
    from flows.synthesize import synthesize
    from tasks.train import train_purifier
    from tasks.train import train_restorer

    tmp = tmp_path_factory.mktemp("shards")
    params = copy.deepcopy(TINY)  # attack 5 train images: batches [0, 2), [2, 4), [4, 5)
    params["attack"].update({"split": "train", "max_images": 5})
    params["purify"]["seeds"] = 1
    p = params_from_dict(params)
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    data = tmp / "data"
    common = {"params_path": str(tmp / "params.yaml"), "data_dir": str(data)}
    synthesize(**common)  # then the training tasks' bodies: no flow or MLflow run needed for them
    train_restorer.fn(p, RESTORER, str(data), str(data / "models" / RESTORER), fp="", run_id=None)
    train_purifier.fn(p, str(data), str(data / "purifier"), fp="", run_id=None)
    # the attack stage also crafts every set on the fine-tuned restorer: a copy stands in for it here
    shutil.copytree(data / "models" / RESTORER, data / "finetuned" / RESTORER)
    attack_flow(RESTORER, overrides=SEQUENTIAL, **common)
    purify_flow(RESTORER, overrides=SEQUENTIAL, **common)
    return tmp


def test_shard_ranges_are_whole_batches() -> None:
    from tasks.shards import batches, shard_ranges

    assert shard_ranges(5, 1, 2) == [(0, 2), (2, 4), (4, 5)]
    assert shard_ranges(5, 3, 2) == [(0, 4), (4, 5)]
    assert shard_ranges(5, 99, 2) == [(0, 5)] and shard_ranges(0, 4, 2) == []
    assert batches(4, 9, 2) == [(4, 6), (6, 8), (8, 9)]


@pytest.mark.slow
def test_dask_matches_sequential(base: Path, tmp_path: Path) -> None:
    """Attack and purify on two Dask workers, other shard sizes: bit-identical to the reference."""
    from flows.defend import attack_flow, purify_flow

    data = _copy_inputs(base / "data", tmp_path / "data", "psf", "udc", "models", "finetuned", "purifier")
    common = {"params_path": str(base / "params.yaml"), "data_dir": str(data), "overrides": DASK}
    attack_flow(RESTORER, **common)
    ref = _tree(base / "data" / "attacks" / RESTORER)
    # (pgd 2 levels x 5 images, cw 2, simba 2) on the trained and on the fine-tuned restorer
    assert len(ref["records"]) == 2 * (2 * 5 + 2 + 2)
    _assert_same(_tree(data / "attacks" / RESTORER), ref)
    purify_flow(RESTORER, **common)
    _assert_same(_tree(data / "purified" / RESTORER), _tree(base / "data" / "purified" / RESTORER))
    assert not list(data.rglob(".shards"))


def test_threads_match_sequential(base: Path, tmp_path: Path) -> None:
    """The thread runner (two threads, one shard per set) gives the same purified sets."""
    from flows.defend import purify_flow

    data = _copy_inputs(base / "data", tmp_path / "data", "psf", "udc", "attacks", "purifier")
    overrides = {**SEQUENTIAL, "parallel.runner": "threads", "parallel.shard_images": 100}
    purify_flow(RESTORER, params_path=str(base / "params.yaml"), data_dir=str(data), overrides=overrides)
    _assert_same(_tree(data / "purified" / RESTORER), _tree(base / "data" / "purified" / RESTORER))


def test_killed_attack_resumes_at_shard_granularity(base: Path, tmp_path: Path, monkeypatch) -> None:
    import tasks.attack as ta
    from flows.defend import attack_flow

    data = _copy_inputs(base / "data", tmp_path / "data", "psf", "udc", "models", "finetuned")
    real, ran = ta.attack_shard, []

    def die_after_four(ctx: dict, job: dict) -> str:
        if len(ran) == 4:
            raise RuntimeError("killed after four shards")
        ran.append(job["key"])
        return real(ctx, job)

    monkeypatch.setattr(ta, "attack_shard", die_after_four)
    common = {"params_path": str(base / "params.yaml"), "data_dir": str(data), "overrides": SEQUENTIAL}
    with pytest.raises(RuntimeError, match="killed"):
        attack_flow(RESTORER, **common)
    stage = data / "attacks" / f".{RESTORER}.partial"
    assert len(list((stage / ".shards").glob("*.pt"))) == 4 and not (data / "attacks" / RESTORER).exists()
    first, ran[:] = list(ran), []
    monkeypatch.setattr(ta, "attack_shard", lambda ctx, job: ran.append(job["key"]) or real(ctx, job))
    attack_flow(RESTORER, **common)
    # 16 shards: (pgd 2 levels x 3 batches, cw 1, simba 1) on the trained and on the fine-tuned restorer
    assert len(ran) == 12 and not set(ran) & set(first)
    assert not stage.exists() and not (data / "attacks" / RESTORER / ".shards").exists()
    _assert_same(_tree(data / "attacks" / RESTORER), _tree(base / "data" / "attacks" / RESTORER))


@pytest.mark.parametrize("section, key", [
    ({"runner": "spark"}, "parallel.runner"),
    ({"workers": 0}, "parallel.workers"),
    ({"wrokers": 2}, "parallel.wrokers: unknown key"),
    ({"shard_images": 0}, "parallel.shard_images"),
    ({"torch_threads": 0}, "parallel.torch_threads"),
    ({"runner": "dask", "address": "10.0.0.5"}, "parallel.address"),
    ({"address": "tcp://10.0.0.5:8786"}, "parallel: address applies to runner dask only"),
])
def test_bad_parallel_keys_name_the_key(tiny: dict, section: dict, key: str) -> None:
    tiny["parallel"] = section
    with pytest.raises(ConfigError) as err:
        params_from_dict(tiny)
    assert key in str(err.value) and "\n" not in str(err.value)
    tiny["parallel"] = {"runner": "dask", "address": "tcp://10.0.0.5:8786", "workers": 3}
    assert params_from_dict(tiny).parallel.address == "tcp://10.0.0.5:8786"

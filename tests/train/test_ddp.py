"""DDP fine-tuning under torchrun (2 CPU ranks, gloo) equals the in-process run on the same global batch."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.conftest import TINY
from udcguard.config import params_from_dict
from udcguard.errors import ConfigError, UdcGuardError
from udcguard.io.atomic import save_json, save_npy
from udcguard.io.checkpoints import load_state, save_model, save_train_state
from udcguard.io.datasets import save_inputs
from udcguard.models import build_restorer, restorer_spec
from udcguard.train.distributed import shard

N, PX, CODE = 4, 32, 3
PSFS = ("toled", "poled")


def _params(nproc: int | str, **finetune: Any):
    tiny = copy.deepcopy(TINY)
    tiny["finetune"].update({"steps": 4, "batch_size": 4, "crop_px": 16, "checkpoint_every": 2, "jitter": 0.05,
                             "distributed": {"nproc": nproc, "backend": "gloo"}, **finetune})
    return params_from_dict(tiny)


def _write_data(root: Path) -> None:
    """A minimal data/ tree for the finetune stage: train split, PSF codes, purified sets, a restorer."""
    rng = np.random.default_rng(0)
    split, recs = root / "udc" / "train", []
    for i in range(N):
        rec: dict[str, Any] = {"id": f"train-{i:05d}", "scene": "synthetic", "psf": PSFS[i % 2],
                               "crop": [0, 0, PX, PX], "seed": [i], "sha256": {}}
        for kind in ("gt", "lq"):
            rec[kind] = f"{kind}/{rec['id']}.npy"
            rec["sha256"][kind] = save_npy(split / rec[kind], rng.uniform(0, 2, (PX, PX, 3)).astype(np.float32))
        recs.append(rec)
    save_json(split / "manifest.json", {"version": 1, "split": "train", "seed": 0, "dtype": "float32",
                                        "crop_px": PX, "pairs": recs})
    save_json(root / "psf" / "codes.json", {"names": list(PSFS)})
    save_npy(root / "psf" / "codes.npy", rng.normal(size=(len(PSFS), CODE)).astype(np.float32))
    ids = [r["id"] for r in recs]
    for t in TINY["finetune"]["t_stars"]:
        save_inputs(root / "purified_train" / f"t_{t}", torch.from_numpy(rng.uniform(0, 1, (N, 3, PX, PX))).float(), ids)
    save_json(root / "purified_train" / "strengths.json", {"t_stars": list(TINY["finetune"]["t_stars"]), "ids": ids})
    torch.manual_seed(0)
    model = build_restorer("discnet", size="tiny", cond_dim=CODE)  # conditional: the PSF code must reach it
    save_model(model, root / "models" / "discnet", restorer_spec(model))


def _finetune(params, data: Path, out: Path) -> dict:
    from tasks.train import finetune_restorer

    info = finetune_restorer.fn(params, "discnet", str(data), str(out), "fp-test", None)
    return {"info": info, "history": json.loads((out / "history.json").read_text()), "state": load_state(out)[0]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ddp")
    _write_data(root / "data")
    return {"root": root, "one": _finetune(_params(1), root / "data", root / "one"),
            "two": _finetune(_params(2), root / "data", root / "two")}


@pytest.mark.slow
def test_two_ranks_match_one_process(runs: dict) -> None:
    one, two = runs["one"], runs["two"]
    assert (one["info"]["ranks"], two["info"]["ranks"]) == (1, 2)
    assert two["info"]["pairs"] == one["info"]["pairs"] == 3 * N and not two["info"]["perceptual"]
    np.testing.assert_allclose(two["history"]["loss"], one["history"]["loss"], rtol=1e-4, atol=1e-6)
    assert two["history"]["lr"] == one["history"]["lr"]
    assert one["state"].keys() == two["state"].keys()
    for k, w in one["state"].items():
        torch.testing.assert_close(two["state"][k], w, rtol=1e-4, atol=1e-6, msg=k)
    assert not (runs["root"] / "data" / ".ckpt" / "finetune-discnet.ddp").exists()  # work dir removed on success


@pytest.mark.slow
def test_tolerance_detects_a_wrong_share(runs: dict) -> None:
    """Training on one half only (a wrong slice) moves the first loss far outside the tolerance used above."""
    from tasks.common import Paths
    from tasks.restorers import finetuning

    run = finetuning(_params(1), "discnet", Paths(runs["root"] / "data"), torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    torch.randint(2**62, (1,), generator=g)  # fit draws the global RNG's seed first
    batch = run.sample(g)
    with torch.no_grad():
        full = float(run.loss_fn(run.model, batch))
        halves = [float(run.loss_fn(run.model, shard(batch, r, 2))) for r in (0, 1)]
    assert full == pytest.approx(runs["one"]["history"]["loss"][0], rel=1e-5)  # the same first batch
    assert full == pytest.approx(sum(halves) / 2, rel=1e-5)  # equal shares: mean of means
    assert min(abs(h - full) for h in halves) > 100 * (1e-6 + 1e-4 * full)


@pytest.mark.slow
def test_ddp_resumes_a_checkpoint(runs: dict, tmp_path: Path) -> None:
    """A run stopped after step 2 (checkpoint in place) resumes under 2 ranks to the same weights."""
    from tasks.common import Paths
    from tasks.restorers import finetuning
    from udcguard.train.loop import fit

    params, data = _params(2), runs["root"] / "data"
    run, states = finetuning(params, "discnet", Paths(data), torch.device("cpu")), []
    f = params.finetune
    with pytest.raises(Killed):
        fit(run.model, run.loss_fn, run.sample, steps=f.steps, lr=f.lr, lr_min=f.lr_min, seed=f.seed,
            checkpoint_every=2, on_checkpoint=lambda s: (states.append(s), _stop()))
    save_train_state(data / ".ckpt" / "finetune-discnet.pt", {**states[0], "fingerprint": "fp-test"})
    resumed = _finetune(params, data, tmp_path / "out")
    assert not (data / ".ckpt" / "finetune-discnet.pt").exists()
    np.testing.assert_allclose(resumed["history"]["loss"], runs["one"]["history"]["loss"], rtol=1e-4, atol=1e-6)
    for k, w in runs["one"]["state"].items():
        torch.testing.assert_close(resumed["state"][k], w, rtol=1e-4, atol=1e-6, msg=k)


class Killed(Exception):
    pass


def _stop() -> None:
    raise Killed


def test_failing_rank_is_named(tmp_path: Path) -> None:
    from ops.launch import run_torchrun

    with pytest.raises(UdcGuardError) as err:
        run_torchrun("tests.train.ddp_failing", [], nproc=2, work_dir=tmp_path, timeout_s=120, what="job")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("job: torchrun exited with 1")
    assert "rank 1 of 2 failed: ValueError: broken on rank 1" in msg and "ddp_failing.py" in msg


def test_bad_arguments_and_batch_split(tmp_path: Path, monkeypatch) -> None:
    from tasks.ddp_finetune import main
    from ops.launch import ERROR_DIR_ENV
    from tasks.train import resolve_distributed

    monkeypatch.setenv(ERROR_DIR_ENV, str(tmp_path))
    assert main(["--params", "p.json"]) == 1
    report = json.loads((tmp_path / "rank0.json").read_text())
    assert report["error"].startswith("UdcGuardError: bad arguments: the following arguments are required")
    with pytest.raises(ConfigError, match=r"^params: finetune\.distributed\.nproc=3 must divide finetune\.batch_size=4"):
        _params(3)
    assert resolve_distributed(_params("auto"), torch.device("cpu")) == (1, "gloo")  # no CUDA: in-process
    with pytest.raises(ConfigError, match=r"^finetune\.distributed\.backend: nccl needs CUDA"):
        resolve_distributed(_params(2, distributed={"nproc": 2, "backend": "nccl"}), torch.device("cpu"))


def test_loss_reaches_a_wrapped_conditional_restorer() -> None:
    """DDP wraps the restorer as ``.module``: the PSF code must still reach a conditional one."""
    from udcguard.train.restorer import restoration_loss

    class Wrapper(torch.nn.Module):  # what DistributedDataParallel looks like from outside
        def __init__(self, module: torch.nn.Module) -> None:
            super().__init__()
            self.module = module

        def forward(self, *args: Any) -> torch.Tensor:
            return self.module(*args)

    model = build_restorer("discnet", size="tiny", cond_dim=CODE)
    batch = (torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16), torch.randn(2, CODE))
    loss = restoration_loss("l2", device=torch.device("cpu"))
    with torch.no_grad():
        assert float(loss(Wrapper(model), batch)) == float(loss(model, batch))


def test_torchrun_command() -> None:
    from ops.launch import torchrun_command

    cmd = torchrun_command("tasks.ddp_finetune", ["--x", "1"], nproc=4, log_dir=Path("L"))
    assert cmd[1:3] == ["-m", "torch.distributed.run"] and "--standalone" in cmd
    assert cmd[cmd.index("--nproc-per-node") + 1] == "4" and cmd[-4:] == ["-m", "tasks.ddp_finetune", "--x", "1"]
    fixed = torchrun_command("m", [], nproc=2, log_dir=Path("L"), master_port=29600)
    assert "--standalone" not in fixed and fixed[fixed.index("--master-port") + 1] == "29600"

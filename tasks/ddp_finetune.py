"""torchrun entry: fine-tune one restorer with DistributedDataParallel, one process per rank.

Started by :func:`tasks.train.finetune_restorer` through :func:`ops.launch.run_torchrun`::

    python -m torch.distributed.run --standalone --nnodes 1 --nproc-per-node N \\
        -m tasks.ddp_finetune --params P.json --restorer NAME --data-dir D --out-dir O \\
        --fp FP --result R.json --backend gloo|nccl --device cpu|cuda

Each rank draws the same global batch (same seeded generator) and trains on its
contiguous share (:mod:`udcguard.train.distributed`); DDP averages the gradients. All
ranks resume from the same checkpoint; rank 0 alone writes checkpoints, the final
weights, ``history.json`` and ``R.json``. No Prefect or MLflow here: the parent logs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tasks.common import Paths
from ops.launch import report_failure
from tasks.restorers import finetuning
from udcguard.config import params_from_dict
from udcguard.errors import UdcGuardError
from udcguard.io.atomic import save_json
from udcguard.io.checkpoints import load_train_state, save_model, save_train_state
from udcguard.io.restorer_store import saved_spec
from udcguard.train.distributed import global_mean_loss, has_batchnorm, sharded
from udcguard.train.loop import fit

PREFIX = "module."  # DistributedDataParallel's state_dict prefix; checkpoints are stored without it


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line through report_failure, not usage + exit 2
        raise UdcGuardError(f"bad arguments: {message}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m tasks.ddp_finetune", description=__doc__.splitlines()[0])
    for name in ("--params", "--restorer", "--data-dir", "--out-dir", "--fp", "--result"):
        p.add_argument(name, required=True)
    p.add_argument("--backend", choices=["gloo", "nccl"], required=True)
    p.add_argument("--device", choices=["cpu", "cuda"], required=True)
    return p


def train(args: argparse.Namespace, device: torch.device, rank: int, world: int) -> None:
    """One rank's share of the fine-tuning on ``device`` (the process group is up)."""
    try:
        data = json.loads(Path(args.params).read_text())
    except (OSError, ValueError) as err:
        raise UdcGuardError(f"{args.params}: unreadable params ({err})") from None
    params, paths = params_from_dict(data, args.params), Paths(args.data_dir)
    f = params.finetune
    run = finetuning(params, args.restorer, paths, device)
    model = run.model
    if has_batchnorm(model):
        if device.type != "cuda":
            raise UdcGuardError(f"finetune.distributed.nproc: {args.restorer} has BatchNorm layers, which cannot be "
                                "synchronised across CPU ranks (SyncBatchNorm needs CUDA); use nproc 1 on CPU")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # batch statistics over the global batch
    ckpt = paths.ckpt / f"finetune-{args.restorer}.pt"
    state = load_train_state(ckpt)  # every rank, before the first collective (rank 0 writes only after step 1)
    resume = None
    if state is not None and state.get("fingerprint") == args.fp:
        resume = {**state, "model": {PREFIX + k: v for k, v in state["model"].items()}}
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def save(s: dict[str, Any]) -> None:
        model_state = {k.removeprefix(PREFIX): v for k, v in s["model"].items()}
        save_train_state(ckpt, {**s, "model": model_state, "fingerprint": args.fp})

    def progress(step: int, m: dict[str, float]) -> None:
        if step % 10 == 0 or step == f.steps:
            print(f"finetune {args.restorer}: step {step}/{f.steps} loss {m['loss']:.5f} lr {m['lr']:.3g}", flush=True)

    lead = rank == 0
    history = fit(ddp, global_mean_loss(run.loss_fn, world), sharded(run.sample, rank, world), steps=f.steps,
                  lr=f.lr, lr_min=f.lr_min, seed=f.seed, device=device, amp=f.amp and device.type == "cuda",
                  resume=resume, checkpoint_every=f.checkpoint_every if lead else 0,
                  on_checkpoint=save if lead else None, on_step=progress if lead else None)
    if lead:
        out = Path(args.out_dir)
        save_model(model, out, saved_spec(model))
        save_json(out / "history.json", history)
        save_json(args.result, {"pairs": len(run.pairs), "perceptual": run.perceptual, "world_size": world,
                                "final_loss": history["loss"][-1]})
        ckpt.unlink(missing_ok=True)
    dist.barrier()  # no rank leaves (and tears the group down) before rank 0 has written


def _device(kind: str, local_rank: int) -> torch.device:
    if kind == "cpu":
        return torch.device("cpu")
    if local_rank >= torch.cuda.device_count():
        raise UdcGuardError(f"finetune.distributed.nproc: local rank {local_rank} but only "
                            f"{torch.cuda.device_count()} CUDA devices")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def main(argv: list[str] | None = None) -> int:
    """Entry point of one rank; returns its exit status (errors are recorded for the parent)."""
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        args = _parser().parse_args(argv)
        device = _device(args.device, local_rank)  # before the process group (NCCL binds to the current device)
        dist.init_process_group(args.backend)
        train(args, device, rank, world)
    except Exception as err:  # noqa: BLE001 - every failure becomes one recorded line and exit 1
        traceback.print_exc()
        print(f"error: rank {rank}: {report_failure(rank, err)}", file=sys.stderr, flush=True)
        return 1  # no destroy_process_group: peers may be blocked in a collective; torchrun stops them
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Restorer helpers without Prefect: shared by the tasks and the torchrun entry (tasks/ddp_finetune.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from tasks.common import Paths
from udcguard.config import Params
from udcguard.errors import UdcGuardError
from udcguard.io.atomic import read_json
from udcguard.io.datasets import TensorPairs, load_inputs, load_split
from udcguard.io.restorer_store import load_restorer
from udcguard.losses.perceptual import build_perceptual
from udcguard.train.augment import sample_batch
from udcguard.train.restorer import restoration_loss


def finetune_pairs(params: Params, paths: Paths) -> TensorPairs:
    """Purified train inputs (each strength of the purify_train stage) + clean copies, against the clean gt."""
    f = params.finetune
    made = read_json(paths.purified_train / "strengths.json", "purified train set",
                     hint=" (run the purify_train stage)")
    train = load_split(paths.udc / "train", psf_dir=paths.psf)
    index = {i: k for k, i in enumerate(train.ids)}
    missing = [i for i in made["ids"] if i not in index]
    if missing:
        raise UdcGuardError(f"{paths.purified_train}: ids {missing[:3]} are not in the train split (rerun purify_train)")
    base = train.subset([index[i] for i in made["ids"]])
    mix = None
    if not made["t_stars"] and f.clean_copies == 0:
        raise UdcGuardError("finetune: the deployed t* is 0 (no purification) and finetune.clean_copies is 0: "
                            "the fine-tuning set would be empty")
    for t_star in made["t_stars"]:
        x, ids, _ = load_inputs(paths.purified_train / f"t_{t_star}")
        assert list(ids) == list(base.ids), "purified train set does not match the train split"
        part = TensorPairs(lq=x, gt=base.gt, cond=base.cond, ids=base.ids, groups=base.groups)
        mix = part if mix is None else mix.concat(part)
    for _ in range(f.clean_copies):
        mix = base if mix is None else mix.concat(base)
    return mix


@dataclass
class Finetuning:
    """What :func:`udcguard.train.loop.fit` needs to fine-tune one restorer (global batch)."""

    model: torch.nn.Module
    pairs: TensorPairs
    sample: Callable[[torch.Generator], Any]
    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor]
    perceptual: bool


def finetuning(params: Params, name: str, paths: Paths, device: torch.device) -> Finetuning:
    """Load restorer ``name`` (train mode), the fine-tuning pairs, the batch sampler and the loss."""
    f = params.finetune
    model = load_restorer(paths.model(name), device).train()
    pairs = finetune_pairs(params, paths)
    perceptual = build_perceptual(f.perceptual_weights_path)
    if perceptual is not None:
        perceptual = perceptual.to(device)
    sample = lambda g: sample_batch(pairs, batch_size=f.batch_size, crop_px=f.crop_px, generator=g, jitter=f.jitter)
    loss_fn = restoration_loss("l2", device=device, perceptual=perceptual, perceptual_weight=f.perceptual_weight)
    return Finetuning(model, pairs, sample, loss_fn, perceptual is not None)

"""Data-parallel pieces for :func:`udcguard.train.loop.fit` under DistributedDataParallel.

Every rank draws the same *global* batch from the same seeded generator and keeps its
contiguous share ``[rank * B / world, (rank + 1) * B / world)``; DDP averages the
gradients of the per-rank mean losses, which equals the gradient of the global mean loss
(equal shares), so one DDP step matches one single-process step up to float reduction
order. The process group is set up by the caller (``torch.distributed``); nothing here
reads files or the environment.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def shard(batch: Any, rank: int, world: int) -> Any:
    """Rank ``rank``'s contiguous share (dim 0) of every tensor in a (nested) batch.

    Tuples, lists and dicts are rebuilt; None and other values pass through.

    Raises:
        ValueError: a tensor's batch size is not divisible by ``world``, or rank is out of range.
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside 0..{world - 1}")
    if isinstance(batch, torch.Tensor):
        b = batch.shape[0]
        if b % world:
            raise ValueError(f"batch of {b} is not divisible by {world} ranks")
        n = b // world
        return batch[rank * n : (rank + 1) * n]
    if isinstance(batch, dict):
        return {k: shard(v, rank, world) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(shard(v, rank, world) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(shard(v, rank, world) for v in batch)
    return batch


def sharded(sample: Callable[[torch.Generator], Any], rank: int, world: int) -> Callable[[torch.Generator], Any]:
    """``sample`` that draws the global batch (advancing the generator as in one process) and keeps a share."""
    return lambda g: shard(sample(g), rank, world)


def global_mean_loss(loss_fn: Callable[[nn.Module, Any], torch.Tensor], world: int) -> Callable[[nn.Module, Any], torch.Tensor]:
    """``loss_fn`` whose value is the mean over ranks and whose gradient is the rank's own.

    The loop records the returned value, so every rank logs the global batch loss (as one
    process would) and a non-finite loss on any rank stops all of them at the same step.
    Collective: every rank must call it at every step.
    """

    def wrapped(model: nn.Module, batch: Any) -> torch.Tensor:
        loss = loss_fn(model, batch)
        total = loss.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return loss + (total / world - loss.detach())  # value: global mean; d/dloss: 1

    return wrapped


def has_batchnorm(model: nn.Module) -> bool:
    """True if ``model`` holds BatchNorm layers (batch statistics differ per rank unless synced)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())

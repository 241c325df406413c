"""Restorer-specific glue for the generic training loop and for inference.

* :func:`restoration_loss` builds the ``loss_fn(model, batch)`` that :func:`fit` calls;
* :func:`predict` runs a restorer batch-wise under no_grad and clamps to [0, 1];
* :func:`model_fn` binds a restorer to its PSF codes, as attacks expect ``f(x) -> y``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from udcguard.losses.pixel import PIXEL_LOSSES

Batch = tuple[Tensor, Tensor, Tensor | None]


def _cond_for(model: nn.Module, cond: Tensor | None, device: torch.device) -> Tensor | None:
    inner = getattr(model, "module", model)  # DistributedDataParallel / DataParallel wrap the restorer
    if cond is None or not getattr(inner, "conditional", False):
        return None
    return cond.to(device)


def restoration_loss(
    loss: str,
    *,
    device: torch.device,
    perceptual: nn.Module | None = None,
    perceptual_weight: float = 0.0,
) -> Callable[[nn.Module, Batch], Tensor]:
    """``loss_fn(model, (lq, gt, cond))``: pixel loss (+ weight * perceptual loss)."""
    pixel = PIXEL_LOSSES.get(loss)

    def loss_fn(model: nn.Module, batch: Batch) -> Tensor:
        lq, gt, cond = batch
        lq, gt = lq.to(device, non_blocking=True), gt.to(device, non_blocking=True)
        out = model(lq, _cond_for(model, cond, device))  # (B, 3, H, W)
        value = pixel(out, gt)
        if perceptual is not None and perceptual_weight > 0:
            value = value + perceptual_weight * perceptual(out.clamp(0, 1), gt)
        return value

    return loss_fn


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, cond: Tensor | None = None, *, batch_size: int = 8,
            device: torch.device | str = "cpu") -> Tensor:
    """Restore ``x`` (N, 3, H, W) in chunks; returns (N, 3, H, W) on the CPU, clamped to [0, 1]."""
    device = torch.device(device)
    model.eval()
    outs = []
    for i in range(0, x.shape[0], batch_size):
        c = cond[i : i + batch_size] if cond is not None else None
        outs.append(model(x[i : i + batch_size].to(device), _cond_for(model, c, device)).clamp(0, 1).cpu())
    return torch.cat(outs) if outs else x.new_zeros((0, *x.shape[1:]))


def model_fn(model: nn.Module, cond: Tensor | None, device: torch.device | str = "cpu") -> Callable[[Tensor], Tensor]:
    """``f(x) = model(x, cond)``: the PSF code is hidden from the attacker (design.md section 3)."""
    device = torch.device(device)
    c = _cond_for(model, cond, device)

    def f(x: Tensor) -> Tensor:
        return model(x, c)

    return f

"""Pixel losses between a restored image and its target, by name.

Each entry is ``loss(pred, target) -> scalar`` (mean over all elements).

Shape:
    pred, target: (B, C, H, W) (any equal shapes); result: () tensor.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from udcguard.registry import Registry

PixelLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

PIXEL_LOSSES: Registry[PixelLoss] = Registry("pixel loss")

#: Charbonnier epsilon in [0, 1] image units (Lai et al., LapSRN, arXiv 1704.03915).
CHARBONNIER_EPS = 1e-3


@PIXEL_LOSSES.register("l1")
def l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error."""
    return F.l1_loss(pred, target)


@PIXEL_LOSSES.register("l2")
def l2(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error (the paper's fine-tuning pixel term)."""
    return F.mse_loss(pred, target)


@PIXEL_LOSSES.register("charbonnier")
def charbonnier(pred: torch.Tensor, target: torch.Tensor, eps: float = CHARBONNIER_EPS) -> torch.Tensor:
    """mean(sqrt((pred - target)^2 + eps^2)): a smooth L1."""
    return torch.sqrt((pred - target).square() + eps * eps).mean()

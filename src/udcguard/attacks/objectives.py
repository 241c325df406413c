"""Attack objectives d(output, reference) -> per-image distortion, shape (B,).

An attack maximises ``d(f(y + delta), r)`` (design.md, section 3). Every objective here
reduces over all non-batch dimensions, so the images of a batch stay independent: the
gradient of ``d(...).sum()`` with respect to image ``i`` is the gradient of ``d_i`` alone.

- ``mse``: mean of (output - reference)^2 over (C, H, W). Default.
- ``l1``: mean of |output - reference| over (C, H, W).
- ``ce``: cross-entropy of logits (B, K) against integer labels (B,). NOT an objective for
  restorers: it exists so that the attacks can be checked against reference classifier
  attacks (torchattacks) in the tests. Use it with ``reference="gt"`` and ``gt=labels``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from udcguard.registry import Registry

#: (output, reference) -> (B,) distortion; larger means a stronger attack.
Objective = Callable[[Tensor, Tensor], Tensor]

OBJECTIVES: Registry[Objective] = Registry("objective")


def _check_same_shape(output: Tensor, reference: Tensor) -> None:
    if output.shape != reference.shape:
        raise ValueError(
            f"objective: output shape {tuple(output.shape)} != reference shape "
            f"{tuple(reference.shape)}"
        )


@OBJECTIVES.register("mse")
def mse(output: Tensor, reference: Tensor) -> Tensor:
    """Per-image mean squared error: (B, ...) x (B, ...) -> (B,)."""
    _check_same_shape(output, reference)
    return (output - reference).square().flatten(1).mean(1)


@OBJECTIVES.register("l1")
def l1(output: Tensor, reference: Tensor) -> Tensor:
    """Per-image mean absolute error: (B, ...) x (B, ...) -> (B,)."""
    _check_same_shape(output, reference)
    return (output - reference).abs().flatten(1).mean(1)


@OBJECTIVES.register("ce")
def cross_entropy(output: Tensor, reference: Tensor) -> Tensor:
    """Per-image cross-entropy of logits (B, K) against labels (B,) int64 -> (B,).

    Classifier objective for reference tests only; not meaningful for restorers.
    """
    if output.ndim != 2 or reference.shape != output.shape[:1]:
        raise ValueError(
            f"objective 'ce': expects logits (B, K) and labels (B,), got "
            f"{tuple(output.shape)} and {tuple(reference.shape)}"
        )
    return F.cross_entropy(output, reference.to(torch.long), reduction="none")


def objective(name: str) -> Objective:
    """The objective registered as ``name`` (UnknownNameError lists the valid ones)."""
    return OBJECTIVES.get(name)

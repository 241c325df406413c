"""Tone maps: the ONLY place where linear HDR and the networks' [0, 1] space meet.

DISCNet (Feng et al., CVPR 2021, arXiv 2104.09556) feeds networks phi(x) = x / (x + 0.25)
of both the degraded input and the ground truth; its inverse is y / (4 (1 - y)).
Works on numpy arrays and torch tensors alike (only elementwise arithmetic is used).
"""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np

A = TypeVar("A")  # np.ndarray or torch.Tensor

#: Inverse tone map is clamped here so that y -> 1 maps to a finite radiance.
_Y_MAX = 1.0 - 1e-6


def tonemap(x: A) -> A:
    """phi(x) = x / (x + 0.25) for linear radiance x >= 0; result in [0, 1)."""
    return x / (x + 0.25)


def inverse_tonemap(y: A) -> A:
    """phi^-1(y) = y / (4 (1 - y)); y is clipped to [0, 1 - 1e-6] first."""
    if isinstance(y, np.ndarray):
        y = np.clip(y, 0.0, _Y_MAX)
    else:
        y = y.clamp(0.0, _Y_MAX)  # type: ignore[attr-defined]
    return y / (4.0 * (1.0 - y))


def mu_law(x: A, x_max: float = 500.0, mu: float = 1e4) -> A:
    """Alternative tone map log(1 + mu x / x_max) / log(1 + mu) (UDC-UNet style)."""
    if isinstance(x, np.ndarray):
        return np.log1p(mu * np.clip(x, 0.0, x_max) / x_max) / math.log1p(mu)
    return (mu * x.clamp(0.0, x_max) / x_max).log1p() / math.log1p(mu)  # type: ignore[attr-defined]


def to_uint8(y: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8 with rounding (for previews)."""
    return (np.clip(y, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

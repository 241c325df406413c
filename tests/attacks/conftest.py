"""Shared pieces of the attack tests: a tiny residual restorer, a call counter, a tiny classifier
(for the torchattacks parity tests), the standard batch and seeded generators."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class TinyRestorer(nn.Module):
    """x + Conv-ReLU-Conv(x): a residual restorer small enough for CPU tests."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Counted:
    """Wraps a model, counting forward calls."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.calls = model, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.model(x)


class TinyClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def make_batch(n: int = 3, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """n images in [0, 1] with saturated top and bottom rows (they exercise the [0, 1] clipping and
    the tanh change of variables) and a noisy ground truth."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 3, size, size, generator=g)
    x[:, :, :2] = 0.0
    x[:, :, -2:] = 1.0
    gt = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    return x, gt


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(0)
    return TinyRestorer().eval()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    return make_batch(3)

"""Restorers and their training."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from udcguard.config.base import Device, Frozen, Size


class RestorerParams(Frozen):
    """One restorer to train, attack, defend and evaluate (params.yaml: ``restorers.<name>``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$", description="the key in params.yaml")
    arch: str = Field(description="registry name: unet | discnet | ...")
    size: Size = "small"
    weights: Path | None = Field(
        None,
        description="local checkpoint to start training from: the authors' released format "
        "(keys renamed by the architecture's official_key) or ours; never downloaded",
    )
    steps: int | None = Field(None, ge=1, le=10_000_000, description="this restorer's train.steps (None: train.steps)")
    lr: float | None = Field(None, gt=0.0, le=1.0, description="this restorer's train.lr (None: train.lr)")
    channels_last: bool = Field(False, description="train, attack and score in channels-last memory format (on a "
                                "CPU, training steps: U-Net-small 1.4x, DISCNet-small 1.25x faster; recorded in "
                                "the saved spec.json)")

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str) -> str:
        from udcguard.models import RESTORERS

        RESTORERS.get(v)
        return v


class TrainParams(Frozen):
    """Restorer training (tone-mapped crops; Adam with cosine annealing)."""

    steps: int = Field(1500, ge=1, le=10_000_000)
    batch_size: int = Field(8, ge=1, le=4096)
    crop_px: int = Field(64, ge=8, le=4096)
    lr: float = Field(2e-4, gt=0.0, le=1.0)
    lr_min: float = Field(1e-6, ge=0.0, le=1.0)
    loss: Literal["l1", "l2", "charbonnier"] = "l1"
    checkpoint_every: int = Field(250, ge=0)
    device: Device = "auto"
    amp: bool = Field(True, description="mixed precision on CUDA (ignored on CPU)")
    seed: int = Field(0, ge=0)
    ema_decay: float | None = Field(None, ge=0.0, lt=1.0, description="return the weights' exponential moving "
                                    "average (BasicSR's ema_decay, e.g. 0.999) instead of the last iterate; None: off")

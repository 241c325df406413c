"""Runtime: scoring, tracking and how shards run in parallel."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from udcguard.config.base import Device, Frozen


class EvaluateParams(Frozen):
    """Scoring: the evaluated images are the attack stage's (attack.split and its subsets)."""

    batch_size: int = Field(8, ge=1, le=4096)
    device: Device = "auto"
    report_examples: int = Field(3, ge=1, le=32)
    bootstrap: int = Field(2000, ge=100, le=100_000, description="bootstrap resamples (scenes, then images) per cell")
    draw_average: Literal["off", "mean", "median"] = Field(
        "off", description="also score the mean / per-pixel median of the purify.seeds restored draws as defences "
        "purify-avg and purify-avg+finetune (K = purify.seeds draws: K x the UNet calls)")
    seed: int = Field(0, ge=0)


class TrackingParams(Frozen):
    experiment: str = "udcguard"


class ParallelParams(Frozen):
    """How the attack and purify stages run their shards (contiguous image ranges).

    Outputs do not depend on the runner, the worker count or ``shard_images``: shards are
    whole batches of the stage and randomness is seeded per batch / image. CPU float
    rounding does depend on the torch threads per process, so bit-identical outputs across
    runs need the same ``torch_threads``.
    """

    runner: Literal["sequential", "threads", "dask"] = "sequential"
    workers: int = Field(2, ge=1, le=1024, description="threads or Dask worker processes")
    address: str | None = Field(
        None, pattern=r"^([a-z][a-z0-9+]*://)?[^\s/]+:\d+(/\S*)?$",
        description="an existing Dask scheduler (tcp://host:8786) instead of a local cluster; runner dask only",
    )
    shard_images: int = Field(4, ge=1, le=1_000_000, description="images per shard, rounded up to whole batches")
    torch_threads: int | None = Field(
        None, ge=1, le=1024, description="torch threads per worker; None: cpu count // workers (at least 1)"
    )

    @model_validator(mode="after")
    def _address_needs_dask(self) -> ParallelParams:
        if self.address is not None and self.runner != "dask":
            raise ValueError(f"address applies to runner dask only (runner is {self.runner})")
        return self

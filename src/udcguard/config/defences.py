"""Defences: the diffusion purifier (its UNet and training: ``diffusion``; running it: ``purify``),
adaptive attacks through it, and fine-tuning the restorers on purified inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from udcguard.config.base import Device, Frozen, Size


class DiffusionParams(Frozen):
    """The purifier's diffusion model: a diffusers UNet2DModel + DDPMScheduler trained on degraded inputs
    (params.yaml ``diffusion``; ``purifier`` is its deprecated old name). Running it is ``purify``."""

    unet: Size = "small"
    unet_path: Path | None = Field(None, description="use this diffusers UNet folder instead of training")
    num_train_timesteps: int = Field(1000, ge=10, le=10_000)
    max_timestep: int | None = Field(
        None, ge=0, description="train only t <= this (purification never goes beyond its t*); None: all"
    )
    steps: int = Field(2000, ge=1, le=10_000_000)
    batch_size: int = Field(16, ge=1, le=4096)
    crop_px: int = Field(64, ge=8, le=4096)
    lr: float = Field(2e-4, gt=0.0, le=1.0)
    lr_min: float = Field(1e-6, ge=0.0, le=1.0)
    checkpoint_every: int = Field(250, ge=0)
    device: Device = "auto"
    seed: int = Field(0, ge=0)


class GuidanceParams(Frozen):
    """Input-guided purification (udcguard.purify.guidance.LowFreqGuidance); off at scale 0."""

    scale: float = Field(0.0, ge=0.0, le=10.0, description="fraction of the low-pass gap to the input removed per step")
    sigma_px: float = Field(2.0, gt=0.0, le=64.0)
    lowpass: Literal["gaussian", "pool"] = "gaussian"
    pool_factor: int = Field(4, ge=1, le=64)
    schedule: Literal["constant", "sqrt_one_minus_abar"] = "constant"
    compare_scale: float = Field(0.1, ge=0.0, le=10.0, description="guided curve shown next to the unguided one")


class SelectionParams(Frozen):
    """The PSNR-vs-t* trade-off on a held-out val slice; picks t* when purify.t_star is auto."""

    candidates: tuple[Annotated[int, Field(ge=0, le=10_000)], ...] = (0, 5, 10, 20, 40, 80)
    criterion: Literal["balanced", "max_attacked_within"] = "balanced"
    max_clean_drop_db: float | None = Field(None, gt=0.0, le=100.0)
    images: int = Field(8, ge=1, le=10_000, description="val images")
    attack: str = Field("pgd_linf", description="an id of attack.attacks: its strongest level attacks the slice")
    restorer: str | None = Field(None, description="None: the first restorer")

    @model_validator(mode="after")
    def _check(self) -> SelectionParams:
        if not self.candidates or len(set(self.candidates)) != len(self.candidates):
            raise ValueError("candidates: give distinct timesteps")
        if self.criterion == "balanced" and self.max_clean_drop_db is not None:
            raise ValueError("max_clean_drop_db applies to criterion max_attacked_within only")
        return self


class PurifyParams(Frozen):
    """DiffPure-style purification: noise to t*, reverse DDPM (or DDIM) back to 0."""

    t_star: int | float | Literal["auto"] = Field(
        100, description="timestep (int), fraction of the schedule (0 < f < 1), or auto (selection on val)"
    )
    sampler: Literal["ddpm", "ddim"] = "ddpm"
    ddim_steps: int = Field(10, ge=1, le=10_000)
    eta: float = Field(0.0, ge=0.0, le=1.0, description="DDIM stochasticity (0: deterministic)")
    tile_px: int | None = Field(None, ge=8, le=8192, description="purify in tiles of this size (any image size)")
    tile_overlap_px: int = Field(16, ge=0, le=4096)
    seeds: int = Field(1, ge=1, le=64, description="purification draws per image: scored as mean and worst case")
    autocast: Literal["bf16", "fp16"] | None = Field(None, description="CUDA only; CPU runs fp32")
    channels_last: bool = Field(False, description="run the UNet in channels-last memory format (any device; "
                                "a CPU: forward about 1.4x faster)")
    compile: bool = Field(False, description="torch.compile the UNet (CUDA only)")
    guidance: GuidanceParams = GuidanceParams()
    selection: SelectionParams = SelectionParams()
    batch_size: int = Field(16, ge=1, le=4096)
    device: Device = "auto"
    seed: int = Field(0, ge=0)

    @field_validator("t_star")
    @classmethod
    def _t_star(cls, v: int | float | str) -> int | float | str:
        if isinstance(v, bool):
            raise ValueError("t_star: a timestep, a fraction or auto")
        if isinstance(v, float) and not v.is_integer() and not 0.0 < v < 1.0:
            raise ValueError("a fractional t_star must lie in (0, 1)")
        if isinstance(v, (int, float)) and v < 0:
            raise ValueError("t_star must be >= 0")
        if isinstance(v, float) and v.is_integer():
            return int(v)
        return v

    @model_validator(mode="after")
    def _tiles(self) -> PurifyParams:
        if self.tile_px is not None and self.tile_overlap_px >= self.tile_px:
            raise ValueError("tile_overlap_px must be smaller than tile_px")
        return self


class AdaptiveParams(Frozen):
    """Adaptive attacks through the purifier (design.md section 3): BPDA, EOT, full gradients."""

    settings: tuple[Literal["bpda", "eot", "full"], ...] = ("bpda", "eot", "full")
    attack: str = Field("pgd_linf", description="an id of attack.attacks, run on restorer o purifier")
    eps: tuple[Annotated[float, Field(gt=0.0)], ...] = Field((8.0,), description="levels, the attack's units")
    eot_samples: int = Field(4, ge=1, le=1024)
    ddim_steps: int = Field(5, ge=1, le=1000, description="length of the differentiable DDIM chain (full)")
    max_images: int | None = Field(8, ge=1, description="images attacked adaptively: stratified across scene groups")
    seed: int = Field(0, ge=0, description="seed of the adaptive subset and of the attacks' randomness")


class DistributedParams(Frozen):
    """Data-parallel fine-tuning: torchrun starts ``nproc`` ranks on one worker (DDP).

    Every rank draws the same global batch and trains on its contiguous 1/nproc share;
    DDP averages the gradients, so an update equals the single-process one up to float
    reduction order. Launch settings only: left out of the stage's fingerprint.
    """

    nproc: int | Literal["auto"] = Field(1, description="ranks; 1: in-process, no DDP; auto: one per CUDA device")
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="auto: nccl on CUDA, gloo on CPU")
    master_port: int | None = Field(None, ge=1024, le=65535, description="None: a free loopback port")
    timeout_min: float = Field(24 * 60.0, gt=0.0, le=7 * 24 * 60.0, description="the launch is killed after this")

    @field_validator("nproc", mode="before")
    @classmethod
    def _nproc(cls, v: Any) -> Any:
        if v == "auto":
            return v
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1024:
            raise ValueError(f"an integer in 1..1024 or auto, got {v!r}")
        return v

    def world_size(self, cuda_devices: int) -> int:
        """Number of ranks: ``nproc``, or ``auto`` -> ``cuda_devices`` (at least 1)."""
        return max(1, cuda_devices) if self.nproc == "auto" else int(self.nproc)


class FinetuneParams(Frozen):
    """Fine-tuning on purified inputs mixed with clean ones, against the clean ground truth."""

    steps: int = Field(400, ge=1, le=10_000_000)
    batch_size: int = Field(8, ge=1, le=4096)
    crop_px: int = Field(64, ge=8, le=4096)
    lr: float = Field(5e-5, gt=0.0, le=1.0)
    lr_min: float = Field(1e-6, ge=0.0, le=1.0)
    t_stars: tuple[Annotated[int, Field(ge=1, le=10_000)], ...] | Literal["auto"] = Field(
        "auto", description="purification strengths of the fine-tuning set (the paper: 50-100 steps); auto: "
        "t_star_factors x the deployed t* (the select_tstar stage's choice when purify.t_star is auto)"
    )
    t_star_factors: tuple[Annotated[float, Field(gt=0.0, le=4.0)], ...] = Field(
        (0.5, 1.0), min_length=1, description="with t_stars auto: strengths as multiples of the deployed t*"
    )
    train_images: int | None = Field(64, ge=1, description="train pairs purified for fine-tuning (stratified "
                                      "across scene groups, seeded by finetune.seed)")
    clean_copies: int = Field(1, ge=0, le=16, description="clean inputs mixed in, per purified copy set")
    perceptual_weight: float = Field(0.0, ge=0.0, le=100.0)
    perceptual_weights_path: Path | None = Field(None, description="local VGG-19 weights; none: term off")
    jitter: float = Field(0.05, ge=0.0, le=0.5, description="colour jitter gain range")
    checkpoint_every: int = Field(100, ge=0)
    device: Device = "auto"
    amp: bool = True
    seed: int = Field(0, ge=0)
    distributed: DistributedParams = DistributedParams()

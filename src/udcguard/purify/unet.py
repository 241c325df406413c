"""The purifier's network: an epsilon-predicting diffusers ``UNet2DModel``, its presets, the DDPM
schedule it is trained with (Ho et al., arXiv 2006.11239) and its training loss.

Images are NCHW in [0, 1] outside and in [-1, 1] inside the model
(:func:`~udcguard.purify.schedule.to_model_space`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel

from udcguard.purify.schedule import to_model_space

#: Ho et al.'s 256 x 256 model (CelebA-HQ / LSUN; diffusers' ``google/ddpm-celebahq-256``):
#: base width 128, multipliers (1, 1, 2, 2, 4, 4), 2 residual blocks per level,
#: single-head self-attention at 16 x 16 and in the middle block, GroupNorm(32).
_HO256_CHANNELS = (128, 128, 256, 256, 512, 512)


def build_unet(
    *,
    sample_size: int = 64,
    block_out_channels: Sequence[int] = (32, 64, 64),
    layers_per_block: int = 1,
    attention: bool = False,
    norm_num_groups: int = 8,
    attention_levels: Sequence[int] | None = None,
) -> UNet2DModel:
    """An epsilon-predicting ``UNet2DModel`` with 3 input and 3 output channels.

    Args:
        sample_size: nominal training resolution in pixels (stored in the config; the
            network runs on any size divisible by ``2 ** (len(block_out_channels) - 1)``).
        block_out_channels: channel width per resolution level, full resolution first.
        layers_per_block: residual blocks per down level (up levels get one more).
        attention: add self-attention (single head) in the middle block and at the levels
            in ``attention_levels``.
        norm_num_groups: GroupNorm groups; must divide every width.
        attention_levels: level indices (0 = full resolution) whose blocks are
            ``AttnDownBlock2D`` / ``AttnUpBlock2D`` when ``attention``; default: the lowest
            resolution only.

    Shape:
        (B, 3, H, W) in model space [-1, 1] and integer timesteps (B,) or () -> (B, 3, H, W).
    """
    chans = tuple(int(c) for c in block_out_channels)
    n = len(chans)
    if n < 1 or any(c % norm_num_groups for c in chans):
        raise ValueError(f"block_out_channels {chans} must be non-empty and divisible by {norm_num_groups}")
    levels = set(attention_levels if attention_levels is not None else [n - 1]) if attention else set()
    if any(not 0 <= i < n for i in levels):
        raise ValueError(f"attention_levels {sorted(levels)} must lie in [0, {n - 1}]")
    down = tuple("AttnDownBlock2D" if i in levels else "DownBlock2D" for i in range(n))
    up = tuple("AttnUpBlock2D" if i in levels else "UpBlock2D" for i in reversed(range(n)))
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=3,
        out_channels=3,
        block_out_channels=chans,
        layers_per_block=layers_per_block,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=norm_num_groups,
        attention_head_dim=None,  # one head per block, as Ho et al.
        add_attention=attention,
    )


#: Named UNet sizes (``build_unet`` keyword arguments; parameter counts at 64 x 64, which
#: do not depend on the resolution for tiny / small).
#: tiny: 0.26 M parameters, for tests. small: 2.5 M, a laptop CPU. paper: see
#: :func:`_paper_kwargs` (113.7 M at 256 x 256, 71.4 M at 128, 28.5 M at 64, 17.6 M at 32);
#: the entry below is its 256 x 256 form.
UNET_PRESETS: dict[str, dict] = {
    "tiny": {"block_out_channels": (16, 32, 32), "layers_per_block": 1, "norm_num_groups": 8},
    "small": {"block_out_channels": (32, 64, 128), "layers_per_block": 1, "norm_num_groups": 8},
    "paper": {
        "block_out_channels": _HO256_CHANNELS,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "attention": True,
        "attention_levels": (4,),  # 256 / 2**4 = 16 x 16
    },
}


def _paper_kwargs(sample_size: int) -> dict:
    """Ho et al.'s 256 model scaled to ``sample_size``: as many of its levels (widths
    128, 128, 256, 256, 512, 512) as bring the lowest resolution down to 8 x 8 (all six at
    256 x 256: exactly ``google/ddpm-celebahq-256``), attention at the 16 x 16 level."""
    n = min(len(_HO256_CHANNELS), max(1, math.floor(math.log2(max(sample_size, 8) / 8)) + 1))
    attn = min(n - 1, max(0, round(math.log2(max(sample_size, 16) / 16))))
    return {**UNET_PRESETS["paper"], "block_out_channels": _HO256_CHANNELS[:n], "attention_levels": (attn,)}


def build_unet_preset(name: str, sample_size: int) -> UNet2DModel:
    """Build a named preset (``UNET_PRESETS``) for images of ``sample_size`` pixels."""
    if name not in UNET_PRESETS:
        raise ValueError(f"unknown UNet preset {name!r}; valid: {sorted(UNET_PRESETS)}")
    kwargs = _paper_kwargs(sample_size) if name == "paper" else UNET_PRESETS[name]
    return build_unet(sample_size=sample_size, **kwargs)


def make_scheduler(num_train_timesteps: int = 1000, beta_schedule: str = "linear") -> DDPMScheduler:
    """DDPM noise schedule (Ho et al.: linear betas 1e-4 .. 0.02 over T = 1000 steps).

    Epsilon prediction, predicted x0 clipped to [-1, 1], posterior variance "fixed_small".
    """
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=beta_schedule,
        clip_sample=True,
        prediction_type="epsilon",
    )


def model_place(unet: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """The (device, dtype) of a model's first parameter."""
    p = next(unet.parameters())
    return p.device, p.dtype


def unet_divisor(unet: UNet2DModel) -> int:
    """The factor H and W must be divisible by: 2 ** (levels - 1)."""
    return 2 ** (len(unet.config.block_out_channels) - 1)


def diffusion_loss(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    x0: torch.Tensor,
    generator: torch.Generator,
    *,
    max_timestep: int | None = None,
) -> torch.Tensor:
    """DDPM training loss (Ho et al. eq. 14): E_{t, eps} || eps - eps_theta(x_t, t) ||^2.

    Draws, in order, from ``generator`` on its own device and then moved to the model's
    device: t ~ U{0, ..., T' - 1} of shape (B,) (``torch.randint``), then eps ~ N(0, I) of
    the shape of ``x0`` (``torch.randn``). T' = T, or ``max_timestep + 1`` when given: a
    purifier only ever runs the reverse chain from t* <= max_timestep, so its capacity can
    be spent on those noise levels (the schedule itself is unchanged).

    Args:
        unet: epsilon-predicting model; its device and dtype are used.
        scheduler: gives abar_t and T (``config.num_train_timesteps``).
        x0: clean training images in [0, 1]; H and W divisible by the UNet's
            downsampling factor ``2 ** (levels - 1)``.
        generator: source of t and eps.

    Shape:
        x0 (B, 3, H, W) -> scalar (mean over all elements).
    """
    k = unet_divisor(unet)
    if x0.shape[-2] % k or x0.shape[-1] % k:
        raise ValueError(f"training images {tuple(x0.shape)}: H and W must be divisible by {k}")
    device, dtype = model_place(unet)
    b = x0.shape[0]
    n_t = scheduler.config.num_train_timesteps
    if max_timestep is not None:
        if not 0 <= max_timestep < n_t:
            raise ValueError(f"max_timestep={max_timestep} must lie in [0, {n_t - 1}]")
        n_t = max_timestep + 1
    t = torch.randint(0, n_t, (b,), generator=generator, device=generator.device)
    eps = torch.randn(x0.shape, generator=generator, device=generator.device, dtype=dtype)
    t, eps = t.to(device), eps.to(device)
    z0 = to_model_space(x0.to(device=device, dtype=dtype))  # (B, 3, H, W)
    zt = scheduler.add_noise(z0, eps, t)
    pred = unet(zt, t).sample
    return F.mse_loss(pred, eps)

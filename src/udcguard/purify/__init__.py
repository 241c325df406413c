"""Diffusion purification (DiffPure, Nie et al., arXiv 2205.07460) with diffusers parts."""

from udcguard.purify.diffusion import (
    UNET_PRESETS,
    Purifier,
    build_unet,
    build_unet_preset,
    diffusion_loss,
    from_model_space,
    make_scheduler,
    to_model_space,
)
from udcguard.purify.samplers import (
    DEFAULT_DDIM_STEPS,
    Guidance,
    ddim_purify_differentiable,
    ddim_step,
    ddim_timesteps,
    resolve_t_star,
    unet_calls,
)
from udcguard.purify.tiling import blend_window, tile_starts, tiled_eps

__all__ = [
    "DEFAULT_DDIM_STEPS",
    "UNET_PRESETS",
    "Guidance",
    "Purifier",
    "blend_window",
    "build_unet",
    "build_unet_preset",
    "ddim_purify_differentiable",
    "ddim_step",
    "ddim_timesteps",
    "diffusion_loss",
    "from_model_space",
    "make_scheduler",
    "resolve_t_star",
    "tile_starts",
    "tiled_eps",
    "to_model_space",
    "unet_calls",
]

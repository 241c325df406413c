"""Diffusion purification (DiffPure, Nie et al., arXiv 2205.07460) with diffusers parts.

Modules, as diffusers keeps models, schedulers and pipelines apart: :mod:`.schedule` (the maths:
t*, DDPM/DDIM timesteps and steps, model space), :mod:`.unet` (the network, its presets, the
DDPM schedule and the training loss), :mod:`.purifier` (the :class:`Purifier` and its one
reverse loop), :mod:`.guidance` (low-pass filters and the input-guidance hook), :mod:`.tiling`
(tiled epsilon) and :mod:`.selection` (choosing t*).
"""

from udcguard.purify.purifier import Guidance, Purifier, ReverseStep
from udcguard.purify.schedule import (
    DEFAULT_DDIM_STEPS,
    ddim_step,
    ddim_timesteps,
    from_model_space,
    resolve_t_star,
    reverse_timesteps,
    to_model_space,
    unet_calls,
)
from udcguard.purify.tiling import blend_window, tile_starts, tiled_eps
from udcguard.purify.unet import UNET_PRESETS, build_unet, build_unet_preset, diffusion_loss, make_scheduler

__all__ = [
    "DEFAULT_DDIM_STEPS",
    "UNET_PRESETS",
    "Guidance",
    "Purifier",
    "ReverseStep",
    "blend_window",
    "build_unet",
    "build_unet_preset",
    "ddim_step",
    "ddim_timesteps",
    "diffusion_loss",
    "from_model_space",
    "make_scheduler",
    "resolve_t_star",
    "reverse_timesteps",
    "tile_starts",
    "tiled_eps",
    "to_model_space",
    "unet_calls",
]

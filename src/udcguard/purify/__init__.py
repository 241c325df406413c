"""Diffusion purification (DiffPure, Nie et al., arXiv 2205.07460) with diffusers parts."""

from udcguard.purify.diffusion import (
    UNET_PRESETS,
    Purifier,
    build_unet,
    build_unet_preset,
    diffusion_loss,
    from_model_space,
    make_scheduler,
    sample_steps,
    to_model_space,
)

__all__ = [
    "UNET_PRESETS",
    "Purifier",
    "build_unet",
    "build_unet_preset",
    "diffusion_loss",
    "from_model_space",
    "make_scheduler",
    "sample_steps",
    "to_model_space",
]

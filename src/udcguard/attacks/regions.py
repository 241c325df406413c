"""Region masks: attack only part of the image (design.md section 3, "region mask").

A mask is a float tensor (B, 1, H, W) of 0/1; every attack keeps delta exactly 0 where it
is 0. The UDC-specific region is the neighbourhood of light sources: in the tone-mapped
degraded input the flare around a light saturates towards 1, so the pixels whose luminance
exceeds ``threshold``, grown by ``dilate_px`` (a square structuring element), cover the
lights and the brightest part of their diffraction flare.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: Rec. 709 luma weights (the tone-mapped inputs are linear-light RGB compressed per channel).
LUMA = (0.2126, 0.7152, 0.0722)

REGIONS = ("full", "lights")


def lights_mask(x: Tensor, *, threshold: float = 0.9, dilate_px: int = 4) -> Tensor:
    """Pixels near light sources: luma(x) >= threshold, dilated by ``dilate_px``.

    Args:
        x: (B, 3, H, W) tone-mapped degraded inputs in [0, 1].
        threshold: luma level in [0, 1] (tone-mapped; 0.9 is a linear value of 2.25 x the
            tone map's knee 0.25, i.e. well above diffuse white).
        dilate_px: growth of the region in pixels (>= 0).

    Returns:
        (B, 1, H, W) float 0/1 mask. An image without any pixel above threshold gets an
        all-zero mask (nothing is attacked there; the caller may report it).
    """
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"lights_mask expects (B, 3, H, W), got {tuple(x.shape)}")
    if not 0.0 <= threshold <= 1.0 or dilate_px < 0:
        raise ValueError(f"lights_mask: threshold in [0, 1] and dilate_px >= 0, got {threshold}, {dilate_px}")
    w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    seed = ((x * w).sum(1, keepdim=True) >= threshold).to(x.dtype)  # (B, 1, H, W)
    if dilate_px == 0:
        return seed
    k = 2 * dilate_px + 1
    return (F.max_pool2d(seed, k, stride=1, padding=dilate_px) > 0).to(x.dtype)


def region_mask(x: Tensor, region: str, *, threshold: float = 0.9, dilate_px: int = 4) -> Tensor | None:
    """The mask of a named region: ``"full"`` -> None (whole image), ``"lights"`` -> :func:`lights_mask`."""
    if region == "full":
        return None
    if region == "lights":
        return lights_mask(x, threshold=threshold, dilate_px=dilate_px)
    raise ValueError(f"unknown region {region!r}; valid: {', '.join(REGIONS)}")

"""Tiled epsilon prediction: purify images larger than the UNet's comfortable size.

All tiles run in lockstep. At every reverse step the UNet predicts epsilon on each tile;
the tile predictions are blended into one full-image epsilon with smooth weights, and the
sampler then takes ONE step on the full image with full-image noise. So the sample is a
single image at every step (no tile drifts away from its neighbours), the noise is the
untiled noise (drawn once per image from its seed: batch-size invariant), and one tile
covering the whole image gives exactly the untiled result.

Blending (cf. MultiDiffusion, Bar-Tal et al., arXiv 2302.08113, which averages per-tile
predictions the same way): the weight of a tile is the outer product of two 1-D windows
that are 1 in the tile's middle and ramp as a raised cosine sin^2 over ``overlap`` pixels
at each end, staying positive everywhere (min sin^2(pi / (4 overlap))); per pixel, the
weighted sum is divided by the sum of weights. Two tiles overlapping by exactly
``overlap`` pixels get weights sin^2 + cos^2 = 1 there: a smooth cross-fade, no seam.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` px covering ``size`` px with at least ``overlap``
    px shared by neighbours; stride ``tile - overlap``, the last tile flush with the end.

    Raises:
        ValueError: not 0 <= overlap < tile, or tile > size.
    """
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap={overlap} must lie in [0, tile={tile})")
    if tile > size:
        raise ValueError(f"tile={tile} larger than the image side {size}")
    n = max(1, math.ceil((size - tile) / (tile - overlap)) + 1)
    return sorted({min(i * (tile - overlap), size - tile) for i in range(n)})


def blend_window(tile: int, overlap: int, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """1-D blending window (tile,): sin^2 ramps over ``overlap`` px at both ends, 1 between;
    positive everywhere (all ones when overlap = 0)."""
    i = torch.arange(tile, dtype=torch.float64)
    if overlap == 0:
        w = torch.ones(tile, dtype=torch.float64)
    else:
        up = torch.sin(0.5 * math.pi * (i + 0.5) / overlap).clamp(max=1.0) ** 2
        up = torch.where(i < overlap, up, torch.ones_like(up))
        w = torch.minimum(up, up.flip(0))
    return w.to(dtype=dtype, device=device)


def check_tile(tile: int, overlap: int, divisor: int) -> None:
    """Raise ValueError unless ``tile`` is a positive multiple of ``divisor`` and
    0 <= overlap < tile."""
    if tile <= 0 or tile % divisor:
        raise ValueError(f"tile={tile} must be a positive multiple of the UNet's factor {divisor}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap={overlap} must lie in [0, tile={tile})")


def tiled_eps(
    eps_fn: EpsFn,
    z: torch.Tensor,
    t: torch.Tensor,
    *,
    tile: int,
    overlap: int,
    max_tiles: int | None = None,
) -> torch.Tensor:
    """Full-image epsilon blended from per-tile predictions (module docstring).

    Args:
        eps_fn: ``(z_tiles, t) -> eps_tiles``, the UNet call.
        z: the current sample; H and W already padded to the UNet's factor.
        t: the timestep (0-dim tensor) passed to ``eps_fn``.
        tile: tile side in px (clipped to H and W; a multiple of the UNet's factor).
        overlap: blend width in px, 0 <= overlap < tile.
        max_tiles: tiles per ``eps_fn`` call (all at once by default); only speed and
            memory depend on it (up to float round-off of batched convolutions).

    Returns:
        epsilon like ``z``; exactly ``eps_fn(z, t)`` when one tile covers the image.

    Shape:
        (B, C, H, W) -> (B, C, H, W); eps_fn sees (n, C, th, tw), th = min(tile, H).
    """
    b, c, h, w = z.shape
    th, tw = min(tile, h), min(tile, w)
    rows = tile_starts(h, th, min(overlap, th - 1))
    cols = tile_starts(w, tw, min(overlap, tw - 1))
    if len(rows) == 1 and len(cols) == 1:
        return eps_fn(z, t)
    boxes = [(i, j) for i in rows for j in cols]
    crops = torch.cat([z[:, :, i : i + th, j : j + tw] for i, j in boxes])  # (n_tiles * B, C, th, tw)
    step = max_tiles or crops.shape[0]
    eps_tiles = torch.cat([eps_fn(crops[k : k + step], t) for k in range(0, crops.shape[0], step)])
    win = (blend_window(th, min(overlap, th - 1), dtype=z.dtype, device=z.device)[:, None]
           * blend_window(tw, min(overlap, tw - 1), dtype=z.dtype, device=z.device)[None, :])  # (th, tw)
    num = torch.zeros_like(z)  # (B, C, H, W)
    den = torch.zeros(h, w, dtype=z.dtype, device=z.device)  # (H, W)
    for n, (i, j) in enumerate(boxes):
        num[:, :, i : i + th, j : j + tw] += win * eps_tiles[n * b : (n + 1) * b].to(z.dtype)
        den[i : i + th, j : j + tw] += win
    return num / den

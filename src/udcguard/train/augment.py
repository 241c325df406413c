"""Random training batches: crops, flips and light colour jitter on paired tensors.

The reference paper fine-tunes with "flips, crops, light colour jitter" (Song et al.,
arXiv 2402.13629, section 6 of the design). Every random draw comes from the generator
passed in, so a run is reproducible and, with the generator state saved, resumable.
"""

from __future__ import annotations

import torch

from udcguard.io.datasets import TensorPairs


def sample_batch(
    pairs: TensorPairs,
    *,
    batch_size: int,
    crop_px: int | None,
    generator: torch.Generator,
    flips: bool = True,
    jitter: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Draw a random augmented batch of pairs (indices with replacement).

    Args:
        pairs: the pool; tensors stay where they are (CPU usually).
        batch_size: B, number of crops.
        crop_px: side of the square crop in pixels (one random window per image, the same
            for lq and gt); None keeps whole images.
        generator: CPU ``torch.Generator``; the only source of randomness.
        flips: random horizontal and vertical flips (each with probability 1/2, per image).
        jitter: colour gain range: each image and channel is multiplied by a gain drawn
            uniformly in [1 - jitter, 1 + jitter], identically for lq and gt, then clamped
            to [0, 1]. 0 turns it off.

    Returns:
        ``(lq, gt, cond)``.

    Shape:
        lq, gt: (B, 3, crop_px, crop_px) float32; cond: (B, d) or None.
    """
    n, _, h, w = pairs.lq.shape
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0.0 <= jitter < 1.0:
        raise ValueError(f"jitter must be in [0, 1), got {jitter}")
    if crop_px is not None and not 1 <= crop_px <= min(h, w):
        raise ValueError(f"crop_px={crop_px} does not fit {h}x{w} images")
    idx = torch.randint(n, (batch_size,), generator=generator)  # (B,)
    lq, gt = pairs.lq[idx], pairs.gt[idx]  # (B, 3, H, W)
    if crop_px is not None and (crop_px < h or crop_px < w):
        ys = torch.randint(h - crop_px + 1, (batch_size,), generator=generator).tolist()
        xs = torch.randint(w - crop_px + 1, (batch_size,), generator=generator).tolist()
        lq = torch.stack([im[:, y : y + crop_px, x : x + crop_px] for im, y, x in zip(lq, ys, xs)])
        gt = torch.stack([im[:, y : y + crop_px, x : x + crop_px] for im, y, x in zip(gt, ys, xs)])
    if flips:
        hflip = (torch.rand(batch_size, generator=generator) < 0.5).view(-1, 1, 1, 1)
        vflip = (torch.rand(batch_size, generator=generator) < 0.5).view(-1, 1, 1, 1)
        lq = torch.where(hflip, lq.flip(-1), lq)
        gt = torch.where(hflip, gt.flip(-1), gt)
        lq = torch.where(vflip, lq.flip(-2), lq)
        gt = torch.where(vflip, gt.flip(-2), gt)
    if jitter > 0.0:
        gain = 1.0 + jitter * (2.0 * torch.rand(batch_size, 3, 1, 1, generator=generator) - 1.0)  # (B, 3, 1, 1)
        lq = (lq * gain.to(lq.dtype)).clamp(0.0, 1.0)
        gt = (gt * gain.to(gt.dtype)).clamp(0.0, 1.0)
    cond = None if pairs.cond is None else pairs.cond[idx]
    return lq.contiguous(), gt.contiguous(), cond

"""Dataset synthesis: scenes x PSF bank -> (ground truth, degraded) linear HDR pairs.

Determinism: every scene gets its own random stream derived from (seed, scene name) with
``np.random.SeedSequence``, so a pair depends only on the params, the seed and its scene,
never on the order in which scenes are processed. This makes synthesis resumable and
byte-reproducible.

Context: a crop is degraded with its surroundings. The region convolved is the crop plus
a margin of K // 2 pixels on each side (where the scene has them), so that flare from
light just outside the crop appears inside it, as it does when DISCNet convolves a whole
800 x 800 scene and crops afterwards.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from udcguard.degradation.formation import form_udc
from udcguard.degradation.hdr import add_light_sources


def scene_seed(seed: int, scene: str) -> list[int]:
    """Entropy for a scene's random stream: (seed, 64-bit hash of the scene name)."""
    digest = hashlib.sha256(scene.encode()).digest()
    return [int(seed), int.from_bytes(digest[:8], "little")]


@dataclass(frozen=True)
class PairPlan:
    """One pair to make: which scene, which of its pairs, its id in the split."""

    id: str
    split: str
    scene: str
    index: int  # pair index within the scene


def plan_split(split: str, scenes: Sequence[str], pairs_per_scene: int) -> list[PairPlan]:
    """Pairs of a split, scenes in sorted order, ids ``<split>-00000`` ..."""
    plans: list[PairPlan] = []
    for scene in sorted(scenes):
        for j in range(pairs_per_scene):
            plans.append(PairPlan(f"{split}-{len(plans):05d}", split, scene, j))
    return plans


def choose_crop(h: int, w: int, crop: int, rng: np.random.Generator) -> tuple[int, int]:
    """Top-left corner of a uniformly random crop x crop window inside (h, w)."""
    if h < crop or w < crop:
        raise ValueError(f"scene {h}x{w} is smaller than the crop {crop}")
    return int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))


def synthesize_pair(
    scene: np.ndarray,
    psfs: Sequence[tuple[str, np.ndarray]],
    rng: np.random.Generator,
    *,
    crop_px: int,
    clip_max: float = 500.0,
    lights: dict[str, Any] | None = None,
    noise_log_a_range: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Make one (gt, lq) pair from a prepared linear HDR scene.

    Args:
        scene: (H, W, 3) float linear HDR, min(H, W) >= crop_px.
        psfs: the PSF bank as (name, (K, K, 3)) pairs; one is drawn uniformly.
        rng: this pair's generator.
        crop_px: output size.
        clip_max: radiance clip (DISCNet: 500), applied to gt and lq.
        lights: kwargs of :func:`add_light_sources` (max_count, radius_px, intensity);
            sources are placed inside the crop's context region.
        noise_log_a_range: enables Poisson-Gaussian noise when given.

    Returns:
        gt, lq: (crop_px, crop_px, 3) float32 in [0, clip_max]; a JSON-able record.
    """
    k_idx = int(rng.integers(0, len(psfs)))
    psf_name, psf = psfs[k_idx]
    margin = psf.shape[0] // 2
    h, w, _ = scene.shape
    y, x = choose_crop(h, w, crop_px, rng)
    y0, x0 = max(0, y - margin), max(0, x - margin)
    y1, x1 = min(h, y + crop_px + margin), min(w, x + crop_px + margin)
    region = np.array(scene[y0:y1, x0:x1], dtype=np.float64)  # (h', w', 3) copy
    light_records: list[dict[str, Any]] = []
    if lights:
        region, light_records = add_light_sources(region, rng, **lights)
    noise_rng = rng if noise_log_a_range is not None else None
    kwargs = {} if noise_log_a_range is None else {"log_a_range": noise_log_a_range}
    lq_region, noise = form_udc(region, psf, clip_max=clip_max, noise_rng=noise_rng, **kwargs)
    cy, cx = y - y0, x - x0
    gt = np.clip(region[cy : cy + crop_px, cx : cx + crop_px], 0.0, clip_max).astype(np.float32)
    lq = lq_region[cy : cy + crop_px, cx : cx + crop_px]
    record = {
        "psf": psf_name,
        "crop": [y, x, crop_px, crop_px],
        "lights": [_shift_light(r, y0, x0) for r in light_records],
        "noise": noise,
    }
    return gt, np.ascontiguousarray(lq), record


def _shift_light(rec: dict[str, Any], y0: int, x0: int) -> dict[str, Any]:
    """Light records in scene coordinates (they are drawn in region coordinates)."""
    out = dict(rec)
    if "y" in out:
        out["y"] = float(out["y"]) + y0
    if "x" in out:
        out["x"] = float(out["x"]) + x0
    return out

"""Scene preparation: decoded images -> linear HDR scenes; panorama views; group-whole splits.

Pure: decoded :class:`~udcguard.io.images.Image` objects and a ``numpy.random.Generator``
in, arrays and JSON-able records out.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from udcguard.degradation.hdr import (
    add_light_sources,
    boost_highlights_alpha,
    exposure_scale,
    perspective_view,
    resize_max_side,
    srgb_to_linear,
)
from udcguard.io.images import Image

PITCH_RANGE_DEG = (-15.0, 25.0)


def prepare_scene(
    image: Image,
    rng: np.random.Generator,
    *,
    max_side_px: int,
    exposure_median: float = 0.18,
    highlights: Mapping[str, Any] | None = None,
    lights: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Turn a decoded image into a linear HDR scene.

    LDR (``image.linear`` False): sRGB -> linear, area downscale to ``max_side_px``,
    highlight expansion (alpha log-uniform, see :func:`~udcguard.degradation.hdr.boost_highlights`),
    then light sources. LDR scenes are not re-exposed: diffuse white stays 1.
    HDR (``image.linear`` True): area downscale, scale the luminance median to
    ``exposure_median``, then light sources drawn from the same ``lights`` settings as for
    LDR scenes (real HDR scenes keep their own bright sources too; pass ``lights=None`` or
    ``max_count=0`` to add none).

    Args:
        image: decoded scene.
        rng: random generator (alpha, light positions, ...).
        max_side_px: longest side after downscaling (never upscaled).
        exposure_median: target luminance median of HDR scenes.
        highlights: kwargs of ``boost_highlights`` (threshold, alpha_min, alpha_max);
            None disables highlight expansion.
        lights: kwargs of ``add_light_sources`` (max_count, radius_px, intensity);
            None adds no light sources.

    Returns:
        hdr: (H, W, 3) float32 linear radiance >= 0.
        info: JSON-able record: kind ("ldr"/"hdr"), source, input and output shapes,
            alpha (LDR, else None), exposure_scale (HDR, else None), lights (records).
    """
    px = np.asarray(image.pixels, dtype=np.float32)
    info: dict[str, Any] = {
        "kind": "hdr" if image.linear else "ldr",
        "source": image.source,
        "input_shape": [int(px.shape[0]), int(px.shape[1])],
        "alpha": None,
        "exposure_scale": None,
    }
    if image.linear:
        scene = resize_max_side(px, max_side_px)
        scale = exposure_scale(scene, exposure_median)
        scene = scene * np.float32(scale)
        info["exposure_scale"] = float(scale)
    else:
        scene = resize_max_side(srgb_to_linear(np.clip(px, 0.0, 1.0)), max_side_px)
        if highlights is not None:
            scene, alpha = boost_highlights_alpha(scene, rng, **dict(highlights))
            info["alpha"] = alpha
    records: list[dict[str, Any]] = []
    if lights is not None:
        scene, records = add_light_sources(scene, rng, **dict(lights))
    info["shape"] = [int(scene.shape[0]), int(scene.shape[1])]
    info["lights"] = records
    return np.ascontiguousarray(np.maximum(scene, 0.0), dtype=np.float32), info


def panorama_views(
    pano: Image,
    rng: np.random.Generator,
    *,
    count: int,
    fov_deg: float,
    size: int,
) -> list[tuple[float, float, np.ndarray]]:
    """Perspective views spread around an equirectangular panorama.

    Yaws are ``count`` evenly spaced directions from a random offset, each jittered by up
    to a quarter of the spacing; pitch is uniform in [-15, 25] degrees (slightly upwards,
    where the sky and lamps are). Deterministic given ``rng``.

    Args:
        pano: decoded (H, W, 3) equirectangular image (normally linear HDR).
        rng: random generator.
        count: number of views.
        fov_deg: field of view of each view, degrees.
        size: output side in pixels.

    Returns:
        [(yaw_deg in [-180, 180), pitch_deg, (size, size, 3) float32 view), ...].
    """
    spacing = 360.0 / count
    offset = float(rng.uniform(0.0, 360.0))
    out = []
    for k in range(count):
        yaw = offset + k * spacing + float(rng.uniform(-0.25, 0.25)) * spacing
        yaw = (yaw + 180.0) % 360.0 - 180.0
        pitch = float(rng.uniform(*PITCH_RANGE_DEG))
        view = perspective_view(pano.pixels, yaw_deg=yaw, pitch_deg=pitch, fov_deg=fov_deg, size=size)
        out.append((yaw, pitch, view))
    return out


def _order_key(seed: int, name: str) -> str:
    return hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()


def _split_counts(n: int, fractions: list[float]) -> list[int]:
    """Largest-remainder allocation of n items, every split at least 1."""
    k = len(fractions)
    raw = [f * n for f in fractions]
    counts = [max(1, math.floor(r)) for r in raw]
    by_remainder = sorted(range(k), key=lambda i: (-(raw[i] - math.floor(raw[i])), i))
    i = 0
    while sum(counts) < n:
        counts[by_remainder[i % k]] += 1
        i += 1
    while sum(counts) > n:  # the at-least-one rule overshot: take from the largest (n >= k)
        counts[counts.index(max(counts))] -= 1
    return counts


def split_scenes(
    names: list[str],
    fractions: Mapping[str, float],
    seed: int,
    groups: Mapping[str, str] | None = None,
) -> dict[str, list[str]]:
    """Assign scenes to splits (e.g. train/val/test), keeping every scene group whole.

    Scenes that show one place (a stereo pair) share a group; a group's scenes always land
    in one split. Groups are ordered by a hash of (seed, group), so the result does not
    depend on the order of ``names`` and a group added later moves few others. The number
    of GROUPS per split follows ``fractions`` (largest remainder), each split getting at
    least one group.

    Args:
        names: unique scene names.
        fractions: split name -> fraction, in the order splits are filled; sum 1.
        seed: shuffle seed.
        groups: scene name -> group name; scenes not in it (or None) are their own group.

    Returns:
        split name -> sorted scene names; disjoint, covering ``names``.

    Raises:
        ValueError: fewer groups than splits (at least 3 for train/val/test), duplicate
            names, or fractions that are negative or do not sum to 1.
    """
    splits = list(fractions)
    fr = [float(fractions[s]) for s in splits]
    if not splits or any(f < 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {dict(fractions)}")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if list(names).count(n) > 1})
        raise ValueError(f"duplicate scene names: {', '.join(dup)}")
    group_of = {n: (groups or {}).get(n, n) for n in names}
    members: dict[str, list[str]] = {}
    for n in names:
        members.setdefault(group_of[n], []).append(n)
    if len(members) < len(splits):
        raise ValueError(
            f"found {len(members)} scene group(s) in {len(names)} scene(s); at least {len(splits)} "
            f"are needed (one for each split: {', '.join(splits)})"
        )
    ordered = sorted(members, key=lambda g: (_order_key(seed, g), g))
    out: dict[str, list[str]] = {}
    start = 0
    for split, c in zip(splits, _split_counts(len(ordered), fr), strict=True):
        out[split] = sorted(n for g in ordered[start : start + c] for n in members[g])
        start += c
    return out

"""Linear HDR scene operations: sRGB curves, highlight boosting, light sources, exposure,
perspective views of equirectangular panoramas, area downscaling.

Pure numpy: arrays and a ``numpy.random.Generator`` in, arrays out. Images are (H, W, 3)
float RGB; linear values are relative radiance where 1 is diffuse white (highlights and
light sources go far above 1; DISCNet clips at 500 later, in formation).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from skimage.transform import resize_local_mean

# Rec. 709 / sRGB luminance weights for linear RGB.
LUMA = np.array([0.2126, 0.7152, 0.0722])


def _float(a: np.ndarray | float) -> np.ndarray:
    x = np.asarray(a)
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64)


def srgb_to_linear(s: np.ndarray | float) -> np.ndarray:
    """IEC 61966-2-1 sRGB decoding: s / 12.92 for s <= 0.04045, else ((s + 0.055) / 1.055)^2.4.

    Args:
        s: sRGB-encoded values, any shape, nominally in [0, 1] (not clipped).

    Returns:
        Linear values, same shape; float dtype kept (integers become float64).
    """
    s = _float(s)
    hi = ((np.maximum(s, 0.04045) + 0.055) / 1.055) ** 2.4
    return np.where(s <= 0.04045, s / 12.92, hi).astype(s.dtype)


def linear_to_srgb(x: np.ndarray | float) -> np.ndarray:
    """IEC 61966-2-1 sRGB encoding: 12.92 x for x <= 0.0031308, else 1.055 x^(1/2.4) - 0.055.

    Args:
        x: linear values, any shape (not clipped; values above 1 encode above 1).

    Returns:
        sRGB-encoded values, same shape; float dtype kept.
    """
    x = _float(x)
    hi = 1.055 * np.maximum(x, 0.0031308) ** (1.0 / 2.4) - 0.055
    return np.where(x <= 0.0031308, 12.92 * x, hi).astype(x.dtype)


# --------------------------------------------------------------------------- LDR -> HDR
def sample_alpha(rng: np.random.Generator, alpha_min: float = 10.0, alpha_max: float = 500.0) -> float:
    """Highlight gain alpha, log-uniform in [alpha_min, alpha_max]."""
    if not 0 < alpha_min <= alpha_max:
        raise ValueError(f"need 0 < alpha_min <= alpha_max, got {alpha_min}, {alpha_max}")
    return float(math.exp(rng.uniform(math.log(alpha_min), math.log(alpha_max))))


def expand_highlights(lin: np.ndarray, alpha: float, *, threshold: float = 0.8) -> np.ndarray:
    """x (1 + alpha m), m = clip((max_c x - tau) / (1 - tau), 0, 1)^2, tau = threshold.

    Pixels whose brightest channel is <= tau are unchanged; a pixel with max_c x >= 1 is
    multiplied by 1 + alpha. With tau >= 1 only pixels with max_c x > 1 are boosted.

    Args:
        lin: (H, W, 3) linear LDR image, nominally in [0, 1].
        alpha: gain (>= 0).
        threshold: tau in [0, 1].

    Returns:
        (H, W, 3) boosted image, dtype of ``lin``.
    """
    lin = _float(lin)
    peak = lin.max(axis=-1, keepdims=True)  # (H, W, 1)
    if threshold >= 1.0:
        m = (peak > 1.0).astype(lin.dtype)
    else:
        m = np.clip((peak - threshold) / (1.0 - threshold), 0.0, 1.0) ** 2
    return (lin * (1.0 + alpha * m)).astype(lin.dtype)


def boost_highlights_alpha(
    lin: np.ndarray,
    rng: np.random.Generator,
    *,
    threshold: float = 0.8,
    alpha_min: float = 10.0,
    alpha_max: float = 500.0,
) -> tuple[np.ndarray, float]:
    """:func:`boost_highlights` that also returns the alpha it drew (for the manifest)."""
    alpha = sample_alpha(rng, alpha_min, alpha_max)
    return expand_highlights(lin, alpha, threshold=threshold), alpha


def boost_highlights(
    lin: np.ndarray,
    rng: np.random.Generator,
    *,
    threshold: float = 0.8,
    alpha_min: float = 10.0,
    alpha_max: float = 500.0,
) -> np.ndarray:
    """Pseudo-HDR from a linearised LDR image: :func:`expand_highlights` with a random alpha.

    alpha is log-uniform in [alpha_min, alpha_max] (:func:`sample_alpha`).

    Args:
        lin: (H, W, 3) linear LDR image, nominally in [0, 1].
        rng: random generator.
        threshold: tau; pixels with max_c x <= tau are unchanged.
        alpha_min, alpha_max: range of the gain of saturated pixels (x (1 + alpha)).

    Returns:
        (H, W, 3) array, dtype of ``lin``.
    """
    return boost_highlights_alpha(lin, rng, threshold=threshold, alpha_min=alpha_min, alpha_max=alpha_max)[0]


def add_light_sources(
    img: np.ndarray,
    rng: np.random.Generator,
    *,
    max_count: int = 4,
    radius_px: tuple[float, float] = (1.0, 6.0),
    intensity: tuple[float, float] = (10.0, 500.0),
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Put small bright near-white discs into a linear image so that diffraction flare appears.

    Count is uniform in [1, max_count] (none when max_count is 0). Each source sits on a
    pixel centre (x, y) drawn uniformly over the image, has a radius uniform in
    ``radius_px`` with a one-pixel linear soft edge, a peak intensity log-uniform in
    ``intensity`` (in the brightest channel), and a colour with channels in [0.85, 1]
    (brightest channel exactly 1). A source occludes what is behind it: the result is the
    per-pixel maximum of the image and the disc, so the centre pixel's brightest channel
    equals the intensity.

    Args:
        img: (H, W, 3) linear HDR image (not modified).
        rng: random generator.
        max_count: most sources.
        radius_px: (low, high) disc radius in pixels.
        intensity: (low, high) peak radiance, relative to diffuse white 1.

    Returns:
        The new image (dtype of ``img``) and one JSON-able record per source:
        ``{"x": int, "y": int, "radius": float, "intensity": float, "colour": [r, g, b]}``
        (x = column, y = row, in pixels).
    """
    out = np.array(_float(img), copy=True)
    h, w = out.shape[:2]
    count = int(rng.integers(1, max_count + 1)) if max_count > 0 else 0
    records: list[dict[str, Any]] = []
    for _ in range(count):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        radius = float(rng.uniform(*radius_px))
        peak = float(math.exp(rng.uniform(math.log(intensity[0]), math.log(intensity[1]))))
        colour = rng.uniform(0.85, 1.0, size=3)
        colour[int(rng.integers(0, 3))] = 1.0
        reach = math.ceil(radius + 0.5)
        y0, y1, x0, x1 = max(0, y - reach), min(h, y + reach + 1), max(0, x - reach), min(w, x + reach + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        dist = np.hypot(yy - y, xx - x)
        cover = np.clip(radius + 0.5 - dist, 0.0, 1.0)  # (h', w') 1 inside, soft rim
        disc = (cover[..., None] * (peak * colour)).astype(out.dtype)  # (h', w', 3)
        np.maximum(out[y0:y1, x0:x1], disc, out=out[y0:y1, x0:x1])
        records.append(
            {"x": x, "y": y, "radius": radius, "intensity": peak, "colour": [float(c) for c in colour]}
        )
    return out, records


# --------------------------------------------------------------------------- HDR scenes
def luminance(img: np.ndarray) -> np.ndarray:
    """(H, W) Rec. 709 luminance of an (H, W, 3) linear image."""
    return np.asarray(img, dtype=np.float64) @ LUMA


def exposure_scale(hdr: np.ndarray, median: float = 0.18) -> float:
    """Factor that brings the luminance median of ``hdr`` to ``median``.

    When the median is 0 (mostly black scenes) the 75th, 90th, 99th percentile or the
    maximum is used instead, the first that is positive; an all-black image gives 1.
    """
    y = luminance(hdr).ravel()
    for q in (50.0, 75.0, 90.0, 99.0, 100.0):
        ref = float(np.percentile(y, q))
        if ref > 1e-12:
            return median / ref
    return 1.0


def expose(hdr: np.ndarray, median: float = 0.18) -> np.ndarray:
    """Scale an (H, W, 3) linear HDR image so that its luminance median equals ``median``.

    See :func:`exposure_scale` for the fallback when the median is 0. Returns float32.
    """
    return (np.asarray(hdr, dtype=np.float64) * exposure_scale(hdr, median)).astype(np.float32)


def perspective_view(
    pano: np.ndarray,
    *,
    yaw_deg: float,
    pitch_deg: float,
    fov_deg: float,
    size: int,
    oversample: int | None = None,
) -> np.ndarray:
    """Pinhole view of an equirectangular panorama.

    Panorama convention: column x covers longitude lon = 2 pi ((x + 0.5) / W - 0.5), so
    lon = 0 is the centre of the image and increases to the right; row y covers latitude
    lat = pi (0.5 - (y + 0.5) / H), +90 degrees (up) at the top. Camera: x right, y up,
    z forward; f_px = (size / 2) / tan(fov / 2); the ray of output pixel (i, j) is
    (j + 0.5 - size/2, size/2 - i - 0.5, f_px), rotated by pitch (up positive) about x,
    then by yaw (right positive) about y; lon = atan2(dx, dz), lat = asin(dy / |d|).
    Sampling is bilinear, wrapping in longitude and clamping in latitude.

    Args:
        pano: (H, W, C) equirectangular image.
        yaw_deg, pitch_deg: view direction in degrees.
        fov_deg: full horizontal (= vertical) field of view, degrees, in (0, 180).
        size: output side in pixels.
        oversample: sub-samples per output pixel side, averaged (anti-aliasing). None picks
            ceil(panorama pixels per output pixel), between 1 and 4.

    Returns:
        (size, size, C) float32 view.
    """
    ph, pw = pano.shape[:2]
    f_px = (size / 2.0) / math.tan(math.radians(fov_deg) / 2.0)
    if oversample is None:
        oversample = int(min(4, max(1, math.ceil(pw / (2.0 * math.pi) / f_px))))
    n = size * oversample
    t = (np.arange(n) + 0.5) / oversample - size / 2.0  # (n,) pixel-centre offsets
    dx, dy = np.meshgrid(t, -t)  # (n, n): x right, y up
    dz = np.full_like(dx, f_px)
    p, yw = math.radians(pitch_deg), math.radians(yaw_deg)
    dy, dz = dy * math.cos(p) + dz * math.sin(p), -dy * math.sin(p) + dz * math.cos(p)
    dx, dz = dx * math.cos(yw) + dz * math.sin(yw), -dx * math.sin(yw) + dz * math.cos(yw)
    lon = np.arctan2(dx, dz)
    lat = np.arcsin(np.clip(dy / np.sqrt(dx * dx + dy * dy + dz * dz), -1.0, 1.0))
    u = (lon / (2.0 * math.pi) + 0.5) * pw - 0.5  # (n, n) column coordinate
    v = (0.5 - lat / math.pi) * ph - 0.5  # (n, n) row coordinate
    view = _bilinear_wrap(np.asarray(pano, dtype=np.float32), u, v)  # (n, n, C)
    if oversample > 1:
        view = view.reshape(size, oversample, size, oversample, -1).mean(axis=(1, 3))
    return view.astype(np.float32)


def _bilinear_wrap(img: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Sample (H, W, C) ``img`` at column u, row v: wrap in u, clamp in v."""
    h, w = img.shape[:2]
    u0f, v0f = np.floor(u), np.floor(v)
    fu, fv = (u - u0f)[..., None], (v - v0f)[..., None]
    u0 = u0f.astype(np.int64) % w
    u1 = (u0 + 1) % w
    v0 = np.clip(v0f.astype(np.int64), 0, h - 1)
    v1 = np.clip(v0f.astype(np.int64) + 1, 0, h - 1)
    top = img[v0, u0] * (1 - fu) + img[v0, u1] * fu
    bottom = img[v1, u0] * (1 - fu) + img[v1, u1] * fu
    return top * (1 - fv) + bottom * fv


def resize_max_side(img: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale by area averaging so that max(H, W) <= max_side; never upscales.

    Area averaging keeps total radiance and non-negativity (no ringing around lights).

    Args:
        img: (H, W, C) image.
        max_side: largest allowed side in pixels (>= 1).

    Returns:
        (H', W', C) float32, aspect ratio kept (sides rounded, at least 1).
    """
    h, w = img.shape[:2]
    if max(h, w) <= max_side:
        return np.array(img, dtype=np.float32, copy=True)
    scale = max_side / max(h, w)
    shape = (max(1, min(max_side, round(h * scale))), max(1, min(max_side, round(w * scale))))
    out = resize_local_mean(np.asarray(img, dtype=np.float32), shape, channel_axis=-1, preserve_range=True)
    return np.asarray(out, dtype=np.float32)

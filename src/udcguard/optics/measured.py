"""Measured PSFs (DISCNet's format: .npy float (H, W, 3)) and their affine variants.

DISCNet (Feng et al., CVPR 2021, arXiv 2104.09556) measured one ZTE Axon 20 PSF and made
eight more by affine warps (rotations within +-12 degrees); :func:`sample_variants` does the
same for a measured PSF. Simulated PSFs get their variants in the optics instead
(``simulate_psf(rotation_deg=, shift_px=, scale=)``): their central lobe is about one pixel
wide, too undersampled to warp as an image.

Warps interpolate bilinearly by default: the weights are non-negative, so a warped PSF has
no negative lobes and no ringing around a sharp peak (a cubic spline overshoots there and,
once clipped, leaves a checkerboard). The price is a slight blur of sub-pixel detail.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi

from udcguard.errors import PSFError


def validate_psf(arr: np.ndarray, source: str) -> np.ndarray:
    """Check a PSF array and return it as float64.

    Args:
        arr: candidate PSF, (H, W, 3), H, W >= 3, finite, non-negative, every channel sum > 0.
        source: where it came from (a path or a name), used in the error message.

    Returns:
        (H, W, 3) float64 copy.

    Raises:
        PSFError: ``"<source>: <problem>"`` on one line.
    """
    a = np.asarray(arr)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise PSFError(f"{source}: expected a numeric array, got dtype {a.dtype}")
    if a.ndim != 3 or a.shape[2] != 3:
        raise PSFError(f"{source}: expected shape (H, W, 3), got {a.shape}")
    if a.shape[0] < 3 or a.shape[1] < 3:
        raise PSFError(f"{source}: PSF must be at least 3 x 3, got {a.shape[0]} x {a.shape[1]}")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise PSFError(f"{source}: contains NaN or infinite values")
    if a.min() < 0.0:
        raise PSFError(f"{source}: contains negative values (min {a.min():g})")
    sums = a.sum(axis=(0, 1))  # (3,)
    if np.any(sums <= 0.0):
        bad = ", ".join("RGB"[c] for c in np.flatnonzero(sums <= 0.0))
        raise PSFError(f"{source}: channel {bad} sums to zero")
    return a


def load_psf_npy(path: str | Path) -> np.ndarray:
    """Read and validate a PSF saved with ``np.save`` (no pickles).

    Returns:
        (H, W, 3) float64.

    Raises:
        PSFError: ``"<path>: ..."`` if missing, unreadable or invalid.
    """
    path = Path(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise PSFError(f"{path}: file not found") from None
    except (ValueError, OSError, EOFError) as err:
        raise PSFError(f"{path}: not a readable .npy array ({type(err).__name__})") from None
    if not isinstance(arr, np.ndarray):  # e.g. an .npz archive
        arr.close()
        raise PSFError(f"{path}: expected a single .npy array, got an .npz archive")
    return validate_psf(arr, str(path))


def _normalise(psf: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> float32 with each channel summing to 1."""
    return (psf / psf.sum(axis=(0, 1), keepdims=True)).astype(np.float32)


def _crop_or_pad(psf: np.ndarray, k: int) -> np.ndarray:
    """(H, W, C) -> (K, K, C), array centre (H // 2, W // 2) -> (K // 2, K // 2)."""
    out = np.zeros((k, k, psf.shape[2]), dtype=psf.dtype)
    src, dst = [], []
    for size in psf.shape[:2]:
        start = size // 2 - k // 2  # source index of output row 0
        lo, hi = max(start, 0), min(start + k, size)
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[dst[0], dst[1]] = psf[src[0], src[1]]
    return out


def fit_kernel(psf: np.ndarray, kernel_size: int, mode: str = "crop") -> np.ndarray:
    """Fit a PSF to a K x K kernel.

    ``crop``: centre-crop (or zero-pad) about the array centre (H // 2, W // 2), which goes to
    (K // 2, K // 2), as DISCNet does; the PSF's peak is not searched for.
    ``resize``: isotropic zoom by K / max(H, W) with ``scipy.ndimage.zoom`` (linear, pixel
    areas aligned; a box prefilter of width 1 / zoom when shrinking, so a narrow peak keeps its
    energy), then centre crop/pad to K x K.

    Returns:
        (K, K, 3) float32, each channel summing to 1.
    """
    a = validate_psf(psf, "psf")
    k = int(kernel_size)
    if k < 1 or k % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    if mode == "resize":
        z = k / max(a.shape[:2])
        if z < 1.0:
            width = max(round(1.0 / z), 1)
            a = ndi.uniform_filter(a, size=(width, width, 1), mode="constant")
        a = ndi.zoom(a, (z, z, 1.0), order=1, mode="grid-constant", grid_mode=True)
        a = np.clip(a, 0.0, None)
    elif mode != "crop":
        raise ValueError(f"mode must be 'crop' or 'resize', got {mode!r}")
    out = _crop_or_pad(a, k)  # (K, K, 3)
    if np.any(out.sum(axis=(0, 1)) <= 0.0):
        raise PSFError(f"psf: no energy left in the central {k} x {k} window")
    return _normalise(out)


@dataclass(frozen=True)
class AffineParams:
    """One affine warp: rotation (degrees, counter-clockwise as displayed with row 0 on top,
    like ``np.rot90``), shift (rows, cols) in pixels (positive = down, right), scale."""

    angle_deg: float = 0.0
    shift_px: tuple[float, float] = (0.0, 0.0)
    scale: float = 1.0

    def as_dict(self) -> dict[str, float | list[float]]:
        """JSON-serialisable parameters."""
        return {"angle_deg": self.angle_deg, "shift_px": list(self.shift_px), "scale": self.scale}


@dataclass(frozen=True)
class Variant:
    """An affine variant of a PSF and the parameters that made it."""

    psf: np.ndarray  # (H, W, 3) float32
    params: AffineParams


def affine_variant(
    psf: np.ndarray,
    *,
    angle_deg: float,
    shift_px: tuple[float, float] = (0.0, 0.0),
    scale: float = 1.0,
    order: int = 1,
) -> np.ndarray:
    """Rotate about the array centre ((H - 1) / 2, (W - 1) / 2), scale, then shift a PSF.

    Output pixel o samples the input at c + A^-1 (o - c - shift) with A = scale * R(angle),
    via ``scipy.ndimage.affine_transform`` (spline ``order``, zeros outside), and each
    channel is renormalised to sum 1. ``order=1`` (bilinear, the default) is a convex
    combination of input pixels: non-negative, no ringing. ``order=3`` is sharper on smooth,
    well-sampled PSFs but overshoots around a narrow peak; its negative lobes are clipped.

    Args:
        psf: (H, W, 3) PSF.
        angle_deg: counter-clockwise rotation as displayed (90 equals ``np.rot90``).
        shift_px: (rows, cols) translation in pixels.
        scale: isotropic magnification (> 0).
        order: spline order, 1 (bilinear, default) or 3 (cubic).

    Returns:
        (H, W, 3) float32, each channel summing to 1.
    """
    a = validate_psf(psf, "psf")
    if not scale > 0.0:
        raise ValueError(f"scale must be positive, got {scale}")
    th = math.radians(angle_deg)
    inv = np.array([[math.cos(th), math.sin(th)], [-math.sin(th), math.cos(th)]]) / scale  # out -> in
    c = (np.array(a.shape[:2], dtype=np.float64) - 1.0) / 2.0  # (2,)
    offset = c - inv @ (c + np.asarray(shift_px, dtype=np.float64))
    out = np.empty_like(a)
    for ch in range(a.shape[2]):
        out[..., ch] = ndi.affine_transform(a[..., ch], inv, offset=offset, order=order, mode="constant", cval=0.0)
    out = np.clip(out, 0.0, None)
    if np.any(out.sum(axis=(0, 1)) <= 0.0):
        raise PSFError("psf: affine warp moved all energy out of the array")
    return _normalise(out)


def sample_affine_params(
    count: int,
    rng: np.random.Generator,
    *,
    max_rotation_deg: float = 12.0,
    max_shift_px: float = 1.0,
    max_scale: float = 0.03,
) -> list[AffineParams]:
    """Draw ``count`` warps: angle ~ U[-max_rotation_deg, max_rotation_deg], each shift
    component ~ U[-max_shift_px, max_shift_px], scale ~ 1 + U[-max_scale, max_scale]."""
    out = []
    for _ in range(count):
        angle = float(rng.uniform(-max_rotation_deg, max_rotation_deg))
        dy, dx = (float(v) for v in rng.uniform(-max_shift_px, max_shift_px, size=2))
        scale = 1.0 + float(rng.uniform(-max_scale, max_scale))
        out.append(AffineParams(angle_deg=angle, shift_px=(dy, dx), scale=scale))
    return out


def sample_variants(
    psf: np.ndarray,
    count: int,
    rng: np.random.Generator,
    *,
    max_rotation_deg: float = 12.0,
    max_shift_px: float = 1.0,
    max_scale: float = 0.03,
    order: int = 1,
) -> list[Variant]:
    """``count`` random affine variants of ``psf`` (see :func:`sample_affine_params`), warped
    with :func:`affine_variant` (spline ``order``, bilinear by default).

    Returns:
        list of :class:`Variant` (psf (H, W, 3) float32 normalised per channel, params).
    """
    params = sample_affine_params(
        count, rng, max_rotation_deg=max_rotation_deg, max_shift_px=max_shift_px, max_scale=max_scale
    )
    return [
        Variant(affine_variant(psf, angle_deg=p.angle_deg, shift_px=p.shift_px, scale=p.scale, order=order), p)
        for p in params
    ]

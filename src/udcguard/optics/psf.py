"""Fourier-optics PSF of a display in front of a camera lens.

Pupil field u1 = circ(D) * M(x, y), M the display mask tiled from a unit cell
(:mod:`udcguard.optics.layouts`). In the Fraunhofer (focal-plane) approximation the sensor
intensity is |FFT(u1)|^2 with sample spacing delta2 = lambda f / (N delta1) for N pupil
samples of spacing delta1 (Goodman, "Introduction to Fourier Optics", ch. 4-5; Zhou et al.,
"Image Restoration for Under-Display Camera", CVPR 2021, arXiv 2003.04857). N is chosen per
wavelength so that every wavelength lands on the same sensor grid; see udc-physics.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.fft

from udcguard.errors import PSFError
from udcguard.optics.layouts import tile_mask


@dataclass(frozen=True)
class Optics:
    """The camera behind the display (same names and defaults as ``config.OpticsParams``).

    Attributes:
        focal_length_mm: lens focal length f.
        aperture_mm: pupil diameter D.
        pupil_sample_um: display-mask sample spacing delta1.
        pixel_pitch_um: sensor pixel pitch.
        oversample: fine far-field samples per sensor pixel (per axis); odd keeps the optical
            axis on the centre of the centre pixel.
    """

    focal_length_mm: float = 4.67
    aperture_mm: float = 2.0
    pupil_sample_um: float = 8.0
    pixel_pitch_um: float = 2.0
    oversample: int = 3

    @property
    def fine_spacing_um(self) -> float:
        """Target far-field sample spacing delta2 = pixel_pitch_um / oversample."""
        return self.pixel_pitch_um / self.oversample


def first_dark_ring_um(wavelength_nm: float, optics: Optics) -> float:
    """Radius of the Airy pattern's first dark ring on the sensor, 1.22 lambda f / D (um)."""
    return 1.22 * (wavelength_nm * 1e-3) * (optics.focal_length_mm * 1e3) / (optics.aperture_mm * 1e3)


def pupil_amplitude(
    cell: np.ndarray,
    optics: Optics,
    *,
    transmission: float,
    randomize: bool = False,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Real pupil amplitude: circ(D) times the display mask tiled from ``cell``.

    Args:
        cell: (h, w) openness unit cell in [0, 1], sampled at ``optics.pupil_sample_um``.
        optics: camera parameters.
        transmission: amplitude transmission t of the cell's opaque parts, in [0, 1].
        randomize: random 90-degree rotation / flip per tiled cell (square cells only).
        rng: generator for ``randomize``.

    Returns:
        (M, M) float64 amplitude, M = 2 floor(D / (2 delta1)) + 1 (odd, covering D), the
        optical axis at sample (M // 2, M // 2).
    """
    radius = optics.aperture_mm * 1e3 / 2.0 / optics.pupil_sample_um  # samples
    m = 2 * math.floor(radius) + 1
    r = np.arange(m) - m // 2  # (M,)
    circ = (r[:, None] ** 2 + r[None, :] ** 2) <= radius**2  # (M, M)
    mask = tile_mask(cell, m, transmission=transmission, randomize=randomize, rng=rng)  # (M, M)
    return np.where(circ, mask, 0.0)


def fft_size(wavelength_nm: float, optics: Optics) -> int:
    """Odd FFT size N(lambda) nearest to lambda f / (delta1 delta2).

    N is odd so that the far-field grid is symmetric about the optical axis (the zero
    frequency, sample N // 2 after fftshift).
    """
    exact = (wavelength_nm * 1e-3) * (optics.focal_length_mm * 1e3) / (
        optics.pupil_sample_um * optics.fine_spacing_um
    )
    return 2 * round((exact - 1.0) / 2.0) + 1


def psf_fine(pupil: np.ndarray, wavelength_nm: float, optics: Optics) -> tuple[np.ndarray, float]:
    """Far-field intensity of one wavelength on the fine sensor grid.

    Args:
        pupil: (M, M) real amplitude from :func:`pupil_amplitude`.
        wavelength_nm: wavelength lambda.
        optics: camera parameters; fix delta2 = pixel_pitch_um / oversample.

    Returns:
        (intensity, spacing_um): intensity (N, N) float64 summing to 1, the optical axis at
        (N // 2, N // 2); spacing_um = lambda f / (N delta1), the actual sample spacing
        (within 1 / N of delta2 since N is rounded to an odd integer).

    Raises:
        ValueError: N < M, i.e. delta2 exceeds lambda f / D and the far field would alias.
    """
    if pupil.ndim != 2 or pupil.shape[0] != pupil.shape[1]:
        raise ValueError(f"pupil must be a square 2-D array, got shape {pupil.shape}")
    m = pupil.shape[0]
    n = fft_size(wavelength_nm, optics)
    if n < m:
        limit = (wavelength_nm * 1e-3) * optics.focal_length_mm / optics.aperture_mm  # lambda f / D, um
        raise ValueError(
            f"far field aliases at {wavelength_nm:g} nm: FFT size N = {n} < pupil size M = {m}; "
            f"the fine spacing pixel_pitch_um / oversample = {optics.fine_spacing_um:.3g} um must not "
            f"exceed lambda f / D = {limit:.3g} um: raise oversample (or focal_length_mm, or lower "
            f"aperture_mm)"
        )
    field = scipy.fft.fft2(pupil, s=(n, n), workers=-1)  # (N, N); pupil position = phase only
    intensity = scipy.fft.fftshift(field.real**2 + field.imag**2)  # (N, N), axis at N // 2
    total = intensity.sum()
    if not total > 0.0:
        raise PSFError("pupil transmits no light (all-zero amplitude)")
    spacing = (wavelength_nm * 1e-3) * (optics.focal_length_mm * 1e3) / (n * optics.pupil_sample_um)
    return intensity / total, spacing


def _centre_window(img: np.ndarray, size: int) -> np.ndarray:
    """(size, size) window of a square image around its centre N // 2, zero outside it."""
    n = img.shape[0]
    start = n // 2 - size // 2
    out = np.zeros((size, size))
    lo, hi = max(start, 0), min(start + size, n)
    out[lo - start : hi - start, lo - start : hi - start] = img[lo:hi, lo:hi]
    return out


def simulate_psf(
    cell: np.ndarray,
    optics: Optics,
    *,
    wavelengths_nm: Sequence[Sequence[float]],
    kernel_size: int,
    transmission: float,
    randomize: bool = False,
    seed: int = 0,
) -> np.ndarray:
    """RGB sensor PSF of a display layout.

    Per sub-wavelength: :func:`psf_fine` (energy 1 over the whole far field), a centred
    window of K * oversample fine samples (zero where the simulated field, which spans
    lambda f / delta1, is smaller), sum-binned oversample x oversample into sensor pixels;
    sub-wavelengths are averaged within a channel, and each channel is normalised to sum 1
    over the K x K kernel.

    With odd ``oversample`` the optical axis is the centre of pixel (K // 2, K // 2). With
    even ``oversample`` it lies half a fine sample (pixel_pitch / (2 oversample)) below and
    right of that centre.

    Args:
        cell: (h, w) openness unit cell.
        optics: camera parameters.
        wavelengths_nm: 3 channels (R, G, B), each a non-empty list of sub-wavelengths.
        kernel_size: K, odd.
        transmission: amplitude transmission t of opaque parts.
        randomize: random 90-degree rotation / flip per cell; one mask for all wavelengths.
        seed: seed of the rotations (ignored without ``randomize``).

    Returns:
        (K, K, 3) float32, each channel non-negative and summing to 1.
    """
    k = int(kernel_size)
    if k < 1 or k % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    if len(wavelengths_nm) != 3 or any(len(ch) == 0 for ch in wavelengths_nm):
        raise ValueError("wavelengths_nm needs 3 channels, each with at least one wavelength")
    os_ = int(optics.oversample)
    rng = np.random.default_rng(seed)
    pupil = pupil_amplitude(cell, optics, transmission=transmission, randomize=randomize, rng=rng)  # (M, M)
    out = np.zeros((k, k, 3))
    for c, waves in enumerate(wavelengths_nm):
        for lam in waves:
            fine, _ = psf_fine(pupil, float(lam), optics)  # (N, N)
            win = _centre_window(fine, k * os_)  # (K os, K os)
            out[..., c] += win.reshape(k, os_, k, os_).sum(axis=(1, 3)) / len(waves)  # (K, K)
    sums = out.sum(axis=(0, 1))  # (3,)
    if np.any(sums <= 0.0):
        raise PSFError("simulated PSF has no energy inside the kernel; enlarge kernel_size")
    return (out / sums).astype(np.float32)

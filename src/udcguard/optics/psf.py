"""Fourier-optics PSF of a display in front of a camera lens.

Pupil field u1 = circ(D) * M(x, y), M the display mask tiled from a unit cell
(:mod:`udcguard.optics.layouts`). In the Fraunhofer (focal-plane) approximation the sensor
intensity is |FFT(u1)|^2 with sample spacing delta2 = lambda f / (N delta1) for N pupil
samples of spacing delta1 (Goodman, "Introduction to Fourier Optics", ch. 4-5; Zhou et al.,
"Image Restoration for Under-Display Camera", CVPR 2021, arXiv 2003.04857). N is chosen per
wavelength so that every wavelength lands on the same sensor grid; see udc-physics.md.

Variants of a simulated PSF are made in the optics, not by warping the undersampled image:
a rotation turns the display mask in the pupil (:func:`pupil_amplitude`), a scale s multiplies
f (the PSF magnifies by s on the fixed sensor grid) and a shift is a tilt, a linear phase ramp
on the pupil. :func:`psf_window` evaluates the Fraunhofer sum at those far-field positions by
a chirp-z transform (Rabiner, Schafer and Rader, IEEE Trans. Audio Electroacoust. 17, 1969).
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


ROTATION_SUBSAMPLES = 3  # per axis: a rotated mask sample averages 3 x 3 nearest look-ups


def _rotated(mask: np.ndarray, rotation_deg: float) -> np.ndarray:
    """Rotate a square (M, M) mask about its centre sample (M // 2, M // 2).

    Counter-clockwise as displayed (90 degrees equals ``np.rot90``). Each output sample averages
    3 x 3 nearest look-ups at inverse-rotated sub-sample points: the area coverage of the
    rotated raster of delta1 squares, without whole-sample staircases. Look-ups outside the
    array clamp to its edge, which circ(D) hides: a rotation maps the pupil disc onto itself.
    """
    m = mask.shape[0]
    th = math.radians(rotation_deg)
    cos, sin = math.cos(th), math.sin(th)
    sub = (np.arange(ROTATION_SUBSAMPLES) + 0.5) / ROTATION_SUBSAMPLES - 0.5  # (S,) offsets, samples
    pos = ((np.arange(m) - m // 2)[:, None] + sub[None, :]).ravel()  # (M S,) output coordinates
    y, x = pos[:, None], pos[None, :]  # (M S, 1), (1, M S)
    iy = np.clip(np.rint(cos * y + sin * x) + m // 2, 0, m - 1).astype(np.intp)  # (M S, M S)
    ix = np.clip(np.rint(cos * x - sin * y) + m // 2, 0, m - 1).astype(np.intp)
    sampled = mask[iy, ix]  # (M S, M S)
    return sampled.reshape(m, ROTATION_SUBSAMPLES, m, ROTATION_SUBSAMPLES).mean(axis=(1, 3))


def pupil_amplitude(
    cell: np.ndarray,
    optics: Optics,
    *,
    transmission: float,
    randomize: bool = False,
    rng: np.random.Generator | None = None,
    rotation_deg: float = 0.0,
) -> np.ndarray:
    """Real pupil amplitude: circ(D) times the display mask tiled from ``cell``.

    Args:
        cell: (h, w) openness unit cell in [0, 1], sampled at ``optics.pupil_sample_um``.
        optics: camera parameters.
        transmission: amplitude transmission t of the cell's opaque parts, in [0, 1].
        randomize: random 90-degree rotation / flip per tiled cell (square cells only).
        rng: generator for ``randomize``.
        rotation_deg: turn the display (not the aperture) about the optical axis,
            counter-clockwise as displayed (:func:`_rotated`); the same ``rng`` cells, rotated.

    Returns:
        (M, M) float64 amplitude, M = 2 floor(D / (2 delta1)) + 1 (odd, covering D), the
        optical axis at sample (M // 2, M // 2).
    """
    radius = optics.aperture_mm * 1e3 / 2.0 / optics.pupil_sample_um  # samples
    m = 2 * math.floor(radius) + 1
    r = np.arange(m) - m // 2  # (M,)
    circ = (r[:, None] ** 2 + r[None, :] ** 2) <= radius**2  # (M, M)
    if not math.isfinite(rotation_deg):
        raise ValueError(f"rotation_deg must be finite, got {rotation_deg}")
    mask = tile_mask(cell, m, transmission=transmission, randomize=randomize, rng=rng)  # (M, M)
    if rotation_deg % 360.0 != 0.0:
        mask = _rotated(mask, rotation_deg)
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


def _chirp_dft(x: np.ndarray, k0: float, size: int, n_eff: float) -> np.ndarray:
    """(..., M) -> (..., size) complex: X[..., k] = sum_p x[..., p] exp(-2 pi i p (k0 + k) / n_eff).

    Bluestein's chirp-z: p k = (p^2 + k^2 - (k - p)^2) / 2 turns the sum into one FFT
    convolution, O((M + size) log), at any real k0 and n_eff.
    """
    m = x.shape[-1]
    p, k = np.arange(m), np.arange(size)
    j = np.arange(-(m - 1), size)  # (M + size - 1,) every k - p
    length = scipy.fft.next_fast_len(m + size - 1)
    a = x * np.exp((-1j * np.pi / n_eff) * (2.0 * k0 * p + p * p))  # (..., M)
    b = np.exp((1j * np.pi / n_eff) * (j * j))  # (M + size - 1,)
    conv = scipy.fft.ifft(scipy.fft.fft(a, length, axis=-1) * scipy.fft.fft(b, length), axis=-1)
    return conv[..., m - 1 : m - 1 + size] * np.exp((-1j * np.pi / n_eff) * (k * k))


def psf_window(
    pupil: np.ndarray,
    wavelength_nm: float,
    optics: Optics,
    size: int,
    *,
    shift_fine: tuple[float, float] = (0.0, 0.0),
    scale: float = 1.0,
) -> np.ndarray:
    """Far-field intensity on a centred (size, size) fine window, shifted and magnified.

    The focal length becomes ``scale * f`` on the fine grid of :func:`psf_fine` (spacing
    lambda f / (N delta1), N = :func:`fft_size`): frequency steps 1 / (N' delta1), N' = scale N,
    not rounded. A shift (dy, dx) fine samples is the pupil phase ramp
    exp(2 pi i (dy v + dx u) / N'). The separable sum is done per axis by :func:`_chirp_dft`;
    for scale 1 and no shift it equals the window of :func:`psf_fine` to float precision.

    Args:
        pupil: (M, M) real amplitude, optical axis at (M // 2, M // 2).
        wavelength_nm: wavelength lambda.
        optics: camera parameters.
        size: window side in fine samples; window sample size // 2 is the unshifted axis.
        shift_fine: (rows, cols) shift in fine samples, positive = down, right.
        scale: focal-length factor s > 0 (the PSF magnifies by s).

    Returns:
        (size, size) float64 intensity; the whole far field (N' x N') sums to 1. Zero beyond
        (N' - 1) / 2 samples from the shifted axis, where the simulated field ends.

    Raises:
        ValueError: N' < M (the far field would alias; see :func:`psf_fine`).
    """
    m = pupil.shape[0]
    n_eff = scale * fft_size(wavelength_nm, optics)
    if n_eff < m:
        raise ValueError(
            f"far field aliases at {wavelength_nm:g} nm and scale {scale:g}: N' = {n_eff:.1f} < pupil "
            f"size M = {m}; raise oversample (or focal_length_mm, or lower aperture_mm)"
        )
    total = n_eff**2 * float(np.sum(pupil**2))  # Parseval over one N' x N' period
    if not total > 0.0:
        raise PSFError("pupil transmits no light (all-zero amplitude)")
    k = np.arange(size) - size // 2  # (size,) fine-sample offsets from the unshifted axis
    dy, dx = (float(v) for v in shift_fine)
    rows = _chirp_dft(pupil, -(size // 2) - dx, size, n_eff)  # (M, size): v, l
    field = _chirp_dft(rows.T, -(size // 2) - dy, size, n_eff).T  # (size, size): k, l
    half = (n_eff - 1.0) / 2.0
    inside = (np.abs(k - dy) <= half)[:, None] & (np.abs(k - dx) <= half)[None, :]  # (size, size)
    return np.where(inside, field.real**2 + field.imag**2, 0.0) / total


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
    rotation_deg: float = 0.0,
    shift_px: tuple[float, float] = (0.0, 0.0),
    scale: float = 1.0,
) -> np.ndarray:
    """RGB sensor PSF of a display layout, optionally an optical variant of it.

    Per sub-wavelength: :func:`psf_fine` (energy 1 over the whole far field), a centred
    window of K * oversample fine samples (zero where the simulated field, which spans
    lambda f / delta1, is smaller), sum-binned oversample x oversample into sensor pixels;
    sub-wavelengths are averaged within a channel, and each channel is normalised to sum 1
    over the K x K kernel.

    With odd ``oversample`` the optical axis is the centre of pixel (K // 2, K // 2). With
    even ``oversample`` it lies half a fine sample (pixel_pitch / (2 oversample)) below and
    right of that centre.

    Variants: ``rotation_deg`` turns the display in the pupil (:func:`pupil_amplitude`),
    ``scale`` multiplies f and ``shift_px`` tilts the wavefront (:func:`psf_window`). The
    defaults take the FFT path and reproduce the plain PSF bit for bit.

    Args:
        cell: (h, w) openness unit cell.
        optics: camera parameters.
        wavelengths_nm: 3 channels (R, G, B), each a non-empty list of sub-wavelengths.
        kernel_size: K, odd.
        transmission: amplitude transmission t of opaque parts.
        randomize: random 90-degree rotation / flip per cell; one mask for all wavelengths.
        seed: seed of the rotations (ignored without ``randomize``).
        rotation_deg: display rotation, degrees counter-clockwise as displayed.
        shift_px: (rows, cols) PSF shift in sensor pixels, positive = down, right.
        scale: focal-length factor (> 0); the PSF magnifies by ``scale``.

    Returns:
        (K, K, 3) float32, each channel non-negative and summing to 1.
    """
    k = int(kernel_size)
    if k < 1 or k % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    if len(wavelengths_nm) != 3 or any(len(ch) == 0 for ch in wavelengths_nm):
        raise ValueError("wavelengths_nm needs 3 channels, each with at least one wavelength")
    dy, dx = (float(v) for v in shift_px)
    if not (math.isfinite(dy) and math.isfinite(dx)):
        raise ValueError(f"shift_px must be finite, got {shift_px}")
    if not (math.isfinite(scale) and scale > 0.0):
        raise ValueError(f"scale must be positive and finite, got {scale}")
    os_ = int(optics.oversample)
    rng = np.random.default_rng(seed)
    pupil = pupil_amplitude(
        cell, optics, transmission=transmission, randomize=randomize, rng=rng, rotation_deg=rotation_deg
    )  # (M, M)
    plain = scale == 1.0 and dy == 0.0 and dx == 0.0
    out = np.zeros((k, k, 3))
    for c, waves in enumerate(wavelengths_nm):
        for lam in waves:
            if plain:
                fine, _ = psf_fine(pupil, float(lam), optics)  # (N, N)
                win = _centre_window(fine, k * os_)  # (K os, K os)
            else:
                win = psf_window(pupil, float(lam), optics, k * os_, shift_fine=(dy * os_, dx * os_), scale=scale)
            out[..., c] += win.reshape(k, os_, k, os_).sum(axis=(1, 3)) / len(waves)  # (K, K)
    sums = out.sum(axis=(0, 1))  # (3,)
    if np.any(sums <= 0.0):
        raise PSFError("simulated PSF has no energy inside the kernel; enlarge kernel_size")
    return (out / sums).astype(np.float32)

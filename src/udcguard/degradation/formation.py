"""UDC image formation (DISCNet): y = C(x * k + n).

x is a linear HDR scene (H, W, 3), k a PSF (K, K, 3) normalised per channel, * a per-channel
linear convolution done by FFT over a zero-padded canvas, C a clip to [0, clip_max]
(500 in DISCNet) and n optional Poisson-Gaussian sensor noise. Pure numpy.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft


def _next_fast(n: int) -> int:
    return sfft.next_fast_len(n, real=True)


class PSFKernel:
    """A PSF with its zero-padded spectra cached per FFT size.

    Synthesis convolves thousands of crops with a handful of PSFs on canvases of one or
    a few sizes; caching the kernel's rFFT saves one of the three transforms per pair.
    The cache lives in the instance (no global state).
    """

    def __init__(self, psf: np.ndarray) -> None:
        if psf.ndim != 3:
            raise ValueError(f"psf must be (K, K', C), got {psf.shape}")
        self.psf = np.ascontiguousarray(np.moveaxis(psf.astype(np.float64), -1, 0))  # (C, K, K')
        self.shape = psf.shape
        self._spectra: dict[tuple[int, int], np.ndarray] = {}

    def spectrum(self, fh: int, fw: int) -> np.ndarray:
        """rFFT of the kernel zero-padded to (fh, fw): (C, fh, fw // 2 + 1) complex."""
        key = (fh, fw)
        if key not in self._spectra:
            self._spectra[key] = sfft.rfft2(self.psf, s=key, workers=1)
        return self._spectra[key]


def convolve_psf(scene: np.ndarray, psf: np.ndarray | PSFKernel, *, mode: str = "same") -> np.ndarray:
    """Per-channel linear convolution of ``scene`` with ``psf`` via real FFTs.

    Args:
        scene: (H, W, 3) float linear radiance.
        psf: (K, K', 3) float, the kernel (its centre is at (K // 2, K' // 2)), or a
            :class:`PSFKernel` wrapping one (its spectra are reused).
        mode: ``"same"`` keeps (H, W) aligned with the input (zero padding outside, as
            DISCNet's pad-convolve-crop); ``"valid"`` keeps only the pixels whose whole
            PSF support lies inside the scene: (H - K + 1, W - K' + 1).

    Returns:
        float64 array; a delta PSF gives back the scene (to FFT round-off).
    """
    kernel = psf if isinstance(psf, PSFKernel) else PSFKernel(psf)
    if scene.ndim != 3 or scene.shape[2] != kernel.shape[2]:
        raise ValueError(f"scene {scene.shape} and psf {kernel.shape} must be (H, W, C) with equal C")
    if mode not in ("same", "valid"):
        raise ValueError(f"mode must be 'same' or 'valid', got {mode!r}")
    h, w, _ = scene.shape
    kh, kw, _ = kernel.shape
    fh, fw = _next_fast(h + kh - 1), _next_fast(w + kw - 1)
    chans = np.ascontiguousarray(np.moveaxis(scene.astype(np.float64), -1, 0))  # (C, H, W): FFT axes contiguous
    fs = sfft.rfft2(chans, s=(fh, fw), workers=1)
    full = sfft.irfft2(fs * kernel.spectrum(fh, fw), s=(fh, fw), workers=1)  # (C, fh, fw)
    if mode == "same":
        out = full[:, kh // 2 : kh // 2 + h, kw // 2 : kw // 2 + w]
    else:
        out = full[:, kh - 1 : h, kw - 1 : w]
    return np.moveaxis(out, 0, -1)  # (H', W', C)


def add_poisson_gaussian(
    x: np.ndarray, rng: np.random.Generator, *, log_a_range: tuple[float, float] = (-9.21, -4.42)
) -> tuple[np.ndarray, dict[str, float]]:
    """Heteroscedastic sensor noise v = a Poisson(x / a) + N(0, b^2) (Brooks et al. 2019).

    log a ~ U(log_a_range); log b^2 = 2.18 log a + 1.20 + N(0, 0.26). ``x`` is radiance in
    units where 1 is diffuse white (scenes are exposed so; highlights go above 1).
    """
    log_a = rng.uniform(*log_a_range)
    log_b2 = 2.18 * log_a + 1.20 + rng.normal(0.0, 0.26)
    a, b = float(np.exp(log_a)), float(np.exp(0.5 * log_b2))
    shot = a * rng.poisson(np.clip(x, 0.0, None) / a)
    return shot + rng.normal(0.0, b, size=x.shape), {"a": a, "b": b}


def form_udc(
    scene: np.ndarray,
    psf: np.ndarray | PSFKernel,
    *,
    clip_max: float = 500.0,
    noise_rng: np.random.Generator | None = None,
    log_a_range: tuple[float, float] = (-9.21, -4.42),
) -> tuple[np.ndarray, dict[str, float]]:
    """Degrade a linear HDR scene: convolve, (noise), clip to [0, clip_max].

    Returns the degraded (H, W, 3) float32 image and the noise parameters ({} without
    noise). Noise is added before the clip, in radiance units (1 = diffuse white).
    """
    y = convolve_psf(scene, psf, mode="same")
    info: dict[str, float] = {}
    if noise_rng is not None:
        y, info = add_poisson_gaussian(y, noise_rng, log_a_range=log_a_range)
    return np.clip(y, 0.0, clip_max).astype(np.float32), info

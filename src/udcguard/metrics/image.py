"""Full-reference image metrics in torch: batched, differentiable, per image.

Inputs are NCHW float32/float64 tensors; nothing is clamped (the caller clamps restored
outputs to [0, 1] before scoring). Both metrics return one value per image, shape (B,).

- :func:`psnr`: 10 log10(data_range^2 / MSE) over (C, H, W), in dB; identical images give
  +inf (summaries cap it, see :mod:`udcguard.metrics.summary`).
- :func:`ssim`: Wang et al. 2004, the variant of ``skimage.metrics.structural_similarity(a,
  b, channel_axis=-1, data_range=..., gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False)``: 11x11 Gaussian window (sigma 1.5, truncated at 3.5
  sigma), K1 = 0.01, K2 = 0.03, population covariances, the SSIM map cropped by 5 pixels
  on each side (skimage's border handling: what remains is exactly the "valid" region of
  the window), averaged over pixels and channels.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: skimage's Gaussian SSIM window: sigma 1.5, truncate 3.5 -> radius 5, 11 taps.
SSIM_SIGMA = 1.5
SSIM_RADIUS = int(3.5 * SSIM_SIGMA + 0.5)
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _check_pair(x: Tensor, y: Tensor, name: str) -> None:
    if x.shape != y.shape:
        raise ValueError(f"{name}: shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.ndim != 4:
        raise ValueError(f"{name}: expected (B, C, H, W), got {tuple(x.shape)}")
    if not (x.is_floating_point() and y.is_floating_point()):
        raise ValueError(f"{name}: expected float tensors, got {x.dtype} and {y.dtype}")


def psnr(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """PSNR in dB per image: (B, C, H, W) x (B, C, H, W) -> (B,); identical images: +inf."""
    _check_pair(x, y, "psnr")
    mse = (x - y).square().flatten(1).mean(1)  # (B,)
    return 10.0 * torch.log10(data_range**2 / mse)


def _gaussian_taps(dtype: torch.dtype, device: torch.device) -> Tensor:
    """scipy.ndimage's 1-D Gaussian kernel for sigma 1.5, radius 5: (11,), sums to 1."""
    t = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (t / SSIM_SIGMA) ** 2)
    return (g / g.sum()).to(dtype=dtype, device=device)


def _band(n: int, taps: Tensor) -> Tensor:
    """(n - 10, n) matrix whose row i holds the taps at columns i .. i + 10 ("valid" conv)."""
    k = taps.numel()
    m = n - k + 1
    band = taps.new_zeros(m, n)
    rows = torch.arange(m, device=taps.device)
    for j in range(k):
        band[rows, rows + j] = taps[j]
    return band


def _filter_valid(z: Tensor, taps: Tensor) -> Tensor:
    """Separable Gaussian filter, "valid" region only: (..., H, W) -> (..., H-10, W-10).

    Two banded matrix products (G_h @ z @ G_w^T): fast and exact on CPU and GPU alike
    (depthwise conv2d is very slow on CPU, above all in float64).
    """
    h, w = z.shape[-2:]
    return _band(h, taps) @ z @ _band(w, taps).T


def ssim(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """Mean SSIM per image: (B, C, H, W) x (B, C, H, W) -> (B,); H, W >= 11.

    Matches skimage's Gaussian-weighted SSIM (see the module docstring) to ~1e-6 in float64.
    """
    _check_pair(x, y, "ssim")
    _b, c, h, w = x.shape
    win = 2 * SSIM_RADIUS + 1
    if h < win or w < win:
        raise ValueError(f"ssim: images must be at least {win}x{win}, got {h}x{w}")
    taps = _gaussian_taps(x.dtype, x.device)
    stats = _filter_valid(torch.cat([x, y, x * x, y * y, x * y], dim=1), taps)
    ux, uy, uxx, uyy, uxy = stats.split(c, dim=1)  # each (B, C, H-10, W-10)
    vx = uxx - ux * ux
    vy = uyy - uy * uy
    vxy = uxy - ux * uy
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / (
        (ux * ux + uy * uy + c1) * (vx + vy + c2)
    )
    return s.flatten(1).mean(1)


def deviation_psnr(
    adv_output: Tensor, clean_output: Tensor, data_range: float = 1.0
) -> Tensor:
    """PSNR between f(y + delta) and f(y) (design.md, section 4), (B,); alias of psnr."""
    return psnr(adv_output, clean_output, data_range)


__all__ = ["deviation_psnr", "psnr", "ssim"]

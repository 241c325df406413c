"""PCA kernel codes of a PSF bank, as DISCNet conditions on (Feng et al., CVPR 2021,
arXiv 2104.09556, sec. 4: a d = 5 code per PSF from PCA of the flattened kernels)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class KernelCodes:
    """PCA of n flattened PSFs (P = K * K * 3 values each).

    Attributes:
        codes: (n, dim) float32, codes[i] = (psf_i - mean) @ basis.T.
        mean: (P,) float64 mean flattened PSF.
        basis: (dim, P) float64 orthonormal principal directions (zero rows if unused).
        explained_variance_ratio: (dim,) float64 fraction of the total variance per direction.
    """

    codes: np.ndarray
    mean: np.ndarray
    basis: np.ndarray
    explained_variance_ratio: np.ndarray


def kernel_codes(psfs: np.ndarray, dim: int = 5) -> KernelCodes:
    """PCA codes via SVD of the centred, flattened PSFs.

    Centred data of n PSFs has rank at most n - 1, so at most min(n - 1, P) directions carry
    variance; when fewer than ``dim`` do (n - 1 < dim, or identical PSFs), the remaining code
    columns, basis rows and variance ratios are zero. Signs are fixed by making the
    largest-magnitude entry of each basis vector positive (first one on ties), so the result
    is deterministic.

    Args:
        psfs: (n, K, K, 3) PSFs, n >= 1.
        dim: code length d >= 1.

    Returns:
        :class:`KernelCodes`.
    """
    x = np.asarray(psfs, dtype=np.float64)
    if x.ndim != 4 or x.shape[0] < 1:
        raise ValueError(f"psfs must be (n, K, K, 3) with n >= 1, got shape {x.shape}")
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    n = x.shape[0]
    flat = x.reshape(n, -1)  # (n, P)
    mean = flat.mean(axis=0)  # (P,)
    centred = flat - mean  # (n, P)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)  # s (r,), vt (r, P), r = min(n, P)
    tol = s[0] * max(centred.shape) * np.finfo(np.float64).eps if s.size else 0.0
    keep = min(dim, n - 1, int(np.sum(s > tol)))
    basis = np.zeros((dim, flat.shape[1]))  # (dim, P)
    basis[:keep] = vt[:keep]
    idx = np.argmax(np.abs(basis[:keep]), axis=1)  # (keep,)
    signs = np.sign(basis[np.arange(keep), idx])  # (keep,)
    basis[:keep] *= signs[:, None]
    evr = np.zeros(dim)
    total = float(np.sum(s**2))
    if total > 0.0:
        evr[:keep] = s[:keep] ** 2 / total
    codes = (centred @ basis.T).astype(np.float32)  # (n, dim)
    return KernelCodes(codes=codes, mean=mean, basis=basis, explained_variance_ratio=evr)


def project(psf: np.ndarray, kc: KernelCodes) -> np.ndarray:
    """Code of one (K, K, 3) PSF in an existing PCA basis.

    Returns:
        (dim,) float32.
    """
    flat = np.asarray(psf, dtype=np.float64).reshape(-1)  # (P,)
    if flat.shape != kc.mean.shape:
        raise ValueError(f"psf has {flat.size} values, the basis expects {kc.mean.size}")
    return ((flat - kc.mean) @ kc.basis.T).astype(np.float32)

"""PCA kernel codes."""

from __future__ import annotations

import numpy as np
import pytest

from udcguard.optics.codes import kernel_codes, project


def _psfs(n: int, k: int = 9, seed: int = 0) -> np.ndarray:
    p = np.random.default_rng(seed).random((n, k, k, 3))
    return (p / p.sum(axis=(1, 2), keepdims=True)).astype(np.float32)


def test_shapes_and_exact_reconstruction_when_dim_covers_rank() -> None:
    psfs = _psfs(4)
    kc = kernel_codes(psfs, dim=5)
    assert kc.codes.shape == (4, 5) and kc.codes.dtype == np.float32
    assert kc.mean.shape == (9 * 9 * 3,) and kc.basis.shape == (5, 9 * 9 * 3)
    assert kc.explained_variance_ratio.shape == (5,)
    # n - 1 = 3 < 5: the two extra columns are zero
    assert np.all(kc.codes[:, 3:] == 0.0) and np.all(kc.basis[3:] == 0.0)
    assert kc.explained_variance_ratio.sum() == pytest.approx(1.0)
    recon = kc.mean + kc.codes.astype(np.float64) @ kc.basis  # (n, P)
    np.testing.assert_allclose(recon.reshape(psfs.shape), psfs, atol=1e-6)
    np.testing.assert_allclose(kc.basis[:3] @ kc.basis[:3].T, np.eye(3), atol=1e-10)


def test_truncated_pca_orders_variance_and_projects() -> None:
    psfs = _psfs(12)
    kc = kernel_codes(psfs, dim=3)
    evr = kc.explained_variance_ratio
    assert np.all(np.diff(evr) <= 0) and 0 < evr.sum() < 1
    for i in range(12):
        np.testing.assert_allclose(project(psfs[i], kc), kc.codes[i], atol=1e-6)
    recon = kc.mean + kc.codes.astype(np.float64) @ kc.basis
    assert np.abs(recon - psfs.reshape(12, -1)).max() > 1e-4  # 3 components cannot hold 11


def test_identical_psfs_identical_codes_and_determinism() -> None:
    psfs = _psfs(5)
    psfs[3] = psfs[1]
    a, b = kernel_codes(psfs, dim=5), kernel_codes(psfs.copy(), dim=5)
    np.testing.assert_array_equal(a.codes[3], a.codes[1])
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_array_equal(a.basis, b.basis)
    used = np.abs(a.basis).sum(axis=1) > 0
    rows = a.basis[used]
    assert np.all(rows[np.arange(len(rows)), np.argmax(np.abs(rows), axis=1)] > 0)  # sign convention


def test_all_equal_or_single_psf_gives_zero_codes() -> None:
    one = _psfs(1)
    kc = kernel_codes(one, dim=5)
    assert np.all(kc.codes == 0.0) and np.all(kc.basis == 0.0)
    same = np.repeat(one, 3, axis=0)
    kc = kernel_codes(same, dim=2)
    assert np.all(kc.codes == 0.0) and np.all(kc.explained_variance_ratio == 0.0)
    with pytest.raises(ValueError, match="values"):
        project(np.ones((3, 3, 3)), kc)

"""Image formation: FFT convolution against scipy, delta PSF identity, clip, noise, tone map."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import torch

from udcguard.degradation.formation import add_poisson_gaussian, convolve_psf, form_udc
from udcguard.degradation.tonemap import inverse_tonemap, mu_law, to_uint8, tonemap


def _psf(k: int, rng: np.random.Generator) -> np.ndarray:
    p = rng.random((k, k, 3)) ** 4
    return p / p.sum(axis=(0, 1))


def test_delta_psf_gives_back_the_scene() -> None:
    rng = np.random.default_rng(0)
    scene = rng.random((40, 52, 3)) * 500
    delta = np.zeros((15, 15, 3))
    delta[7, 7] = 1.0
    out = convolve_psf(scene, delta)
    np.testing.assert_allclose(out, scene, rtol=0, atol=1e-9)
    lq, _ = form_udc(scene.astype(np.float32), delta)
    np.testing.assert_allclose(lq, scene.astype(np.float32), rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("k", [5, 15, 31])
def test_matches_scipy_fftconvolve(k: int) -> None:
    rng = np.random.default_rng(k)
    scene, psf = rng.random((37, 45, 3)) * 10, _psf(k, rng)
    ours = convolve_psf(scene, psf)
    ref = np.stack([scipy.signal.fftconvolve(scene[..., c], psf[..., c], mode="same") for c in range(3)], -1)
    np.testing.assert_allclose(ours, ref, atol=1e-10)
    valid = convolve_psf(scene, psf, mode="valid")
    ref_v = np.stack([scipy.signal.fftconvolve(scene[..., c], psf[..., c], mode="valid") for c in range(3)], -1)
    np.testing.assert_allclose(valid, ref_v, atol=1e-10)


def test_energy_is_conserved_for_normalised_psf() -> None:
    rng = np.random.default_rng(1)
    scene = np.zeros((64, 64, 3))
    scene[24:40, 24:40] = rng.random((16, 16, 3)) * 100  # object well inside the frame
    out = convolve_psf(scene, _psf(15, rng))
    np.testing.assert_allclose(out.sum(axis=(0, 1)), scene.sum(axis=(0, 1)), rtol=1e-10)


def test_clip_to_range() -> None:
    scene = np.full((20, 20, 3), 800.0, dtype=np.float32)
    lq, _ = form_udc(scene, _psf(5, np.random.default_rng(2)), clip_max=500.0)
    assert lq.dtype == np.float32 and lq.max() == 500.0 and lq.min() >= 0.0


def test_poisson_gaussian_statistics() -> None:
    rng = np.random.default_rng(3)
    x = np.full((400, 400, 3), 0.5)
    v, info = add_poisson_gaussian(x, rng, log_a_range=(np.log(1e-3), np.log(1e-3)))
    assert info["a"] == pytest.approx(1e-3)
    assert v.mean() == pytest.approx(0.5, abs=2e-3)
    assert v.var() == pytest.approx(info["a"] * 0.5 + info["b"] ** 2, rel=0.05)


def test_tonemap_and_inverse() -> None:
    x = np.array([0.0, 0.01, 0.25, 1.0, 500.0])
    y = tonemap(x)
    assert y[2] == pytest.approx(0.5) and y.max() < 1.0
    np.testing.assert_allclose(inverse_tonemap(y), x, rtol=1e-6, atol=1e-12)
    t = torch.tensor(x)
    np.testing.assert_allclose(tonemap(t).numpy(), y)
    np.testing.assert_allclose(inverse_tonemap(tonemap(t)).numpy(), x, rtol=1e-6)
    assert np.isfinite(inverse_tonemap(np.array([1.0, 2.0]))).all()
    np.testing.assert_allclose(mu_law(np.array([0.0, 500.0])), [0.0, 1.0])
    np.testing.assert_allclose(mu_law(torch.tensor([0.0, 500.0])).numpy(), [0.0, 1.0])
    assert to_uint8(np.array([0.0, 0.5, 1.0, 2.0])).tolist() == [0, 128, 255, 255]


def test_psf_kernel_cache_gives_same_result_and_reuses_spectra() -> None:
    from udcguard.degradation.formation import PSFKernel

    rng = np.random.default_rng(5)
    psf = _psf(15, rng)
    kernel = PSFKernel(psf)
    for _ in range(3):
        scene = rng.random((40, 40, 3)) * 50
        np.testing.assert_allclose(convolve_psf(scene, kernel), convolve_psf(scene, psf), atol=1e-12)
    convolve_psf(rng.random((30, 41, 3)), kernel)
    assert len(kernel._spectra) == 2  # one spectrum per canvas size, reused across scenes

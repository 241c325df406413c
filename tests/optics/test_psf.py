"""simulate_psf / psf_fine contracts: energy, dtype, centring, randomisation, errors."""

from __future__ import annotations

import time

import numpy as np
import pytest

from udcguard.optics.layouts import LAYOUTS, unit_cell
from udcguard.optics.psf import Optics, psf_fine, pupil_amplitude, simulate_psf

RGB = ((610.0,), (530.0,), (470.0,))
SMALL_CELL = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0], [0.25, 0.0, 1.0]])


def _cell(name: str) -> np.ndarray:
    return unit_cell(name, cell=SMALL_CELL if name == "custom" else None)


@pytest.mark.parametrize("name", LAYOUTS.names())
@pytest.mark.parametrize("oversample", [3, 2])
def test_energy_dtype_shape(name: str, oversample: int) -> None:
    optics = Optics(oversample=oversample)
    psf = simulate_psf(_cell(name), optics, wavelengths_nm=RGB, kernel_size=33, transmission=0.5)
    assert psf.shape == (33, 33, 3) and psf.dtype == np.float32
    assert psf.min() >= 0.0
    np.testing.assert_allclose(psf.sum(axis=(0, 1)), 1.0, atol=1e-5)


@pytest.mark.parametrize("name", ["open", "toled"])
def test_peak_at_centre_and_symmetric(name: str) -> None:
    psf = simulate_psf(_cell(name), Optics(), wavelengths_nm=RGB, kernel_size=63, transmission=0.5)
    for c in range(3):
        assert np.unravel_index(np.argmax(psf[..., c]), (63, 63)) == (31, 31)
    # a real pupil gives a centro-symmetric far field; odd oversample keeps it on the pixel grid
    np.testing.assert_allclose(psf, psf[::-1, ::-1], atol=1e-6)


def test_open_psf_core_widens_with_wavelength() -> None:
    psf = simulate_psf(_cell("open"), Optics(), wavelengths_nm=RGB, kernel_size=63, transmission=0.0)
    core = psf[31, 31]  # (3,) central-pixel energy falls as the Airy core grows with lambda
    assert core[0] < core[1] < core[2]


def test_fine_grid_spacing_is_wavelength_independent() -> None:
    optics = Optics()
    pupil = pupil_amplitude(_cell("toled"), optics, transmission=0.5)
    assert pupil.shape == (251, 251)  # D / delta1 = 250 -> odd 251
    for lam in (470.0, 530.0, 610.0):
        img, spacing = psf_fine(pupil, lam, optics)
        assert img.shape[0] % 2 == 1
        assert abs(spacing - optics.pixel_pitch_um / optics.oversample) < 2e-3
        assert img.sum() == pytest.approx(1.0)


def test_sub_wavelengths_average() -> None:
    optics, cell = Optics(), _cell("toled")
    kw = {"kernel_size": 31, "transmission": 0.3}
    mixed = simulate_psf(cell, optics, wavelengths_nm=((600.0, 620.0), (530.0,), (470.0,)), **kw)
    a = simulate_psf(cell, optics, wavelengths_nm=((600.0,), (530.0,), (470.0,)), **kw)
    b = simulate_psf(cell, optics, wavelengths_nm=((620.0,), (530.0,), (470.0,)), **kw)
    np.testing.assert_allclose(mixed[..., 0], (a[..., 0] + b[..., 0]) / 2, atol=2e-4)
    np.testing.assert_allclose(mixed[..., 1:], a[..., 1:], atol=1e-7)


def test_randomize_cells_changes_psf_and_is_seeded() -> None:
    optics, cell = Optics(), _cell("poled")
    kw = {"wavelengths_nm": RGB, "kernel_size": 63, "transmission": 0.3}
    plain = simulate_psf(cell, optics, **kw)
    r0 = simulate_psf(cell, optics, randomize=True, seed=0, **kw)
    r0b = simulate_psf(cell, optics, randomize=True, seed=0, **kw)
    r1 = simulate_psf(cell, optics, randomize=True, seed=1, **kw)
    np.testing.assert_array_equal(r0, r0b)
    assert np.abs(r0 - plain).max() > 1e-4
    assert np.abs(r0 - r1).max() > 1e-5
    np.testing.assert_array_equal(plain, simulate_psf(cell, optics, seed=5, **kw))  # seed unused


def test_large_kernel_beyond_simulated_field_is_zero_padded() -> None:
    # default optics simulate lambda f / delta1 = 274 um at 470 nm, i.e. 137 pixels
    psf = simulate_psf(_cell("toled"), Optics(), wavelengths_nm=RGB, kernel_size=171, transmission=0.5)
    np.testing.assert_allclose(psf.sum(axis=(0, 1)), 1.0, atol=1e-5)
    assert np.all(psf[:10, :, 2] == 0.0)  # blue field ends before the kernel border
    assert np.all(psf[:, :10, 2] == 0.0)


def test_errors() -> None:
    cell = _cell("open")
    with pytest.raises(ValueError, match="odd"):
        simulate_psf(cell, Optics(), wavelengths_nm=RGB, kernel_size=32, transmission=0.5)
    with pytest.raises(ValueError, match="3 channels"):
        simulate_psf(cell, Optics(), wavelengths_nm=((610.0,), ()), kernel_size=31, transmission=0.5)
    coarse = Optics(pixel_pitch_um=6.0, oversample=1)  # delta2 = 6 um > lambda f / D = 1.1 um
    with pytest.raises(ValueError, match="oversample"):
        simulate_psf(cell, coarse, wavelengths_nm=RGB, kernel_size=31, transmission=0.5)


def test_speed_default_optics() -> None:
    cell = _cell("poled")
    simulate_psf(cell, Optics(), wavelengths_nm=RGB, kernel_size=63, transmission=0.6)  # warm-up
    t0 = time.perf_counter()
    simulate_psf(cell, Optics(), wavelengths_nm=RGB, kernel_size=63, transmission=0.6, randomize=True)
    assert time.perf_counter() - t0 < 1.0

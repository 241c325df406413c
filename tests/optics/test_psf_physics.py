"""Physics of the Fourier-optics PSF: Airy ring, wavelength scaling, grating orders, eta0."""

from __future__ import annotations

import numpy as np
import pytest

from udcguard.optics.layouts import fill_factor, open_cell, toled_cell
from udcguard.optics.psf import (
    Optics,
    first_dark_ring_um,
    psf_fine,
    pupil_amplitude,
    simulate_psf,
)

# Fine far-field sampling (0.5 um, no binning) so rings and orders are well resolved.
AIRY = Optics(focal_length_mm=10.0, aperture_mm=1.0, pupil_sample_um=8.0, pixel_pitch_um=0.5, oversample=1)
GRATING = Optics(focal_length_mm=10.0, aperture_mm=2.0, pupil_sample_um=8.0, pixel_pitch_um=0.5, oversample=1)
ORDERS = Optics(focal_length_mm=10.0, aperture_mm=4.0, pupil_sample_um=8.0, pixel_pitch_um=0.5, oversample=1)
TOLED_PITCH_UM = 21 * 8.0


def _radial_profile(img: np.ndarray, rmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Azimuthal average about the centre N // 2 in 1-sample bins: (mean radius, mean value)."""
    n = img.shape[0]
    c = n // 2
    sl = img[c - rmax : c + rmax + 1, c - rmax : c + rmax + 1]  # (2 rmax + 1, 2 rmax + 1)
    y, x = np.mgrid[-rmax : rmax + 1, -rmax : rmax + 1]
    r = np.hypot(y, x)
    b = np.rint(r).astype(int).ravel()
    cnt = np.bincount(b)
    rad = np.bincount(b, r.ravel()) / cnt
    val = np.bincount(b, sl.ravel()) / cnt
    return rad[:rmax], val[:rmax]


def _parabola_vertex(x: np.ndarray, y: np.ndarray, i: int) -> float:
    a, b, _ = np.polyfit(x[i - 1 : i + 2], y[i - 1 : i + 2], 2)
    return float(-b / (2 * a))


def _first_dark_ring(img: np.ndarray, spacing_um: float) -> float:
    rad, val = _radial_profile(img, 80)
    i = next(k for k in range(1, len(val) - 1) if val[k] < val[k - 1] and val[k] <= val[k + 1])
    return _parabola_vertex(rad, val, i) * spacing_um


def _open_fine(wavelength_nm: float, optics: Optics) -> tuple[np.ndarray, float]:
    pupil = pupil_amplitude(open_cell(), optics, transmission=0.0)
    return psf_fine(pupil, wavelength_nm, optics)


@pytest.mark.parametrize("wavelength_nm", [610.0, 470.0])
def test_airy_first_dark_ring(wavelength_nm: float) -> None:
    img, spacing = _open_fine(wavelength_nm, AIRY)
    assert abs(spacing - 0.5) / 0.5 < 1e-3  # the grid keeps delta2 for every wavelength
    ring = _first_dark_ring(img, spacing)
    expected = first_dark_ring_um(wavelength_nm, AIRY)
    assert abs(ring - expected) / expected < 0.05, (ring, expected)


def test_ring_scales_with_wavelength() -> None:
    red = _first_dark_ring(*_open_fine(610.0, AIRY))
    blue = _first_dark_ring(*_open_fine(470.0, AIRY))
    assert abs((red / blue) / (610.0 / 470.0) - 1.0) < 0.03, red / blue


def _first_order_um(wavelength_nm: float) -> float:
    pupil = pupil_amplitude(toled_cell(slit_px=7), GRATING, transmission=0.0)
    img, spacing = psf_fine(pupil, wavelength_nm, GRATING)
    c = img.shape[0] // 2
    row = img[c]  # vertical slits diffract along x
    expected = wavelength_nm * 1e-3 * GRATING.focal_length_mm * 1e3 / TOLED_PITCH_UM / spacing  # samples
    lo, hi = int(0.75 * expected), int(1.25 * expected)
    i = c + lo + int(np.argmax(row[c + lo : c + hi]))
    x = np.arange(img.shape[0]) - c
    return _parabola_vertex(x.astype(float), row, i) * spacing


@pytest.mark.parametrize("wavelength_nm", [610.0, 470.0])
def test_toled_order_spacing(wavelength_nm: float) -> None:
    got = _first_order_um(wavelength_nm)
    expected = wavelength_nm * 1e-3 * GRATING.focal_length_mm * 1e3 / TOLED_PITCH_UM
    assert abs(got - expected) / expected < 0.03, (got, expected)
    assert abs(got - expected) < GRATING.pixel_pitch_um  # within one (fine) pixel


def test_transparent_toled_equals_open() -> None:
    kw = {"wavelengths_nm": ((600.0, 620.0), (530.0,), (470.0,)), "kernel_size": 31}
    a = simulate_psf(toled_cell(slit_px=7), Optics(), transmission=1.0, **kw)
    b = simulate_psf(open_cell(), Optics(), transmission=0.3, **kw)
    np.testing.assert_allclose(a, b, atol=1e-7)
    c = simulate_psf(toled_cell(slit_px=7), Optics(), transmission=0.5, **kw)
    assert np.abs(c - b).max() > 1e-4  # and a real display differs


def _eta0_closed_form(fill: float, t: float) -> float:
    return (fill + t * (1 - fill)) ** 2 / (fill + t**2 * (1 - fill))


@pytest.mark.parametrize("t", [0.0, 0.3, 0.6])
def test_zeroth_order_energy(t: float) -> None:
    lam = 530.0
    cell = toled_cell(slit_px=7)
    pupil = pupil_amplitude(cell, ORDERS, transmission=t)
    img, spacing = psf_fine(pupil, lam, ORDERS)
    ref, _ = _open_fine(lam, ORDERS)
    n = img.shape[0]
    radius = 0.5 * lam * 1e-3 * ORDERS.focal_length_mm * 1e3 / TOLED_PITCH_UM / spacing  # samples
    y, x = np.mgrid[:n, :n] - n // 2
    disc = np.hypot(y, x) < radius
    eta = img[disc].sum() / ref[disc].sum()
    expected = _eta0_closed_form(fill_factor(cell), t)
    assert abs(eta - expected) / expected < 0.03, (eta, expected)

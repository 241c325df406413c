"""Optical PSF variants: display rotation in the pupil, focal-length scale, wavefront tilt."""

from __future__ import annotations

import time

import numpy as np
import pytest

from udcguard.optics.layouts import toled_cell, unit_cell
from udcguard.optics.measured import affine_variant
from udcguard.optics.psf import (
    Optics,
    _centre_window,
    fft_size,
    psf_fine,
    psf_window,
    pupil_amplitude,
    simulate_psf,
)

RGB = ((610.0,), (530.0,), (470.0,))
KW = {"wavelengths_nm": RGB, "kernel_size": 63, "transmission": 0.6}
C = 31  # centre pixel of K = 63
# one 0.5 um sample per pixel, so the toled first order (lambda f / 168 um) lies ~63 samples out
GRATING = Optics(focal_length_mm=10.0, aperture_mm=2.0, pupil_sample_um=8.0, pixel_pitch_um=0.5, oversample=1)


@pytest.mark.parametrize(("name", "randomize"), [("open", False), ("toled", False), ("poled", True)])
def test_identity_variant_is_the_base_psf_exactly(name: str, randomize: bool) -> None:
    cell = unit_cell(name)
    base = simulate_psf(cell, Optics(), randomize=randomize, seed=3, **KW)
    ident = {"rotation_deg": 0.0, "shift_px": (0.0, 0.0), "scale": 1.0}
    same = simulate_psf(cell, Optics(), randomize=randomize, seed=3, **ident, **KW)
    np.testing.assert_array_equal(same, base)
    turned = simulate_psf(cell, Optics(), randomize=randomize, seed=3, rotation_deg=360.0, **KW)
    np.testing.assert_array_equal(turned, base)


def test_matrix_dft_equals_fft_window() -> None:
    optics = Optics()
    pupil = pupil_amplitude(toled_cell(slit_px=7), optics, transmission=0.6)
    for lam, size in [(530.0, 189), (470.0, 3 * 171)]:  # 513 > N = 411: zero beyond the field
        fine, _ = psf_fine(pupil, lam, optics)
        ref = _centre_window(fine, size)
        got = psf_window(pupil, lam, optics, size)
        assert fft_size(lam, optics) < size or np.all(ref > 0.0)
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12 * ref.max())


@pytest.mark.parametrize(("name", "randomize"), [("toled", False), ("poled", False), ("poled", True)])
def test_rotation_90_is_rot90(name: str, randomize: bool) -> None:
    cell = unit_cell(name)  # square cells: the rotated display is the same lattice
    base = simulate_psf(cell, Optics(), randomize=randomize, seed=1, **KW)
    rot = simulate_psf(cell, Optics(), randomize=randomize, seed=1, rotation_deg=90.0, **KW)
    np.testing.assert_allclose(rot, np.rot90(base, 1, axes=(0, 1)), atol=1e-7)
    back = simulate_psf(cell, Optics(), randomize=randomize, seed=1, rotation_deg=-90.0, **KW)
    np.testing.assert_allclose(back, np.rot90(base, -1, axes=(0, 1)), atol=1e-7)


def test_rotated_toled_diffracts_vertically() -> None:
    cell = toled_cell(slit_px=7)
    base = simulate_psf(cell, Optics(), **KW)
    rot = simulate_psf(cell, Optics(), rotation_deg=90.0, **KW)
    off = np.r_[0 : C - 3, C + 4 : 63]  # the central row / column without the core

    def row_over_col(p: np.ndarray) -> float:
        return float(p[C, off].sum() / p[off, C].sum())

    assert row_over_col(base) > 5.0  # vertical slits: orders along the horizontal axis
    assert row_over_col(rot) < 0.2  # horizontal slits: orders along the vertical axis


def test_display_rotation_turns_mask_not_aperture() -> None:
    optics = Optics()
    plain = pupil_amplitude(toled_cell(), optics, transmission=0.6)
    turned = pupil_amplitude(toled_cell(), optics, transmission=0.6, rotation_deg=30.0)
    np.testing.assert_array_equal(turned > 0.0, plain > 0.0)  # same circ(D)
    assert turned.min() >= 0.0 and turned.max() <= 1.0
    # fill factor kept within the area-averaging error of the rotated raster
    assert turned.sum() == pytest.approx(plain.sum(), rel=0.01)
    open_turned = pupil_amplitude(unit_cell("open"), optics, transmission=0.0, rotation_deg=17.0)
    np.testing.assert_array_equal(open_turned, pupil_amplitude(unit_cell("open"), optics, transmission=0.0))


def _renormalised_interior(p: np.ndarray, border: int) -> np.ndarray:
    q = p[border:-border, border:-border].astype(np.float64)
    return q / q.sum(axis=(0, 1))


@pytest.mark.parametrize("shift", [(1.0, 0.0), (0.0, -1.0), (-2.0, 1.0)])
def test_whole_pixel_shift_is_a_roll(shift: tuple[float, float]) -> None:
    # oversample 3: one pixel is three fine samples, so the tilt moves the field exactly
    cell = unit_cell("poled")
    base = simulate_psf(cell, Optics(oversample=3), **KW)
    moved = simulate_psf(cell, Optics(oversample=3), shift_px=shift, **KW)
    ref = np.roll(base, (int(shift[0]), int(shift[1])), axis=(0, 1))  # positive = down / right
    np.testing.assert_allclose(_renormalised_interior(moved, 4), _renormalised_interior(ref, 4), rtol=1e-5, atol=1e-9)


def test_fractional_shift_moves_centroid() -> None:
    def centroid(p: np.ndarray) -> np.ndarray:
        """Centroid of the core (radius n / 3; the window cuts the Airy tails), from the centre."""
        n = p.shape[0]
        y, x = np.mgrid[:n, :n] - n // 2
        w = p * (np.hypot(y, x) < n / 3)
        return np.array([(y * w).sum(), (x * w).sum()]) / w.sum()

    optics = Optics()
    # on the fine grid the tilt moves the field by any fraction of a sample
    pupil = pupil_amplitude(unit_cell("open"), optics, transmission=0.0)
    fine = psf_window(pupil, 530.0, optics, 189, shift_fine=(0.75, -1.4))
    np.testing.assert_allclose(centroid(fine), [0.75, -1.4], atol=0.02)
    # pixels integrate the one-pixel core, so the binned centroid follows only symmetric (half-pixel) shifts
    base = simulate_psf(unit_cell("open"), optics, **KW)[..., 1].astype(np.float64)
    moved = simulate_psf(unit_cell("open"), optics, shift_px=(0.5, -0.5), **KW)[..., 1].astype(np.float64)
    np.testing.assert_allclose(centroid(base), [0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(centroid(moved), [0.5, -0.5], atol=0.02)


def _first_order_px(psf: np.ndarray) -> float:
    """Sub-pixel position of the toled +1 order on the centre row, in pixels from the axis."""
    c = psf.shape[0] // 2
    row = psf[c, :, 1].astype(np.float64)
    i = c + 45 + int(np.argmax(row[c + 45 : c + 90]))  # expected ~63 px (530 nm)
    a, b, _ = np.polyfit(np.arange(i - 1, i + 2) - c, row[i - 1 : i + 2], 2)
    return float(-b / (2 * a))


def test_scale_moves_first_order_outward() -> None:
    kw = {"wavelengths_nm": ((530.0,),) * 3, "kernel_size": 201, "transmission": 0.0}
    cell = toled_cell(slit_px=7)
    base = _first_order_px(simulate_psf(cell, GRATING, **kw))
    expected = 0.53 * 10_000 / 168 / 0.5  # lambda f / pitch, in 0.5 um pixels
    assert base == pytest.approx(expected, rel=0.01)
    for s in (1.05, 0.97):
        ratio = _first_order_px(simulate_psf(cell, GRATING, scale=s, **kw)) / base
        assert ratio == pytest.approx(s, abs=0.01), (s, ratio)


def _no_checkerboard(psf: np.ndarray) -> bool:
    """Peak on the centre pixel, a symmetric 3 x 3 core and no clipped (zero) lobes near it."""
    for c in range(3):
        p = psf[..., c].astype(np.float64)
        if np.unravel_index(np.argmax(p), p.shape) != (C, C):
            return False
        core = p[C - 1 : C + 2, C - 1 : C + 2] / p[C, C]
        if max(np.abs(core - mirror).max() for mirror in (core[::-1], core[:, ::-1], core.T)) > 1e-3:
            return False
        if p[C - 2 : C + 3, C - 2 : C + 3].min() < 1e-4 * p[C, C]:
            return False
    return True


@pytest.mark.parametrize(("rotation", "scale"), [(4.0, 1.01), (-11.0, 0.97), (7.0, 1.03)])
def test_unshifted_variant_has_no_checkerboard(rotation: float, scale: float) -> None:
    cell = unit_cell("open")
    base = simulate_psf(cell, Optics(), **KW)
    variant = simulate_psf(cell, Optics(), rotation_deg=rotation, scale=scale, **KW)
    assert variant.min() >= 0.0
    np.testing.assert_allclose(variant.sum(axis=(0, 1)), 1.0, atol=1e-5)
    assert _no_checkerboard(base) and _no_checkerboard(variant)
    # the image warp this replaces rings around the one-pixel core (clipped negative lobes)
    assert not _no_checkerboard(affine_variant(base, angle_deg=rotation, scale=scale, order=3))


@pytest.mark.parametrize("name", ["toled", "poled"])
def test_display_variants_non_negative_and_normalised(name: str) -> None:
    cell = unit_cell(name)
    for rot, shift, scale in [(4.25, (-0.51, 0.22), 0.995), (-9.0, (0.26, -0.38), 1.004), (12.0, (1.0, 1.0), 1.03)]:
        p = simulate_psf(cell, Optics(), rotation_deg=rot, shift_px=shift, scale=scale, **KW)
        assert p.dtype == np.float32 and p.shape == (63, 63, 3) and p.min() >= 0.0
        np.testing.assert_allclose(p.sum(axis=(0, 1)), 1.0, atol=1e-5)
        peak = np.unravel_index(np.argmax(p[..., 1]), (63, 63))
        assert np.all(np.abs(np.subtract(peak, np.add(C, shift))) <= 0.5 + 1e-6)  # core on the shifted axis
    unshifted = simulate_psf(cell, Optics(), rotation_deg=5.0, scale=1.02, **KW)
    for c in range(3):
        assert np.unravel_index(np.argmax(unshifted[..., c]), (63, 63)) == (C, C)


def test_variant_errors() -> None:
    cell = unit_cell("open")
    with pytest.raises(ValueError, match="scale"):
        simulate_psf(cell, Optics(), scale=0.0, **KW)
    with pytest.raises(ValueError, match="shift_px"):
        simulate_psf(cell, Optics(), shift_px=(np.nan, 0.0), **KW)
    with pytest.raises(ValueError, match="rotation_deg"):
        simulate_psf(cell, Optics(), rotation_deg=np.inf, **KW)
    with pytest.raises(ValueError, match="aliases"):
        simulate_psf(cell, Optics(), scale=0.5, **KW)  # N' = 0.5 * 411 < M = 251 at 470 nm


def test_variant_speed() -> None:
    cell = unit_cell("poled")
    kw = {**KW, "randomize": True}
    simulate_psf(cell, Optics(), rotation_deg=5.0, shift_px=(0.3, -0.2), scale=1.02, **kw)  # warm-up
    t0 = time.perf_counter()
    simulate_psf(cell, Optics(), rotation_deg=5.0, shift_px=(0.3, -0.2), scale=1.02, **kw)
    assert time.perf_counter() - t0 < 1.0

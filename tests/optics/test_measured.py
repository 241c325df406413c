"""Measured PSFs: validation, loading, fitting to K, affine variants."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from udcguard.errors import PSFError
from udcguard.optics.measured import (
    affine_variant,
    fit_kernel,
    load_psf_npy,
    sample_affine_params,
    sample_variants,
    validate_psf,
)


def _blobs(n: int, centres: list[tuple[float, float]], sigma: float = 1.5) -> np.ndarray:
    """(n, n, 3) sum of Gaussian blobs (offsets from the array centre), a different mix per channel."""
    y, x = np.mgrid[:n, :n] - (n - 1) / 2
    out = np.zeros((n, n, 3))
    for i, (cy, cx) in enumerate(centres):
        g = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2))
        for c in range(3):
            out[..., c] += g * (1 + i + c)
    return out / out.sum(axis=(0, 1))


def _centroid(img: np.ndarray) -> np.ndarray:
    n = img.shape[0]
    y, x = np.mgrid[:n, :n] - (n - 1) / 2
    return np.array([(y * img).sum(), (x * img).sum()]) / img.sum()


ASYM = [(0.0, 0.0), (-6.0, 3.0), (4.0, 7.0)]  # no rotation / flip symmetry


@pytest.mark.parametrize(
    ("arr", "msg"),
    [
        (np.ones((5, 5)), r"expected shape \(H, W, 3\), got \(5, 5\)"),
        (np.ones((5, 5, 4)), r"got \(5, 5, 4\)"),
        (np.ones((2, 5, 3)), "at least 3 x 3"),
        (np.where(np.eye(5)[..., None], np.nan, 1.0) * np.ones(3), "NaN"),
        (-np.ones((5, 5, 3)), "negative"),
        (np.stack([np.ones((5, 5)), np.zeros((5, 5)), np.ones((5, 5))], axis=-1), "channel G sums to zero"),
        (np.array([[["a"] * 3] * 3] * 3), "numeric"),
    ],
)
def test_validate_psf_errors(arr: np.ndarray, msg: str) -> None:
    with pytest.raises(PSFError, match=r"^zte\.npy: ") as info:
        validate_psf(arr, "zte.npy")
    assert "\n" not in str(info.value)
    assert info.match(msg)


def test_validate_psf_ok() -> None:
    a = validate_psf(np.ones((4, 6, 3), dtype=np.float32), "x")
    assert a.dtype == np.float64 and a.shape == (4, 6, 3)


def test_load_psf_npy(tmp_path: Path) -> None:
    psf = _blobs(21, ASYM)
    np.save(tmp_path / "psf.npy", psf.astype(np.float32))
    np.testing.assert_allclose(load_psf_npy(tmp_path / "psf.npy"), psf, rtol=1e-6)
    with pytest.raises(PSFError, match=r"missing\.npy: file not found"):
        load_psf_npy(tmp_path / "missing.npy")
    (tmp_path / "bad.npy").write_bytes(b"not numpy at all")
    with pytest.raises(PSFError, match=r"bad\.npy: not a readable"):
        load_psf_npy(tmp_path / "bad.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(PSFError, match=r"obj\.npy"):
        load_psf_npy(tmp_path / "obj.npy")
    np.save(tmp_path / "flat.npy", np.ones((9, 9)))
    with pytest.raises(PSFError, match=r"flat.npy: expected shape"):
        load_psf_npy(tmp_path / "flat.npy")


@pytest.mark.parametrize("size", [101, 100, 21, 4])
def test_fit_kernel_crop_centres(size: int) -> None:
    psf = np.full((size, size, 3), 1e-3)
    psf[size // 2, size // 2] = 1.0  # marks the array centre (H // 2, W // 2)
    k = fit_kernel(psf, 31, mode="crop")
    assert k.shape == (31, 31, 3) and k.dtype == np.float32
    np.testing.assert_allclose(k.sum(axis=(0, 1)), 1.0, atol=1e-5)
    assert np.unravel_index(np.argmax(k[..., 0]), (31, 31)) == (15, 15)
    if size < 31:
        assert np.all(k[0] == 0.0)  # zero padding


def test_fit_kernel_resize_keeps_shape_of_psf() -> None:
    psf = _blobs(127, [(0.0, 0.0)], sigma=8.0)
    k = fit_kernel(psf, 63, mode="resize")
    assert k.shape == (63, 63, 3) and k.dtype == np.float32
    np.testing.assert_allclose(k.sum(axis=(0, 1)), 1.0, atol=1e-5)
    y, _ = np.mgrid[:63, :63] - 31
    sigma = np.sqrt((y**2 * k[..., 0]).sum())
    assert sigma == pytest.approx(8.0 * 63 / 127, rel=0.1)
    assert np.unravel_index(np.argmax(k[..., 0]), (63, 63)) == (31, 31)
    # a one-pixel peak keeps (most of) its energy when shrunk, instead of being skipped
    spike = np.full((255, 255, 3), 1e-6)
    spike[127, 127] = 1.0
    assert fit_kernel(spike, 63, mode="resize")[..., 0].max() > 0.5
    with pytest.raises(ValueError, match="mode"):
        fit_kernel(psf, 63, mode="warp")


def test_affine_identity() -> None:
    psf = _blobs(31, ASYM)
    for order in (1, 3):
        out = affine_variant(psf, angle_deg=0.0, shift_px=(0.0, 0.0), scale=1.0, order=order)
        np.testing.assert_allclose(out, psf, atol=1e-6)


def test_affine_rot90_matches_numpy() -> None:
    psf = _blobs(41, ASYM)
    ref = np.rot90(psf, 1, axes=(0, 1))
    out = affine_variant(psf, angle_deg=90.0)
    assert out.shape == psf.shape
    assert np.abs(out[4:-4, 4:-4] - ref[4:-4, 4:-4]).max() < 1e-4 * psf.max()
    assert np.abs(affine_variant(psf, angle_deg=-90.0) - np.rot90(psf, -1, axes=(0, 1))).max() < 1e-4


def test_affine_small_rotation_shift_scale_move_centroid() -> None:
    psf = _blobs(41, [(-8.0, 0.0)], sigma=2.0)  # one blob above the centre
    th = np.radians(30.0)
    out = affine_variant(psf, angle_deg=30.0)[..., 0]
    # counter-clockwise as displayed: a point above the centre moves to the left
    np.testing.assert_allclose(_centroid(out), [-8.0 * np.cos(th), -8.0 * np.sin(th)], atol=0.05)
    moved = affine_variant(psf, angle_deg=0.0, shift_px=(1.5, -2.0))[..., 0]
    np.testing.assert_allclose(_centroid(moved), [-6.5, -2.0], atol=0.05)
    big = affine_variant(psf, angle_deg=0.0, scale=1.25)[..., 0]
    np.testing.assert_allclose(_centroid(big), [-10.0, 0.0], atol=0.05)


def test_sample_variants_ranges_and_determinism() -> None:
    params = sample_affine_params(500, np.random.default_rng(0))
    angles = np.array([p.angle_deg for p in params])
    shifts = np.array([p.shift_px for p in params])
    scales = np.array([p.scale for p in params])
    assert np.all(np.abs(angles) <= 12.0) and angles.min() < -11.0 and angles.max() > 11.0
    assert np.all(np.abs(shifts) <= 1.0) and np.all(np.abs(scales - 1.0) <= 0.03)
    psf = _blobs(31, ASYM)
    va = sample_variants(psf, 3, np.random.default_rng(7), max_rotation_deg=5.0)
    vb = sample_variants(psf, 3, np.random.default_rng(7), max_rotation_deg=5.0)
    assert len(va) == 3
    for a, b in zip(va, vb, strict=True):
        np.testing.assert_array_equal(a.psf, b.psf)
        assert a.params == b.params and abs(a.params.angle_deg) <= 5.0
        assert a.psf.dtype == np.float32 and a.psf.shape == psf.shape
        np.testing.assert_allclose(a.psf.sum(axis=(0, 1)), 1.0, atol=1e-5)
        assert set(a.params.as_dict()) == {"angle_deg", "shift_px", "scale"}
    assert not np.allclose(va[0].psf, va[1].psf)


def test_default_bilinear_warp_does_not_ring() -> None:
    # a one-pixel peak on a flat background: a cubic spline overshoots below the background
    # (clipped to zero: the checkerboard); bilinear weights are non-negative, so it cannot
    psf = np.full((31, 31, 3), 1e-3)
    psf[15, 15] = 1.0
    kw = {"angle_deg": 7.0, "shift_px": (0.3, -0.2), "scale": 1.02}
    bilinear = affine_variant(psf, **kw)[3:-3, 3:-3]
    background = np.median(bilinear, axis=(0, 1))  # (3,)
    assert np.all(bilinear >= 0.999 * background)
    cubic = affine_variant(psf, order=3, **kw)[3:-3, 3:-3]
    assert np.any(cubic < 0.5 * np.median(cubic, axis=(0, 1)))
    params = sample_affine_params(1, np.random.default_rng(0))[0]
    (variant,) = sample_variants(psf, 1, np.random.default_rng(0))
    warped = affine_variant(psf, angle_deg=params.angle_deg, shift_px=params.shift_px, scale=params.scale)
    np.testing.assert_array_equal(variant.psf, warped)  # sample_variants warps bilinearly too

"""sRGB curves, highlight boosting, light sources, exposure, panorama views, downscaling."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.color import rgb2xyz

from udcguard.degradation.hdr import (
    add_light_sources,
    boost_highlights,
    boost_highlights_alpha,
    expose,
    linear_to_srgb,
    luminance,
    perspective_view,
    resize_max_side,
    srgb_to_linear,
)


# --------------------------------------------------------------------------- sRGB
def test_srgb_known_values() -> None:
    np.testing.assert_allclose(srgb_to_linear(0.5), 0.21404114, atol=1e-7)
    np.testing.assert_allclose(srgb_to_linear(0.04), 0.04 / 12.92)  # lower branch
    np.testing.assert_allclose(srgb_to_linear(np.array([0.0, 1.0])), [0.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(linear_to_srgb(0.21404114), 0.5, atol=1e-6)
    np.testing.assert_allclose(linear_to_srgb(0.002), 0.002 * 12.92)


def test_srgb_round_trip_and_dtype() -> None:
    s = np.linspace(0, 1, 1001)
    np.testing.assert_allclose(linear_to_srgb(srgb_to_linear(s)), s, atol=1e-12)
    x = np.linspace(0, 4, 997)  # above 1 extends the power branch
    np.testing.assert_allclose(srgb_to_linear(linear_to_srgb(x)), x, rtol=1e-10, atol=1e-12)
    assert srgb_to_linear(np.zeros(3, np.float32)).dtype == np.float32


def test_srgb_to_linear_agrees_with_skimage() -> None:
    rgb = np.random.default_rng(0).uniform(0, 1, size=(8, 9, 3))
    lin = srgb_to_linear(rgb)
    # skimage linearises with the same sRGB curve before its (linear) RGB -> XYZ matrix
    m = rgb2xyz(np.eye(3)[None])[0]  # (3, 3): row i = XYZ of linear primary i
    np.testing.assert_allclose(rgb2xyz(rgb), lin @ m, atol=1e-6)


# --------------------------------------------------------------------------- highlights
def test_boost_leaves_dark_pixels_and_multiplies_saturated_ones() -> None:
    lin = np.random.default_rng(1).uniform(0, 0.8, size=(16, 16, 3))
    lin[0, 0] = 1.0
    lin[0, 1] = (1.0, 0.2, 0.1)  # max channel 1: whole pixel scaled by 1 + alpha
    lin[0, 2] = (0.9, 0.9, 0.9)  # partial boost
    for seed in range(20):
        out = boost_highlights(lin, np.random.default_rng(seed), threshold=0.8, alpha_min=10, alpha_max=500)
        mask = lin.max(axis=-1) <= 0.8
        np.testing.assert_array_equal(out[mask], lin[mask])
        gain = out[0, 0, 0] / lin[0, 0, 0]
        assert 11.0 - 1e-9 <= gain <= 501.0 + 1e-9
        np.testing.assert_allclose(out[0, 1], lin[0, 1] * gain)
        expected = 0.9 * (1 + (gain - 1) * 0.25)  # ((0.9 - 0.8) / 0.2)^2 = 0.25
        np.testing.assert_allclose(out[0, 2], expected)


def test_boost_alpha_is_log_uniform_in_range() -> None:
    rng = np.random.default_rng(2)
    alphas = np.array([boost_highlights_alpha(np.ones((1, 1, 3)), rng)[1] for _ in range(2000)])
    assert alphas.min() >= 10 and alphas.max() <= 500
    # log-uniform: median near the geometric mean sqrt(10 * 500) = 70.7
    assert 60 < np.median(alphas) < 83


# --------------------------------------------------------------------------- lights
def test_light_sources_ranges_and_peaks() -> None:
    img = np.full((64, 80, 3), 0.1, np.float32)
    for seed in range(30):
        out, recs = add_light_sources(
            img, np.random.default_rng(seed), max_count=5, radius_px=(1, 6), intensity=(10, 500)
        )
        assert out.dtype == np.float32 and out.shape == img.shape
        assert 1 <= len(recs) <= 5
        for r in recs:
            assert 1 <= r["radius"] <= 6 and 10 <= r["intensity"] <= 500
            assert 0 <= r["x"] < 80 and 0 <= r["y"] < 64
            assert max(r["colour"]) == 1.0 and min(r["colour"]) >= 0.85
            assert out[r["y"], r["x"]].max() >= r["intensity"] * (1 - 1e-6)
        assert out.max() >= 10
        assert np.all(out >= img)  # sources never darken the scene
    assert np.all(img == 0.1)  # input untouched


def test_light_sources_deterministic_and_zero_count() -> None:
    img = np.zeros((32, 32, 3))
    a, ra = add_light_sources(img, np.random.default_rng(7))
    b, rb = add_light_sources(img, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    assert ra == rb
    _, rc = add_light_sources(img, np.random.default_rng(8))
    assert rc != ra
    d, rd = add_light_sources(img, np.random.default_rng(7), max_count=0)
    assert rd == [] and np.all(d == 0)


# --------------------------------------------------------------------------- exposure
def test_expose_sets_luminance_median() -> None:
    hdr = np.random.default_rng(3).lognormal(0, 2, size=(50, 60, 3))
    out = expose(hdr, median=0.18)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.median(luminance(out)), 0.18, rtol=1e-4)


def test_expose_falls_back_when_median_is_zero() -> None:
    hdr = np.zeros((10, 10, 3))
    hdr[:3] = 2.0  # 30 % lit: median 0, 75th percentile 0, 90th percentile 2
    out = expose(hdr, median=0.18)
    assert np.isfinite(out).all() and out.max() == pytest.approx(0.18)
    assert np.all(expose(np.zeros((4, 4, 3))) == 0)


# --------------------------------------------------------------------------- panorama views
def _lonlat_pano(h: int = 256, w: int = 512) -> np.ndarray:
    """Panorama whose channels are (sin lon, cos lon, lat) at each pixel centre."""
    lon = 2 * np.pi * ((np.arange(w) + 0.5) / w - 0.5)
    lat = np.pi * (0.5 - (np.arange(h) + 0.5) / h)
    lon2, lat2 = np.meshgrid(lon, lat)
    return np.stack([np.sin(lon2), np.cos(lon2), lat2], axis=-1).astype(np.float32)


def _ray(i: int, j: int, size: int, fov: float, yaw: float, pitch: float) -> tuple[float, float]:
    """Analytic (lon, lat) of output pixel (i, j), via rotation matrices."""
    f = (size / 2) / math.tan(math.radians(fov) / 2)
    d = np.array([j + 0.5 - size / 2, size / 2 - i - 0.5, f])
    p, y = math.radians(pitch), math.radians(yaw)
    rx = np.array([[1, 0, 0], [0, math.cos(p), math.sin(p)], [0, -math.sin(p), math.cos(p)]])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    d = ry @ (rx @ d)
    return math.atan2(d[0], d[2]), math.asin(d[1] / np.linalg.norm(d))


def test_perspective_view_centre_samples_lon0_lat0() -> None:
    pano = _lonlat_pano()
    view = perspective_view(pano, yaw_deg=0, pitch_deg=0, fov_deg=60, size=33, oversample=1)
    assert view.shape == (33, 33, 3) and view.dtype == np.float32
    np.testing.assert_allclose(view[16, 16], [0.0, 1.0, 0.0], atol=2e-3)


@pytest.mark.parametrize(("yaw", "pitch"), [(0, 0), (37, 12), (-120, -15), (179, 25)])
def test_perspective_view_matches_analytic_rays(yaw: float, pitch: float) -> None:
    size, fov = 41, 75
    view = perspective_view(_lonlat_pano(), yaw_deg=yaw, pitch_deg=pitch, fov_deg=fov, size=size, oversample=1)
    for i, j in [(0, 0), (0, 40), (40, 0), (40, 40), (20, 20), (5, 31), (33, 9)]:
        lon, lat = _ray(i, j, size, fov, yaw, pitch)
        np.testing.assert_allclose(view[i, j, :2], [math.sin(lon), math.cos(lon)], atol=2e-3)
        np.testing.assert_allclose(view[i, j, 2], lat, atol=2e-3)
    # up is up: rows go from high to low latitude
    assert view[0, 20, 2] > view[40, 20, 2]


def test_perspective_view_wraps_around_in_longitude() -> None:
    pano = np.random.default_rng(4).uniform(0, 1, size=(64, 128, 3)).astype(np.float32)
    a = perspective_view(pano, yaw_deg=180.0, pitch_deg=5, fov_deg=60, size=24)
    b = perspective_view(pano, yaw_deg=-180.0, pitch_deg=5, fov_deg=60, size=24)
    np.testing.assert_allclose(a, b, atol=1e-5)
    # looking at the seam (lon = +-180) equals looking at lon 0 of the panorama rolled by
    # half a turn, where no wrapping is needed: pixels across the seam join up correctly
    rolled = np.roll(pano, 64, axis=1)
    for yaw in (180.0, 170.0, -175.0):
        seam = perspective_view(pano, yaw_deg=yaw, pitch_deg=-10, fov_deg=60, size=24, oversample=1)
        ref = perspective_view(rolled, yaw_deg=yaw - 180.0, pitch_deg=-10, fov_deg=60, size=24, oversample=1)
        np.testing.assert_allclose(seam, ref, atol=1e-5)


def test_perspective_view_oversample_keeps_mean() -> None:
    pano = np.random.default_rng(5).uniform(0, 1, size=(512, 1024, 3)).astype(np.float32)
    v1 = perspective_view(pano, yaw_deg=10, pitch_deg=0, fov_deg=90, size=32, oversample=1)
    v4 = perspective_view(pano, yaw_deg=10, pitch_deg=0, fov_deg=90, size=32)  # auto: 4
    assert abs(v4.mean() - 0.5) < 0.01
    assert v4.std() < 0.6 * v1.std()  # averaging sub-samples: less aliasing noise


# --------------------------------------------------------------------------- resize
def test_resize_max_side_area_average() -> None:
    img = np.random.default_rng(6).uniform(0, 100, size=(300, 200, 3))
    out = resize_max_side(img, 150)
    assert out.shape == (150, 100, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], img[:2, :2].mean(axis=(0, 1)), rtol=1e-5)
    np.testing.assert_allclose(out.mean(), img.mean(), rtol=1e-5)
    spike = np.zeros((64, 64, 3))
    spike[10, 10] = 1000.0
    small = resize_max_side(spike, 16)
    assert small.min() >= 0 and small.sum() == pytest.approx(1000.0 * 3 / 16, rel=1e-5)
    same = resize_max_side(img, 400)  # never upscales
    assert same.shape == img.shape

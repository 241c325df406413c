"""Two-level bootstrap: known answers, scenes-first resampling, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from udcguard.metrics.bootstrap import bootstrap_ci, group_codes, replicate_means, resample_weights


def test_equal_values_give_a_zero_width_interval() -> None:
    est, lo, hi = bootstrap_ci(np.full(12, 27.5), ["a"] * 5 + ["b"] * 7, n_boot=500)
    assert est == lo == hi == pytest.approx(27.5, abs=1e-12)


def test_one_image_is_degenerate() -> None:
    assert bootstrap_ci(np.array([31.0]), ["g"], n_boot=100) == (31.0, 31.0, 31.0)


def test_one_group_is_the_image_bootstrap_with_standard_error_std_over_sqrt_n() -> None:
    x = np.random.default_rng(3).normal(25.0, 2.0, size=40)
    w = resample_weights(group_codes(["only"] * 40), 20000, np.random.default_rng(0))
    assert (w.sum(axis=1) == 40).all()
    se = replicate_means(x, w).std()
    # the image bootstrap's variance of the mean is exactly var(x, ddof=0) / n; 20000 replicates: ~0.5 % noise
    assert se == pytest.approx(x.std() / np.sqrt(40), rel=0.03)
    est, lo, hi = bootstrap_ci(x, ["only"] * 40, n_boot=20000)
    assert est == pytest.approx(x.mean()) and lo < est < hi
    assert (hi - lo) == pytest.approx(2 * 1.96 * x.std() / np.sqrt(40), rel=0.05)


def test_two_groups_exact_distribution_of_the_mean() -> None:
    """Groups constant inside: only the scene draw matters. Means 0 (AA), 5 (AB, BA), 10 (BB): 1/4, 1/2, 1/4."""
    x = np.array([0.0, 0.0, 0.0, 10.0, 10.0, 10.0])
    groups = ["A", "A", "A", "B", "B", "B"]
    w = resample_weights(group_codes(groups), 40000, np.random.default_rng(1))
    m = replicate_means(x, w)
    freq = {v: np.mean(np.isclose(m, v)) for v in (0.0, 5.0, 10.0)}
    assert sum(freq.values()) == pytest.approx(1.0)
    assert freq[0.0] == pytest.approx(0.25, abs=0.01) and freq[5.0] == pytest.approx(0.5, abs=0.01)
    assert bootstrap_ci(x, groups, n_boot=4000)[1:] == (0.0, 10.0)


def test_scenes_first_is_much_wider_than_resampling_images() -> None:
    """Two scenes of 50 images with very different means: the scene draw dominates the uncertainty."""
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(20.0, 0.5, 50), rng.normal(30.0, 0.5, 50)])
    groups = ["a"] * 50 + ["b"] * 50
    _, lo, hi = bootstrap_ci(x, groups, n_boot=4000)
    _, lo_i, hi_i = bootstrap_ci(x, list(range(100)), n_boot=4000)  # every image its own group
    assert hi - lo > 5 * (hi_i - lo_i)
    assert lo == pytest.approx(20.0, abs=0.5) and hi == pytest.approx(30.0, abs=0.5)  # AA and BB draws


def test_unequal_groups_images_drawn_only_inside_drawn_groups() -> None:
    codes = group_codes(["x", "y", "y", "y", "z"])
    assert codes.tolist() == [0, 1, 1, 1, 2]
    w = resample_weights(codes, 3000, np.random.default_rng(4))
    g = np.stack([w[:, codes == k].sum(axis=1) / (codes == k).sum() for k in range(3)], axis=1)
    assert np.allclose(g, np.round(g)) and (g.sum(axis=1) == 3).all()  # whole groups, 3 drawn per replicate
    assert np.mean(g[:, 1]) == pytest.approx(1.0, abs=0.05)


def test_ratio_statistic_on_paired_columns_and_determinism() -> None:
    rng = np.random.default_rng(5)
    v = np.stack([rng.normal(30, 1, 30), rng.normal(20, 1, 30), rng.normal(25, 1, 30)], axis=1)
    groups = [i // 3 for i in range(30)]
    share = lambda m: (m[..., 2] - m[..., 1]) / (m[..., 0] - m[..., 1])
    a = bootstrap_ci(v, groups, stat=share, n_boot=1000, seed=7)
    m = v.mean(axis=0)
    assert a[0] == pytest.approx((m[2] - m[1]) / (m[0] - m[1])) and a[1] < a[0] < a[2]
    assert a == bootstrap_ci(v, groups, stat=share, n_boot=1000, seed=np.random.default_rng(7))
    assert a != bootstrap_ci(v, groups, stat=share, n_boot=1000, seed=8)


def test_errors() -> None:
    with pytest.raises(ValueError, match="group labels"):
        bootstrap_ci(np.zeros(3), ["a", "b"])
    with pytest.raises(ValueError, match="stat"):
        bootstrap_ci(np.zeros((3, 2)), ["a"] * 3)
    with pytest.raises(ValueError, match="no images"):
        resample_weights(np.zeros(0, dtype=int), 10, np.random.default_rng(0))

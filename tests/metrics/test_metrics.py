"""PSNR / SSIM against scikit-image, batching, and the summary table."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage import data as skdata
from skimage.filters import gaussian
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.transform import resize

from udcguard.metrics import psnr, ssim, summarize

TOL = 1e-4


def _sk_ssim(a: np.ndarray, b: np.ndarray) -> float:  # (H, W, C)
    return structural_similarity(
        a,
        b,
        channel_axis=-1,
        data_range=1.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )


def _sk_psnr(a: np.ndarray, b: np.ndarray) -> float:
    return peak_signal_noise_ratio(a, b, data_range=1.0)


def _t(a: np.ndarray) -> torch.Tensor:  # (H, W, C) -> (1, C, H, W)
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None]


def _pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = []
    for h, w in [(11, 11), (37, 53), (64, 64), (96, 80)]:
        a = rng.random((h, w, 3))
        out.append((f"noise-{h}x{w}", a, rng.random((h, w, 3))))
        b = np.clip(a + 0.05 * rng.standard_normal(a.shape), 0, 1)
        out.append((f"noise-near-{h}x{w}", a, b))
    img = resize(skdata.astronaut(), (64, 64), anti_aliasing=True)  # float64 in [0, 1]
    noisy = np.clip(img + 0.03 * rng.standard_normal(img.shape), 0, 1)
    blurred = gaussian(img, sigma=1.2, channel_axis=-1)
    out += [("astronaut-noise", img, noisy), ("astronaut-blur", img, blurred)]
    odd = resize(skdata.astronaut(), (37, 53), anti_aliasing=True)
    out.append(("astronaut-37x53-blur", odd, gaussian(odd, sigma=2.0, channel_axis=-1)))
    return out


PAIRS = _pairs()


@pytest.mark.parametrize(("name", "a", "b"), PAIRS, ids=[p[0] for p in PAIRS])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_psnr_ssim_match_skimage(name, a, b, dtype) -> None:
    ta, tb = _t(a).to(dtype), _t(b).to(dtype)
    p = psnr(ta, tb).item()
    s = ssim(ta, tb).item()
    assert abs(p - _sk_psnr(a, b)) < TOL, name
    assert abs(s - _sk_ssim(a, b)) < TOL, name
    assert psnr(ta, tb).dtype == dtype and ssim(ta, tb).shape == (1,)


def test_max_deviation_from_skimage_is_tiny_in_float64() -> None:
    dp = max(abs(psnr(_t(a), _t(b)).item() - _sk_psnr(a, b)) for _, a, b in PAIRS)
    ds = max(abs(ssim(_t(a), _t(b)).item() - _sk_ssim(a, b)) for _, a, b in PAIRS)
    assert dp < 1e-9 and ds < 1e-9, (dp, ds)


def test_batched_equals_per_image() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(5, 3, 37, 53, generator=g)
    y = (x + 0.1 * torch.randn(5, 3, 37, 53, generator=g)).clamp(0, 1)
    pb, sb = psnr(x, y), ssim(x, y)
    assert pb.shape == sb.shape == (5,)
    for i in range(5):
        assert torch.allclose(pb[i], psnr(x[i : i + 1], y[i : i + 1])[0], atol=1e-5)
        assert torch.allclose(sb[i], ssim(x[i : i + 1], y[i : i + 1])[0], atol=1e-6)
    # images are not mixed: changing image 0 leaves the others' scores alone
    y2 = y.clone()
    y2[0] = x[0]
    assert torch.equal(ssim(x, y2)[1:], sb[1:]) and ssim(x, y2)[0] == pytest.approx(1.0)


def test_identical_images() -> None:
    x = torch.rand(2, 3, 16, 16)
    assert torch.isinf(psnr(x, x)).all() and (psnr(x, x) > 0).all()
    assert torch.allclose(ssim(x, x), torch.ones(2))


def test_data_range_and_known_value() -> None:
    x = torch.zeros(1, 3, 12, 12)
    y = torch.full_like(x, 0.1)  # MSE 0.01 -> 20 dB at range 1, 40 dB at range 10
    assert psnr(x, y).item() == pytest.approx(20.0, abs=1e-4)
    assert psnr(x, y, data_range=10.0).item() == pytest.approx(40.0, abs=1e-4)


def test_ssim_is_differentiable() -> None:
    x = torch.rand(2, 3, 20, 20, dtype=torch.float64, requires_grad=True)
    y = torch.rand(2, 3, 20, 20, dtype=torch.float64)
    ssim(x, y).sum().backward()
    assert (
        x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    )
    # direction check: a step along the gradient raises SSIM
    with torch.no_grad():
        assert (ssim(x + 1e-3 * x.grad.sign(), y) > ssim(x, y)).all()


def test_bad_inputs() -> None:
    x = torch.rand(1, 3, 10, 12)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(x, x)
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(x, x[..., :11])
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        ssim(x[0], x[0])


# ------------------------------------------------------------------ summary
def test_summarize_groups_and_means() -> None:
    recs = [
        {"attack": "pgd", "eps": 8, "psnr": 30.0, "ssim": 0.9},
        {"attack": "none", "eps": 0, "psnr": 40.0, "ssim": 0.99},
        {"attack": "pgd", "eps": 8, "psnr": 20.0, "ssim": 0.7},
        {"attack": "pgd", "eps": 4, "psnr": 25.0, "ssim": 0.8},
        {"attack": "pgd", "eps": 8, "psnr": 25.0, "ssim": 0.8},
    ]
    rows = summarize(recs, by=["attack", "eps"], metrics=["psnr", "ssim"])
    assert [(r["attack"], r["eps"], r["count"]) for r in rows] == [
        ("pgd", 8, 3),
        ("none", 0, 1),
        ("pgd", 4, 1),
    ]
    r = rows[0]
    assert r["psnr_mean"] == pytest.approx(25.0)
    assert r["psnr_std"] == pytest.approx(np.std([30.0, 20.0, 25.0]))
    assert r["psnr_min"] == 20.0 and r["psnr_max"] == 30.0
    assert r["ssim_mean"] == pytest.approx(0.8)
    assert rows[1]["psnr_std"] == 0.0 and rows[1]["ssim_min"] == 0.99
    # by=[] is one group over everything
    (total,) = summarize(recs, by=[], metrics=["psnr"])
    assert total["count"] == 5 and total["psnr_mean"] == pytest.approx(28.0)


def test_summarize_caps_infinite_psnr() -> None:
    recs = [{"k": "a", "psnr": math.inf}, {"k": "a", "psnr": 30.0}]
    (row,) = summarize(recs, by=["k"], metrics=["psnr"])
    assert row["psnr_mean"] == pytest.approx(65.0)
    assert row["psnr_max"] == 100.0 and row["psnr_n_capped"] == 1
    (row,) = summarize(recs, by=["k"], metrics=["psnr"], inf_cap=60.0)
    assert row["psnr_mean"] == pytest.approx(45.0)


def test_summarize_errors() -> None:
    with pytest.raises(ValueError, match="lacks key"):
        summarize([{"k": 1}], by=["k"], metrics=["psnr"])
    with pytest.raises(ValueError, match="NaN"):
        summarize([{"k": 1, "psnr": float("nan")}], by=["k"], metrics=["psnr"])
    assert summarize([], by=["k"], metrics=["psnr"]) == []

"""Tiled purification: tile layout and windows, blended epsilon, exact equality with the
untiled chain when one tile covers the image, seeding / batch invariance, no seams."""

from __future__ import annotations

import math

import pytest
import torch

from udcguard.purify import Purifier, blend_window, build_unet, make_scheduler, tile_starts, tiled_eps


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def purifier() -> Purifier:
    torch.manual_seed(0)
    unet = build_unet(sample_size=16, block_out_channels=(8, 16, 16), norm_num_groups=4).eval()
    return Purifier(unet, make_scheduler())


def _x(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return 0.2 + 0.6 * torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


class _TileMean(torch.nn.Module):
    """A stand-in UNet whose epsilon is the mean of its whole input (per image and channel):
    maximal dependence on the tile's extent, so hard tile borders show as steps."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.config = type("C", (), {"block_out_channels": (8, 16, 16)})()

    def forward(self, z, t):
        return type("O", (), {"sample": self.w * z.mean((2, 3), keepdim=True).expand_as(z)})()


def test_tile_starts_cover_and_overlap() -> None:
    assert tile_starts(48, 16, 0) == [0, 16, 32]
    assert tile_starts(48, 16, 8) == [0, 8, 16, 24, 32]
    assert tile_starts(40, 16, 4) == [0, 12, 24]
    assert tile_starts(16, 16, 4) == [0]
    for size, tile, ov in [(50, 16, 5), (37, 12, 11), (100, 32, 0)]:
        s = tile_starts(size, tile, ov)
        assert s[0] == 0 and s[-1] == size - tile
        assert all(0 < b - a <= tile - ov for a, b in zip(s, s[1:]))  # covered, >= ov shared
    with pytest.raises(ValueError, match="overlap"):
        tile_starts(48, 16, 16)


def test_blend_window_positive_and_partition_of_unity() -> None:
    for tile, ov in [(16, 4), (16, 8), (12, 11), (8, 0)]:
        w = blend_window(tile, ov, dtype=torch.float64)
        assert w.shape == (tile,) and (w > 0).all() and w.max() <= 1.0
        assert w.max() == 1.0 or tile <= 2 * ov  # flat top when the two ramps do not meet
        torch.testing.assert_close(w, w.flip(0))
        if 0 < ov <= tile // 2:  # two tiles sharing exactly ov px cross-fade to 1
            torch.testing.assert_close(w[-ov:] + w[:ov], torch.ones(ov, dtype=torch.float64))
    assert blend_window(16, 4)[0] == pytest.approx(math.sin(math.pi / 16) ** 2)


def test_tiled_eps_normalises_and_single_tile_is_exact() -> None:
    z = torch.randn(2, 3, 24, 40, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(5)
    ident = lambda zz, tt: zz * 1.0
    for tile, ov, mt in [(16, 4, None), (8, 3, 5), (16, 0, 1)]:  # identity eps -> z, any layout
        torch.testing.assert_close(tiled_eps(ident, z, t, tile=tile, overlap=ov, max_tiles=mt), z, rtol=0, atol=1e-6)
    calls = []
    out = tiled_eps(lambda zz, tt: calls.append(zz.shape) or zz.flip(-1), z, t, tile=48, overlap=8)
    assert torch.equal(out, z.flip(-1)) and calls == [z.shape]


@pytest.mark.parametrize("kw", [{}, {"sampler": "ddim", "steps": 4}, {"sampler": "ddim", "steps": 4, "eta": 1.0}])
def test_one_covering_tile_equals_untiled(purifier: Purifier, kw: dict) -> None:
    for shape, tile in [((2, 16, 16), 16), ((2, 16, 16), 64), ((1, 13, 15), 16)]:
        x = _x(*shape, seed=1)
        seeds = list(range(shape[0]))
        ref = purifier.purify(x, t_star=20, seeds=seeds, **kw)
        assert torch.equal(purifier.purify(x, t_star=20, seeds=seeds, tile=tile, overlap=4, **kw), ref)


def test_tiled_is_batch_size_invariant_with_seeds(purifier: Purifier) -> None:
    x = _x(3, 16, 40, seed=2)  # 16 x 40: tiles of 16 at columns 0, 12, 24
    for kw in ({}, {"sampler": "ddim", "steps": 3, "eta": 0.5}):
        whole = purifier.purify(x, t_star=15, seeds=[4, 5, 6], tile=16, overlap=4, **kw)
        split = purifier.purify(x, t_star=15, seeds=[4, 5, 6], tile=16, overlap=4, batch_size=1, **kw)
        torch.testing.assert_close(whole, split, rtol=0, atol=1e-5)
        alone = purifier.purify(x[1:2], t_star=15, generator=torch.Generator().manual_seed(5), tile=16, overlap=4,
                                **kw)
        torch.testing.assert_close(whole[1:2], alone, rtol=0, atol=1e-5)
        untiled = purifier.purify(x, t_star=15, seeds=[4, 5, 6], **kw)
        # same noise, only epsilon differs near the tile borders: close to, not equal to, untiled
        assert 0 < (whole - untiled).abs().mean() < 0.3 * (untiled - x).abs().mean()


def _seam_ratio(purifier: Purifier, x: torch.Tensor, overlap: int) -> float:
    """Largest single-column jump of D = tiled - untiled, over D's range along the columns."""
    kw = {"t_star": 10, "sampler": "ddim", "steps": 2, "seeds": [0]}
    d = purifier.purify(x, tile=16, overlap=overlap, **kw) - purifier.purify(x, **kw)  # (1, 3, H, W)
    prof = d.mean((0, 1, 2))  # (W,)
    return ((prof[1:] - prof[:-1]).abs().max() / (prof.max() - prof.min())).item()


def test_no_seams_at_tile_borders() -> None:
    """Seam criterion: with the same seeds, tiled and untiled purification share all noise,
    so D = tiled - untiled comes only from the tiles' epsilons. A seam is a step in D: one
    column pair carrying a large share of D's change across the image. With three hard
    tiles (overlap 0) each of the two borders carries about half of D's range (> 40%);
    with an 8 px blend the largest single-column jump must be < 15% of the range (the
    raised-cosine cross-fade spreads it over the overlap; measured ~5%), on a stand-in UNet
    whose epsilon is its tile's mean (the strongest tile dependence) and a horizontal ramp."""
    p = Purifier(_TileMean(), make_scheduler())
    ramp = torch.linspace(0.3, 0.7, 48).expand(1, 3, 16, 48).clone()
    hard, smooth = _seam_ratio(p, ramp, 0), _seam_ratio(p, ramp, 8)
    assert hard > 0.4, hard
    assert smooth < 0.15, smooth


def test_tiled_t_star_zero_and_argument_errors(purifier: Purifier) -> None:
    x = _x(1, 16, 40)
    assert torch.equal(purifier.purify(x, t_star=0, seeds=[0], tile=16), x)
    for tile, ov, match in [(10, 2, "multiple of the UNet's factor 4"), (16, 16, "overlap"), (16, -1, "overlap"),
                            (0, None, "positive multiple")]:
        with pytest.raises(ValueError, match=match):
            purifier.purify(x, t_star=5, seeds=[0], tile=tile, overlap=ov)

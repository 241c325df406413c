"""Noise-level selection: known optima, tie-breaking, the clean-drop constraint, input
checks, and the PSNR curve of a real (tiny) purifier with an identity restorer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from udcguard.metrics.image import psnr
from udcguard.purify import Purifier, build_unet, make_scheduler
from udcguard.purify.selection import psnr_curve, psnr_evaluator, select_t_star


def _synthetic(t: int) -> dict[str, float]:
    """Clean PSNR falls with t, attacked PSNR peaks at t = 40: mean peaks at t = 30."""
    clean = 40.0 - 0.1 * t
    attacked = 20.0 + 0.01 * (1600 - (t - 40) ** 2) * 0.5
    return {"clean_psnr": clean, "attacked_psnr": attacked}


def test_balanced_picks_the_known_optimum() -> None:
    cands = [0, 10, 20, 30, 40, 50, 60]
    t, curve = select_t_star(list(reversed(cands)), _synthetic)
    scores = {r["t"]: r["score"] for r in curve}
    assert t == max(scores, key=scores.get) == 30
    assert [r["t"] for r in curve] == cands  # increasing t, whatever the input order
    assert set(curve[0]) == {"t", "clean_psnr", "attacked_psnr", "score"}
    r = curve[3]
    assert r["score"] == pytest.approx(0.5 * (r["clean_psnr"] + r["attacked_psnr"]))


def test_ties_go_to_the_smaller_t() -> None:
    flat = lambda t: {"clean_psnr": 30.0, "attacked_psnr": 25.0 if t >= 20 else 20.0}  # noqa: E731
    assert select_t_star([40, 20, 30, 10], flat)[0] == 20
    assert select_t_star([40, 20, 30], flat, criterion="max_attacked_within", max_clean_drop_db=0.0)[0] == 20


def test_constraint_respects_max_clean_drop() -> None:
    cands = [0, 10, 20, 30, 40, 50]
    for drop, expected in ((0.5, 0), (1.0, 10), (2.5, 20), (100.0, 40)):
        t, curve = select_t_star(cands, _synthetic, criterion="max_attacked_within", max_clean_drop_db=drop)
        assert t == expected, (drop, t)
        row = next(r for r in curve if r["t"] == t)
        assert row["feasible"] and row["clean_drop_db"] <= drop
        assert all(r["attacked_psnr"] <= row["attacked_psnr"] for r in curve if r["feasible"])
    # without t = 0 among the candidates, the reference comes from evaluate_fn(0)
    calls: list[int] = []
    t, curve = select_t_star(
        [20, 30, 40],
        lambda t: calls.append(t) or _synthetic(t),
        criterion="max_attacked_within",
        max_clean_drop_db=2.5,
    )
    assert t == 20 and 0 in calls and [r["t"] for r in curve] == [20, 30, 40]
    # an explicit reference; none feasible -> the smallest clean drop
    t, curve = select_t_star(
        [20, 30], _synthetic, criterion="max_attacked_within", max_clean_drop_db=0.1, clean_reference_db=40.0
    )
    assert t == 20 and not any(r["feasible"] for r in curve)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="no candidate"):
        select_t_star([], _synthetic)
    with pytest.raises(ValueError, match="outside"):
        select_t_star([10, -1], _synthetic)
    with pytest.raises(ValueError, match="outside"):
        select_t_star([10, 1000], _synthetic, num_train_timesteps=1000)
    with pytest.raises(ValueError, match="duplicate"):
        select_t_star([10, 10], _synthetic)
    with pytest.raises(ValueError, match="integers"):
        select_t_star([10.5], _synthetic)
    with pytest.raises(ValueError, match="criterion"):
        select_t_star([10], _synthetic, criterion="best")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_clean_drop_db"):
        select_t_star([10], _synthetic, criterion="max_attacked_within")
    with pytest.raises(ValueError, match="only apply"):
        select_t_star([10], _synthetic, max_clean_drop_db=1.0)
    with pytest.raises(ValueError, match="nan"):
        select_t_star([10], lambda t: {"clean_psnr": math.nan, "attacked_psnr": 1.0})
    with pytest.raises(ValueError, match="shape"):
        psnr_evaluator(
            lambda x, t: x, lambda y: y, torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5)
        )


def test_psnr_curve_with_tiny_purifier_and_identity_restorer() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    unet = build_unet(sample_size=16, block_out_channels=(8, 16), norm_num_groups=4)
    purifier = Purifier(unet, make_scheduler(num_train_timesteps=100))
    g = torch.Generator().manual_seed(0)
    gt = F.interpolate(torch.rand(2, 3, 4, 4, generator=g), size=(16, 16), mode="bilinear").clamp(0, 1)
    clean = (gt + 0.02 * torch.randn(gt.shape, generator=g)).clamp(0, 1)
    attacked = (clean + (4 / 256) * torch.randn(gt.shape, generator=g).sign()).clamp(0, 1)

    def purify_fn(x: torch.Tensor, t: int) -> torch.Tensor:
        return purifier.purify(x, t_star=t, seeds=[0, 1])

    cands = [0, 5, 20, 60]
    curve = psnr_curve(purify_fn, lambda y: y, clean, attacked, gt, cands)
    assert [r["t"] for r in curve] == cands
    assert curve[0]["clean_psnr"] == pytest.approx(psnr(clean, gt).mean().item(), abs=1e-9)
    assert curve[0]["attacked_psnr"] == pytest.approx(psnr(attacked, gt).mean().item(), abs=1e-9)
    assert curve[0]["attacked_psnr"] < curve[0]["clean_psnr"]
    # an untrained purifier only destroys: PSNR falls with t, and stays finite and positive
    for key in ("clean_psnr", "attacked_psnr"):
        vals = [r[key] for r in curve]
        assert all(a > b for a, b in zip(vals, vals[1:])), (key, vals)
        assert all(0 < v < 100 for v in vals)
    # the same numbers through select_t_star; t = 0 wins for a destroying purifier
    t, sel = select_t_star(cands, psnr_evaluator(purify_fn, lambda y: y, clean, attacked, gt))
    assert t == 0
    assert [r["clean_psnr"] for r in sel] == [r["clean_psnr"] for r in curve]

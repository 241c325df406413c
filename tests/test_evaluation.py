"""merge_draws, recovery share on matched images, summary_table counts and intervals, nested (hand-computed)."""

from __future__ import annotations

import math

import pytest
import torch

from udcguard.evaluation import RECOVERY, merge_draws, nested, recovery_table, summary_table

ZERO = {"ssim": 0.8, "dev_psnr": 40.0, "input_psnr": 20.0, "ssim_worst": 0.8}


def _rec(attack: str, eps: float, defence: str, setting: str, i: str, psnr: float, group: str = "g",
         restorer: str = "discnet") -> dict:
    return {"restorer": restorer, "attack": attack, "eps": eps, "defence": defence, "setting": setting, "id": i,
            "group": group, "psnr": psnr, "psnr_worst": psnr, **ZERO, "draws": 1}


def _three(clean: list[float], attacked: list[float], defended: list[float], **kw) -> list[dict]:
    ids = [f"{k:02d}" for k in range(len(clean))]
    return ([_rec("none", 0.0, "none", "clean", i, p, **kw) for i, p in zip(ids, clean)]
            + [_rec("pgd_linf", 8.0, "none", "white-box", i, p, **kw) for i, p in zip(ids, attacked)]
            + [_rec("pgd_linf", 8.0, "purify", "gray-box", i, p, **kw) for i, p in zip(ids, defended)])


def test_merge_draws_worst_case_by_hand() -> None:
    keys = {"restorer": "r", "attack": "pgd_linf", "eps": 8.0, "defence": "purify", "setting": "gray-box"}
    d1 = [{**keys, "id": "a", "psnr": 30.0, "ssim": 0.90, "lpips": 0.10},
          {**keys, "id": "b", "psnr": 20.0, "ssim": 0.50, "lpips": 0.30}]
    d2 = [{**keys, "id": "a", "psnr": 28.0, "ssim": 0.95, "lpips": 0.20},
          {**keys, "id": "b", "psnr": 22.0, "ssim": 0.40, "lpips": 0.25}]
    a, b = merge_draws([d1, d2])
    assert (a["psnr"], a["psnr_worst"], a["ssim"], a["ssim_worst"]) == pytest.approx((29.0, 28.0, 0.925, 0.90))
    assert (a["lpips"], a["lpips_worst"], a["draws"]) == pytest.approx((0.15, 0.20, 2))
    assert (b["psnr"], b["psnr_worst"], b["ssim"], b["ssim_worst"]) == pytest.approx((21.0, 20.0, 0.45, 0.40))
    assert (b["lpips"], b["lpips_worst"]) == pytest.approx((0.275, 0.30))  # worst LPIPS is the largest
    assert a["eps"] == 8.0 and a["id"] == "a"  # keys are not averaged
    with pytest.raises(ValueError, match="different orders"):
        merge_draws([d1, d2[::-1]])


def test_recovery_share_by_hand() -> None:
    (row,) = recovery_table(_three([30.0], [20.0], [25.0]), n_boot=200)
    assert row["recovery"] == pytest.approx(0.5)
    assert row["recovery_lo"] == row["recovery_hi"] == pytest.approx(0.5)  # one image: degenerate interval
    assert (row["clean_psnr"], row["attacked_psnr"], row["defended_psnr"]) == (30.0, 20.0, 25.0)
    assert (row["recovery_n_images"], row["recovery_n_scenes"], row["recovery_note"]) == (1, 1, "")
    # a ratio of means, not a mean of ratios: (26 - 20) / (31 - 20) = 6/11 (the mean of ratios is 0.5417)
    (row,) = recovery_table(_three([30.0, 32.0], [20.0, 20.0], [25.0, 27.0]), n_boot=200)
    assert row["recovery"] == pytest.approx(6 / 11)


def test_recovery_uses_matched_images_only() -> None:
    recs = _three([30.0, 32.0], [20.0, 20.0], [25.0, 27.0])
    base = recovery_table(recs, n_boot=300)[0]
    extra = recs + [_rec("pgd_linf", 8.0, "purify", "gray-box", "99", 60.0)]  # only in the defended row
    (row,) = recovery_table(extra, n_boot=300)
    assert row["recovery"] == pytest.approx(6 / 11) and row["recovery_n_images"] == 2
    assert (row["recovery_lo"], row["recovery_hi"]) == (base["recovery_lo"], base["recovery_hi"])
    assert row["defended_psnr"] == pytest.approx(26.0)
    rows = {r["setting"]: r for r in summary_table(extra, n_boot=300)}
    assert rows["gray-box"]["n_images"] == 3 and rows["gray-box"]["psnr_mean"] == pytest.approx(112 / 3)
    assert rows["gray-box"]["recovery"] == pytest.approx(6 / 11)
    # an image missing from the clean row leaves the pair out too
    (row,) = recovery_table([r for r in recs if not (r["setting"] == "clean" and r["id"] == "01")], n_boot=100)
    assert row["recovery"] == pytest.approx(0.5) and row["recovery_n_images"] == 1


def test_adaptive_rows_use_the_base_attack_white_box_row_and_a_tiny_gap_is_not_a_share() -> None:
    recs = _three([30.0], [20.0], [25.0]) + [_rec("pgd_linf@adaptive-eot", 8.0, "purify", "adaptive-eot", "00", 22.0)]
    by = {r["setting"]: r for r in recovery_table(recs, n_boot=100)}
    assert by["adaptive-eot"]["recovery"] == pytest.approx(0.2)
    (row,) = recovery_table(_three([20.05], [20.0], [25.0]), n_boot=100)
    assert math.isnan(row["recovery"]) and "< 0.1 dB" in row["recovery_note"]
    assert row["clean_psnr"] == 20.05
    (row,) = recovery_table([r for r in _three([30.0], [20.0], [25.0]) if r["setting"] != "white-box"])
    assert row["recovery"] is None and "attacked" in row["recovery_note"]


def test_recovery_interval_resamples_scenes() -> None:
    # scene a: the defence recovers everything, scene b: nothing; 2 scenes x 3 images
    clean, attacked = [30.0] * 6, [20.0] * 6
    defended = [30.0, 30.0, 30.0, 20.0, 20.0, 20.0]
    recs = _three(clean, attacked, defended)
    for r in recs:
        r["group"] = "a" if r["id"] in ("00", "01", "02") else "b"
    (row,) = recovery_table(recs, n_boot=2000)
    assert row["recovery"] == pytest.approx(0.5) and row["recovery_n_scenes"] == 2
    assert (row["recovery_lo"], row["recovery_hi"]) == (0.0, 1.0)  # AA and BB scene draws, 1/4 each


def test_summary_table_counts_intervals_and_determinism() -> None:
    recs = _three([30.0, 31.0, 29.0, 33.0], [20.0, 21.0, 19.0, 20.0], [25.0, 26.0, 24.0, 27.0])
    for r in recs:
        r["group"] = "s1" if r["id"] in ("00", "01") else "s2"
    rows = summary_table(recs, n_boot=500, seed=1)
    assert [(r["setting"], r["n_images"], r["n_scenes"]) for r in rows] == [
        ("clean", 4, 2), ("white-box", 4, 2), ("gray-box", 4, 2)]
    assert all(isinstance(r["n_images"], int) and isinstance(r["n_scenes"], int) for r in rows)
    for r in rows:
        assert r["psnr_lo"] <= r["psnr_mean"] <= r["psnr_hi"] and r["psnr_lo"] < r["psnr_hi"]
        assert r["ssim_lo"] == pytest.approx(0.8) and r["ssim_hi"] == pytest.approx(0.8)
        assert set(RECOVERY) <= set(r) and {"psnr_std", "psnr_min", "psnr_max"} <= set(r)
    assert rows[0]["recovery"] is None and rows[1]["recovery"] is None
    assert rows[2]["recovery"] == pytest.approx((25.5 - 20.0) / (30.75 - 20.0))
    assert summary_table(recs, n_boot=500, seed=1) == rows
    big = _three([30.0 + 0.1 * k for k in range(20)], [20.0 + 0.3 * k for k in range(20)], [25.0] * 20)
    assert summary_table(big, n_boot=200, seed=1) != summary_table(big, n_boot=200, seed=2)  # 4 images: discrete
    # a row's interval does not depend on the other rows
    alone = summary_table([r for r in recs if r["setting"] == "white-box"], n_boot=500, seed=1)[0]
    assert (alone["psnr_lo"], alone["psnr_hi"]) == (rows[1]["psnr_lo"], rows[1]["psnr_hi"])


def test_nested_carries_intervals_counts_and_recovery() -> None:
    rows = summary_table(_three([30.0, 32.0], [20.0, 20.0], [25.0, 27.0]), n_boot=200)
    tree = nested(rows)
    leaf = tree["discnet"]["pgd_linf"]["eps_8"]["purify"]
    assert leaf["n_images"] == 2 and leaf["n_scenes"] == 1 and leaf["recovery"] == pytest.approx(6 / 11, abs=1e-4)
    assert leaf["psnr_lo"] <= leaf["psnr"] <= leaf["psnr_hi"] and "ssim_lo" in leaf
    assert "recovery" not in tree["discnet"]["none"]["eps_0"]["none"]


def test_reduce_draws_mean_and_median_by_hand() -> None:
    from udcguard.evaluation import reduce_draws

    a, b, c, d = (torch.full((1, 1, 1, 2), v) for v in (0.1, 0.9, 0.3, 0.5))
    b[..., 1] = -1.0  # per pixel: the second pixel orders differently
    assert torch.allclose(reduce_draws([a, b, c], "mean"), torch.tensor([[[[1.3 / 3, -0.6 / 3]]]]))
    assert torch.allclose(reduce_draws([a, b, c], "median"), torch.tensor([[[[0.3, 0.1]]]]))
    # even K: the mean of the two middle values; K = 2 is the mean either way
    assert torch.allclose(reduce_draws([a, b, c, d], "median"), torch.tensor([[[[0.4, 0.2]]]]))
    assert torch.equal(reduce_draws([a, b], "median"), reduce_draws([a, b], "mean"))
    with pytest.raises(ValueError, match="how must be mean or median"):
        reduce_draws([a], "max")
    with pytest.raises(ValueError, match="no outputs"):
        reduce_draws([], "mean")


def test_averaged_defences_and_their_settings() -> None:
    from udcguard.evaluation import AVERAGED, DEFENCES, defences, setting_of

    assert defences() == defences("off") == DEFENCES
    assert defences("median") == (*DEFENCES, "purify-avg", "purify-avg+finetune") and set(AVERAGED.values()) <= set(DEFENCES)
    with pytest.raises(ValueError, match="draw_average"):
        defences("max")
    assert setting_of("pgd_linf", "purify-avg+finetune", "finetuned") == "gray-box"
    assert setting_of("pgd_linf", "purify-avg+finetune", "base") == "transfer"
    assert setting_of("pgd_linf", "purify-avg", "base") == "gray-box"

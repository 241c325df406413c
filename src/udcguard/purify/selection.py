"""Automatic choice of the purification strength t* from a validation curve.

Inspired by the Adaptive Noise Level Selection (ANLS) of UAD-RS (Yu, Xu and Ghamisi,
"Universal Adversarial Defense in Remote Sensing Based on Pre-trained Denoising
Diffusion Models", arXiv 2307.16865), which purifies at several noise levels and keeps
the one whose purified images are closest to clean ones (a task-guided FID ranking in
deep-feature space). What is implemented here is not their FID ranking but its
task-level analogue for restoration: for each candidate t, a caller-supplied
``evaluate_fn(t)`` reports the mean restored PSNR (dB, against ground truth) on a
held-out slice of clean inputs and of attacked inputs, both purified at t; a criterion
turns the two into a score and the best candidate wins:

- ``"balanced"``: score = (clean_psnr + attacked_psnr) / 2.
- ``"max_attacked_within"``: score = attacked_psnr, among the candidates whose clean PSNR
  is at most ``max_clean_drop_db`` below the unpurified clean PSNR (the clean PSNR at
  t = 0, or ``clean_reference_db``). If none qualifies, the candidate with the smallest
  clean drop is returned (include 0 among the candidates to rule that out).

Ties go to the smaller t (less purification: cheaper and closer to the input). Pure:
no I/O; the curve is returned for the caller to log or plot.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor

from udcguard.metrics.image import psnr
from udcguard.metrics.summary import PSNR_CAP_DB

Criterion = Literal["balanced", "max_attacked_within"]
CRITERIA: tuple[str, ...] = ("balanced", "max_attacked_within")
EvaluateFn = Callable[[int], Mapping[str, float]]
PurifyFn = Callable[[Tensor, int], Tensor]
RestoreFn = Callable[[Tensor], Tensor]


def _check_candidates(candidates: Sequence[int], num_train_timesteps: int | None) -> list[int]:
    ts = list(candidates)
    if not ts:
        raise ValueError("select_t_star: no candidate t*")
    out = []
    for t in ts:
        if isinstance(t, bool) or int(t) != t:
            raise ValueError(f"candidate t* must be integers, got {t!r}")
        t = int(t)
        if t < 0 or (num_train_timesteps is not None and t >= num_train_timesteps):
            hi = "" if num_train_timesteps is None else f", {num_train_timesteps - 1}"
            raise ValueError(f"candidate t*={t} outside [0{hi}]")
        out.append(t)
    if len(set(out)) != len(out):
        raise ValueError(f"duplicate candidate t*: {out}")
    return sorted(out)


def _finite_db(value: float, what: str, t: int) -> float:
    v = float(value)
    if math.isnan(v) or v == -math.inf:
        raise ValueError(f"{what} at t*={t} is {v}")
    return min(v, PSNR_CAP_DB)  # +inf (identical images) -> the summaries' cap


def select_t_star(
    candidates: Sequence[int],
    evaluate_fn: EvaluateFn,
    *,
    criterion: Criterion = "balanced",
    max_clean_drop_db: float | None = None,
    clean_reference_db: float | None = None,
    num_train_timesteps: int | None = None,
) -> tuple[int, list[dict]]:
    """Pick t* among ``candidates`` by a validation criterion (see the module docstring).

    Args:
        candidates: distinct integer timesteps >= 0 (evaluated in increasing order).
        evaluate_fn: t -> {"clean_psnr": dB, "attacked_psnr": dB}, e.g.
            :func:`psnr_evaluator`. +inf is capped at ``PSNR_CAP_DB``; NaN is an error.
        criterion: ``"balanced"`` or ``"max_attacked_within"``.
        max_clean_drop_db: allowed clean-PSNR drop in dB (>= 0); required by, and only
            allowed with, ``"max_attacked_within"``.
        clean_reference_db: unpurified clean PSNR for the drop; default the clean PSNR at
            t = 0 (from the curve when 0 is a candidate, else one extra ``evaluate_fn(0)``).
        num_train_timesteps: T; candidates must then lie in [0, T - 1].

    Returns:
        (t_best, curve): curve has one dict per candidate, increasing t, with keys
        ``t, clean_psnr, attacked_psnr, score``, and for ``"max_attacked_within"`` also
        ``clean_drop_db, feasible``. t_best maximises ``score`` (over feasible entries).
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; valid: {list(CRITERIA)}")
    constrained = criterion == "max_attacked_within"
    if constrained and (max_clean_drop_db is None or not max_clean_drop_db >= 0):
        raise ValueError(f"criterion 'max_attacked_within' needs max_clean_drop_db >= 0, got {max_clean_drop_db}")
    if not constrained and (max_clean_drop_db is not None or clean_reference_db is not None):
        raise ValueError("max_clean_drop_db / clean_reference_db only apply to 'max_attacked_within'")
    ts = _check_candidates(candidates, num_train_timesteps)

    curve: list[dict] = []
    for t in ts:
        s = evaluate_fn(t)
        clean = _finite_db(s["clean_psnr"], "clean_psnr", t)
        attacked = _finite_db(s["attacked_psnr"], "attacked_psnr", t)
        score = attacked if constrained else 0.5 * (clean + attacked)
        curve.append({"t": t, "clean_psnr": clean, "attacked_psnr": attacked, "score": score})

    if not constrained:
        return _argmax(curve, "score"), curve

    if clean_reference_db is not None:
        ref = float(clean_reference_db)
    elif ts[0] == 0:
        ref = curve[0]["clean_psnr"]
    else:
        ref = _finite_db(evaluate_fn(0)["clean_psnr"], "clean_psnr", 0)
    for row in curve:
        row["clean_drop_db"] = ref - row["clean_psnr"]
        row["feasible"] = row["clean_drop_db"] <= max_clean_drop_db
    feasible = [row for row in curve if row["feasible"]]
    if feasible:
        return _argmax(feasible, "score"), curve
    return min(curve, key=lambda r: (r["clean_drop_db"], r["t"]))["t"], curve


def _argmax(rows: list[dict], key: str) -> int:
    """t of the row with the largest ``key``; the first (smallest t) on ties."""
    best = rows[0]
    for row in rows[1:]:
        if row[key] > best[key]:
            best = row
    return best["t"]


def _mean_psnr(restored: Tensor, gt: Tensor) -> float:
    v = psnr(restored.clamp(0.0, 1.0), gt)  # (B,)
    return float(v.clamp(max=PSNR_CAP_DB).mean())


def psnr_evaluator(
    purify_fn: PurifyFn,
    restore_fn: RestoreFn,
    clean: Tensor,
    attacked: Tensor,
    gt: Tensor,
) -> EvaluateFn:
    """An ``evaluate_fn`` for :func:`select_t_star`: restored PSNR after purification at t.

    ``evaluate_fn(t)`` returns ``{"clean_psnr", "attacked_psnr"}``: the mean over images
    of PSNR(restore_fn(purify_fn(y, t)).clamp(0, 1), gt) in dB (+inf capped at
    ``PSNR_CAP_DB``), for y = ``clean`` and y = ``attacked``. Give ``purify_fn`` fixed
    seeds (the same at every t) so that candidates differ only by t; attacked inputs are
    fixed, i.e. the attack does not adapt to t (score adaptive attacks separately).

    Args:
        purify_fn: (x, t) -> purified x; must return x unchanged at t = 0.
        restore_fn: degraded -> restored images.
        clean: degraded clean inputs in [0, 1].
        attacked: their attacked versions.
        gt: ground truth in [0, 1].

    Shape:
        clean, attacked, gt: (B, 3, H, W).
    """
    if not (clean.shape == attacked.shape == gt.shape) or clean.ndim != 4:
        raise ValueError(
            f"clean, attacked, gt must share a (B, C, H, W) shape: "
            f"{tuple(clean.shape)}, {tuple(attacked.shape)}, {tuple(gt.shape)}"
        )

    @torch.no_grad()
    def evaluate(t: int) -> dict[str, float]:
        return {
            "clean_psnr": _mean_psnr(restore_fn(purify_fn(clean, t)), gt),
            "attacked_psnr": _mean_psnr(restore_fn(purify_fn(attacked, t)), gt),
        }

    return evaluate


def psnr_curve(
    purify_fn: PurifyFn,
    restore_fn: RestoreFn,
    clean: Tensor,
    attacked: Tensor,
    gt: Tensor,
    candidates: Sequence[int],
) -> list[dict]:
    """Restored PSNR against t*: one ``{"t", "clean_psnr", "attacked_psnr"}`` per candidate,
    in increasing t (see :func:`psnr_evaluator` for the definitions and argument shapes)."""
    ts = _check_candidates(candidates, None)
    evaluate = psnr_evaluator(purify_fn, restore_fn, clean, attacked, gt)
    return [{"t": t, **evaluate(t)} for t in ts]

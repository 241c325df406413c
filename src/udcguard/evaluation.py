"""Evaluation protocol (design.md section 4): per-image scores -> long-format table.

Scores are computed in the tone-mapped domain between the restored output (clamped to
[0, 1]) and the ground truth: PSNR, SSIM and LPIPS (``lpips`` with local pretrained
weights, else the random-feature ``lpips_rand``, reported under that name); and the
deviation PSNR between the output on the attacked input and the output on the clean input
(how far the attack moved the restorer, whatever the ground truth).

Every mean carries a 95 % two-level bootstrap interval (scene groups, then images) and its image and scene counts;
the headline recovery share is computed on the images common to the clean, attacked and defended rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from udcguard.attacks.build import needs_surrogate
from udcguard.metrics.bootstrap import N_BOOT, bootstrap_ci, group_codes, resample_weights
from udcguard.metrics.image import psnr, ssim
from udcguard.metrics.summary import summarize_ci

KEYS = ["restorer", "attack", "eps", "defence", "setting"]
METRICS = ["psnr", "ssim", "dev_psnr", "input_psnr", "psnr_worst", "ssim_worst"]
#: Perceptual metric columns: at most one of them is present in a table.
PERCEPTUAL = ["lpips", "lpips_rand"]
PSNR_CAP = 100.0


#: Defences of the evaluation, in table order.
DEFENCES = ("none", "purify", "purify+finetune")
#: Averaged defences (``evaluate.draw_average``): the mean or per-pixel median of the restored outputs of
#: the K purification draws of the defence they map to, scored as one output (one row per image, K x the
#: UNet calls). Their adaptive rows reuse that defence's EOT/BPDA/full sets: EOT's gradient is the mean of
#: per-draw gradients, an unbiased estimate of the gradient of the mean defence.
AVERAGED = {"purify-avg": "purify", "purify-avg+finetune": "purify+finetune"}
REDUCTIONS = ("mean", "median")


def defences(draw_average: str = "off") -> tuple[str, ...]:
    """The evaluated defences, in table order: :data:`DEFENCES`, then the averaged ones unless ``off``."""
    if draw_average != "off" and draw_average not in REDUCTIONS:
        raise ValueError(f"draw_average must be off, {' or '.join(REDUCTIONS)}; got {draw_average!r}")
    return DEFENCES + (tuple(AVERAGED) if draw_average != "off" else ())


def uses_finetuned(defence: str) -> bool:
    """Whether a defence deploys the fine-tuned restorer (``purify+finetune``, ``purify-avg+finetune``)."""
    return defence.endswith("+finetune")


def reduce_draws(outputs: Sequence[Tensor], how: str) -> Tensor:
    """K restored outputs of one input set (K, then (B, C, H, W) each) -> their per-pixel mean or median.

    The median of an even K is the mean of the two middle values, so that K = 2 gives the mean
    either way.
    """
    if not outputs:
        raise ValueError("reduce_draws: no outputs")
    if how not in REDUCTIONS:
        raise ValueError(f"reduce_draws: how must be {' or '.join(REDUCTIONS)}, got {how!r}")
    stack = torch.stack([o.float() for o in outputs])  # (K, B, C, H, W)
    if how == "mean":
        return stack.mean(0)
    ranked, k = stack.sort(dim=0).values, stack.shape[0]
    return (ranked[(k - 1) // 2] + ranked[k // 2]) / 2


def setting_of(method: str, defence: str, target: str) -> str:
    """The threat setting of a row (design.md section 4).

    clean: no attack. white-box: the undefended restorer attacked directly. gray-box: the attacker
    knows the deployed restorer (base for ``purify``, fine-tuned for ``purify+finetune``; the same for
    their averaged forms), not the
    purifier. transfer: crafted on another model (the transfer attack's surrogate, or the base
    restorer scored on the fine-tuned one behind the purifier).
    """
    if method == "none":
        return "clean"
    if needs_surrogate(method):  # crafted on a surrogate: transfer whatever the defence
        return "transfer"
    if defence == "none":
        return "white-box"
    deployed = "finetuned" if uses_finetuned(defence) else "base"
    return "gray-box" if target == deployed else "transfer"


def _cap(v: float) -> float:
    return min(float(v), PSNR_CAP)


def score_images(
    output: Tensor, gt: Tensor, clean_output: Tensor, inputs: Tensor, ids: Sequence[str],
    perceptual: tuple[str, Callable[[Tensor, Tensor], Tensor]] | None = None, **keys: Any
) -> list[dict[str, Any]]:
    """One record per image: keys + psnr, ssim, dev_psnr (vs clean_output), input_psnr.

    ``perceptual``: ``(name, fn)`` with ``fn(a, b) -> (B,)``, e.g. ("lpips", LPIPS): adds a
    ``name`` column (output vs gt; lower is better).
    """
    p, s = psnr(output, gt), ssim(output, gt)
    dev, inp = psnr(output, clean_output), psnr(inputs.clamp(0, 1), gt)
    per = perceptual[1](output, gt) if perceptual is not None else None
    return [
        {**keys, "id": i, "psnr": _cap(p[k]), "ssim": float(s[k]), "dev_psnr": _cap(dev[k]), "input_psnr": _cap(inp[k]),
         **({perceptual[0]: float(per[k])} if per is not None and perceptual is not None else {})}
        for k, i in enumerate(ids)
    ]


def merge_draws(draws: Sequence[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per-image records of K purification draws -> one record per image (design.md section 4).

    Every metric becomes its mean over the draws; ``psnr_worst`` / ``ssim_worst`` are the
    minimum over draws (the worst case for the defender), ``<lpips>_worst`` the maximum;
    ``draws`` is K. With one draw (or a deterministic defence) worst = mean.
    """
    if not draws:
        raise ValueError("merge_draws: no draws")
    out = []
    for per_image in zip(*draws, strict=True):
        first = per_image[0]
        if any(r["id"] != first["id"] for r in per_image):
            raise ValueError("merge_draws: draws list the images in different orders")
        rec = dict(first)
        numeric = [k for k, v in first.items() if isinstance(v, float) and k not in KEYS]
        for k in numeric:
            rec[k] = sum(r[k] for r in per_image) / len(per_image)
        rec["psnr_worst"] = min(r["psnr"] for r in per_image)
        rec["ssim_worst"] = min(r["ssim"] for r in per_image)
        for m in PERCEPTUAL:
            if m in first:
                rec[f"{m}_worst"] = max(r[m] for r in per_image)
        rec["draws"] = len(per_image)
        out.append(rec)
    return out


def metric_names(records: list[dict[str, Any]]) -> list[str]:
    """METRICS plus the perceptual column the records carry, if any."""
    present = {k for r in records[:1] for k in r}
    return METRICS + [x for m in PERCEPTUAL if m in present for x in (m, f"{m}_worst")]


def base_attack(attack: str) -> str:
    """The attack id an attack row derives from: ``"pgd_linf@adaptive-eot"`` -> ``"pgd_linf"``."""
    return attack.split("@", 1)[0]


def summary_table(records: list[dict[str, Any]], *, n_boot: int = N_BOOT, seed: int = 0) -> list[dict[str, Any]]:
    """Long-format table: one row per (restorer, attack, eps, defence, setting), with intervals and recovery.

    Columns: the KEYS; ``n_images``, ``n_scenes`` (ints); for each metric m of :func:`metric_names` ``<m>_mean``,
    ``<m>_lo``, ``<m>_hi`` (95 % two-level bootstrap interval: scenes, then images), ``<m>_std``, ``<m>_min``,
    ``<m>_max``; then the :data:`RECOVERY` columns, None where the row is not a defended, attacked row (or its
    reference rows are missing). Deterministic for a given seed.
    """
    rows = summarize_ci(records, KEYS, metric_names(records), n_boot=n_boot, seed=seed)
    rec = {tuple(r[k] for k in KEYS): r for r in recovery_table(records, n_boot=n_boot, seed=seed)}
    for r in rows:
        hit = rec.get(tuple(r[k] for k in KEYS), {})
        r.update({c: hit.get(c) for c in RECOVERY})
    return sorted(rows, key=lambda r: (r["restorer"], r["attack"], float(r["eps"]), r["defence"], r["setting"]))


#: Recovery columns merged into the summary rows (see :func:`recovery_table`).
RECOVERY = ["recovery", "recovery_lo", "recovery_hi", "recovery_n_images", "recovery_n_scenes", "clean_psnr",
            "attacked_psnr", "defended_psnr", "recovery_note"]
#: Below this clean - attacked PSNR gap (dB, on the matched images) the recovery share is not reported.
MIN_GAP_DB = 0.1


def _defended(r: dict[str, Any]) -> bool:
    return r["defence"] != "none" and r["setting"] != "clean"


def recovery_table(records: list[dict[str, Any]], *, n_boot: int = N_BOOT, seed: int = 0,
                   min_gap_db: float = MIN_GAP_DB) -> list[dict[str, Any]]:
    """The headline figure: recovery share of PSNR, one row per defended (restorer, attack, eps, defence, setting).

    ``recovery = (defended - attacked) / (clean - attacked)`` with ``clean`` the restorer's undefended clean row
    (attack "none", defence "none", setting "clean"), ``attacked`` its undefended row under the same base attack
    (the id before "@") and eps (the "white-box" one; else the one other undefended setting there is, e.g.
    "transfer"), ``defended`` the row itself. Computed on MATCHED images only (ids present in all three rows), as
    a ratio of means, with a two-level bootstrap of the paired per-image triples (scenes, then images) for the 95 %
    interval. Columns: the KEYS and :data:`RECOVERY`; ``recovery_note`` says why a share is missing (NaN) when the
    matched clean - attacked gap is below ``min_gap_db`` or a reference row is absent ("" otherwise).
    """
    cells: dict[tuple[Any, ...], dict[Any, dict[str, Any]]] = {}
    for r in records:
        cells.setdefault(tuple(r[k] for k in KEYS), {})[r["id"]] = r
    undefended: dict[tuple[Any, ...], dict[str, tuple[Any, ...]]] = {}
    for key in cells:
        row = dict(zip(KEYS, key, strict=True))
        if row["defence"] == "none" and row["setting"] != "clean":
            undefended.setdefault((row["restorer"], base_attack(row["attack"]), float(row["eps"])), {})[
                row["setting"]] = key
    cache: dict[tuple[int, ...], np.ndarray] = {}
    out = []
    for key, defended in cells.items():
        row = dict(zip(KEYS, key, strict=True))
        if not _defended(row):
            continue
        clean = cells.get((row["restorer"], "none", 0.0, "none", "clean"))
        if clean is None:
            clean = next((v for k, v in cells.items() if k[0] == row["restorer"] and k[3:] == ("none", "clean")), None)
        refs = undefended.get((row["restorer"], base_attack(row["attack"]), float(row["eps"])), {})
        ref = refs.get("white-box") or (next(iter(refs.values())) if len(refs) == 1 else None)
        attacked = cells.get(ref) if ref is not None else None
        res: dict[str, Any] = {**row, **dict.fromkeys(RECOVERY), "recovery_note": ""}
        if clean is None or attacked is None:
            res["recovery_note"] = "no undefended clean row" if clean is None else "no undefended attacked row"
            out.append(res)
            continue
        ids = sorted(set(clean) & set(attacked) & set(defended),
                     key=lambda i: (str(defended[i].get("group", ("id", i))), str(i)))
        if not ids:
            res["recovery_note"] = "no image in common with the reference rows"
            out.append(res)
            continue
        v = np.asarray([[clean[i]["psnr"], attacked[i]["psnr"], defended[i]["psnr"]] for i in ids], dtype=np.float64)
        v = np.minimum(v, PSNR_CAP)  # (n, 3): clean, attacked, defended
        codes = group_codes([defended[i].get("group", ("id", i)) for i in ids])
        sizes = tuple(np.bincount(codes).tolist())
        if sizes not in cache:
            cache[sizes] = resample_weights(codes, n_boot, np.random.default_rng(seed))
        m = v.mean(axis=0)
        res.update(recovery_n_images=len(ids), recovery_n_scenes=len(sizes), clean_psnr=float(m[0]),
                   attacked_psnr=float(m[1]), defended_psnr=float(m[2]))
        if m[0] - m[1] < min_gap_db:
            res.update(recovery=math.nan, recovery_lo=math.nan, recovery_hi=math.nan,
                       recovery_note=f"the attack costs {m[0] - m[1]:.2f} dB < {min_gap_db:g} dB: share undefined")
        else:
            est, lo, hi = bootstrap_ci(v, ids, stat=_share, weights=cache[sizes])
            res.update(recovery=est, recovery_lo=lo, recovery_hi=hi)
        out.append(res)
    return sorted(out, key=lambda r: (r["restorer"], r["attack"], float(r["eps"]), r["defence"], r["setting"]))


def _share(means: np.ndarray) -> np.ndarray:
    """(..., 3) means of (clean, attacked, defended) -> recovery share (...,); NaN where the gap is not positive."""
    gap = means[..., 0] - means[..., 1]
    return np.where(gap > 0, (means[..., 2] - means[..., 1]) / np.where(gap > 0, gap, 1.0), np.nan)


#: Metrics with their interval in metrics.json; the others carry their mean only.
NESTED_CI = ["psnr", "ssim"]


def nested(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The table keyed restorer -> attack -> eps -> defence -> metric (DVC metrics form).

    Each leaf: every metric's mean under its name, ``<m>_lo`` / ``<m>_hi`` for :data:`NESTED_CI`, ``n_images``,
    ``n_scenes``, and ``recovery``, ``recovery_lo``, ``recovery_hi`` where the row has a share. A defence that
    appears under two settings of one attack is keyed ``<defence>/<setting>`` the second time.
    """
    out: dict[str, Any] = {}
    for r in rows:
        node = out.setdefault(r["restorer"], {}).setdefault(r["attack"], {}).setdefault(f"eps_{float(r['eps']):g}", {})
        name = r["defence"] if r["defence"] not in node else f"{r['defence']}/{r['setting']}"
        leaf = node.setdefault(name, {})
        for m in METRICS + PERCEPTUAL + [f"{m}_worst" for m in PERCEPTUAL]:
            if f"{m}_mean" in r:
                leaf[m] = round(float(r[f"{m}_mean"]), 4)
                if m in NESTED_CI and f"{m}_lo" in r:
                    leaf[f"{m}_lo"], leaf[f"{m}_hi"] = round(float(r[f"{m}_lo"]), 4), round(float(r[f"{m}_hi"]), 4)
        for c in ("n_images", "n_scenes"):
            if c in r:
                leaf[c] = int(r[c])
        if r.get("recovery") is not None and math.isfinite(r["recovery"]):
            for c in ("recovery", "recovery_lo", "recovery_hi"):
                leaf[c] = round(float(r[c]), 4)
    return out

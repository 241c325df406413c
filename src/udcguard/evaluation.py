"""Evaluation protocol (design.md section 4): per-image scores -> long-format table.

Scores are computed in the tone-mapped domain between the restored output (clamped to
[0, 1]) and the ground truth: PSNR, SSIM and LPIPS (``lpips`` with local pretrained
weights, else the random-feature ``lpips_rand``, reported under that name); and the
deviation PSNR between the output on the attacked input and the output on the clean input
(how far the attack moved the restorer, whatever the ground truth).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

from udcguard.metrics.image import psnr, ssim
from udcguard.metrics.summary import summarize

KEYS = ["restorer", "attack", "eps", "defence", "setting"]
METRICS = ["psnr", "ssim", "dev_psnr", "input_psnr", "psnr_worst", "ssim_worst"]
#: Perceptual metric columns: at most one of them is present in a table.
PERCEPTUAL = ["lpips", "lpips_rand"]
PSNR_CAP = 100.0


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


def summary_table(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Long-format table: one row per (restorer, attack, eps, defence) with mean metrics."""
    rows = summarize(records, by=KEYS, metrics=metric_names(records))
    return sorted(rows, key=lambda r: (r["restorer"], r["attack"], float(r["eps"]), r["defence"]))


def nested(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The table keyed restorer -> attack -> eps -> defence -> metric (DVC metrics form)."""
    out: dict[str, Any] = {}
    for r in rows:
        node = out.setdefault(r["restorer"], {}).setdefault(r["attack"], {})
        leaf = node.setdefault(f"eps_{r['eps']:g}", {}).setdefault(r["defence"], {})
        for m in METRICS + PERCEPTUAL + [f"{m}_worst" for m in PERCEPTUAL]:
            if f"{m}_mean" in r:
                leaf[m] = round(float(r[f"{m}_mean"]), 4)
    return out

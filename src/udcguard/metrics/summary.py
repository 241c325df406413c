"""Per-image records -> one summary row per group (design.md, section 4).

A record is a flat dict such as ``{"restorer": "discnet", "attack": "pgd_linf",
"eps": 8, "image": "0007", "psnr": 30.1, "ssim": 0.91}``. :func:`summarize` groups the
records by some keys and reports, for each metric, the mean, the (population) standard
deviation, the minimum (the worst case for PSNR/SSIM) and the maximum, plus the number
of records in the group.

Infinite values: PSNR of identical images is +inf. Before aggregating, +inf is replaced by
``inf_cap`` (default 100 dB) so that means stay finite and comparable; the number of
replaced values is reported as ``<metric>_n_capped``. -inf and NaN are errors.

:func:`summarize_ci` adds the 95 % two-level bootstrap interval (scenes, then images) of every mean and the
image and scene counts (see :mod:`udcguard.metrics.bootstrap`).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from udcguard.metrics.bootstrap import (
    LEVEL,
    N_BOOT,
    group_codes,
    percentile_interval,
    replicate_means,
    resample_weights,
)

#: +inf metric values (PSNR of identical images) are replaced by this before averaging.
PSNR_CAP_DB = 100.0


def summarize(
    records: Sequence[Mapping[str, Any]],
    by: Sequence[str],
    metrics: Sequence[str],
    *,
    inf_cap: float = PSNR_CAP_DB,
) -> list[dict[str, Any]]:
    """Group ``records`` by the keys ``by``; aggregate each of ``metrics`` per group.

    Returns one dict per group, groups in order of first appearance:
    ``{<by keys>..., "count": n, "<m>_mean", "<m>_std", "<m>_min", "<m>_max",
    "<m>_n_capped"}`` for each metric m (floats, std with ddof=0; n_capped an int).
    Every record must hold every key in ``by`` and ``metrics`` (ValueError otherwise).
    """
    if not metrics:
        raise ValueError("summarize: metrics is empty")
    groups: dict[tuple[Hashable, ...], list[Mapping[str, Any]]] = {}
    for i, rec in enumerate(records):
        missing = [k for k in (*by, *metrics) if k not in rec]
        if missing:
            raise ValueError(f"summarize: record {i} lacks key(s) {missing}")
        groups.setdefault(tuple(rec[k] for k in by), []).append(rec)

    rows: list[dict[str, Any]] = []
    for key, recs in groups.items():
        row: dict[str, Any] = dict(zip(by, key, strict=True))
        row["count"] = len(recs)
        for m in metrics:
            v = np.asarray([float(r[m]) for r in recs], dtype=np.float64)
            bad = np.isnan(v) | (v == -math.inf)
            if bad.any():
                raise ValueError(
                    f"summarize: metric {m!r} is NaN or -inf in group {key}"
                )
            capped = v == math.inf
            v = np.where(capped, inf_cap, v)
            row[f"{m}_mean"] = float(v.mean())
            row[f"{m}_std"] = float(v.std())
            row[f"{m}_min"] = float(v.min())
            row[f"{m}_max"] = float(v.max())
            row[f"{m}_n_capped"] = int(capped.sum())
        rows.append(row)
    return rows


def summarize_ci(
    records: Sequence[Mapping[str, Any]],
    by: Sequence[str],
    metrics: Sequence[str],
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = LEVEL,
    id_key: str = "id",
    group_key: str = "group",
    inf_cap: float = PSNR_CAP_DB,
) -> list[dict[str, Any]]:
    """Like :func:`summarize`, with a two-level bootstrap interval (scenes, then images) on every mean.

    Returns one dict per group of ``by``, in order of first appearance: the ``by`` keys, ``n_images`` (distinct
    ``id_key`` values) and ``n_scenes`` (distinct ``group_key`` values), and for each metric m ``<m>_mean``,
    ``<m>_lo``, ``<m>_hi`` (the ``level`` percentile interval of the mean), ``<m>_std`` (ddof=0), ``<m>_min``,
    ``<m>_max``. A record without ``group_key`` is its own scene group. Each row's interval is drawn from a fresh
    ``numpy.random.default_rng(seed)``, so it depends on the seed and the row's image set only (not on the other
    rows); rows on the same image set share their replicates (common random numbers).
    """
    rows = summarize(records, by, metrics, inf_cap=inf_cap)
    members: dict[tuple[Hashable, ...], list[Mapping[str, Any]]] = {}
    for rec in records:
        members.setdefault(tuple(rec[k] for k in by), []).append(rec)
    cache: dict[tuple[int, ...], np.ndarray] = {}
    for row in rows:
        recs = members[tuple(row[k] for k in by)]
        ids = [rec[id_key] for rec in recs]
        if len(set(ids)) != len(ids):
            raise ValueError(f"summarize_ci: an image appears twice in group {[row[k] for k in by]}")
        recs = sorted(recs, key=lambda r: (str(r.get(group_key, r[id_key])), str(r[id_key])))
        codes = group_codes([r.get(group_key, ("id", r[id_key])) for r in recs])
        sizes = tuple(np.bincount(codes).tolist())  # sorted by group: the sizes fix the weights
        if sizes not in cache:
            cache[sizes] = resample_weights(codes, n_boot, np.random.default_rng(seed))
        v = np.asarray([[float(r[m]) for m in metrics] for r in recs], dtype=np.float64)
        v = np.where(v == math.inf, inf_cap, v)  # (n, k)
        lo, hi = percentile_interval(replicate_means(v, cache[sizes]), level)
        out: dict[str, Any] = {k: row[k] for k in by}
        out["n_images"], out["n_scenes"] = len(recs), len(sizes)
        for j, m in enumerate(metrics):
            out[f"{m}_mean"] = row[f"{m}_mean"]
            out[f"{m}_lo"], out[f"{m}_hi"] = float(lo[j]), float(hi[j])
            for s in ("std", "min", "max"):
                out[f"{m}_{s}"] = row[f"{m}_{s}"]
        row.clear()
        row.update(out)
    return rows

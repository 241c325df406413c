"""Per-image records -> one summary row per group (design.md, section 4).

A record is a flat dict such as ``{"restorer": "discnet", "attack": "pgd_linf",
"eps": 8, "image": "0007", "psnr": 30.1, "ssim": 0.91}``. :func:`summarize` groups the
records by some keys and reports, for each metric, the mean, the (population) standard
deviation, the minimum (the worst case for PSNR/SSIM) and the maximum, plus the number
of records in the group.

Infinite values: PSNR of identical images is +inf. Before aggregating, +inf is replaced by
``inf_cap`` (default 100 dB) so that means stay finite and comparable; the number of
replaced values is reported as ``<metric>_n_capped``. -inf and NaN are errors.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

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

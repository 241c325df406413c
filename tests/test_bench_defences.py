"""bench/bench_defences.py: per-image cost of each defence against the undefended restorer, in one run."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_defence_costs_count_unet_calls_and_grow_with_draws() -> None:
    r = subprocess.run([sys.executable, "-m", "bench.bench_defences", "--arch", "unet", "--size", "tiny", "--batch", "2",
                        "--px", "32", "--t-star", "4", "--ddim-steps", "2", "--draws", "3", "--repeat", "1"],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {line.split()[0]: line.split()[1:] for line in r.stdout.splitlines()[2:]}
    assert {d: int(v[0]) for d, v in rows.items()} == {"none": 0, "purify": 2, "purify-avg": 6}
    ratio = {d: float(v[2]) for d, v in rows.items()}
    assert ratio["none"] == 1.0 and ratio["purify-avg"] > ratio["purify"] > 1.0

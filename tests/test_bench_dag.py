"""bench/bench_dag.py: stage times from DVC's time-stamped output; the --dry path end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def _bench():
    from bench import bench_dag

    return bench_dag


def test_stage_times_run_from_one_stage_line_to_the_next() -> None:
    lines = [(0.5, "Running stage 'synthesize':\n"), (0.6, "> python -m flows synthesize\n"),
             (10.0, "Updating lock file 'dvc.lock'\n"), (12.0, "Running stage 'train_restorer@unet':\n"),
             (30.0, "[train unet] 3/6 steps (50 %), 18 s elapsed\n")]
    assert _bench().stage_times(lines, end=40.0) == [("synthesize", 11.5), ("train_restorer@unet", 28.0)]


def test_dry_run_lists_every_stage(tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    r = subprocess.run([sys.executable, "-m", "bench.bench_dag", "--dry", "--json", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    stages = [s["stage"] for s in json.loads(out.read_text())["stages"]]
    assert stages[0] == "synthesize" and "report" in stages and any(s.startswith("attack@") for s in stages)
    assert "of the 20-minute budget" in r.stdout

"""Benchmark: the whole DAG (`dvc repro`), stage by stage, against the 20-minute budget.

The repository's files (``git ls-files``: the working tree, not HEAD) are copied into a temp
dir with the given params file as params.yaml and without dvc.lock; there ``git init`` and one
`dvc repro` run every stage. A stage's time runs from DVC's "Running stage" line to the next
one (or the end): its command plus DVC's hashing and caching of its outputs. The reference,
measured in the same run before and after, is a fixed torch conv workload (forward+backward)
on this CPU; each stage also prints as a multiple of it, so that runs on other machines compare.
The load average is printed (other processes share the cores).

Usage: python -m bench.bench_dag [--params params.yaml] [--keep] [--json out.json] [--dry]
(--dry: `dvc stage list` instead of `dvc repro`: runs no stage; checks the copy, DVC's reading of
dvc.yaml and the params, and the table, in seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUDGET_MIN = 20.0
STAGE_LINE = re.compile(r"Running stage '([^']+)'")


def reference_s(repeat: int = 10, trials: int = 3) -> float:
    """Seconds of a fixed workload, best of ``trials``: conv 32->32 3x3 on (4, 32, 96, 96),
    forward+backward, ``repeat`` times (torch's default threads)."""
    import torch

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(32, 32, 3, padding=1)
    x = torch.randn(4, 32, 96, 96, requires_grad=True)
    times = []
    for _ in range(trials + 1):  # the first is a warm-up
        t0 = time.perf_counter()
        for _ in range(repeat):
            conv(x).square().mean().backward()
        times.append(time.perf_counter() - t0)
    return min(times[1:])


def stage_times(lines: Iterable[tuple[float, str]], end: float) -> list[tuple[str, float]]:
    """(stage, seconds) from time-stamped output lines: each "Running stage" line to the next, the last to ``end``."""
    starts = [(m.group(1), t) for t, line in lines if (m := STAGE_LINE.search(line))]
    return [(name, (starts[i + 1][1] if i + 1 < len(starts) else end) - t) for i, (name, t) in enumerate(starts)]


def copy_repo(params: Path, work: Path) -> None:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for f in files:
        if (REPO / f).is_file():
            (work / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, work / f)
    shutil.copy2(params, work / "params.yaml")
    (work / "dvc.lock").unlink(missing_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)


def repro(work: Path, dry: bool) -> tuple[list[tuple[str, float]], float]:
    """Run `dvc repro` in ``work`` (log in work/repro.log); (stage, seconds) and the total.
    ``dry``: `dvc stage list` instead, each name read as a stage that ran in no time."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join([str(work / "src"), str(work), os.environ.get("PYTHONPATH", "")]),
           "PREFECT_HOME": str(work / ".prefect"), "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120", "DVC_NO_ANALYTICS": "1"}
    dvc = str(bin_dir / "dvc") if (bin_dir / "dvc").exists() else "dvc"
    lines: list[tuple[float, str]] = []
    t0 = time.monotonic()
    with open(work / "repro.log", "w") as log, subprocess.Popen(
            [dvc, "stage", "list", "--name-only"] if dry else [dvc, "repro"], cwd=work, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        for line in proc.stdout:  # type: ignore[union-attr]
            line = f"Running stage '{line.strip()}':\n" if dry and line.strip() else line
            now = time.monotonic() - t0
            log.write(line)
            lines.append((now, line))
            if STAGE_LINE.search(line):
                print(f"{now:8.1f} s  {line.strip()}", file=sys.stderr, flush=True)
    total = time.monotonic() - t0
    if proc.returncode:
        tail = "".join(line for _, line in lines[-40:])
        raise RuntimeError(f"dvc repro failed ({proc.returncode}); kept {work} (repro.log)\n{tail}")
    return stage_times(lines, total), total


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml", help="params file (default params.yaml)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (printed)")
    ap.add_argument("--json", type=Path, help="write the timings here")
    ap.add_argument("--dry", action="store_true", help="dvc stage list instead of dvc repro: run no stage")
    args = ap.parse_args(argv)
    params = args.params.resolve()
    work = Path(tempfile.mkdtemp(prefix="udcguard-bench-dag-"))
    copy_repo(params, work)
    load0, ref0 = os.getloadavg()[0], reference_s()
    try:
        stages, total = repro(work, args.dry)
    except RuntimeError as err:
        sys.exit(str(err))
    load1, ref1 = os.getloadavg()[0], reference_s()
    if args.keep:
        print(f"kept {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    ref = (ref0 + ref1) / 2
    print(f"params {params}; reference (conv fwd+bwd x10, best of 3): {ref0:.2f} s before, {ref1:.2f} s after; "
          f"load average {load0:.1f} -> {load1:.1f}")
    print(f"{'stage':<28} {'seconds':>9} {'share':>7} {'x ref':>8}")
    for name, s in stages:
        print(f"{name:<28} {s:9.1f} {s / total:7.1%} {s / ref:8.1f}")
    print(f"{'total':<28} {total:9.1f} {1:7.1%} {total / ref:8.1f}")
    print(f"total {total / 60:.1f} min of the {BUDGET_MIN:.0f}-minute budget ({total / 60 / BUDGET_MIN:.0%})")
    if args.json:
        args.json.write_text(json.dumps({
            "params": str(params), "dry": args.dry, "reference_s": ref, "reference_s_before_after": [ref0, ref1],
            "loadavg_before_after": [load0, load1], "total_s": total, "budget_min": BUDGET_MIN,
            "stages": [{"stage": n, "seconds": s, "share": s / total, "x_reference": s / ref} for n, s in stages]},
            indent=2))


if __name__ == "__main__":
    main()

"""Run a torchrun job from a task: one bounded subprocess, a one-line error naming the failing rank.

The job is ``python -m torch.distributed.run ... -m <module> <args>`` with this interpreter
(same venv), run from the current directory with the repository root on ``PYTHONPATH``.
Every rank's stdout and stderr go to files under ``work_dir/logs``; rank 0's stdout is also
shown. A rank that fails calls :func:`report_failure`, which records its one-line error
with a timestamp in ``work_dir/errors``: the earliest is the root cause (the others
usually die of the broken process group afterwards).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from udcguard.errors import UdcGuardError
from udcguard.io.atomic import save_json

#: Environment variable naming the folder where ranks record their errors.
ERROR_DIR_ENV = "UDCGUARD_DDP_ERROR_DIR"
REPO = Path(__file__).resolve().parents[1]


def torchrun_command(module: str, args: list[str], *, nproc: int, log_dir: Path,
                     master_port: int | None = None) -> list[str]:
    """The torchrun command line: one node, ``nproc`` ranks, a free port unless ``master_port``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc)]
    if master_port is None:
        cmd += ["--standalone"]  # c10d rendezvous on a free localhost port
    else:
        cmd += ["--rdzv-backend", "static", "--node-rank", "0", "--master-addr", "127.0.0.1",
                "--master-port", str(master_port)]
    cmd += ["--max-restarts", "0", "--log-dir", str(log_dir), "--redirects", "3", "--tee", "0:1"]
    return [*cmd, "-m", module, *args]


def report_failure(rank: int, err: BaseException) -> str:
    """Record a rank's one-line error (for the parent) and return it; call in the failing rank."""
    text = str(err).strip().splitlines()
    line = f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")
    folder = os.environ.get(ERROR_DIR_ENV)
    if folder:
        save_json(Path(folder) / f"rank{rank}.json", {"rank": rank, "time": time.time(), "error": line})
    return line


def run_torchrun(module: str, args: list[str], *, nproc: int, work_dir: Path, timeout_s: float,
                 master_port: int | None = None, what: str = "torchrun") -> None:
    """Run the job and wait; raise :class:`UdcGuardError` (one line) on failure or timeout.

    ``work_dir`` is emptied first and keeps the logs afterwards.
    """
    logs, errors = work_dir / "logs", work_dir / "errors"
    for d in (logs, errors):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    env = dict(os.environ, **{ERROR_DIR_ENV: str(errors)})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    cmd = torchrun_command(module, args, nproc=nproc, log_dir=logs, master_port=master_port)
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _stop(proc)
        raise UdcGuardError(f"{what}: torchrun did not finish within {timeout_s:g} s "
                            f"(finetune.distributed.timeout_min); logs in {logs}") from None
    except BaseException:  # e.g. KeyboardInterrupt or a cancelled task: torchrun is in its own session
        _stop(proc)
        raise
    if proc.returncode != 0:
        raise UdcGuardError(f"{what}: torchrun exited with {proc.returncode}: {_root_cause(errors, logs, stderr, nproc)}"
                            f"; logs in {logs}")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM torchrun's process group (the agent then stops its ranks); SIGKILL after 60 s."""
    for sig, wait in ((signal.SIGTERM, 60), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
            proc.communicate(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _root_cause(errors: Path, logs: Path, torchrun_stderr: str, nproc: int) -> str:
    """The earliest recorded rank error with the tail of that rank's stderr, else the best tail found."""
    reports = []
    for f in errors.glob("rank*.json"):
        try:
            reports.append(json.loads(f.read_text()))
        except (OSError, ValueError):
            continue
    if reports:
        first = min(reports, key=lambda r: r["time"])
        rank = int(first["rank"])
        tail = _tail(_rank_stderr(logs, rank), skip=first["error"])
        return f"rank {rank} of {nproc} failed: {first['error']}" + (f" (stderr: {tail})" if tail else "")
    for rank in range(nproc):  # killed or crashed without a report: the first rank that said something
        tail = _tail(_rank_stderr(logs, rank))
        if tail:
            return f"rank {rank} of {nproc}, stderr: {tail}"
    return f"torchrun stderr: {_tail(torchrun_stderr) or '(empty)'}"


def _rank_stderr(logs: Path, local_rank: int) -> str:
    texts = [f.read_text(errors="replace") for f in logs.glob(f"*/attempt_*/{local_rank}/stderr.log")]
    return "\n".join(texts)


def _tail(text: str, lines: int = 3, skip: str = "", width: int = 400) -> str:
    """Last non-empty lines (without the error line itself) joined on one line."""
    keep = [ln.strip() for ln in text.splitlines() if ln.strip() and not (skip and skip in ln)]
    out = " | ".join(keep[-lines:])
    return out if len(out) <= width else "..." + out[-width:]

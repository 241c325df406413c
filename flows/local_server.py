"""One local Prefect server shared by the stages of a `dvc repro`, instead of one per stage.

Without ``PREFECT_API_URL``, Prefect runs every process's flows against a temporary server
that it starts and stops in that process: about 8 s per stage on a 2-core CPU (import the
server, start it, poll until it answers, stop it), 2 minutes over the default DAG, and the
runs land in a database that no UI is serving while they happen.

Here, the first stage that needs a server starts one in the background on 127.0.0.1 (a free
port; it serves the UI too), later stages find it and use it, and it exits by itself once no
stage has been running for ``UDCGUARD_PREFECT_IDLE_S`` seconds (default 120). Its state is
kept in ``$PREFECT_HOME`` (default ``~/.prefect``): ``udcguard-server.json`` (pid, port),
``udcguard-server.log``, a lock file, and ``udcguard-leases/<pid>``, one per stage process that
uses it (a lease of a dead process does not count). The database is Prefect's usual
``$PREFECT_HOME/prefect.db``, as with the temporary servers.

Modes (``UDCGUARD_PREFECT_SERVER``): ``shared`` (the default), ``ephemeral`` (Prefect's own
temporary server per process). With ``PREFECT_API_URL`` set (a real server, workers), this
module does nothing.

Run as ``python -m flows.local_server serve --port P --idle S`` (what :func:`ensure` starts);
``python -m flows.local_server status`` prints the URL of the live server, if any.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from udcguard.errors import ServiceError

MODE_ENV = "UDCGUARD_PREFECT_SERVER"
IDLE_ENV = "UDCGUARD_PREFECT_IDLE_S"
MODES = ("shared", "ephemeral")
DEFAULT_IDLE_S = 120.0
HOST = "127.0.0.1"


#: Background services of a full Prefect server that a local DAG run does not use (schedules, work
#: pools, automations): off, as in Prefect's temporary servers; the API, the UI and the event and
#: task-run recorders that the UI reads stay on.
QUIET_SERVICES = {f"PREFECT_SERVER_SERVICES_{name}_ENABLED": "false" for name in (
    "SCHEDULER", "LATE_RUNS", "FOREMAN", "CANCELLATION_CLEANUP", "PAUSE_EXPIRATIONS", "REPOSSESSOR",
    "CLEANUP_RECONCILER", "TRIGGERS")}


class ServerError(ServiceError):
    """The shared server could not be started (the message names its log)."""


def home() -> Path:
    return Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()


def _files(root: Path) -> tuple[Path, Path, Path, Path]:
    """(state, lock, log, leases dir) under ``root``."""
    return (root / "udcguard-server.json", root / "udcguard-server.lock", root / "udcguard-server.log",
            root / "udcguard-leases")


@contextlib.contextmanager
def _locked(lock: Path) -> Iterator[None]:
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_leases(leases: Path) -> list[int]:
    """Pids of the stage processes that hold a lease and still run; stale leases are removed."""
    out = []
    for f in leases.glob("*") if leases.is_dir() else []:
        try:
            pid = int(f.name)
        except ValueError:
            continue
        if _alive(pid):
            out.append(pid)
        else:
            f.unlink(missing_ok=True)
    return out


def healthy(url: str, timeout: float = 2.0) -> bool:
    """Whether the Prefect API at ``url`` (``http://host:port/api``) answers its health check."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as r:  # noqa: S310 (loopback)
            return r.status == 200
    except OSError:
        return False


def _read_state(state: Path) -> dict | None:
    try:
        s = json.loads(state.read_text())
        return s if isinstance(s, dict) and isinstance(s.get("pid"), int) and isinstance(s.get("url"), str) else None
    except (OSError, ValueError):
        return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def idle_seconds() -> float:
    raw = os.environ.get(IDLE_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_IDLE_S
    except ValueError:
        raise ServerError(f"{IDLE_ENV}={raw!r}: expected seconds") from None
    if not 0 < value <= 86400:
        raise ServerError(f"{IDLE_ENV}={raw!r}: expected seconds in (0, 86400]")
    return value


def mode() -> str:
    m = os.environ.get(MODE_ENV, "shared") or "shared"
    if m not in MODES:
        raise ServerError(f"{MODE_ENV}={m!r}: expected one of {', '.join(MODES)}")
    return m


def ensure(root: Path | None = None, startup_timeout_s: float | None = None) -> str | None:
    """The API URL of the shared local server (started if none lives), with a lease for this process.

    Returns None (and does nothing) when ``PREFECT_API_URL`` is set or the mode is ``ephemeral``.
    The lease is dropped when this process exits.
    """
    if os.environ.get("PREFECT_API_URL") or mode() == "ephemeral":
        return None
    root = root or home()
    state, lock, log, leases = _files(root)
    timeout = startup_timeout_s or float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120"))
    with _locked(lock):
        leases.mkdir(parents=True, exist_ok=True)
        lease = leases / str(os.getpid())
        lease.touch()
        atexit.register(lease.unlink, missing_ok=True)
        s = _read_state(state)
        if s is not None and _alive(s["pid"]) and healthy(s["url"]):
            return s["url"]
        port = _free_port()
        url = f"http://{HOST}:{port}/api"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "flows.local_server", "serve", "--port", str(port), "--idle", str(idle_seconds())],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, **QUIET_SERVICES, "PREFECT_HOME": str(root)}, cwd=Path(__file__).resolve().parents[1])
        deadline = time.monotonic() + timeout
        while not healthy(url, timeout=1.0):
            if proc.poll() is not None or time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                raise ServerError(f"the local Prefect server did not start within {timeout:.0f} s (see {log}; "
                                  f"or set {MODE_ENV}=ephemeral)")
            time.sleep(0.2)
        tmp = state.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": proc.pid, "port": port, "url": url}))
        os.replace(tmp, state)
        return url


def status(root: Path | None = None) -> str | None:
    """The URL of the live shared server, or None."""
    s = _read_state(_files(root or home())[0])
    return s["url"] if s is not None and _alive(s["pid"]) and healthy(s["url"]) else None


def serve(port: int, idle_s: float, root: Path | None = None, poll_s: float = 1.0) -> None:
    """Serve the Prefect API and UI on ``HOST:port`` until no lease has lived for ``idle_s`` seconds."""
    import uvicorn
    from prefect.server.api.server import create_app

    root = root or home()
    state, lock, _, leases = _files(root)
    server = uvicorn.Server(uvicorn.Config(create_app(), host=HOST, port=port, log_level="error", lifespan="on"))

    def watchdog() -> None:
        last_busy = time.monotonic()
        while not server.should_exit:
            time.sleep(poll_s)
            with _locked(lock):  # ensure() takes the lock too: a stage either sees us gone or holds a lease
                if live_leases(leases):
                    last_busy = time.monotonic()
                    continue
                if time.monotonic() - last_busy < idle_s:
                    continue
                s = _read_state(state)
                if s is not None and s["pid"] == os.getpid():
                    state.unlink(missing_ok=True)
                server.should_exit = True

    threading.Thread(target=watchdog, daemon=True).start()
    server.run()


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"] and len(argv) == 5 and argv[1] == "--port" and argv[3] == "--idle":
        serve(int(argv[2]), float(argv[4]))
        return 0
    if argv == ["status"]:
        url = status()
        print(url.removesuffix("/api") if url else "no shared local Prefect server is running")
        return 0 if url else 1
    print("usage: python -m flows.local_server serve --port P --idle S | status", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Loopback servers for end-to-end tests: a moto S3 server (in-process thread) and an
MLflow tracking server (``python -m flows mlflow-server``, a subprocess). Both bind
127.0.0.1 only, start with bounded waits and are stopped by the test that started them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def moto_s3() -> Iterator[str]:
    """A moto S3 server on a free loopback port; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group led by ``proc`` (started with start_new_session), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    try:  # workers left in the group after the leader exited
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@contextmanager
def mlflow_server(cwd: Path, env: dict[str, str], db: Path, artifacts: str, log: Path,
                  timeout_s: float = 120) -> Iterator[str]:
    """``python -m flows mlflow-server`` on a free loopback port; yields the tracking URI."""
    port = free_port()
    cmd = [sys.executable, "-m", "flows", "mlflow-server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{db}", "--artifacts-destination", artifacts, "--workers", "1"]
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"mlflow server exited {proc.returncode}: {log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"mlflow server not up within {timeout_s} s: {log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        stop(proc)


def api(uri: str, route: str, body: dict[str, Any] | None = None, **query: str) -> dict[str, Any]:
    """GET (or POST ``body``) MLflow's REST API; returns the JSON answer."""
    url = f"{uri}/api/2.0/mlflow/{route}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"{}")

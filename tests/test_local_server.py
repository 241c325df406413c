"""The shared local Prefect server (flows/local_server.py): started once, reused by the next stage,
gone after its idle time; leases of dead processes do not keep it alive; modes and errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from flows import local_server
from tests.conftest import REPO

STAGE = """
import json, sys
from prefect import flow
from flows.__main__ import _prefect_api
from prefect.runtime import flow_run

@flow(name="stage-probe")
def probe():
    return flow_run.id

with _prefect_api():
    import os
    print(json.dumps({"url": os.environ.get("PREFECT_API_URL"), "run": str(probe())}))
"""


def _stage(env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", STAGE], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(300)
def test_two_stages_share_one_server_that_then_exits(tmp_path: Path) -> None:
    home = tmp_path / "prefect"
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", local_server.MODE_ENV)}
    env.update({"PREFECT_HOME": str(home), local_server.IDLE_ENV: "4", "PYTHONPATH": f"{REPO}:{REPO / 'src'}"})
    first = _stage(env)
    state = json.loads((home / "udcguard-server.json").read_text())
    assert first["url"] == state["url"] and first["url"].startswith("http://127.0.0.1:")
    second = _stage(env)
    assert second["url"] == first["url"]  # reused: same server, no second start
    assert json.loads((home / "udcguard-server.json").read_text())["pid"] == state["pid"]
    with urllib.request.urlopen(f"{first['url']}/flow_runs/{second['run']}", timeout=5) as r:  # noqa: S310
        assert json.load(r)["state_type"] == "COMPLETED"  # the run is on that server
    assert not list((home / "udcguard-leases").glob("*"))  # both stages dropped their lease
    deadline = time.monotonic() + 60
    while local_server._alive(state["pid"]) and time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            os.waitpid(state["pid"], os.WNOHANG)
        except ChildProcessError:
            pass
    assert not local_server._alive(state["pid"]), "the idle server did not exit"
    assert not (home / "udcguard-server.json").exists()
    assert local_server.status(home) is None


def test_stale_leases_are_dropped(tmp_path: Path) -> None:
    leases = tmp_path / "leases"
    leases.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (leases / str(dead.pid)).touch()
    (leases / str(os.getpid())).touch()
    (leases / "not-a-pid").touch()
    assert local_server.live_leases(leases) == [os.getpid()]
    assert not (leases / str(dead.pid)).exists()


def test_modes_and_bad_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv(local_server.MODE_ENV, "ephemeral")
    assert local_server.ensure(tmp_path) is None and not (tmp_path / "udcguard-server.json").exists()
    monkeypatch.setenv(local_server.MODE_ENV, "shared")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:1/api")
    assert local_server.ensure(tmp_path) is None  # a configured server wins
    monkeypatch.delenv("PREFECT_API_URL")
    monkeypatch.setenv(local_server.MODE_ENV, "sharde")
    with pytest.raises(local_server.ServerError, match="UDCGUARD_PREFECT_SERVER='sharde'"):
        local_server.ensure(tmp_path)
    monkeypatch.setenv(local_server.MODE_ENV, "shared")
    monkeypatch.setenv(local_server.IDLE_ENV, "soon")
    with pytest.raises(local_server.ServerError, match="UDCGUARD_PREFECT_IDLE_S='soon'"):
        local_server.ensure(tmp_path)


def test_cli_reports_a_server_that_cannot_start_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", local_server.MODE_ENV)}
    env.update({"PREFECT_HOME": str(tmp_path / "prefect"), local_server.IDLE_ENV: "-1"})
    out = subprocess.run([sys.executable, "-m", "flows", "report", "--params", str(REPO / "params.yaml"),
                          "--reports-dir", str(tmp_path / "reports")], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == ["error: UDCGUARD_PREFECT_IDLE_S='-1': expected seconds in (0, 86400]"]
    assert not (tmp_path / "reports").exists()

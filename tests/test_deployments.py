"""Prefect deployments: prefect.yaml covers every stage on the right pool; a real server + process
work pool + worker runs the synthesize deployment from this checkout; the pipeline dispatches stages
to their deployments."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests.conftest import REPO, TINY
from udcguard.config import params_from_dict
from udcguard.errors import UdcGuardError

BIN = Path(sys.executable).parent


def _deployments() -> dict[str, dict]:
    return {d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}


def test_prefect_yaml_deploys_every_stage_on_its_pool() -> None:
    import importlib
    import inspect

    from flows.stages import BY_NAME

    deps = _deployments()
    assert set(deps) == set(BY_NAME) | {"pipeline"}
    for name, d in deps.items():
        module, func = d["entrypoint"].split(":")
        fn = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), func)
        assert fn.name == name  # deployment '<stage>/<stage>' is what the pipeline dispatches to
        pool = "gpu" if name == "pipeline" else BY_NAME[name].pool
        assert name == "pipeline" or d["entrypoint"].replace(".py:", ":").replace("/", ".") == BY_NAME[name].flow
        assert d["work_pool"]["name"] == pool, name
        sig = inspect.signature(fn.fn)
        assert set(d["parameters"]) <= set(sig.parameters), name  # every default parameter exists on the flow
        assert {"params_path", "overrides", "data_dir"} <= set(d["parameters"]), name
        if "restorer" in sig.parameters and sig.parameters["restorer"].default is inspect.Parameter.empty:
            assert "restorer" in d["parameters"], name
    assert {n for n, d in deps.items() if d["work_pool"]["name"] == "cpu"} == {"synthesize", "evaluate", "report"}


def test_dispatched_pipeline_runs_stage_deployments_in_dag_order(monkeypatch) -> None:
    import prefect.deployments

    from flows import pipeline as pl

    calls: list[tuple[str, dict]] = []

    def fake_run_deployment(name, parameters, timeout):
        calls.append((name, parameters))
        ok = SimpleNamespace(is_completed=lambda: True, type=SimpleNamespace(value="COMPLETED"))
        return SimpleNamespace(state=ok, name="run", id=f"id-{len(calls)}")

    monkeypatch.setattr(prefect.deployments, "run_deployment", fake_run_deployment)
    monkeypatch.setattr(pl, "load_params", lambda path, overrides: params_from_dict(TINY))
    pl.pipeline.fn(params_path="p.yaml", overrides={"seed": 4}, data_dir="d", reports_dir="r", dispatch=True)
    order = [n.split("/")[0] for n, _ in calls]
    assert all(n == f"{n.split('/')[0]}/{n.split('/')[0]}" for n, _ in calls)
    assert order[0] == "synthesize" and order[-2:] == ["evaluate", "report"]
    assert sorted(order[1:4]) == ["train_purifier", "train_restorer", "train_restorer"]
    assert order[4:6] == ["select_tstar", "purify_train"]  # fine-tuning strengths follow the selected t*
    for r in ("unet", "discnet"):  # each restorer's chain keeps its order
        chain = [n.split("/")[0] for n, p in calls if p.get("restorer") == r]
        assert chain == ["train_restorer", "finetune", "attack", "purify", "adaptive"], chain
    assert all(p["overrides"] == {"seed": 4} and p["data_dir"] == "d" for _, p in calls)

    def failed_run(name, parameters, timeout):
        bad = SimpleNamespace(is_completed=lambda: False, type=SimpleNamespace(value="FAILED"))
        return SimpleNamespace(state=bad, name="sad-run", id="x")

    monkeypatch.setattr(prefect.deployments, "run_deployment", failed_run)
    with pytest.raises(UdcGuardError, match=r"deployment synthesize/synthesize: flow run sad-run ended FAILED"):
        pl.pipeline.fn(params_path="p.yaml", overrides=None, data_dir="d", dispatch=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 (loopback only)
        return json.loads(r.read())


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT first (Prefect's server and worker shut down cleanly on it), then kill; bounded."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_deployment_runs_on_a_process_work_pool(tmp_path: Path) -> None:
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_WORKER_QUERY_SECONDS": "1",
           "UDCGUARD_ROOT": str(REPO), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "PATH": f"{BIN}:{os.environ['PATH']}"}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(params_from_dict(TINY).model_dump(mode="json")))
    run = lambda *cmd, timeout=120: subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                                                   timeout=timeout)
    server = subprocess.Popen([BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                _get_json(f"{api}/health")
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "prefect server did not start"
                time.sleep(0.5)
        r = run(BIN / "prefect", "work-pool", "create", "cpu", "--type", "process")
        assert r.returncode == 0, r.stdout + r.stderr
        r = run(BIN / "prefect", "--no-prompt", "deploy", "--name", "synthesize")  # from this checkout's prefect.yaml
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        r = run(BIN / "prefect", "deployment", "run", "synthesize/synthesize", "--param", f"params_path={params}",
                "--param", f"data_dir={tmp_path / 'data'}", "--param", 'overrides={"dataset.preview_rows": 1}')
        assert r.returncode == 0, r.stdout + r.stderr
        run_id = re.search(r"UUID: ([0-9a-f-]{36})", r.stdout).group(1)
        worker = run(BIN / "prefect", "worker", "start", "--pool", "cpu", "--run-once", timeout=300)
        assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]
        flow_run = _get_json(f"{api}/flow_runs/{run_id}")
        assert flow_run["state_type"] == "COMPLETED", flow_run["state"]
        assert flow_run["parameters"]["overrides"] == {"dataset.preview_rows": 1}
        manifest = json.loads((tmp_path / "data" / "udc" / "test" / "manifest.json").read_text())
        assert len(manifest["pairs"]) > 0
        assert (tmp_path / "data" / "udc" / "preview.png").exists()
    finally:
        _stop(server)
    assert server.poll() is not None

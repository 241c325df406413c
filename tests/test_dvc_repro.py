"""`dvc repro` on a fresh copy of the repository: the whole DAG; a second run is a no-op;
an attack parameter reruns only the attack and what follows it. Along the way, on
loopback: the stages log to an MLflow server whose artefacts go to a moto S3 bucket, and
the outputs make a DVC push / cache wipe / pull round trip through the same bucket."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, TINY
from tests.servers import api, mlflow_server, moto_s3
from udcguard.config import params_from_dict

BUCKET = "udcguard-test"
SECRET = "e2e-secret-never-printed-42"
STAGES = {"synthesize", "train_restorer", "train_purifier", "purify_train", "select_tstar", "attack", "purify",
          "adaptive", "finetune", "evaluate", "report"}


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_dvc_repro_then_noop(tmp_path: Path) -> None:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()  # the working tree, not HEAD
    work = tmp_path / "repo"
    for f in files:
        if (REPO / f).is_file():
            (work / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, work / f)
    tiny = json.loads(json.dumps(TINY))  # the DAG's wiring, at the smallest matrix: two attack sets, one setting
    tiny["attack"]["attacks"].pop("simba")
    tiny["adaptive"]["settings"] = ["bpda"]
    tiny["purify"]["seeds"] = 1
    tiny["restorers"].pop("unet")  # one (conditional) restorer: the pipeline test covers two; CI time
    (work / "params.yaml").write_text(yaml.safe_dump(params_from_dict(tiny).model_dump(mode="json")))
    with moto_s3() as endpoint:
        aws = {"AWS_ACCESS_KEY_ID": "e2e-key-id", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_ENDPOINT_URL": endpoint, "MLFLOW_S3_ENDPOINT_URL": endpoint, "NO_PROXY": "127.0.0.1,localhost",
               "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, **aws,
               "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}  # 20 s is too short on a busy 2-core box
        import boto3

        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="e2e-key-id",
                          aws_secret_access_key=SECRET)
        s3.create_bucket(Bucket=BUCKET)
        server_log = tmp_path / "mlflow-server.log"
        with mlflow_server(work, env, tmp_path / "mlflow.db", f"s3://{BUCKET}/mlflow", server_log) as uri:
            assert f"export MLFLOW_TRACKING_URI={uri}" in server_log.read_text()
            env["MLFLOW_TRACKING_URI"] = uri
            outputs = _repro_noop_then_attack_change(work, env)
            _check_mlflow(uri, s3)
        outputs += _dvc_round_trip(work, env)
    assert SECRET not in server_log.read_text() + "".join(outputs)


def _run(work: Path, env: dict[str, str], *cmd: str) -> str:
    r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{cmd}: {r.stdout[-3000:]}{r.stderr[-3000:]}"
    return r.stdout + r.stderr


def _repro_noop_then_attack_change(work: Path, env: dict[str, str]) -> list[str]:
    # the pytest timeout bounds the whole test; a busy shared CPU can take over 600 s for the first repro
    run = lambda *cmd: subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=1200)
    assert run("git", "init", "-q").returncode == 0
    r = run("dvc", "repro")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (work / "data" / "udc" / "train" / "manifest.json").exists()
    assert (work / "data" / "udc" / "preview.png").exists() and (work / "dvc.lock").exists()
    r2 = run("dvc", "repro")
    assert r2.returncode == 0 and "didn't change, skipping" in r2.stdout, r2.stdout
    assert "Running stage" not in r2.stdout, r2.stdout
    assert (work / "reports" / "index.html").exists() and (work / "reports" / "metrics.json").exists()
    # changing an attack parameter reruns only the attack and what follows it
    p = yaml.safe_load((work / "params.yaml").read_text())
    p["attack"]["attacks"]["pgd_linf"]["options"]["steps"] = 2
    (work / "params.yaml").write_text(yaml.safe_dump(p))
    r3 = run("dvc", "repro")
    assert r3.returncode == 0, r3.stdout[-3000:] + r3.stderr[-3000:]
    ran = {line.split("'")[1] for line in r3.stdout.splitlines() if line.startswith("Running stage")}
    # select_tstar's curve changes, so purify_train reruns; its output (same t*) does not, so finetune is skipped
    assert ran == {"select_tstar", "purify_train", "attack@discnet", "purify@discnet", "adaptive@discnet", "evaluate",
                   "report"}, ran
    return [r.stdout + r.stderr for r in (r, r2, r3)]


def _check_mlflow(uri: str, s3) -> None:
    """Through the REST API: experiment, parent and nested stage runs, metrics, artefacts, models."""
    exp_id = api(uri, "experiments/get-by-name", experiment_name=TINY["tracking"]["experiment"])["experiment"]["experiment_id"]
    runs = api(uri, "runs/search", {"experiment_ids": [exp_id], "max_results": 1000})["runs"]
    tags = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs}
    parents = {rid for rid, t in tags.items() if t.get("udcguard.kind") == "pipeline"}
    nested = {rid: t for rid, t in tags.items() if rid not in parents}
    assert len(parents) == 2, parents  # the first repro and the attack-param change; the no-op logs nothing
    assert all(t.get("mlflow.parentRunId") in parents for t in nested.values()), nested
    assert len(nested) == 11 + 7 and {t["udcguard.stage"] for t in nested.values()} == STAGES
    assert all(r["info"]["status"] == "FINISHED" for r in runs if r["info"]["run_id"] in nested)
    by_stage = lambda s: [r for r in runs if tags[r["info"]["run_id"]].get("udcguard.stage") == s]
    evaluate, report = by_stage("evaluate")[0], by_stage("report")[0]
    metrics = evaluate["data"]["metrics"]
    assert metrics, evaluate
    hist = api(uri, "metrics/get-history", run_id=evaluate["info"]["run_id"], metric_key=metrics[0]["key"])
    assert hist["metrics"][0]["value"] == metrics[0]["value"]
    listed = lambda run, path: {f["path"] for f in api(uri, "artifacts/list", run_id=run["info"]["run_id"],
                                                       path=path).get("files", [])}
    assert {"reports/metrics.csv", "reports/metrics.json", "reports/per_image.csv"} <= listed(evaluate, "reports")
    assert "reports/index.html" in listed(report, "reports")
    names = {m["name"] for m in api(uri, "registered-models/search", max_results="100")["registered_models"]}
    assert "udcguard-discnet-finetuned" in names, names
    versions = api(uri, "model-versions/search", filter="name='udcguard-discnet-finetuned'")["model_versions"]
    assert versions and versions[0]["run_id"] in nested and versions[0]["version"] == "1"
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="mlflow/")
            for o in page.get("Contents", [])]
    assert any(k.endswith("/artifacts/reports/index.html") for k in keys), keys[:20]
    assert any("/artifacts/model/" in k for k in keys) and any(k.endswith("/artifacts/reports/metrics.csv") for k in keys)


def _cached_outs(work: Path) -> list[str]:
    """The outputs DVC caches (and pushes): dvc.lock's outs of the current stages, less
    dvc.yaml's `cache: false` ones (the copied dvc.lock may hold entries of other restorers)."""
    stages = yaml.safe_load((work / "dvc.yaml").read_text())["stages"]
    restorers = yaml.safe_load((work / "params.yaml").read_text())["restorers"]
    names = {f"{n}@{r}" if "foreach" in s else n for n, s in stages.items() for r in restorers}
    uncached = {path for s in stages.values() for kind in ("outs", "metrics", "plots") for e in s.get(kind, [])
                if isinstance(e, dict) for path, opts in e.items() if (opts or {}).get("cache") is False}
    lock = yaml.safe_load((work / "dvc.lock").read_text())["stages"]
    return sorted({o["path"] for n, s in lock.items() if n in names for o in s.get("outs", [])} - uncached)


def _hashes(work: Path, outs: list[str]) -> dict[str, str]:
    files = [p for o in outs for p in ([work / o] if (work / o).is_file() else sorted((work / o).rglob("*")))]
    return {str(p.relative_to(work)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.is_file()}


def _dvc_round_trip(work: Path, env: dict[str, str]) -> list[str]:
    """Push to the bucket, verify, wipe the cache and the outputs, pull: byte-identical."""
    cli = lambda *a: _run(work, env, sys.executable, "-m", "flows", "remote", *a)
    out = [cli("setup", f"s3://{BUCKET}/dvc"), cli("push", "--attempts", "2", "--retry-delay", "0.1")]
    out.append(cli("verify"))
    assert out[-1].startswith("ok: ") and " 0 objects" not in out[-1], out[-1]
    outs = _cached_outs(work)
    before = _hashes(work, outs)
    assert len(outs) >= 10 and len(before) > 50 and "reports/index.html" in before, outs
    shutil.rmtree(work / ".dvc" / "cache")
    for o in outs:
        shutil.rmtree(work / o) if (work / o).is_dir() else (work / o).unlink()
    out.append(cli("pull", "--attempts", "2", "--retry-delay", "0.1"))
    assert _hashes(work, outs) == before
    out.append(_run(work, env, "dvc", "status"))
    assert "up to date" in out[-1], out[-1]
    return out

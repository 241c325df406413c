"""`dvc repro` on a fresh copy of the repository: the whole DAG; a second run is a no-op;
an attack parameter reruns only the attack and what follows it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, TINY
from udcguard.config import params_from_dict


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_dvc_repro_then_noop(tmp_path: Path) -> None:
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    work = tmp_path / "repo"
    for f in files:
        if (REPO / f).is_file():
            (work / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, work / f)
    tiny = json.loads(json.dumps(TINY))  # the DAG's wiring, at the smallest matrix: two attack sets, one setting
    tiny["attack"]["attacks"].pop("simba")
    tiny["adaptive"]["settings"] = ["bpda"]
    tiny["purify"]["seeds"] = 1
    (work / "params.yaml").write_text(yaml.safe_dump(params_from_dict(tiny).model_dump(mode="json")))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    run = lambda *cmd: subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
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
    assert ran == {"select_tstar", "attack@unet", "attack@discnet", "purify@unet", "purify@discnet", "adaptive@unet",
                   "adaptive@discnet", "evaluate", "report"}, ran

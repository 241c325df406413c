"""The results committed in git come from a complete run of the current code and params.yaml.

- reports/metrics.csv and reports/metrics.json hold exactly the rows params.yaml asks for;
- the params that dvc.lock recorded for every stage equal params.yaml's values;
- the code each stage depends on is unchanged since dvc.lock was written (``dvc status``).

When one of these fails: run ``dvc repro`` on the default params and commit dvc.lock and
reports/ (see the README, "Results").
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tasks.evaluate import expected_keys
from udcguard.config import load_params

REPO = Path(__file__).resolve().parents[1]
REPORTS = REPO / "reports"


def _rows() -> list[dict]:
    with (REPORTS / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_committed_metrics_cover_exactly_the_rows_params_ask_for() -> None:
    params = load_params(REPO / "params.yaml")
    want = expected_keys(params)
    got = [(r["restorer"], r["attack"], float(r["eps"]), r["defence"], r["setting"]) for r in _rows()]
    assert len(got) == len(set(got)), "reports/metrics.csv repeats a row"
    assert set(got) == want, (f"missing {sorted(want - set(got))[:5]}; not asked for {sorted(set(got) - want)[:5]}")
    nested = json.loads((REPORTS / "metrics.json").read_text())
    assert set(nested) == {r.name for r in params.restorers}
    plots = list(csv.DictReader((REPORTS / "plots" / "psnr_vs_eps.csv").open()))
    assert plots and {p["restorer"] for p in plots} == {r.name for r in params.restorers}


def _norm(v):
    """dvc.lock writes some floats as strings ('1e-06', YAML 1.1 has no such float): compare as numbers."""
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_norm(x) for x in v]
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def _lookup(node, dotted: str):
    for k in dotted.split("."):
        node = node[k]
    return node


def test_dvc_lock_params_equal_params_yaml() -> None:
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())
    current = yaml.safe_load((REPO / "params.yaml").read_text())
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    stages = set()
    for name, stage in dvc.items():
        if "foreach" in stage:
            stages |= {f"{name}@{key}" for key in current[stage["foreach"].strip("${}")]}
        else:
            stages.add(name)
    assert set(lock["stages"]) == stages, f"dvc.lock stages {sorted(set(lock['stages']) ^ stages)} differ from dvc.yaml"
    for name, entry in lock["stages"].items():
        for key, value in entry.get("params", {}).get("params.yaml", {}).items():
            assert _norm(_lookup(current, key)) == _norm(value), f"dvc.lock: stage {name} ran with {key}={value!r}"


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="needs the git checkout")
def test_code_unchanged_since_the_committed_run() -> None:
    dvc = Path(sys.executable).parent / "dvc"
    r = subprocess.run([str(dvc), "status", "--json"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    changed = []
    for stage, entries in json.loads(r.stdout or "{}").items():
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict):
                continue
            for path, state in entry.get("changed deps", {}).items():
                if not path.startswith(("data/", "reports/")):  # outputs are not in a fresh clone
                    changed.append(f"{stage}: {path} {state}")
    assert not changed, "code changed since the committed results (rerun dvc repro): " + "; ".join(changed[:8])


def test_readme_results_come_from_the_committed_metrics() -> None:
    from tasks.report import read_rows
    from udcguard.report import headline_markdown

    text = (REPO / "README.md").read_text()
    start, end = "<!-- results:start -->\n", "<!-- results:end -->"
    assert start in text and end in text, "README.md lost its results markers"
    shown = text[text.index(start) + len(start): text.index(end)]
    table = headline_markdown(read_rows(REPORTS / "metrics.csv"))
    assert table and table in shown, "README results table differs from reports/metrics.csv (regenerate it)"

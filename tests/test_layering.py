"""Imports go one way: udcguard <- ops <- tasks <- flows; only ops/tracking.py imports mlflow;
ops imports no Prefect."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def test_domain_library_is_pure() -> None:
    files = list((REPO / "src" / "udcguard").rglob("*.py"))
    assert len(files) > 10
    for f in files:
        bad = _imports(f) & {"prefect", "mlflow", "dvc", "ops", "tasks", "flows", "typer", "boto3", "tqdm"}
        assert not bad, f"{f.relative_to(REPO)} imports {bad}"


def test_tasks_do_not_import_flows_and_mlflow_is_confined() -> None:
    for f in (REPO / "tasks").rglob("*.py"):
        mods = _imports(f)
        assert not mods & {"flows", "mlflow"}, f
    for f in (REPO / "flows").rglob("*.py"):
        assert "mlflow" not in _imports(f), f


def test_ops_are_services_without_prefect() -> None:
    files = list((REPO / "ops").rglob("*.py"))
    assert {f.name for f in files} >= {"storage.py", "tracking.py", "launch.py"}
    for f in files:
        mods = _imports(f)
        assert not mods & {"tasks", "flows", "prefect"}, f"{f.relative_to(REPO)} imports {mods & {'tasks', 'flows', 'prefect'}}"
        if f.name != "tracking.py":
            assert "mlflow" not in mods, f

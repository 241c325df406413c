"""Stages 6-7: evaluate every (restorer, attack, eps, defence); render the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from tasks.evaluate import evaluate_pipeline, evaluate_user_pairs
from tasks.report import write_report
from ops.tracking import stage_run
from udcguard.config import load_params


@flow(name="evaluate")
def evaluate_flow(params_path: str = "params.yaml", overrides: dict[str, Any] | None = None, data_dir: str = "data",
                  reports_dir: str = "reports", pairs: str | None = None, out: str | None = None) -> str:
    """Pipeline table -> reports/; or, with ``pairs``, score a user's folder of pairs into ``out``."""
    params = load_params(params_path, overrides)
    with stage_run("evaluate", params, params_path) as run:
        if pairs is not None:
            target = Path(out or Path(pairs) / "udcguard-eval")
            evaluate_user_pairs(params, pairs, data_dir, str(target))
            run.log_artifact(target / "metrics.csv")
            return str(target)
        info = evaluate_pipeline(params, data_dir, reports_dir)
        run.log_metrics(info)
        for f in ("metrics.json", "metrics.csv", "per_image.csv"):
            run.log_artifact(Path(reports_dir) / f, "reports")
        for r in params.restorers:
            run.log_image(Path(reports_dir) / "examples" / f"{r.name}.png", f"examples/{r.name}.png")
    return reports_dir


@flow(name="report")
def report_flow(params_path: str = "params.yaml", overrides: dict[str, Any] | None = None, data_dir: str = "data",
                reports_dir: str = "reports") -> str:
    """reports/index.html (self-contained), also logged to MLflow."""
    params = load_params(params_path, overrides)
    with stage_run("report", params, params_path) as run:
        page = write_report(params, data_dir, reports_dir)
        run.log_artifact(page, "reports")
    return page

"""The whole DAG without DVC (for development): same outputs as ``dvc repro``."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.defend import adaptive_flow, attack_flow, purify_flow, purify_train_flow, select_tstar_flow
from flows.evaluate import evaluate_flow, report_flow
from flows.synthesize import synthesize
from flows.train import finetune_flow, train_purifier_flow, train_restorer_flow
from udcguard.config import load_params


@flow(name="pipeline")
def pipeline(params_path: str = "params.yaml", overrides: dict[str, Any] | None = None, data_dir: str = "data",
             reports_dir: str = "reports") -> str:
    """synthesize -> train (restorers, purifier) -> select t* -> attack -> purify -> finetune -> adaptive
    attacks -> evaluate -> report.

    The stages' MLflow runs gather under one parent run (see tasks/tracking.py).
    """
    params = load_params(params_path, overrides)
    common = {"params_path": params_path, "overrides": overrides, "data_dir": data_dir}
    synthesize(**common)
    for r in params.restorers:
        train_restorer_flow(r.name, **common)
    train_purifier_flow(**common)
    purify_train_flow(**common)
    select_tstar_flow(**common)
    for r in params.restorers:
        attack_flow(r.name, **common)
        purify_flow(r.name, **common)
        finetune_flow(r.name, **common)
        adaptive_flow(r.name, **common)
    evaluate_flow(**common, reports_dir=reports_dir)
    return report_flow(**common, reports_dir=reports_dir)

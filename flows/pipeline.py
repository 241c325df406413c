"""The whole DAG without DVC (for development): same outputs as ``dvc repro``."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.synthesize import synthesize
from tasks.tracking import stage_run
from udcguard.config import load_params


@flow(name="pipeline")
def pipeline(
    params_path: str = "params.yaml",
    overrides: dict[str, Any] | None = None,
    data_dir: str = "data",
    base_dir: str = ".",
) -> dict[str, str]:
    """Run every stage in order under one parent MLflow run."""
    params = load_params(params_path, overrides)
    with stage_run("pipeline", params):
        return synthesize(params_path, overrides, data_dir, base_dir)

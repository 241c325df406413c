"""The whole DAG without DVC (for development): same outputs as ``dvc repro``."""

from __future__ import annotations

from prefect import flow

from flows.synthesize import synthesize
from tasks.tracking import stage_run
from udcguard.config import Params


@flow(name="pipeline")
def pipeline(params: Params, data_dir: str = "data", base_dir: str = ".") -> dict[str, str]:
    """Run every stage in order under one parent MLflow run."""
    with stage_run("pipeline", params):
        return synthesize(params, data_dir, base_dir)

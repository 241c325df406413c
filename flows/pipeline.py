"""The whole DAG without DVC: same outputs as ``dvc repro``.

In process by default. With ``dispatch=True`` each stage runs as its own Prefect deployment
(prefect.yaml) on its work pool, ``cpu`` or ``gpu``, so stages land on the workers of those pools;
independent stages (the restorers' training runs, then each restorer's finetune -> attack ->
purify -> adaptive chain) run concurrently. Dispatched stages must see the same data
directory (a shared file system, or the S3 remote: see the README).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prefect import flow

from flows.stages import BY_NAME
from udcguard.config import load_params
from udcguard.errors import UdcGuardError

RESTORER_CHAIN = ("finetune", "attack", "purify", "adaptive")  # gray-box sets attack the fine-tuned restorer


def run_stage(stage: str, dispatch: bool, **parameters: Any) -> Any:
    """Call a stage's flow in process, or run its deployment ``<stage>/<stage>`` (prefect.yaml, on the
    stage's work pool) and wait (error unless it completed)."""
    if not dispatch:
        return BY_NAME[stage].load()(**parameters)
    from prefect.deployments import run_deployment

    run = run_deployment(f"{stage}/{stage}", parameters=parameters, timeout=None)
    state = run.state
    if state is None or not state.is_completed():
        kind = state.type.value if state is not None else "unknown"
        raise UdcGuardError(f"deployment {stage}/{stage}: flow run {run.name} ended {kind} "
                            f"(see {run.id} in the Prefect UI)")
    return str(run.id)


def _concurrently(calls: list[Callable[[], Any]], dispatch: bool) -> list[Any]:
    """In process: one after the other. Dispatched: all at once (each waits on a remote run)."""
    if not dispatch or len(calls) < 2:
        return [c() for c in calls]
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return [f.result() for f in [pool.submit(c) for c in calls]]


@flow(name="pipeline")
def pipeline(params_path: str = "params.yaml", overrides: dict[str, Any] | None = None, data_dir: str = "data",
             reports_dir: str = "reports", dispatch: bool = False) -> str:
    """synthesize -> train (restorers, purifier) -> select t* -> purify train set -> per restorer: finetune ->
    attack (base and fine-tuned) -> purify -> adaptive attacks -> evaluate -> report.

    The stages' MLflow runs gather under one parent run (see ops/tracking.py).
    """
    params = load_params(params_path, overrides)
    common = {"params_path": params_path, "overrides": overrides, "data_dir": data_dir}
    names = [r.name for r in params.restorers]
    run_stage("synthesize", dispatch, **common)
    _concurrently([lambda n=n: run_stage("train_restorer", dispatch, restorer=n, **common) for n in names]
                  + [lambda: run_stage("train_purifier", dispatch, **common)], dispatch)
    run_stage("select_tstar", dispatch, **common)
    run_stage("purify_train", dispatch, **common)  # its strengths follow the selected t*

    def chain(name: str) -> None:
        for stage in RESTORER_CHAIN:
            run_stage(stage, dispatch, restorer=name, **common)

    _concurrently([lambda n=n: chain(n) for n in names], dispatch)
    run_stage("evaluate", dispatch, reports_dir=reports_dir, **common)
    return run_stage("report", dispatch, reports_dir=reports_dir, **common)

"""MLflow tracking: the only module in udcguard's code that imports mlflow.

One run per stage execution (nested under the pipeline's run when there is one), params
flattened, the git commit recorded, images and artefacts logged. The tracking store
defaults to a sqlite file in the working directory (``sqlite:///mlflow.db``, git-ignored);
``MLFLOW_TRACKING_URI`` overrides it. Credentials (e.g. for an S3 artefact store) come from
the environment and are never logged.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from udcguard.config import Params, flatten

DEFAULT_URI = "sqlite:///mlflow.db"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def git_commit(cwd: str | Path = ".") -> tuple[str, bool]:
    """(commit hash or 'unknown', dirty?) of the working tree."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown", False
    if head.returncode != 0:
        return "unknown", False
    return head.stdout.strip(), bool(dirty.stdout.strip())


class StageRun:
    """Handle given to flows for logging into the current MLflow run."""

    def __init__(self, mlflow_module, run_id: str) -> None:
        self._mlflow = mlflow_module
        self.run_id = run_id

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_image(self, path: str | Path, name: str | None = None) -> None:
        """Log a PNG on disk as an MLflow image (shown in the run's artefacts)."""
        from PIL import Image

        with Image.open(path) as img:
            self._mlflow.log_image(img.convert("RGB"), artifact_file=name or Path(path).name)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._mlflow.set_tags(tags)


@contextmanager
def stage_run(stage: str, params: Params | None = None, *, tags: dict[str, str] | None = None) -> Iterator[StageRun]:
    """Open an MLflow run for one stage execution; nested if a run is active."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    experiment = params.tracking.experiment if params is not None else "udcguard"
    nested = mlflow.active_run() is not None
    if not nested:
        mlflow.set_experiment(experiment)
    commit, dirty = git_commit()
    with mlflow.start_run(run_name=stage, nested=nested) as run:
        mlflow.set_tags(
            {
                "udcguard.stage": stage,
                "mlflow.source.git.commit": commit,
                "udcguard.git_dirty": str(dirty).lower(),
                **(tags or {}),
            }
        )
        if params is not None:
            flat = flatten(params)
            keys = sorted(flat)
            for i in range(0, len(keys), 100):  # MLflow's batch limit
                mlflow.log_params({k: flat[k][:6000] for k in keys[i : i + 100]})
        yield StageRun(mlflow, run.info.run_id)

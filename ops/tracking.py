"""MLflow tracking: the only module in udcguard's code that imports mlflow.

* One run per stage execution, nested (``mlflow.parentRunId``) under a parent run per
  pipeline execution. A pipeline execution is identified by the git commit and the
  params file's content, so the stages of one ``dvc repro`` (separate processes) and of
  ``python -m flows pipeline`` gather under the same parent.
* Params flattened, the git commit recorded, metrics, images, artefacts, and models
  registered in the model registry.
* The store defaults to a sqlite file in the working directory (``sqlite:///mlflow.db``,
  git-ignored); ``MLFLOW_TRACKING_URI`` overrides it (e.g. a server from
  :func:`server_command`). Credentials (e.g. for an S3 artefact store) come from the
  environment only and are never logged.
* Artefact uploads (to S3 client-side, or through the server) are retried with
  exponential backoff (UDCGUARD_S3_ATTEMPTS, UDCGUARD_S3_RETRY_DELAY), then fail with
  :class:`ArtifactStoreError` naming the endpoint; stage outputs are already on disk.

Logging goes through an explicit run id (``RunLogger``), so tasks can log from any thread.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ops import storage
from udcguard.errors import UdcGuardError

if TYPE_CHECKING:  # udcguard.config imports torch: not needed to start a server
    from udcguard.config import Params

DEFAULT_URI = "sqlite:///mlflow.db"


class ArtifactStoreError(UdcGuardError):
    """An artefact upload failed after its retries; names the artefact store's endpoint."""


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def git_commit(cwd: str | Path = ".") -> tuple[str, bool]:
    """(commit hash or 'unknown', dirty?) of the working tree."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
        # only code counts: dvc.lock and the DVC metrics change as stages finish
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "src", "tasks",
                                "flows", "dvc.yaml", "pyproject.toml"],
                               cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown", False
    if head.returncode != 0:
        return "unknown", False
    return head.stdout.strip(), bool(dirty.stdout.strip())


def _client():
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow.MlflowClient(tracking_uri())


class RunLogger:
    """Logs into one MLflow run by id (thread-safe; usable from tasks)."""

    def __init__(self, run_id: str | None) -> None:
        self.run_id = run_id
        self._c = _client() if run_id else None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self._c is None:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items()]
        for i in range(0, len(batch), 500):
            self._c.log_batch(self.run_id, metrics=batch[i : i + 500])

    def _upload(self, what: str, fn, *args: Any) -> None:
        """Run an artefact upload with retries; one-line ArtifactStoreError naming the endpoint."""
        attempts, delay = storage.retry_settings()
        try:
            storage.retry(lambda: fn(self.run_id, *args), what, attempts, delay, sleep=_sleep)
        except storage.StorageError as err:
            try:
                uri = self._c.get_run(self.run_id).info.artifact_uri
            except Exception:  # noqa: BLE001 - the tracking server may be down too
                uri = f"run {self.run_id}"
            raise ArtifactStoreError(f"MLflow artefact store {_endpoint(uri)} ({uri}): {err}") from None

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self._c is not None:
            self._upload(f"upload of {path} failed", self._c.log_artifact, str(_existing(path)), artifact_path)

    def log_artifacts(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self._c is not None:
            self._upload(f"upload of {path} failed", self._c.log_artifacts, str(_existing(path)), artifact_path)

    def log_image(self, path: str | Path, name: str | None = None) -> None:
        """Log a PNG on disk as an MLflow image (shown in the run's artefacts)."""
        if self._c is None:
            return
        from PIL import Image

        with Image.open(_existing(path)) as img:
            rgb = img.convert("RGB")
        file = name or Path(path).name
        self._upload(f"upload of {path} failed", lambda rid: self._c.log_image(rid, rgb, artifact_file=file))

    def set_tags(self, tags: dict[str, str]) -> None:
        if self._c is not None:
            for k, v in tags.items():
                self._c.set_tag(self.run_id, k, v)

    def log_dict(self, obj: Any, name: str) -> None:
        if self._c is not None:
            self._upload(f"upload of {name} failed", self._c.log_dict, obj, name)

    def register_model(self, model_dir: str | Path, name: str, description: str = "") -> str | None:
        """Log a saved model folder as an artefact and register it; returns the version."""
        if self._c is None:
            return None
        self.log_artifacts(model_dir, "model")
        if not self._c.search_registered_models(filter_string=f"name = '{name}'"):
            self._c.create_registered_model(name, description=description)
        run = self._c.get_run(self.run_id)
        mv = self._c.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=self.run_id)
        return str(mv.version)


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def _existing(path: str | Path) -> Path:
    if not Path(path).exists():
        raise ArtifactStoreError(f"{path}: no such file to log to MLflow")
    return Path(path)


def _endpoint(artifact_uri: str) -> str:
    """Where an artefact URI's bytes go: the S3 endpoint, the tracking server, or the path."""
    if artifact_uri.startswith("s3://"):
        return storage.label(os.environ.get("MLFLOW_S3_ENDPOINT_URL") or storage.endpoint_from_env())
    if artifact_uri.startswith("mlflow-artifacts:"):
        return f"server {tracking_uri()}"
    return artifact_uri


def server_command(host: str = "127.0.0.1", port: int = 5000, backend: str = "sqlite:///mlflow.db",
                   artifacts: str = "./mlartifacts", workers: int = 1) -> list[str]:
    """``mlflow server`` with a sqlite backend and proxied artefacts (a folder or s3://...)."""
    if not backend.startswith("sqlite:///"):
        raise UdcGuardError(f"--backend-store-uri {backend!r}: expected sqlite:///path.db")
    return [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port),
            "--backend-store-uri", backend, "--serve-artifacts", "--artifacts-destination", artifacts,
            "--workers", str(workers)]


def pipeline_key(params_path: str | Path) -> tuple[str, str]:
    """(key, commit): one pipeline execution = one commit + one params content."""
    commit, dirty = git_commit()
    text = Path(params_path).read_bytes() if Path(params_path).exists() else b""
    key = hashlib.sha256(commit.encode() + str(dirty).encode() + text).hexdigest()[:16]
    return key, commit


def _parent_run_id(client, experiment_id: str, key: str, commit: str) -> str:
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`udcguard.pipeline` = '{key}' and tags.`udcguard.kind` = 'pipeline'",
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(experiment_id, run_name=f"pipeline {key[:8]}", tags={
        "udcguard.pipeline": key, "udcguard.kind": "pipeline", "mlflow.source.git.commit": commit})
    return run.info.run_id


@contextmanager
def stage_run(stage: str, params: Params, params_path: str | Path = "params.yaml", *,
              tags: dict[str, str] | None = None) -> Iterator[RunLogger]:
    """Open an MLflow run for one stage execution, nested under its pipeline's run."""
    client = _client()
    name = params.tracking.experiment
    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(name)
    key, commit = pipeline_key(params_path)
    _, dirty = git_commit()
    parent = _parent_run_id(client, exp_id, key, commit)
    label = stage + "".join(f"/{v}" for k, v in (tags or {}).items() if k in ("restorer", "attack"))
    run = client.create_run(exp_id, run_name=label, tags={
        "mlflow.parentRunId": parent, "udcguard.stage": stage, "udcguard.pipeline": key,
        "mlflow.source.git.commit": commit, "udcguard.git_dirty": str(dirty).lower(), **(tags or {})})
    rid = run.info.run_id
    from udcguard.config import flatten

    flat = flatten(params)
    from mlflow.entities import Param

    items = [Param(k, flat[k][:6000]) for k in sorted(flat)]
    for i in range(0, len(items), 100):  # MLflow's batch limit
        client.log_batch(rid, params=items[i : i + 100])
    status = "FAILED"
    try:
        yield RunLogger(rid)
        status = "FINISHED"
    finally:
        client.set_terminated(rid, status=status)

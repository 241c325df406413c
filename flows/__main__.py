"""CLI: ``python -m flows <stage> [--params params.yaml] [--set key=value ...]``.

Each command validates params.yaml first (errors name the key path), then runs the
stage's Prefect flow. Bad input exits with one line ``error: ...`` and status 2.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, NoReturn

import typer
import yaml

import flows  # noqa: F401  (sets offline/telemetry environment defaults)
from flows import local_server
from flows.stages import BY_NAME, STAGES, Stage
from udcguard.errors import UdcGuardError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="udcguard pipeline stages (each runs a Prefect flow).")

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="params file")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="override, e.g. dataset.crop_px=32")]
DataOpt = Annotated[Path, typer.Option("--data-dir", help="where stage outputs go")]


class _OneLineUserErrors(logging.Filter):
    """Drop tracebacks of bad-input errors from Prefect's log records (the CLI prints one line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, UdcGuardError):
            record.exc_info, record.exc_text = None, None
        return True


def _overrides(items: list[str] | None) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UdcGuardError(f"--set {item!r}: expected key=value")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _run(load_flow, params_path: Path, sets: list[str] | None, restorer: str | None = None, **kwargs) -> None:
    """Check params (and the restorer), then run the flow ``load_flow()`` returns on the Prefect server;
    bad input: one line and exit 2, no Prefect server: exit 1."""
    try:
        overrides = _overrides(sets)
        from udcguard.config import load_params  # imports torch: not at CLI start (remote commands)

        p = load_params(params_path, overrides)  # fail fast, before Prefect starts
        if restorer is not None:
            p.restorer(restorer)
            kwargs["restorer"] = restorer
        for name in ("prefect", "prefect.flow_runs", "prefect.task_runs"):
            logging.getLogger(name).addFilter(_OneLineUserErrors())
        with _prefect_api():
            load_flow()(params_path=str(params_path), overrides=overrides, **kwargs)
    except UdcGuardError as err:
        _exit(err)


def _exit(err: UdcGuardError) -> NoReturn:
    """The one way a command fails on a known error: one line, the error's exit code (bad input 2, a
    service such as the S3 store or the Prefect server 1)."""
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(err.exit_code) from None


@contextlib.contextmanager
def _prefect_api() -> Iterator[None]:
    """Run against the shared local Prefect server (flows/local_server.py) unless PREFECT_API_URL is set
    or UDCGUARD_PREFECT_SERVER=ephemeral."""
    url = local_server.ensure()
    if url is None:
        yield
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    os.environ["PREFECT_API_URL"] = url  # subprocesses (torchrun ranks, Dask workers) report there too
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield


RestorerOpt = Annotated[str, typer.Option("--restorer", "-r", help="restorer name from params.yaml")]


def _stage_command(stage: Stage) -> None:
    """Register ``python -m flows <stage>`` (with ``--restorer`` for a per-restorer stage) from the table."""
    if stage.per_restorer:
        def command(restorer: RestorerOpt, params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
                    data_dir: DataOpt = Path("data")) -> None:
            _run(stage.load, params, set_, data_dir=str(data_dir), restorer=restorer)
    else:
        def command(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,  # type: ignore[misc]
                    data_dir: DataOpt = Path("data")) -> None:
            _run(stage.load, params, set_, data_dir=str(data_dir))
    app.command(stage.name, help=stage.help)(command)


for _stage in STAGES:
    if _stage.name not in ("evaluate", "report"):  # those two take more options: below
        _stage_command(_stage)


@app.command("evaluate", help=BY_NAME["evaluate"].help)
def evaluate(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, data_dir: DataOpt = Path("data"),
             reports_dir: Annotated[Path, typer.Option("--reports-dir")] = Path("reports"),
             pairs: Annotated[Path | None, typer.Option("--pairs", help="your folder of pairs (manifest.json + gt/lq)")] = None,
             out: Annotated[Path | None, typer.Option("--out", help="where --pairs results go")] = None) -> None:
    _run(BY_NAME["evaluate"].load, params, set_, data_dir=str(data_dir), reports_dir=str(reports_dir),
         pairs=str(pairs) if pairs else None, out=str(out) if out else None)


@app.command("report", help=BY_NAME["report"].help)
def report(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, data_dir: DataOpt = Path("data"),
           reports_dir: Annotated[Path, typer.Option("--reports-dir")] = Path("reports")) -> None:
    _run(BY_NAME["report"].load, params, set_, data_dir=str(data_dir), reports_dir=str(reports_dir))


@app.command("pipeline")
def pipeline(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, data_dir: DataOpt = Path("data"),
             dispatch: Annotated[bool, typer.Option("--dispatch", help="run each stage as its Prefect deployment "
                                                    "on the cpu/gpu work pools")] = False) -> None:
    """Run every stage in order (same outputs as `dvc repro`)."""
    def flow():
        from flows.pipeline import pipeline

        return pipeline

    _run(flow, params, set_, data_dir=str(data_dir), dispatch=dispatch)


@app.command("check-params")
def check_params(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Validate a params file and print it resolved (defaults filled in)."""
    from udcguard.config import load_params

    try:
        p = load_params(params, _overrides(set_))
    except UdcGuardError as err:
        _exit(err)
    typer.echo(yaml.safe_dump(p.model_dump(mode="json"), sort_keys=False))


# ------------------------------------------------------------------ storage and tracking server
remote_app = typer.Typer(no_args_is_help=True, help="DVC S3 remote: setup, check, push, pull, verify "
                         "(endpoint and credentials from AWS_* env vars; never printed).")
app.add_typer(remote_app, name="remote")
RemoteOpt = Annotated[str | None, typer.Option("--remote", "-r", help="DVC remote name (default: the default remote)")]
AttemptsOpt = Annotated[int, typer.Option("--attempts", envvar="UDCGUARD_S3_ATTEMPTS", min=1, max=20,
                                          help="tries before giving up")]
DelayOpt = Annotated[float, typer.Option("--retry-delay", envvar="UDCGUARD_S3_RETRY_DELAY", min=0.0,
                                         help="first backoff delay in s (doubles each try)")]


def _storage(fn, *args, **kwargs) -> None:
    try:
        typer.echo(fn(*args, **kwargs))
    except UdcGuardError as err:  # StorageError: a ServiceError, exit 1
        _exit(err)


@remote_app.command("setup")
def remote_setup(url: Annotated[str, typer.Argument(help="s3://bucket/prefix")],
                 name: Annotated[str, typer.Option("--name")] = "storage",
                 project: Annotated[bool, typer.Option("--project", help="write .dvc/config (committed), "
                                                       "not .dvc/config.local")] = False) -> None:
    """Add an S3 remote as DVC's default; endpointurl from AWS_ENDPOINT_URL; no credentials written."""
    from ops import storage

    def run() -> str:
        r = storage.setup_remote(url, name, project)
        where = ".dvc/config" if project else ".dvc/config.local"
        return f"ok: DVC remote {r.name} -> {r.url} at {storage.label(r.endpoint)} (in {where})"

    _storage(run)


@remote_app.command("check")
def remote_check(remote: RemoteOpt = None, attempts: AttemptsOpt = 4, retry_delay: DelayOpt = 1.0) -> None:
    """Check that the remote's bucket answers (head_bucket, retried with backoff)."""
    from ops import storage

    def run() -> str:
        r = storage.remote(remote)
        storage.check(r.url, r.endpoint, attempts, retry_delay)
        return f"ok: {r.url} reachable at {storage.label(r.endpoint)}"

    _storage(run)


@remote_app.command("push")
def remote_push(remote: RemoteOpt = None, attempts: AttemptsOpt = 4, retry_delay: DelayOpt = 1.0) -> None:
    """`dvc push` after a reachability check, retried with backoff."""
    from ops.storage import transfer

    _storage(lambda: f"ok: dvc push: {transfer('push', remote, '.', attempts, retry_delay)}")


@remote_app.command("pull")
def remote_pull(remote: RemoteOpt = None, attempts: AttemptsOpt = 4, retry_delay: DelayOpt = 1.0) -> None:
    """`dvc pull` after a reachability check, retried with backoff."""
    from ops.storage import transfer

    _storage(lambda: f"ok: dvc pull: {transfer('pull', remote, '.', attempts, retry_delay)}")


@remote_app.command("verify")
def remote_verify(remote: RemoteOpt = None, deep: Annotated[bool, typer.Option(
        "--deep", help="hash every object, even when its ETag matches")] = False) -> None:
    """Check that every object on the remote has the md5 its key names (no partial uploads)."""
    from ops import storage

    def run() -> str:
        r = storage.remote(remote)
        storage.check(r.url, r.endpoint, 1, 0.0)
        return f"ok: {storage.verify(r.url, r.endpoint, deep)} objects under {r.url} match their md5 keys"

    _storage(run)


@app.command("mlflow-server")
def mlflow_server(host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
                  port: Annotated[int, typer.Option("--port")] = 5000,
                  backend_store_uri: Annotated[str, typer.Option("--backend-store-uri")] = "sqlite:///mlflow.db",
                  artifacts_destination: Annotated[str, typer.Option(
                      "--artifacts-destination", help="folder or s3://bucket/prefix")] = "./mlartifacts",
                  workers: Annotated[int, typer.Option("--workers")] = 1) -> None:
    """Start an MLflow tracking server (sqlite backend, proxied artefacts); prints the URI to export."""
    import os

    from ops import storage
    from ops.tracking import server_command

    def run() -> str:
        cmd = server_command(host, port, backend_store_uri, artifacts_destination, workers)
        if artifacts_destination.startswith("s3://"):
            storage.check(artifacts_destination, os.environ.get("MLFLOW_S3_ENDPOINT_URL") or
                          storage.endpoint_from_env(), *storage.retry_settings())
        os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # GenAI job runner: 8 unused processes
        typer.echo(f"export MLFLOW_TRACKING_URI=http://{host}:{port}")
        sys.stdout.flush()
        os.execv(cmd[0], cmd)  # replaces this process: its PID is the server's
        return ""

    _storage(run)


if __name__ == "__main__":
    sys.exit(app())

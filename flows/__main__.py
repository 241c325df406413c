"""CLI: ``python -m flows <stage> [--params params.yaml] [--set key=value ...]``.

Each command validates params.yaml first (errors name the key path), then runs the
stage's Prefect flow. Bad input exits with one line ``error: ...`` and status 2.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml

import flows  # noqa: F401  (sets offline/telemetry environment defaults)
from udcguard.config import load_params
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


def _run(fn, params_path: Path, sets: list[str] | None, **kwargs) -> None:
    try:
        overrides = _overrides(sets)
        load_params(params_path, overrides)  # fail fast, before Prefect starts
        for name in ("prefect", "prefect.flow_runs", "prefect.task_runs"):
            logging.getLogger(name).addFilter(_OneLineUserErrors())
        fn(params_path=str(params_path), overrides=overrides, **kwargs)
    except UdcGuardError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None


@app.command()
def synthesize(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, data_dir: DataOpt = Path("data")) -> None:
    """Simulate the PSF bank and synthesise UDC pairs (data/psf, data/udc)."""
    from flows.synthesize import synthesize as flow

    _run(flow, params, set_, data_dir=str(data_dir))


@app.command()
def pipeline(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, data_dir: DataOpt = Path("data")) -> None:
    """Run every stage in order (same outputs as `dvc repro`)."""
    from flows.pipeline import pipeline as flow

    _run(flow, params, set_, data_dir=str(data_dir))


@app.command("check-params")
def check_params(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Validate a params file and print it resolved (defaults filled in)."""
    try:
        p = load_params(params, _overrides(set_))
    except UdcGuardError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo(yaml.safe_dump(p.model_dump(mode="json"), sort_keys=False))


if __name__ == "__main__":
    sys.exit(app())

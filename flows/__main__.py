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


def _run(fn, params_path: Path, sets: list[str] | None, restorer: str | None = None, **kwargs) -> None:
    try:
        overrides = _overrides(sets)
        p = load_params(params_path, overrides)  # fail fast, before Prefect starts
        if restorer is not None:
            p.restorer(restorer)
            kwargs["restorer"] = restorer
        for name in ("prefect", "prefect.flow_runs", "prefect.task_runs"):
            logging.getLogger(name).addFilter(_OneLineUserErrors())
        fn(params_path=str(params_path), overrides=overrides, **kwargs)
    except UdcGuardError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None


RestorerOpt = Annotated[str, typer.Option("--restorer", "-r", help="restorer name from params.yaml")]


@app.command("synthesize")
def synthesize(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, data_dir: DataOpt = Path("data")) -> None:
    """Simulate the PSF bank and synthesise UDC pairs (data/psf, data/udc)."""
    from flows.synthesize import synthesize as flow

    _run(flow, params, set_, data_dir=str(data_dir))


@app.command("train_restorer")
def train_restorer(restorer: RestorerOpt, params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
                   data_dir: DataOpt = Path("data")) -> None:
    """Train one restorer (data/models/<restorer>); resumes after a kill."""
    from flows.train import train_restorer_flow as flow

    _run(flow, params, set_, data_dir=str(data_dir), restorer=restorer)


@app.command("train_purifier")
def train_purifier(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, data_dir: DataOpt = Path("data")) -> None:
    """Train the diffusion purifier (data/purifier); resumes after a kill."""
    from flows.train import train_purifier_flow as flow

    _run(flow, params, set_, data_dir=str(data_dir))


@app.command("attack")
def attack(restorer: RestorerOpt, params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
           data_dir: DataOpt = Path("data")) -> None:
    """Adversarial inputs at every eps level (data/attacks/<restorer>)."""
    from flows.defend import attack_flow as flow

    _run(flow, params, set_, data_dir=str(data_dir), restorer=restorer)


@app.command("select_tstar")
def select_tstar(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, data_dir: DataOpt = Path("data")) -> None:
    """PSNR-vs-t* trade-off on a val slice; picks t* when purify.t_star is auto (data/tstar.json)."""
    from flows.defend import select_tstar_flow as flow

    _run(flow, params, set_, data_dir=str(data_dir))


@app.command("adaptive")
def adaptive(restorer: RestorerOpt, params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
             data_dir: DataOpt = Path("data")) -> None:
    """Adaptive attacks through the purifier: BPDA, EOT, full gradients (data/adaptive/<restorer>)."""
    from flows.defend import adaptive_flow as flow

    _run(flow, params, set_, data_dir=str(data_dir), restorer=restorer)


@app.command("purify")
def purify(restorer: RestorerOpt, params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
           data_dir: DataOpt = Path("data")) -> None:
    """Purify the clean and adversarial inputs of a restorer (data/purified/<restorer>)."""
    from flows.defend import purify_flow as flow

    _run(flow, params, set_, data_dir=str(data_dir), restorer=restorer)


@app.command("purify_train")
def purify_train(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, data_dir: DataOpt = Path("data")) -> None:
    """Purify train inputs at the fine-tuning strengths (data/purified_train)."""
    from flows.defend import purify_train_flow as flow

    _run(flow, params, set_, data_dir=str(data_dir))


@app.command("finetune")
def finetune(restorer: RestorerOpt, params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
             data_dir: DataOpt = Path("data")) -> None:
    """Fine-tune a restorer on purified inputs (data/finetuned/<restorer>); registers it in MLflow."""
    from flows.train import finetune_flow as flow

    _run(flow, params, set_, data_dir=str(data_dir), restorer=restorer)


@app.command("evaluate")
def evaluate(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, data_dir: DataOpt = Path("data"),
             reports_dir: Annotated[Path, typer.Option("--reports-dir")] = Path("reports"),
             pairs: Annotated[Path | None, typer.Option("--pairs", help="your folder of pairs (manifest.json + gt/lq)")] = None,
             out: Annotated[Path | None, typer.Option("--out", help="where --pairs results go")] = None) -> None:
    """Score every (restorer, attack, eps, defence) -> reports/; or your own pairs with --pairs DIR --out DIR."""
    from flows.evaluate import evaluate_flow as flow

    _run(flow, params, set_, data_dir=str(data_dir), reports_dir=str(reports_dir),
         pairs=str(pairs) if pairs else None, out=str(out) if out else None)


@app.command("report")
def report(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, data_dir: DataOpt = Path("data"),
           reports_dir: Annotated[Path, typer.Option("--reports-dir")] = Path("reports")) -> None:
    """Render reports/index.html (self-contained) and log it to MLflow."""
    from flows.evaluate import report_flow as flow

    _run(flow, params, set_, data_dir=str(data_dir), reports_dir=str(reports_dir))


@app.command("pipeline")
def pipeline(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, data_dir: DataOpt = Path("data"),
             dispatch: Annotated[bool, typer.Option("--dispatch", help="run each stage as its Prefect deployment "
                                                    "on the cpu/gpu work pools")] = False) -> None:
    """Run every stage in order (same outputs as `dvc repro`)."""
    from flows.pipeline import pipeline as flow

    _run(flow, params, set_, data_dir=str(data_dir), dispatch=dispatch)


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

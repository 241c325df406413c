"""The stages of the DAG, declared once.

One :class:`Stage` per ``dvc.yaml`` stage: the flow that runs it, the Prefect work pool its
deployment uses, whether it runs per restorer, the params keys and the DVC outputs it reads.
This table drives the CLI (``python -m flows <stage>``), :mod:`flows.pipeline` (the DAG without
DVC, in process or dispatched), the resume fingerprints (:meth:`Stage.fingerprint`: those
params and the content of those outputs) and the prefect.yaml checks; tests check that it agrees
with dvc.yaml (params and data deps) and prefect.yaml (deployments and pools).

Adding a stage: dvc.yaml, a row here, a flow (in flows/) and a task (in tasks/).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from udcguard.config import Params

KEY = "${key}"  # the restorer in a per-restorer stage's paths (dvc.yaml's foreach key)


@dataclass(frozen=True)
class Stage:
    """One stage of the DAG.

    Attributes:
        name: the dvc.yaml stage, the CLI command and the deployment ``<name>/<name>``.
        flow: ``module:function`` of its Prefect flow (imported when the stage runs).
        pool: the work pool of its deployment: ``cpu`` or ``gpu``.
        per_restorer: one run per restorer of params.yaml (dvc.yaml ``foreach``; ``--restorer``).
        params: the params keys it reads (dvc.yaml ``params``; dotted for a sub-key).
        reads: the DVC outputs it reads (dvc.yaml's data deps; ``${key}``: the restorer).
        help: one line for the CLI.
    """

    name: str
    flow: str
    pool: str
    per_restorer: bool
    params: tuple[str, ...]
    reads: tuple[str, ...]
    help: str

    def load(self) -> Callable:
        """The stage's flow (imports its module: torch, Prefect, the tasks)."""
        module, function = self.flow.split(":")
        return getattr(importlib.import_module(module), function)

    def upstream(self, data_dir: str | Path = "data", restorer: str = "", reports_dir: str | Path = "reports") -> list[Path]:
        """The DVC outputs the stage reads, under ``data_dir`` (and ``reports_dir``)."""
        roots = {"data": Path(data_dir), "reports": Path(reports_dir)}
        out = []
        for path in self.reads:
            top, _, rest = path.replace(KEY, restorer).partition("/")
            out.append(roots[top] / rest)
        return out

    def fingerprint(self, params: Params, restorer: str = "", *, extra: str = "", data_dir: str | Path = "data") -> str:
        """Resume key of the stage: its params keys, udcguard's code, ``extra`` (the stage's own code or
        restorer) and the content of the outputs it reads. A staging dir or checkpoint made under
        another key is never reused."""
        from tasks.common import fingerprint  # torch: not at CLI start

        return fingerprint(params, *self.params, extra=extra, upstream=self.upstream(data_dir, restorer))


#: in dvc.yaml's order (DVC and flows/pipeline.py run them in dependency order)
STAGES: tuple[Stage, ...] = (
    Stage("synthesize", "flows.synthesize:synthesize", "cpu", False,
          ("seed", "psf", "scenes", "formation", "dataset"), (),
          "Simulate the PSF bank and synthesise UDC pairs (data/psf, data/udc)."),
    Stage("train_restorer", "flows.train:train_restorer_flow", "gpu", True,
          ("seed", "restorers", "train"), ("data/psf", "data/udc"),
          "Train one restorer (data/models/<restorer>); resumes after a kill."),
    Stage("train_purifier", "flows.train:train_purifier_flow", "gpu", False,
          ("seed", "diffusion"), ("data/udc",),
          "Train the diffusion purifier (data/purifier); resumes after a kill."),
    Stage("purify_train", "flows.defend:purify_train_flow", "gpu", False,
          ("purify", "diffusion.num_train_timesteps", "diffusion.max_timestep", "finetune.t_stars",
           "finetune.t_star_factors", "finetune.train_images", "finetune.seed"),
          ("data/udc", "data/purifier", "data/tstar.json"),
          "Purify train inputs at the fine-tuning strengths (data/purified_train)."),
    Stage("select_tstar", "flows.defend:select_tstar_flow", "gpu", False,
          ("restorers", "attack", "lpips", "purify", "diffusion.num_train_timesteps"),
          ("data/models", "data/purifier", "data/udc", "data/psf"),
          "PSNR-vs-t* trade-off on a val slice; picks t* when purify.t_star is auto (data/tstar.json)."),
    Stage("attack", "flows.defend:attack_flow", "gpu", True,
          ("attack", "lpips", "restorers"), ("data/models", "data/finetuned/${key}", "data/udc", "data/psf"),
          "Adversarial inputs at every eps level (data/attacks/<restorer>)."),
    Stage("purify", "flows.defend:purify_flow", "gpu", True,
          ("purify",), ("data/attacks/${key}", "data/purifier", "data/tstar.json"),
          "Purify the clean and adversarial inputs of a restorer (data/purified/<restorer>)."),
    Stage("adaptive", "flows.defend:adaptive_flow", "gpu", True,
          ("attack", "adaptive", "purify", "lpips"),
          ("data/models/${key}", "data/finetuned/${key}", "data/purifier", "data/tstar.json", "data/udc", "data/psf"),
          "Adaptive attacks through the purifier: BPDA, EOT, full gradients (data/adaptive/<restorer>)."),
    Stage("finetune", "flows.train:finetune_flow", "gpu", True,
          ("finetune",), ("data/models/${key}", "data/purified_train", "data/udc", "data/psf"),
          "Fine-tune a restorer on purified inputs (data/finetuned/<restorer>); registers it in MLflow."),
    Stage("evaluate", "flows.evaluate:evaluate_flow", "cpu", False,
          ("restorers", "attack", "adaptive", "purify.seeds", "lpips", "evaluate"),
          ("data/models", "data/finetuned", "data/attacks", "data/purified", "data/adaptive", "data/tstar.json"),
          "Score every (restorer, attack, eps, defence) -> reports/; or your own pairs with --pairs DIR --out DIR."),
    Stage("report", "flows.evaluate:report_flow", "cpu", False,
          ("restorers", "attack", "adaptive", "purify"),
          ("reports/metrics.csv", "reports/examples", "data/models", "data/finetuned", "data/attacks",
           "data/adaptive", "data/tstar.json"),
          "Render reports/index.html (self-contained) and log it to MLflow."),
)

BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}

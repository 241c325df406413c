"""Stages 2 and 5: train a restorer, train the purifier, fine-tune a restorer."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows.stages import BY_NAME
from tasks.common import Paths, file_digest
from ops.tracking import stage_run
from tasks.train import finetune_restorer, train_purifier, train_restorer
from udcguard.config import DistributedParams, load_params
from udcguard.io.atomic import staged_output


@flow(name="train_restorer")
def train_restorer_flow(restorer: str, params_path: str = "params.yaml", overrides: dict[str, Any] | None = None,
                        data_dir: str = "data") -> str:
    """Train ``restorer`` -> data/models/<restorer>/ (safetensors + spec + history)."""
    params, paths = load_params(params_path, overrides), Paths(data_dir)
    spec = params.restorer(restorer)
    fp = BY_NAME["train_restorer"].fingerprint(params, restorer, extra=repr(spec) + file_digest(spec.weights),
                                               data_dir=data_dir)
    with stage_run("train_restorer", params, params_path, tags={"restorer": restorer}) as run:
        with staged_output(paths.model(restorer), fp) as out:
            info = train_restorer(params, restorer, data_dir, str(out), fp, run.run_id)
        run.log_metrics({"parameters": info["parameters"], "final_loss": info["final_loss"]})
        run.log_artifacts(paths.model(restorer), "restorer")
    get_run_logger().info("trained %s: %s", restorer, info)
    return str(paths.model(restorer))


@flow(name="train_purifier")
def train_purifier_flow(params_path: str = "params.yaml", overrides: dict[str, Any] | None = None,
                        data_dir: str = "data") -> str:
    """Train the diffusion purifier -> data/purifier/ (diffusers save_pretrained layout)."""
    params, paths = load_params(params_path, overrides), Paths(data_dir)
    fp = BY_NAME["train_purifier"].fingerprint(params, data_dir=data_dir)
    with stage_run("train_purifier", params, params_path) as run:
        with staged_output(paths.purifier, fp) as out:
            info = train_purifier(params, data_dir, str(out), fp, run.run_id)
        run.log_dict(info, "purifier.json")
        run.log_artifacts(paths.purifier, "purifier")
    return str(paths.purifier)


@flow(name="finetune")
def finetune_flow(restorer: str, params_path: str = "params.yaml", overrides: dict[str, Any] | None = None,
                  data_dir: str = "data") -> str:
    """Fine-tune ``restorer`` on purified inputs -> data/finetuned/<restorer>/, registered in MLflow."""
    params, paths = load_params(params_path, overrides), Paths(data_dir)
    launch_free = params.finetune.model_copy(update={"distributed": DistributedParams()})  # resumes under any nproc
    fp = BY_NAME["finetune"].fingerprint(params.model_copy(update={"finetune": launch_free}), restorer, extra=restorer,
                                         data_dir=data_dir)
    with stage_run("finetune", params, params_path, tags={"restorer": restorer}) as run:
        with staged_output(paths.finetuned(restorer), fp) as out:
            info = finetune_restorer(params, restorer, data_dir, str(out), fp, run.run_id)
        if not info["perceptual"]:
            get_run_logger().warning("perceptual term off: no finetune.perceptual_weights_path (nothing is downloaded)")
        run.set_tags({"perceptual": str(info["perceptual"]).lower(), "ddp_ranks": str(info["ranks"])})
        run.log_metrics({"final_loss": info["final_loss"], "pairs": info["pairs"]})
        version = run.register_model(paths.finetuned(restorer), f"udcguard-{restorer}-finetuned",
                                     "restorer fine-tuned on diffusion-purified inputs")
        get_run_logger().info("registered udcguard-%s-finetuned version %s", restorer, version)
    return str(paths.finetuned(restorer))

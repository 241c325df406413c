"""Stages 3-4: attack a restorer, purify its input sets, purify the fine-tuning set."""

from __future__ import annotations

from typing import Any

from prefect import flow

from tasks.attack import attack_restorer
from tasks.common import Paths, fingerprint
from tasks.purification import purify_sets, purify_train_set
from tasks.tracking import stage_run
from udcguard.config import load_params
from udcguard.io.atomic import staged_output


@flow(name="attack")
def attack_flow(restorer: str, params_path: str = "params.yaml", overrides: dict[str, Any] | None = None,
                data_dir: str = "data") -> str:
    """Every attack set at every level -> data/attacks/<restorer>/<attack>.eps_<k>/ (+ clean set, records)."""
    params, paths = load_params(params_path, overrides), Paths(data_dir)
    params.restorer(restorer)
    attacks = ",".join(a.id for a in params.attack.attacks)
    with stage_run("attack", params, params_path, tags={"restorer": restorer, "attacks": attacks}) as run:
        with staged_output(paths.attacks(restorer), fingerprint(params, "attack", "lpips", extra=restorer)) as out:
            info = attack_restorer(params, restorer, data_dir, str(out))
        run.log_metrics(info)
        run.log_artifact(paths.attacks(restorer) / "records.json")
    return str(paths.attacks(restorer))


@flow(name="purify")
def purify_flow(restorer: str, params_path: str = "params.yaml", overrides: dict[str, Any] | None = None,
                data_dir: str = "data") -> str:
    """Purify the clean and adversarial inputs of ``restorer`` -> data/purified/<restorer>/."""
    params, paths = load_params(params_path, overrides), Paths(data_dir)
    with stage_run("purify", params, params_path, tags={"restorer": restorer}) as run:
        with staged_output(paths.purified(restorer), fingerprint(params, "purify", "attack", "lpips", extra=restorer)) as out:
            sets = purify_sets(params, restorer, data_dir, str(out))
        run.log_metrics({"sets": len(sets)})
    return str(paths.purified(restorer))


@flow(name="purify_train")
def purify_train_flow(params_path: str = "params.yaml", overrides: dict[str, Any] | None = None,
                      data_dir: str = "data") -> str:
    """Purify train inputs at each fine-tuning strength -> data/purified_train/t_<t>/."""
    params, paths = load_params(params_path, overrides), Paths(data_dir)
    with stage_run("purify_train", params, params_path) as run:
        with staged_output(paths.purified_train, fingerprint(params, "purify", "finetune")) as out:
            strengths = purify_train_set(params, data_dir, str(out))
        run.log_metrics({"strengths": len(strengths)})
    return str(paths.purified_train)

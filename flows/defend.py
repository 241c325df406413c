"""Stages 3-4: attack a restorer, purify its input sets, purify the fine-tuning set.

The purifying flows import their tasks when they run: the attack stage then never loads diffusers
(about 2 s of imports a process)."""

from __future__ import annotations

from typing import Any

from prefect import flow

import tasks.attack
import tasks.shards
from tasks.attack import attack_restorer
from flows.stages import BY_NAME
from tasks.common import Paths, file_digest
from ops.tracking import stage_run
from udcguard.config import load_params
from udcguard.io.atomic import save_json, staged_output


@flow(name="attack")
def attack_flow(restorer: str, params_path: str = "params.yaml", overrides: dict[str, Any] | None = None,
                data_dir: str = "data") -> str:
    """Every attack set at every level -> data/attacks/<restorer>/<attack>.eps_<k>/ (+ clean set, records)."""
    params, paths = load_params(params_path, overrides), Paths(data_dir)
    params.restorer(restorer)
    attacks = ",".join(a.id for a in params.attack.attacks)
    with stage_run("attack", params, params_path, tags={"restorer": restorer, "attacks": attacks}) as run:
        fp = BY_NAME["attack"].fingerprint(params, restorer, extra=restorer + shard_code(tasks.attack), data_dir=data_dir)
        with staged_output(paths.attacks(restorer), fp) as out:
            info = attack_restorer(params, restorer, data_dir, str(out))
        run.log_metrics(info)
        run.log_artifact(paths.attacks(restorer) / "records.json")
    return str(paths.attacks(restorer))


@flow(name="purify")
def purify_flow(restorer: str, params_path: str = "params.yaml", overrides: dict[str, Any] | None = None,
                data_dir: str = "data") -> str:
    """Purify the clean and adversarial inputs of ``restorer`` -> data/purified/<restorer>/."""
    import tasks.purification

    params, paths = load_params(params_path, overrides), Paths(data_dir)
    with stage_run("purify", params, params_path, tags={"restorer": restorer}) as run:
        fp = BY_NAME["purify"].fingerprint(params, restorer, extra=restorer + shard_code(tasks.purification),
                                           data_dir=data_dir)
        with staged_output(paths.purified(restorer), fp) as out:
            sets = tasks.purification.purify_sets(params, restorer, data_dir, str(out))
        run.log_metrics({"sets": len(sets)})
    return str(paths.purified(restorer))


@flow(name="purify_train")
def purify_train_flow(params_path: str = "params.yaml", overrides: dict[str, Any] | None = None,
                      data_dir: str = "data") -> str:
    """Purify train inputs at each fine-tuning strength -> data/purified_train/t_<t>/."""
    import tasks.purification

    params, paths = load_params(params_path, overrides), Paths(data_dir)
    with stage_run("purify_train", params, params_path) as run:
        fp = BY_NAME["purify_train"].fingerprint(params, extra=shard_code(tasks.purification), data_dir=data_dir)
        with staged_output(paths.purified_train, fp) as out:
            strengths = tasks.purification.purify_train_set(params, data_dir, str(out))
        run.log_metrics({"strengths": len(strengths)})
    return str(paths.purified_train)


def shard_code(module) -> str:
    """A stage's task code enters its fingerprint: shards written by other code are not resumed."""
    return file_digest(module.__file__) + file_digest(tasks.shards.__file__)


@flow(name="select_tstar")
def select_tstar_flow(params_path: str = "params.yaml", overrides: dict[str, Any] | None = None,
                      data_dir: str = "data") -> str:
    """PSNR-vs-t* on a val slice (clean and attacked; unguided and guided) -> data/tstar.json; t* if auto."""
    from tasks.select import select_tstar

    params, paths = load_params(params_path, overrides), Paths(data_dir)
    with stage_run("select_tstar", params, params_path) as run:
        info = select_tstar(params, data_dir)
        save_json(paths.tstar, info)
        run.log_metrics({"t_star": info["t_star"], "selected_t_star": info["selected"]})
        for row in info["curve"]:
            run.log_metrics({"val_clean_psnr": row["clean_psnr"], "val_attacked_psnr": row["attacked_psnr"]},
                            step=int(row["t"]))
        run.log_artifact(paths.tstar)
    return str(paths.tstar)


@flow(name="adaptive")
def adaptive_flow(restorer: str, params_path: str = "params.yaml", overrides: dict[str, Any] | None = None,
                  data_dir: str = "data") -> str:
    """Adaptive attacks through the purifier (BPDA, EOT, full) -> data/adaptive/<restorer>/."""
    from tasks.adaptive import adaptive_attacks

    params, paths = load_params(params_path, overrides), Paths(data_dir)
    params.restorer(restorer)
    fp = BY_NAME["adaptive"].fingerprint(params, restorer, extra=restorer, data_dir=data_dir)
    with stage_run("adaptive", params, params_path, tags={"restorer": restorer}) as run:
        with staged_output(paths.adaptive(restorer), fp) as out:
            info = adaptive_attacks(params, restorer, data_dir, str(out))
        run.log_metrics(info)
        run.log_artifact(paths.adaptive(restorer) / "records.json")
    return str(paths.adaptive(restorer))

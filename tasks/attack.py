"""Task of the attack stage: every attack set x every level on one restorer.

Two targets: the base restorer (``<set>``: the white-box rows, and the gray-box rows of
``purify``) and the fine-tuned restorer (``finetuned~<set>``: the gray-box rows of
``purify+finetune``: a gray-box attacker knows the deployed restorer). Transfer sets are
crafted on a surrogate whatever the target, so they are made once. Subsets (``max_images``)
are drawn stratified across scene groups (:func:`udcguard.io.subsets.stratified_subset`,
seeded by ``attack.seed``), never as the first N ids.
"""

from __future__ import annotations

import functools
import hashlib
import time
import zlib
from pathlib import Path

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.common import Paths, resolve_device
from tasks.shards import (
    batches,
    gather,
    remove_shards,
    run_shards,
    save_shard,
    shard_jobs,
    shard_params,
    stamp,
)
from udcguard.attacks import Attack
from udcguard.attacks.build import build_attack, build_objective, needs_surrogate
from udcguard.attacks.regions import region_mask
from udcguard.config import AttackSpec, Params
from udcguard.io.atomic import save_json
from udcguard.io.datasets import TensorPairs, load_split, save_inputs
from udcguard.io.restorer_store import load_restorer
from udcguard.io.subsets import stratified_subset
from udcguard.train.restorer import model_fn


#: Prefix of the sets crafted on the fine-tuned restorer (``~`` never occurs in an attack id).
FINETUNED = "finetuned~"
#: Attack target -> where its weights live (Paths method).
TARGETS = {"base": "model", "finetuned": "finetuned"}


def set_name(attack_id: str, eps: float, target: str = "base") -> str:
    """Directory of one adversarial set: ``<attack id>.eps_<level>`` (eps 0: unbounded), prefixed
    ``finetuned~`` when crafted on the fine-tuned restorer."""
    return f"{FINETUNED if target == 'finetuned' else ''}{attack_id}.eps_{eps:g}"


def targets(spec: AttackSpec) -> tuple[str, ...]:
    """The restorers an attack set is crafted on: transfer sets only once (on the surrogate), and sets
    with ``finetuned: false`` only on the base restorer (a CPU budget for costly attacks)."""
    return ("base",) if needs_surrogate(spec.attack) or not spec.finetuned else ("base", "finetuned")


def subset_indices(params: Params, pairs: TensorPairs, max_images: int | None) -> list[int]:
    """Indices of the evaluated images: a subset stratified across scene groups (attack.seed), or all."""
    return stratified_subset(pairs.groups, max_images, params.attack.seed)


def objective_for(params: Params, spec: AttackSpec):
    """The objective an attack set really uses (lpips_auto resolved; built once per process)."""
    lp = params.lpips
    return build_objective(params.objective_of(spec), net=lp.net,
                           lpips_backbone=str(lp.backbone_path) if lp.backbone_path else None,
                           lpips_lin=str(lp.lin_path) if lp.lin_path else None)


def levels(spec: AttackSpec) -> list[tuple[float, float | None]]:
    """(eps, step) per level, in params units; one level (0, None) for an unbounded attack."""
    if not spec.eps:
        return [(0.0, None)]
    return list(zip(spec.eps, spec.step or [None] * len(spec.eps), strict=True))


def level_seed(seed: int, attack_id: str, eps: float) -> int:
    """Seed of one (attack set, level): adding or removing a set leaves the others unchanged."""
    return (seed * 1_000_003 + zlib.crc32(f"{attack_id}/{eps:g}".encode())) % 2**63


def surrogate_name(params: Params, spec: AttackSpec, target: str) -> str:
    """Transfer source: ``options.surrogate``, else the next restorer of params (cyclic); never the target
    itself (a transfer attack from the target would be a white-box result filed as black-box)."""
    if spec.options.get("surrogate") and spec.options["surrogate"] != target:
        return spec.options["surrogate"]
    names = [r.name for r in params.restorers]
    source = names[(names.index(target) + 1) % len(names)]
    if source == target:
        raise ValueError(f"attack.attacks.{spec.id}: no surrogate restorer other than the target {target!r}")
    return source


def make_attack(params: Params, spec: AttackSpec, eps: float, step: float | None, f, *, objective, paths: Paths,
                target: str, cond, device: torch.device, loader=load_restorer) -> Attack:
    """The attack object of one level (the transfer attack gets its surrogate restorer from ``loader``)."""
    surrogate_fn = None
    if needs_surrogate(spec.attack):
        surrogate = loader(paths.model(surrogate_name(params, spec, target)), device).requires_grad_(False)
        surrogate_fn = model_fn(surrogate, cond, device)
    return build_attack(spec.attack, f, eps=eps, step=step, objective=objective,
                        reference=spec.reference or params.attack.reference, options=spec.options,
                        surrogate_fn=surrogate_fn)


def batch_seed(seed: int, attack_id: str, eps: float, ids: list[str]) -> int:
    """Seed of one batch, from (seed, attack set, level, its image ids): independent of sharding."""
    text = f"{level_seed(seed, attack_id, eps)}:" + "/".join(ids)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") % 2**63


@functools.lru_cache(maxsize=4)
def _restorer(path: str, device: str, _stamp: int) -> torch.nn.Module:
    return load_restorer(Path(path), torch.device(device), frozen=True)


def cached_restorer(path: Path, device: torch.device) -> torch.nn.Module:
    """A frozen restorer, loaded once per process (reloaded when its files change)."""
    return _restorer(str(path), str(device), stamp(path))


@functools.lru_cache(maxsize=2)
def _pairs(split: str, psf: str, _stamp: int) -> TensorPairs:
    return load_split(Path(split), psf_dir=Path(psf))




def attack_shard(ctx: dict, job: dict) -> str:
    """One shard: attack set ``job["attack"]`` at one level on images [start, stop) -> its .pt file."""
    params, paths = shard_params(ctx["params"]), Paths(ctx["data_dir"])
    a, spec, eps, step = params.attack, params.attack.spec(job["attack"]), job["eps"], job["step"]
    device = resolve_device(a.device)
    model = cached_restorer(getattr(paths, TARGETS[job["target"]])(ctx["name"]), device)
    split = _pairs(str(paths.udc / a.split), str(paths.psf), stamp(paths.udc / a.split))
    pairs = split.subset(job["indices"])  # the set's images (a stratified subset, in split order)
    objective = objective_for(params, spec)
    advs, records = [], []
    for i, j in batches(job["start"], job["stop"], a.batch_size):  # the stage's batch grid, whatever the shard
        x = pairs.lq[i:j].clone().to(device)  # (B, 3, H, W)
        cond = pairs.cond[i:j].clone() if pairs.cond is not None else None
        f = model_fn(model, cond, device)
        attack = make_attack(params, spec, eps, step, f, objective=objective, paths=paths, target=ctx["name"],
                             cond=cond, device=device, loader=cached_restorer)
        mask = region_mask(x, spec.region or a.region, threshold=a.region_threshold, dilate_px=a.region_dilate_px)
        gen = torch.Generator().manual_seed(batch_seed(a.seed, spec.id, eps, list(pairs.ids[i:j])))
        t0 = time.perf_counter()
        res = attack(x, gt=pairs.gt[i:j].clone().to(device), mask=mask, generator=gen)
        dt = (time.perf_counter() - t0) / x.shape[0]
        advs.append(res.x_adv.cpu())
        records += _records(spec, eps, step, objective, res, mask, pairs.ids[i:j], dt,
                            {"target": job["target"]})
    save_shard(job["out"], {"ids": list(pairs.ids[job["start"]:job["stop"]]), "x_adv": torch.cat(advs),
                            "records": records})
    return job["key"]


def _records(spec: AttackSpec, eps: float, step: float | None, objective, res, mask, ids, seconds: float,
             extra: dict) -> list[dict]:
    """One record per image of a batch: objective, norms, queries, gradients, time."""
    out = []
    for k, image_id in enumerate(ids):
        rec = {"id": image_id, "attack": spec.id, "method": spec.attack, "eps": eps, "step": step,
               "objective_name": getattr(objective, "name", str(objective)),
               "objective": float(res.objective[k]), "objective_clean": float(res.objective_clean[k]),
               "linf": float(res.linf[k]), "l2": float(res.l2[k]), "queries": res.queries, "grads": res.grads,
               "seconds": seconds, "masked_fraction": float(mask[k].mean()) if mask is not None else 1.0}
        rec.update({key: v if isinstance(v, str) else float(v[k]) for key, v in extra.items()})
        out.append(rec)
    return out


def _plan(params: Params, pairs: TensorPairs, out: Path) -> list[tuple[AttackSpec, float, float | None, str, list[dict]]]:
    """Per (attack set, level, target), in params order: its shard jobs over whole batches of its images."""
    a, plan = params.attack, []
    for spec in a.attacks:
        indices = subset_indices(params, pairs, set_size(spec.max_images, a.max_images))
        for target in targets(spec):
            for eps, step in levels(spec):
                name = set_name(spec.id, eps, target)
                plan.append((spec, eps, step, target, shard_jobs(
                    out, name, len(indices), params.parallel.shard_images, a.batch_size, attack=spec.id, eps=eps,
                    step=step, target=target, indices=indices)))
    return plan


def set_size(own: int | None, stage: int | None) -> int | None:
    """Images of an attack set: its own ``max_images`` within the stage's (subsets of one seed are nested
    prefixes, so a set never holds an image outside the clean set)."""
    if own is None or stage is None:
        return own if stage is None else stage
    return min(own, stage)


@task(name="attack", cache_policy=NO_CACHE)
def attack_restorer(params: Params, name: str, data_dir: str, out_dir: str) -> dict:
    """Every attack set at every level, in shards; writes the input sets + per-image records.json."""
    paths, a, out = Paths(data_dir), params.attack, Path(out_dir)
    pairs = load_split(paths.udc / a.split, psf_dir=paths.psf)
    clean = pairs.subset(subset_indices(params, pairs, a.max_images))
    save_inputs(out / "clean", clean.lq, clean.ids, {"attack": "none", "eps": 0.0, "split": a.split})
    plan = _plan(params, pairs, out)
    ctx = {"params": params.model_dump_json(), "name": name, "data_dir": data_dir}
    run_shards("tasks.attack:attack_shard", ctx, [job for *_, jobs in plan for job in jobs], params.parallel,
               f"attack {name}")
    records: list[dict] = []
    for spec, eps, step, target, jobs in plan:  # merge in params order: sets, then records.json
        name = set_name(spec.id, eps, target)
        ids = [pairs.ids[i] for i in jobs[0]["indices"]] if jobs else []
        parts, x_adv = gather(jobs, "x_adv", ids, name)
        records += [rec for part in parts for rec in part["records"]]
        save_inputs(out / name, x_adv, ids,
                    {"attack": spec.id, "label": params.attack_label(spec), "method": spec.attack, "eps": eps,
                     "step": step, "target": target, "objective": params.objective_of(spec),
                     "reference": spec.reference or a.reference, "region": spec.region or a.region,
                     "options": spec.options, "split": a.split})
    save_json(out / "records.json", records)
    remove_shards(out)
    return {"images": len(clean), "sets": len(plan), "shards": sum(len(jobs) for *_, jobs in plan)}

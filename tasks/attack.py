"""Task of the attack stage: every attack set x every level on one restorer."""

from __future__ import annotations

import time
import zlib
from pathlib import Path

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.common import Paths, progress, resolve_device
from tasks.train import load_restorer
from udcguard.attacks import Attack
from udcguard.attacks.build import build_attack
from udcguard.attacks.objectives import make_objective
from udcguard.attacks.regions import region_mask
from udcguard.config import AttackSpec, Params
from udcguard.io.atomic import save_json
from udcguard.io.datasets import TensorPairs, load_split, save_inputs
from udcguard.train.restorer import model_fn


def set_name(attack_id: str, eps: float) -> str:
    """Directory of one adversarial set: ``<attack id>.eps_<level>`` (eps 0: unbounded)."""
    return f"{attack_id}.eps_{eps:g}"


def levels(spec: AttackSpec) -> list[tuple[float, float | None]]:
    """(eps, step) per level, in params units; one level (0, None) for an unbounded attack."""
    if not spec.eps:
        return [(0.0, None)]
    return list(zip(spec.eps, spec.step or [None] * len(spec.eps), strict=True))


def level_seed(seed: int, attack_id: str, eps: float) -> int:
    """Seed of one (attack set, level): adding or removing a set leaves the others unchanged."""
    return (seed * 1_000_003 + zlib.crc32(f"{attack_id}/{eps:g}".encode())) % 2**63


def surrogate_name(params: Params, spec: AttackSpec, target: str) -> str:
    """Transfer source: ``options.surrogate``, else the next restorer of params (cyclic)."""
    if spec.options.get("surrogate"):
        return spec.options["surrogate"]
    names = [r.name for r in params.restorers]
    return names[(names.index(target) + 1) % len(names)]


def make_attack(params: Params, spec: AttackSpec, eps: float, step: float | None, f, *, objective, paths: Paths,
                target: str, cond, device: torch.device) -> Attack:
    """The attack object of one level (the transfer attack gets its surrogate restorer)."""
    surrogate_fn = None
    if spec.attack == "transfer":
        surrogate = load_restorer(paths.model(surrogate_name(params, spec, target)), device)
        for prm in surrogate.parameters():
            prm.requires_grad_(False)
        surrogate_fn = model_fn(surrogate, cond, device)
    return build_attack(spec.attack, f, eps=eps, step=step, objective=objective,
                        reference=spec.reference or params.attack.reference, options=spec.options,
                        surrogate_fn=surrogate_fn)


def _attack_set(params: Params, spec: AttackSpec, eps: float, step: float | None, model, pairs: TensorPairs,
                objective, paths: Paths, target: str, device: torch.device, bar) -> tuple[torch.Tensor, list[dict]]:
    a = params.attack
    gen = torch.Generator().manual_seed(level_seed(a.seed, spec.id, eps))
    advs, records = [], []
    for i in range(0, len(pairs), a.batch_size):
        x = pairs.lq[i : i + a.batch_size].to(device)
        cond = pairs.cond[i : i + a.batch_size] if pairs.cond is not None else None
        f = model_fn(model, cond, device)
        attack = make_attack(params, spec, eps, step, f, objective=objective, paths=paths, target=target,
                              cond=cond, device=device)
        mask = region_mask(x, spec.region or a.region, threshold=a.region_threshold, dilate_px=a.region_dilate_px)
        t0 = time.perf_counter()
        res = attack(x, gt=pairs.gt[i : i + a.batch_size].to(device), mask=mask, generator=gen)
        dt = (time.perf_counter() - t0) / x.shape[0]
        advs.append(res.x_adv.cpu())
        extra = getattr(attack, "last_info", None) or {}
        for k in range(x.shape[0]):
            rec = {"id": pairs.ids[i + k], "attack": spec.id, "method": spec.attack, "eps": eps, "step": step,
                   "objective_name": getattr(objective, "name", str(objective)),
                   "objective": float(res.objective[k]), "objective_clean": float(res.objective_clean[k]),
                   "linf": float(res.linf[k]), "l2": float(res.l2[k]), "queries": res.queries, "grads": res.grads,
                   "seconds": dt, "masked_fraction": float(mask[k].mean()) if mask is not None else 1.0}
            rec.update({key: float(v[k]) for key, v in extra.items()})
            records.append(rec)
        bar.update(x.shape[0])
    return torch.cat(advs), records


@task(name="attack", cache_policy=NO_CACHE)
def attack_restorer(params: Params, name: str, data_dir: str, out_dir: str) -> dict:
    """Every attack set at every level; writes input sets + per-image records (objective, norms, queries, time)."""
    paths, a = Paths(data_dir), params.attack
    device = resolve_device(a.device)
    model = load_restorer(paths.model(name), device)
    for prm in model.parameters():
        prm.requires_grad_(False)
    pairs = load_split(paths.udc / a.split, psf_dir=paths.psf, max_items=a.max_images)
    out = Path(out_dir)
    save_inputs(out / "clean", pairs.lq, pairs.ids, {"attack": "none", "eps": 0.0, "split": a.split})
    objectives: dict[str, object] = {}
    records: list[dict] = []
    sizes = {s.id: min(s.max_images or len(pairs), len(pairs)) for s in a.attacks}
    bar = progress(sum(sizes[s.id] * len(levels(s)) for s in a.attacks), f"attack {name}")
    for spec in a.attacks:
        obj_name = spec.objective or a.objective
        if obj_name not in objectives:
            lp = params.lpips
            objectives[obj_name] = make_objective(obj_name, lpips_backbone=lp.backbone_path, lpips_lin=lp.lin_path,
                                                  net=lp.net)
        subset = pairs.subset(range(sizes[spec.id]))
        for eps, step in levels(spec):
            x_adv, recs = _attack_set(params, spec, eps, step, model, subset, objectives[obj_name], paths, name,
                                      device, bar)
            records += recs
            save_inputs(out / set_name(spec.id, eps), x_adv, subset.ids,
                        {"attack": spec.id, "method": spec.attack, "eps": eps, "step": step,
                         "objective": obj_name, "reference": spec.reference or a.reference,
                         "region": spec.region or a.region, "options": spec.options, "split": a.split})
    bar.close()
    save_json(out / "records.json", records)
    return {"images": len(pairs), "sets": sum(len(levels(s)) for s in a.attacks)}

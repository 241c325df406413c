"""Task of the attack stage: adversarial inputs per (restorer, eps level)."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.common import Paths, progress, resolve_device
from tasks.train import load_restorer
from udcguard.attacks import ATTACKS
from udcguard.config import Params
from udcguard.io.atomic import save_json
from udcguard.io.datasets import load_split, save_inputs
from udcguard.train.restorer import model_fn


def eps_name(eps: float) -> str:
    return f"eps_{eps:g}"


@task(name="attack", cache_policy=NO_CACHE)
def attack_restorer(params: Params, name: str, data_dir: str, out_dir: str) -> dict:
    """PGD (or the configured attack) at every eps level; writes inputs + per-image records."""
    paths, a = Paths(data_dir), params.attack
    device = resolve_device(a.device)
    model = load_restorer(paths.model(name), device)
    for prm in model.parameters():
        prm.requires_grad_(False)
    pairs = load_split(paths.udc / a.split, psf_dir=paths.psf, max_items=a.max_images)
    out = Path(out_dir)
    save_inputs(out / "clean", pairs.lq, pairs.ids, {"attack": "none", "eps": 0.0, "split": a.split})
    records, steps = [], a.step or a.eps
    gen = torch.Generator().manual_seed(a.seed)
    bar = progress(len(a.eps) * len(pairs), f"attack {name}")
    for eps, step in zip(a.eps, steps):
        advs = []
        for i in range(0, len(pairs), a.batch_size):
            x = pairs.lq[i : i + a.batch_size].to(device)
            cond = pairs.cond[i : i + a.batch_size] if pairs.cond is not None else None
            attack = ATTACKS.get(a.name)(model_fn(model, cond, device), eps=eps / 256, alpha=step / 256,
                                         steps=a.steps, random_start=a.random_start,
                                         objective=a.objective, reference=a.reference)
            t0 = time.perf_counter()
            res = attack(x, gt=pairs.gt[i : i + a.batch_size].to(device), generator=gen)
            dt = (time.perf_counter() - t0) / x.shape[0]
            advs.append(res.x_adv.cpu())
            for k in range(x.shape[0]):
                records.append({"id": pairs.ids[i + k], "attack": a.name, "eps": eps, "step": step,
                                "objective": float(res.objective[k]), "objective_clean": float(res.objective_clean[k]),
                                "linf": float(res.linf[k]), "l2": float(res.l2[k]), "queries": res.queries,
                                "grads": res.grads, "seconds": dt})
            bar.update(x.shape[0])
        save_inputs(out / eps_name(eps), torch.cat(advs), pairs.ids,
                    {"attack": a.name, "eps": eps, "step": step, "steps": a.steps, "objective": a.objective,
                     "reference": a.reference, "split": a.split})
    bar.close()
    save_json(out / "records.json", records)
    return {"images": len(pairs), "levels": len(a.eps)}

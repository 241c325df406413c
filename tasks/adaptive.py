"""Task of the adaptive stage: attacks through the purifier (BPDA, EOT, full gradients).

For each setting in ``adaptive.settings`` and each defended system (purifier + base
restorer: ``purify``; purifier + fine-tuned restorer: ``purify+finetune``), the attack set
``adaptive.attack`` runs unchanged on the composed model
:class:`udcguard.attacks.adaptive.DefendedModel`; the adversarial inputs are then purified
by the deployed defence (``purify.*`` sampler, ``purify.seeds`` draws) for the evaluation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.attack import level_seed, objective_for
from tasks.common import DEFENDED, Paths, adaptive_set, draw_dir, progress, resolve_device, selected_t_star
from tasks.purification import deployed_purifier, draw_seed, purify_set, sampler_options
from udcguard.attacks.adaptive import DefendedModel
from udcguard.attacks.build import build_attack
from udcguard.config import AttackSpec, Params
from udcguard.io.atomic import save_json
from udcguard.io.datasets import TensorPairs, load_split, save_inputs
from udcguard.io.restorer_store import load_restorer
from udcguard.io.subsets import stratified_subset
from udcguard.purify import Purifier
from udcguard.train.restorer import model_fn

@dataclass(frozen=True)
class _Setup:
    """What every adaptive set of one restorer shares."""

    params: Params
    device: torch.device
    purifier: Purifier  # the deployed one: the attacker differentiates what is deployed
    t_star: int
    spec: AttackSpec
    objective: object
    pairs: TensorPairs
    nets: dict[str, torch.nn.Module]  # defended system -> its restorer


def adaptive_images(params: Params, paths: Paths) -> TensorPairs:
    """``adaptive.max_images`` of the attack stage's images, stratified across scene groups (adaptive.seed)."""
    a, ad = params.attack, params.adaptive
    split = load_split(paths.udc / a.split, psf_dir=paths.psf)
    pool = stratified_subset(split.groups, a.max_images, a.seed)  # the attack stage's images
    return split.subset([pool[k] for k in stratified_subset([split.groups[i] for i in pool], ad.max_images, ad.seed)])


def _setup(params: Params, name: str, paths: Paths) -> _Setup:
    device = resolve_device(params.attack.device)
    purifier = deployed_purifier(params, paths, device)
    purifier.unet.requires_grad_(False)
    spec = params.attack.spec(params.adaptive.attack)
    nets = {"purify": load_restorer(paths.model(name), device, frozen=True),
            "purify+finetune": load_restorer(paths.finetuned(name), device, frozen=True)}
    return _Setup(params, device, purifier, selected_t_star(params, paths), spec, objective_for(params, spec),
                  adaptive_images(params, paths), nets)


def _defended(s: _Setup, setting: str, defence: str, cond: torch.Tensor | None, seed: int) -> DefendedModel:
    """The defended system as the attacker sees it: purifier (``setting``'s gradient) then restorer."""
    ad = s.params.adaptive
    options = {k: v for k, v in sampler_options(s.params, s.t_star).items() if v is not None}
    return DefendedModel(model_fn(s.nets[defence], cond, s.device), s.purifier, t_star=s.t_star, mode=setting,
                         eot_samples=ad.eot_samples if setting == "eot" else 1,
                         ddim_steps=max(1, min(ad.ddim_steps, s.t_star)), purify_options=options, seed=seed)


def attack_set(s: _Setup, setting: str, defence: str, eps: float, bar) -> tuple[torch.Tensor, list[dict]]:
    """One adaptive set: the attack on every batch of the images -> (x_adv, per-image records)."""
    a, pairs = s.params.attack, s.pairs
    gen = torch.Generator().manual_seed(level_seed(s.params.adaptive.seed, f"{setting}/{defence}", eps))
    advs, records = [], []
    for i in range(0, len(pairs), a.batch_size):
        x = pairs.lq[i : i + a.batch_size].to(s.device)
        cond = pairs.cond[i : i + a.batch_size] if pairs.cond is not None else None
        defended = _defended(s, setting, defence, cond, seed=int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        attack = build_attack(s.spec.attack, defended, eps=eps, objective=s.objective,
                              reference=s.spec.reference or a.reference, options=s.spec.options)
        t0 = time.perf_counter()
        res = attack(x, gt=pairs.gt[i : i + a.batch_size].to(s.device), generator=gen)
        dt = (time.perf_counter() - t0) / x.shape[0]
        advs.append(res.x_adv.cpu())
        records += [{"id": pairs.ids[i + k], "attack": s.spec.id, "setting": f"adaptive-{setting}",
                     "defence": defence, "eps": eps, "objective": float(res.objective[k]),
                     "linf": float(res.linf[k]), "l2": float(res.l2[k]), "queries": res.queries,
                     "grads": res.grads, "seconds": dt} for k in range(x.shape[0])]
        bar.update(x.shape[0])
    return torch.cat(advs), records


def save_set(s: _Setup, out: Path, setting: str, defence: str, eps: float, x_adv: torch.Tensor) -> None:
    """Write the adversarial set and the deployed defence's ``purify.seeds`` draws on it, as evaluated."""
    p, ids = s.params.purify, list(s.pairs.ids)
    set_dir = adaptive_set(setting, defence, eps)
    meta = {"attack": s.spec.id, "method": s.spec.attack, "setting": f"adaptive-{setting}",
            "defence": defence, "eps": eps, "t_star": s.t_star}
    save_inputs(out / set_dir, x_adv, ids, meta)
    for k in range(p.seeds):
        y = purify_set(s.purifier, x_adv, ids, t_star=s.t_star, seed=draw_seed(p.seed, k),
                       batch_size=p.batch_size, desc=f"purify {set_dir} draw {k}", **sampler_options(s.params, s.t_star))
        save_inputs(out / "purified" / draw_dir(set_dir, k), y, ids, {**meta, "draw": k})


@task(name="adaptive", cache_policy=NO_CACHE)
def adaptive_attacks(params: Params, name: str, data_dir: str, out_dir: str) -> dict:
    """Adversarial sets per (setting, defended system, eps) and their purified draws; records.json."""
    s, ad, out = _setup(params, name, Paths(data_dir)), params.adaptive, Path(out_dir)
    sets = [(setting, defence, eps) for setting in ad.settings for defence in DEFENDED for eps in ad.eps]
    bar = progress(len(sets) * len(s.pairs), f"adaptive {name}")
    records: list[dict] = []
    for setting, defence, eps in sets:
        x_adv, recs = attack_set(s, setting, defence, eps, bar)
        save_set(s, out, setting, defence, eps, x_adv)
        records += recs
    bar.close()
    save_json(out / "records.json", records)
    return {"images": len(s.pairs), "sets": len(sets), "t_star": s.t_star}

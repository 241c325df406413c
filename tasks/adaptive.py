"""Task of the adaptive stage: attacks through the purifier (BPDA, EOT, full gradients).

For each setting in ``adaptive.settings`` and each defended system (purifier + base
restorer: ``purify``; purifier + fine-tuned restorer: ``purify+finetune``), the attack set
``adaptive.attack`` runs unchanged on the composed model
:class:`udcguard.attacks.adaptive.DefendedModel`; the adversarial inputs are then purified
by the deployed defence (``purify.*`` sampler, ``purify.seeds`` draws) for the evaluation.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.attack import level_seed, objective_for
from tasks.common import DEFENDED, Paths, adaptive_set, draw_dir, progress, resolve_device
from tasks.purification import deployed_purifier, draw_seed, purify_set, sampler_options, selected_t_star
from udcguard.attacks.adaptive import DefendedModel
from udcguard.attacks.build import build_attack
from udcguard.config import Params
from udcguard.io.atomic import save_json
from udcguard.io.datasets import load_split, save_inputs
from udcguard.io.restorer_store import load_restorer
from udcguard.io.subsets import stratified_subset
from udcguard.train.restorer import model_fn

#: Defended systems: defence name -> where its restorer lives.
@task(name="adaptive", cache_policy=NO_CACHE)
def adaptive_attacks(params: Params, name: str, data_dir: str, out_dir: str) -> dict:
    """Adversarial sets per (setting, defended system, eps) and their purified draws; records.json."""
    paths, a, ad, p = Paths(data_dir), params.attack, params.adaptive, params.purify
    device = resolve_device(a.device)
    deployed = deployed_purifier(params, paths, device)  # the attacker differentiates the deployed purifier
    deployed.unet.requires_grad_(False)
    t_star = selected_t_star(params, paths)
    options = {k: v for k, v in sampler_options(params, t_star).items() if v is not None}
    spec = a.spec(ad.attack)
    split = load_split(paths.udc / a.split, psf_dir=paths.psf)
    pool = stratified_subset(split.groups, a.max_images, a.seed)  # the attack stage's images
    pairs = split.subset([pool[k] for k in stratified_subset([split.groups[i] for i in pool], ad.max_images, ad.seed)])
    objective = objective_for(params, spec)
    nets = {"purify": load_restorer(paths.model(name), device, frozen=True),
            "purify+finetune": load_restorer(paths.finetuned(name), device, frozen=True)}
    out, records = Path(out_dir), []
    bar = progress(len(ad.settings) * len(DEFENDED) * len(ad.eps) * len(pairs), f"adaptive {name}")
    for setting in ad.settings:
        for defence in DEFENDED:
            for eps in ad.eps:
                gen = torch.Generator().manual_seed(level_seed(ad.seed, f"{setting}/{defence}", eps))
                advs = []
                for i in range(0, len(pairs), a.batch_size):
                    x = pairs.lq[i : i + a.batch_size].to(device)
                    cond = pairs.cond[i : i + a.batch_size] if pairs.cond is not None else None
                    defended = DefendedModel(
                        model_fn(nets[defence], cond, device), deployed, t_star=t_star, mode=setting,
                        eot_samples=ad.eot_samples if setting == "eot" else 1,
                        ddim_steps=max(1, min(ad.ddim_steps, t_star)), purify_options=options,
                        seed=int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
                    attack = build_attack(spec.attack, defended, eps=eps, objective=objective,
                                          reference=spec.reference or a.reference, options=spec.options)
                    t0 = time.perf_counter()
                    res = attack(x, gt=pairs.gt[i : i + a.batch_size].to(device), generator=gen)
                    dt = (time.perf_counter() - t0) / x.shape[0]
                    advs.append(res.x_adv.cpu())
                    records += [{"id": pairs.ids[i + k], "attack": spec.id, "setting": f"adaptive-{setting}",
                                 "defence": defence, "eps": eps, "objective": float(res.objective[k]),
                                 "linf": float(res.linf[k]), "l2": float(res.l2[k]), "queries": res.queries,
                                 "grads": res.grads, "seconds": dt} for k in range(x.shape[0])]
                    bar.update(x.shape[0])
                x_adv, set_dir = torch.cat(advs), adaptive_set(setting, defence, eps)
                meta = {"attack": spec.id, "method": spec.attack, "setting": f"adaptive-{setting}",
                        "defence": defence, "eps": eps, "t_star": t_star}
                save_inputs(out / set_dir, x_adv, pairs.ids, meta)
                for k in range(p.seeds):  # the deployed defence on the adaptive inputs, as evaluated
                    y = purify_set(deployed, x_adv, list(pairs.ids), t_star=t_star, seed=draw_seed(p.seed, k),
                                   batch_size=p.batch_size, desc=f"purify {set_dir} draw {k}",
                                   **sampler_options(params, t_star))
                    save_inputs(out / "purified" / draw_dir(set_dir, k), y, pairs.ids, {**meta, "draw": k})
    bar.close()
    save_json(out / "records.json", records)
    return {"images": len(pairs), "sets": len(ad.settings) * len(DEFENDED) * len(ad.eps), "t_star": t_star}

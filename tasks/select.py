"""Task of the select_tstar stage: the PSNR-vs-t* trade-off on a held-out val slice, and t*."""

from __future__ import annotations

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.attack import levels, make_attack, objective_for
from tasks.common import Paths, progress, resolve_device
from tasks.purification import deployed_purifier, guidance_of, image_seeds, sampler_options
from udcguard.config import Params
from udcguard.io.datasets import load_split
from udcguard.io.restorer_store import load_restorer
from udcguard.io.subsets import stratified_subset
from udcguard.purify.selection import psnr_curve, psnr_evaluator, select_t_star
from udcguard.train.restorer import model_fn, predict


def _attacked(params: Params, name: str, model, pairs, paths: Paths, device: torch.device) -> tuple[torch.Tensor, float]:
    """The val slice under the strongest level of the selection's attack set, on ``name``."""
    a, sel = params.attack, params.purify.selection
    spec = a.spec(sel.attack)
    eps, step = max(levels(spec), key=lambda lv: lv[0])
    objective = objective_for(params, spec)
    gen = torch.Generator().manual_seed(a.seed + 7)
    out = []
    for i in range(0, len(pairs), a.batch_size):
        cond = pairs.cond[i : i + a.batch_size] if pairs.cond is not None else None
        attack = make_attack(params, spec, eps, step, model_fn(model, cond, device), objective=objective,
                             paths=paths, target=name, cond=cond, device=device)
        out.append(attack(pairs.lq[i : i + a.batch_size].to(device), gt=pairs.gt[i : i + a.batch_size].to(device),
                          generator=gen).x_adv.cpu())
    return torch.cat(out), eps


@task(name="select-tstar", cache_policy=NO_CACHE)
def select_tstar(params: Params, data_dir: str) -> dict:
    """Restored PSNR of clean and attacked val inputs against t* (unguided and guided); the chosen t*."""
    paths, p, sel = Paths(data_dir), params.purify, params.purify.selection
    device = resolve_device(p.device)
    name = sel.restorer or params.restorers[0].name
    model = load_restorer(paths.model(name), device, frozen=True)
    purifier = deployed_purifier(params, paths, device)
    val = load_split(paths.udc / "val", psf_dir=paths.psf)
    pairs = val.subset(stratified_subset(val.groups, sel.images, p.seed))  # across the val scene groups
    attacked, eps = _attacked(params, name, model, pairs, paths, device)
    seeds = image_seeds(p.seed, list(pairs.ids))
    restore = lambda x: predict(model, x, pairs.cond, batch_size=p.batch_size, device=device)

    def purify_with(guidance):
        return lambda x, t: purifier.purify(x, t_star=t, seeds=seeds, batch_size=p.batch_size,
                                            **{**sampler_options(params, t), "guidance": guidance}).cpu()

    scored = psnr_evaluator(purify_with(guidance_of(params)), restore, pairs.lq, attacked, pairs.gt)
    bar = progress(len(sel.candidates), f"select t* ({len(pairs)} val images)", unit="t*")

    def evaluate(t: int) -> dict:
        out = scored(t)
        bar.update(1)
        bar.set_postfix(t=t, clean=f"{out['clean_psnr']:.2f}", attacked=f"{out['attacked_psnr']:.2f}")
        return out

    best, curve = select_t_star(sel.candidates, evaluate, criterion=sel.criterion,
                                max_clean_drop_db=sel.max_clean_drop_db,
                                num_train_timesteps=purifier.num_train_timesteps)
    bar.close()
    compare = p.guidance.compare_scale if p.guidance.scale == 0 else 0.0
    guided = (psnr_curve(purify_with(guidance_of(params, compare)), restore, pairs.lq, attacked, pairs.gt,
                         sel.candidates) if compare > 0 else [])
    chosen = best if p.t_star == "auto" else params.t_star_fixed()
    return {"t_star": chosen, "selected": best, "mode": "auto" if p.t_star == "auto" else "fixed",
            "criterion": sel.criterion, "restorer": name, "attack": sel.attack, "eps": eps, "images": len(pairs),
            "scenes": len(set(pairs.groups)),
            "guidance_scale": p.guidance.scale, "curve": curve, "guided_scale": compare, "guided_curve": guided}

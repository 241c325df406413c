"""Tasks of the evaluate stage: score every (restorer, attack, eps, defence)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.adaptive import DEFENDED, adaptive_set
from tasks.attack import levels, set_name
from tasks.common import Paths, progress, resolve_device
from tasks.purification import deployed_purifier, draw_dir, purify_set, sampler_options, selected_t_star
from tasks.train import load_restorer
from udcguard.config import Params
from udcguard.evaluation import METRICS, merge_draws, nested, score_images, summary_table
from udcguard.io.atomic import save_json, save_png, write_bytes
from udcguard.io.datasets import load_inputs, load_split
from udcguard.metrics.lpips import build_lpips, lpips_per_image
from udcguard.train.restorer import predict
from udcguard.viz import image_grid

DEFENCES = ("none", "purify", "purify+finetune")


def write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    keys = list(dict.fromkeys(k for r in rows for k in r))
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_bytes(path, buf.getvalue().encode())


def _img(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).numpy()  # (H, W, 3)


def perceptual_metric(params: Params, device: torch.device):
    """("lpips" | "lpips_rand", fn(a, b) -> (B,)) from params.lpips (see udcguard.metrics.lpips)."""
    lp = params.lpips
    name, module = build_lpips(lp.backbone_path, lp.lin_path, net=lp.net)
    module = module.to(device)
    bs = params.evaluate.batch_size

    def fn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([lpips_per_image(module, a[i : i + bs].to(device), b[i : i + bs].to(device)).cpu()
                          for i in range(0, a.shape[0], bs)])

    return name, fn


def attack_sets(params: Params) -> list[tuple[str, str, float]]:
    """(set directory, attack id, eps) of every evaluated input set, clean first."""
    return [("clean", "none", 0.0)] + [(set_name(s.id, eps), s.id, eps) for s in params.attack.attacks
                                       for eps, _ in levels(s)]


def _setting(attack: str, defence: str) -> str:
    if attack == "none":
        return "clean"
    return "white-box" if defence == "none" else "gray-box"


def restorer_records(params: Params, name: str, paths: Paths, device: torch.device,
                     perceptual=None) -> tuple[list[dict], np.ndarray]:
    """Per-image records of one restorer over all sets, defences and purification draws; an example grid."""
    a, bs, draws = params.attack, params.evaluate.batch_size, params.purify.seeds
    base, ft = load_restorer(paths.model(name), device), load_restorer(paths.finetuned(name), device)
    pairs = load_split(paths.udc / a.split, psf_dir=paths.psf, max_items=a.max_images)
    nets = {"none": base, "purify": base, "purify+finetune": ft}

    def restore(d: str, x: torch.Tensor) -> torch.Tensor:
        cond = pairs.cond[: len(x)] if pairs.cond is not None else None
        return predict(nets[d], x, cond, batch_size=bs, device=device)

    def score(x_in, x_purs, ids, clean_out, **keys) -> list[dict]:
        """Records of one input set: undefended, and each defence merged over its draws."""
        n = len(ids)
        recs = score_images(restore("none", x_in), pairs.gt[:n], clean_out["none"][:n], x_in, ids,
                            perceptual=perceptual, defence="none", **keys)
        recs = merge_draws([recs])
        for d in ("purify", "purify+finetune"):
            per_draw = [score_images(restore(d, xp), pairs.gt[:n], clean_out[d][:n], xp, ids, perceptual=perceptual,
                                     defence=d, **keys) for xp in x_purs]
            recs += merge_draws(per_draw)
        return recs

    def load(root: Path, pur_root: Path, set_dir: str) -> tuple[list[str], torch.Tensor, list[torch.Tensor]]:
        x_in, ids, _ = load_inputs(root / set_dir)
        assert list(ids) == list(pairs.ids[: len(ids)]), f"{name}/{set_dir}: ids differ from the {a.split} split"
        return list(ids), x_in, [load_inputs(pur_root / draw_dir(set_dir, k))[0] for k in range(draws)]

    _, clean_in, clean_pur = load(paths.attacks(name), paths.purified(name), "clean")
    clean_out = {"none": restore("none", clean_in), "purify": restore("purify", clean_pur[0]),
                 "purify+finetune": restore("purify+finetune", clean_pur[0])}
    records: list[dict] = []
    sets = attack_sets(params)
    for set_dir, attack, eps in sets:
        ids, x_in, x_purs = load(paths.attacks(name), paths.purified(name), set_dir)
        for rec in score(x_in, x_purs, ids, clean_out, restorer=name, attack=attack, eps=eps, setting=""):
            rec["setting"] = _setting(attack, rec["defence"])
            records.append(rec)
    records += adaptive_records(params, name, paths, clean_out, restore, pairs, perceptual)
    show = next((s for s in sets if s[1] == a.attacks[0].id), sets[-1]) if a.attacks else sets[-1]
    show = max((s for s in sets if s[1] == show[1]), key=lambda s: s[2])  # the strongest level of the first set
    ids, x_in, x_purs = load(paths.attacks(name), paths.purified(name), show[0])
    outs = {"none": restore("none", x_in), "purify": restore("purify", x_purs[0]),
            "purify+finetune": restore("purify+finetune", x_purs[0])}
    k = min(params.evaluate.report_examples, len(ids))
    grid = [[_img(pairs.lq[i]), _img(x_in[i]), _img(x_purs[0][i]), _img(outs["none"][i]),
             _img(outs["purify"][i]), _img(outs["purify+finetune"][i]), _img(pairs.gt[i])] for i in range(k)]
    titles = ["clean input", f"attacked ({show[0]})", "purified", "restored", "purify+restore",
              "purify+fine-tuned", "ground truth"]
    return records, image_grid(grid, titles, [f"{name}: {ids[i]}" for i in range(k)])


def adaptive_records(params: Params, name: str, paths: Paths, clean_out: dict, restore, pairs,
                     perceptual) -> list[dict]:
    """Records of the adaptive sets: attack ``<id>@adaptive-<mode>``, scored on the defended system attacked."""
    ad, records = params.adaptive, []
    root = paths.adaptive(name)
    for setting in ad.settings:
        for defence in DEFENDED:
            for eps in ad.eps:
                set_dir = adaptive_set(setting, defence, eps)
                x_in, ids, _ = load_inputs(root / set_dir)
                n = len(ids)
                per_draw = [score_images(restore(defence, xp), pairs.gt[:n], clean_out[defence][:n], xp, list(ids),
                                         perceptual=perceptual, restorer=name, attack=f"{ad.attack}@adaptive-{setting}",
                                         eps=eps, defence=defence, setting=f"adaptive-{setting}")
                            for xp in (load_inputs(root / "purified" / draw_dir(set_dir, k))[0]
                                       for k in range(params.purify.seeds))]
                records += merge_draws(per_draw)
    return records


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_pipeline(params: Params, data_dir: str, reports_dir: str) -> dict:
    """Write reports/metrics.json (nested), metrics.csv (long format), per_image.csv, plots."""
    paths, out = Paths(data_dir, reports_dir), Path(reports_dir)
    device = resolve_device(params.evaluate.device)
    records: list[dict] = []
    perceptual = perceptual_metric(params, device)
    bar = progress(len(params.restorers), "evaluate")
    for r in params.restorers:
        recs, grid = restorer_records(params, r.name, paths, device, perceptual)
        records += recs
        save_png(out / "examples" / f"{r.name}.png", grid)
        bar.update(1)
    bar.close()
    rows = summary_table(records)
    save_json(out / "metrics.json", nested(rows))
    write_csv(out / "metrics.csv", rows)
    write_csv(out / "per_image.csv", records)
    multi = [s.id for s in params.attack.attacks if len(s.eps) > 1]  # budget curves (PGD 1, 2, 4, 8 /256)
    write_csv(out / "plots" / "psnr_vs_eps.csv",
              [{"restorer": r["restorer"], "attack": a, "defence": r["defence"],
                "series": f"{r['restorer']} / {a} / {r['defence']}", "eps": r["eps"],
                "psnr": round(r["psnr_mean"], 4), "ssim": round(r["ssim_mean"], 4)}
               for a in multi for r in rows if r["attack"] in (a, "none")])
    return {"rows": len(rows), "images": len(records)}


@task(name="evaluate-pairs", cache_policy=NO_CACHE)
def evaluate_user_pairs(params: Params, pairs_dir: str, data_dir: str, out_dir: str) -> dict:
    """Score a user's folder of pairs (data contract: manifest.json + gt/lq .npy)."""
    paths, out = Paths(data_dir), Path(out_dir)
    device = resolve_device(params.evaluate.device)
    pairs = load_split(Path(pairs_dir), psf_dir=paths.psf)
    purifier = deployed_purifier(params, paths, device)
    x_pur = purify_set(purifier, pairs.lq, list(pairs.ids), t_star=selected_t_star(params, paths),
                       seed=params.purify.seed, batch_size=params.purify.batch_size, desc="purify pairs",
                       **sampler_options(params))
    records: list[dict] = []
    for r in params.restorers:
        base, ft = load_restorer(paths.model(r.name), device), load_restorer(paths.finetuned(r.name), device)
        for d, net, x in (("none", base, pairs.lq), ("purify", base, x_pur), ("purify+finetune", ft, x_pur)):
            o = predict(net, x, pairs.cond, batch_size=params.evaluate.batch_size, device=device)
            records += merge_draws([score_images(o, pairs.gt, o, x, list(pairs.ids), restorer=r.name, attack="none",
                                                 eps=0.0, defence=d, setting="clean")])
    rows = summary_table(records)
    save_json(out / "metrics.json", nested(rows))
    write_csv(out / "metrics.csv", rows)
    write_csv(out / "per_image.csv", records)
    return {"rows": len(rows), "metrics": METRICS}

"""Tasks of the evaluate stage: score every (restorer, attack, eps, defence)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.attack import levels, set_name
from tasks.common import Paths, progress, resolve_device
from tasks.purification import purify_set
from tasks.train import load_restorer
from udcguard.config import Params
from udcguard.evaluation import METRICS, nested, score_images, summary_table
from udcguard.io.atomic import save_json, save_png, write_bytes
from udcguard.io.datasets import load_inputs, load_split
from udcguard.io.purifier_store import load_purifier
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


def restorer_records(params: Params, name: str, paths: Paths, device: torch.device,
                     perceptual=None) -> tuple[list[dict], np.ndarray]:
    """Per-image records of one restorer over all sets and defences, and an example grid."""
    a, bs = params.attack, params.evaluate.batch_size
    base, ft = load_restorer(paths.model(name), device), load_restorer(paths.finetuned(name), device)
    pairs = load_split(paths.udc / a.split, psf_dir=paths.psf, max_items=a.max_images)
    nets = {"none": base, "purify": base, "purify+finetune": ft}

    def run(set_name: str) -> tuple[list[str], dict, dict]:
        x_in, ids, _ = load_inputs(paths.attacks(name) / set_name)
        x_pur = load_inputs(paths.purified(name) / set_name)[0]
        assert list(ids) == list(pairs.ids[: len(ids)]), f"{name}/{set_name}: ids differ from the {a.split} split"
        cond = pairs.cond[: len(ids)] if pairs.cond is not None else None
        ins = {d: (x_in if d == "none" else x_pur) for d in DEFENCES}
        return list(ids), ins, {d: predict(nets[d], ins[d], cond, batch_size=bs, device=device) for d in DEFENCES}

    _, _, clean_out = run("clean")
    records: list[dict] = []
    sets = attack_sets(params)
    for set_dir, attack, eps in sets:
        ids, ins, outs = run(set_dir)
        n = len(ids)
        for d in DEFENCES:
            records += score_images(outs[d], pairs.gt[:n], clean_out[d][:n], ins[d], ids, perceptual=perceptual,
                                    restorer=name, attack=attack, eps=eps, defence=d)
    show = next((s for s in sets if s[1] == a.attacks[0].id), sets[-1]) if a.attacks else sets[-1]
    show = max((s for s in sets if s[1] == show[1]), key=lambda s: s[2])  # the strongest level of the first set
    ids, ins, outs = run(show[0])
    k = min(params.evaluate.report_examples, len(ids))
    grid = [[_img(pairs.lq[i]), _img(ins["none"][i]), _img(ins["purify"][i]), _img(outs["none"][i]),
             _img(outs["purify"][i]), _img(outs["purify+finetune"][i]), _img(pairs.gt[i])] for i in range(k)]
    titles = ["clean input", f"attacked ({show[0]})", "purified", "restored", "purify+restore",
              "purify+fine-tuned", "ground truth"]
    return records, image_grid(grid, titles, [f"{name}: {ids[i]}" for i in range(k)])


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
    purifier = load_purifier(paths.purifier, device=device)
    x_pur = purify_set(purifier, pairs.lq, list(pairs.ids), t_star=params.purify.t_star, seed=params.purify.seed,
                       batch_size=params.purify.batch_size, desc="purify pairs")
    records: list[dict] = []
    for r in params.restorers:
        base, ft = load_restorer(paths.model(r.name), device), load_restorer(paths.finetuned(r.name), device)
        for d, net, x in (("none", base, pairs.lq), ("purify", base, x_pur), ("purify+finetune", ft, x_pur)):
            o = predict(net, x, pairs.cond, batch_size=params.evaluate.batch_size, device=device)
            records += score_images(o, pairs.gt, o, x, list(pairs.ids), restorer=r.name, attack="none", eps=0.0, defence=d)
    rows = summary_table(records)
    save_json(out / "metrics.json", nested(rows))
    write_csv(out / "metrics.csv", rows)
    write_csv(out / "per_image.csv", records)
    return {"rows": len(rows), "metrics": METRICS}

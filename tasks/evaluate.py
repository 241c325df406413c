"""Tasks of the evaluate stage: score every (restorer, attack, eps, defence)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.attack import FINETUNED, TARGETS, levels, set_name, targets
from tasks.common import DEFENDED, Paths, adaptive_set, draw_dir, progress, resolve_device, sampler_steps, selected_t_star
from udcguard.config import Params
from udcguard.errors import UdcGuardError
from udcguard.evaluation import (
    AVERAGED,
    METRICS,
    defences,
    merge_draws,
    nested,
    reduce_draws,
    score_images,
    setting_of,
    summary_table,
    uses_finetuned,
)
from udcguard.io.atomic import save_json, save_png, write_bytes
from udcguard.io.datasets import load_inputs, load_split
from udcguard.io.restorer_store import load_restorer
from udcguard.metrics.lpips import build_lpips, lpips_per_image
from udcguard.purify.schedule import unet_calls
from udcguard.train.restorer import predict
from udcguard.viz import image_grid

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


def attack_sets(params: Params) -> list[tuple[str, str, float, str]]:
    """(set directory, row label, eps, method) of every evaluated input set, clean first; sets crafted on
    the fine-tuned restorer follow the base ones."""
    out = [("clean", "none", 0.0, "none")]
    for target in TARGETS:
        out += [(set_name(s.id, eps, target), params.attack_label(s), eps, s.attack) for s in params.attack.attacks
                if target in targets(s) for eps, _ in levels(s)]
    return out


def expected_keys(params: Params) -> set[tuple[str, str, float, str, str]]:
    """(restorer, attack, eps, defence, setting) of every row the evaluate stage writes for ``params``."""
    keys: set[tuple[str, str, float, str, str]] = set()
    ad, ds = params.adaptive, defences(params.evaluate.draw_average)
    label = params.attack_label(params.attack.spec(ad.attack)) if params.attack.attacks else ad.attack
    for r in params.restorers:
        for set_dir, attack, eps, method in attack_sets(params):
            target = "finetuned" if set_dir.startswith(FINETUNED) else "base"
            for d in [d for d in ds if uses_finetuned(d)] if target == "finetuned" else ds:
                keys.add((r.name, attack, float(eps), d, setting_of(method, d, target)))
        keys |= {(r.name, f"{label}@adaptive-{s}", float(eps), d, f"adaptive-{s}")
                 for s in ad.settings for d in ds[1:] for eps in ad.eps}
    return keys


class Scorer:
    """Restores and scores input sets of one restorer on the images of its clean evaluation set.

    Rows of one set are scored on exactly the images that set holds (matched by id), against
    the ground truth and, for ``dev_psnr``, against the same system's output on the clean input
    purified with the same draw (matched purification noise).
    """

    def __init__(self, params: Params, name: str, paths: Paths, device: torch.device, perceptual=None) -> None:
        self.params, self.name, self.paths, self.device, self.perceptual = params, name, paths, device, perceptual
        split = load_split(paths.udc / params.attack.split, psf_dir=paths.psf)
        self.split, self.index = split, {i: k for k, i in enumerate(split.ids)}
        self.nets = {"none": load_restorer(paths.model(name), device)}
        self.nets["purify"] = self.nets["none"]
        self.nets["purify+finetune"] = load_restorer(paths.finetuned(name), device)
        self.defences = defences(params.evaluate.draw_average)
        for avg, d in AVERAGED.items():
            self.nets[avg] = self.nets[d]
        self.clean_ids, clean_in, clean_pur = self.load(paths.attacks(name), paths.purified(name), "clean")
        self.clean_out = {("none", 0): self.restore("none", clean_in, self.clean_ids)}
        for d, outs in self.outputs(self.defences[1:], clean_pur, self.clean_ids).items():
            for k, o in enumerate(outs):
                self.clean_out[(d, k)] = o

    def outputs(self, ds, x_purs: list[torch.Tensor], ids: list[str]) -> dict[str, list[torch.Tensor]]:
        """Defence -> its restored outputs of purified draws ``x_purs``: one per draw, or for an averaged
        defence the one reduction (``evaluate.draw_average``) of its defence's restored draws."""
        out: dict[str, list[torch.Tensor]] = {}
        for d in ds:
            base = AVERAGED.get(d, d)
            if base not in out:
                out[base] = [self.restore(base, xp, ids) for xp in x_purs]
            if d in AVERAGED:
                out[d] = [reduce_draws(out[base], self.params.evaluate.draw_average)]
        return {d: out[d] for d in ds}

    def pairs(self, ids: list[str]):
        missing = [i for i in ids if i not in self.index]
        if missing:
            raise UdcGuardError(f"{self.name}: ids {missing[:3]} are not in the {self.params.attack.split} split "
                                "(rerun the attack stage)")
        return self.split.subset([self.index[i] for i in ids])

    def load(self, root: Path, pur_root: Path, set_dir: str) -> tuple[list[str], torch.Tensor, list[torch.Tensor]]:
        x_in, ids, _ = load_inputs(root / set_dir)
        purs = []
        for k in range(self.params.purify.seeds):
            xp, pids, _ = load_inputs(pur_root / draw_dir(set_dir, k))
            if list(pids) != list(ids):
                raise UdcGuardError(f"{pur_root / draw_dir(set_dir, k)}: ids differ from {root / set_dir}")
            purs.append(xp)
        return list(ids), x_in, purs

    def restore(self, defence: str, x: torch.Tensor, ids: list[str]) -> torch.Tensor:
        p = self.pairs(ids)
        return predict(self.nets[defence], x, p.cond, batch_size=self.params.evaluate.batch_size, device=self.device)

    def reference(self, defence: str, k: int, ids: list[str]) -> torch.Tensor:
        """The system's output on the clean inputs of ``ids`` (purification draw k)."""
        pos = [self.clean_ids.index(i) for i in ids]
        return self.clean_out[(defence, k if defence != "none" else 0)][pos]

    def score(self, defence: str, outputs: list[torch.Tensor], inputs: list[torch.Tensor], ids: list[str],
              **keys) -> list[dict]:
        """Records of one (set, defence), merged over its draws (one output per draw)."""
        p = self.pairs(ids)
        per_draw = [score_images(o, p.gt, self.reference(defence, k, ids), x, ids, perceptual=self.perceptual,
                                 defence=defence, **keys) for k, (o, x) in enumerate(zip(outputs, inputs, strict=True))]
        recs = merge_draws(per_draw)
        for r in recs:
            r["group"] = p.groups[ids.index(r["id"])]
        return recs


def restorer_records(params: Params, name: str, paths: Paths, device: torch.device,
                     perceptual=None) -> tuple[list[dict], np.ndarray]:
    """Per-image records of one restorer over all sets, defences and purification draws; an example grid."""
    sc = Scorer(params, name, paths, device, perceptual)
    records: list[dict] = []
    sets = attack_sets(params)
    for set_dir, label, eps, method in sets:
        ids, x_in, x_purs = sc.load(paths.attacks(name), paths.purified(name), set_dir)
        target = "finetuned" if set_dir.startswith(FINETUNED) else "base"
        keys = {"restorer": name, "attack": label, "eps": eps}
        ds = [d for d in sc.defences if uses_finetuned(d)] if target == "finetuned" else list(sc.defences)
        outputs = sc.outputs([d for d in ds if d != "none"], x_purs, ids)
        for d in ds:
            outs = [sc.restore(d, x_in, ids)] if d == "none" else outputs[d]
            inputs = [x_in] if d == "none" else x_purs[: len(outs)]  # averaged: the first draw's input
            records += sc.score(d, outs, inputs, ids, setting=setting_of(method, d, target), **keys)
    records += adaptive_records(params, name, paths, sc)
    return records, example_grid(params, name, paths, sc, sets)


def example_grid(params: Params, name: str, paths: Paths, sc: Scorer, sets) -> np.ndarray:
    """Clean input, attacked input (strongest level of the first set), purified, the three restorations, gt."""
    a = params.attack
    first = a.attacks[0].id if a.attacks else None
    show = max((s for s in sets[1:] if s[0].split(".eps_")[0] == first), key=lambda s: s[2], default=sets[0])
    ids, x_in, x_purs = sc.load(paths.attacks(name), paths.purified(name), show[0])
    outs = {"none": sc.restore("none", x_in, ids), "purify": sc.restore("purify", x_purs[0], ids),
            "purify+finetune": sc.restore("purify+finetune", x_purs[0], ids)}
    p = sc.pairs(ids)
    k = min(params.evaluate.report_examples, len(ids))
    grid = [[_img(p.lq[i]), _img(x_in[i]), _img(x_purs[0][i]), _img(outs["none"][i]),
             _img(outs["purify"][i]), _img(outs["purify+finetune"][i]), _img(p.gt[i])] for i in range(k)]
    titles = ["clean input", f"attacked ({show[0]})", "purified", "restored", "purify+restore",
              "purify+fine-tuned", "ground truth"]
    return image_grid(grid, titles, [f"{name}: {ids[i]}" for i in range(k)])


def adaptive_records(params: Params, name: str, paths: Paths, sc: Scorer) -> list[dict]:
    """Records of the adaptive sets: attack ``<label>@adaptive-<mode>``, scored on the defended system attacked."""
    ad, records = params.adaptive, []
    root = paths.adaptive(name)
    label = params.attack_label(params.attack.spec(ad.attack)) if params.attack.attacks else ad.attack
    averaged = {d: [a for a, base in AVERAGED.items() if base == d and a in sc.defences] for d in DEFENDED}
    for setting in ad.settings:
        for defence in DEFENDED:  # an averaged defence is scored on its defence's sets (EOT: see AVERAGED)
            for eps in ad.eps:
                ids, _, x_purs = sc.load(root, root / "purified", adaptive_set(setting, defence, eps))
                for d, outs in sc.outputs([defence, *averaged[defence]], x_purs, ids).items():
                    records += sc.score(d, outs, x_purs[: len(outs)], ids, restorer=name,
                                        attack=f"{label}@adaptive-{setting}", eps=eps, setting=f"adaptive-{setting}")
    return records


def defence_calls(params: Params, paths: Paths) -> dict[str, int]:
    """UNet calls per (untiled) image of each evaluated defence: 0 undefended, one purification for a
    scored draw, ``purify.seeds`` purifications for an averaged defence."""
    t_star = selected_t_star(params, paths)
    one = unet_calls(t_star, sampler=params.purify.sampler, steps=sampler_steps(params, t_star))
    return {d: 0 if d == "none" else one * (params.purify.seeds if d in AVERAGED else 1)
            for d in defences(params.evaluate.draw_average)}


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
    rows = summary_table(records, n_boot=params.evaluate.bootstrap, seed=params.evaluate.seed)
    calls = defence_calls(params, paths)
    for r in rows:
        r["unet_calls"] = calls[r["defence"]]
    got = {(r["restorer"], r["attack"], float(r["eps"]), r["defence"], r["setting"]) for r in rows}
    if got != expected_keys(params):
        raise UdcGuardError(f"evaluate: rows differ from the ones params ask for: {sorted(got ^ expected_keys(params))[:4]}")
    save_json(out / "metrics.json", nested(rows))
    write_csv(out / "metrics.csv", rows)
    write_csv(out / "per_image.csv", records)
    multi = [params.attack_label(s) for s in params.attack.attacks if len(s.eps) > 1]  # PGD 1, 2, 4, 8 /256
    write_csv(out / "plots" / "psnr_vs_eps.csv",
              [{"restorer": r["restorer"], "attack": a, "defence": r["defence"],
                "series": f"{r['restorer']} / {a} / {r['defence']}", "eps": r["eps"],
                "psnr": round(r["psnr_mean"], 4), "psnr_lo": round(r["psnr_lo"], 4), "psnr_hi": round(r["psnr_hi"], 4),
                "ssim": round(r["ssim_mean"], 4)}
               for a in multi for r in rows
               if r["attack"] in (a, "none") and r["setting"] in ("clean", "white-box", "gray-box")])
    return {"rows": len(rows), "images": len(records)}


@task(name="evaluate-pairs", cache_policy=NO_CACHE)
def evaluate_user_pairs(params: Params, pairs_dir: str, data_dir: str, out_dir: str) -> dict:
    """Score a user's folder of pairs (data contract: manifest.json + gt/lq .npy)."""
    from tasks.purification import deployed_purifier, purify_set, sampler_options, selected_t_star  # diffusers

    paths, out = Paths(data_dir), Path(out_dir)
    device = resolve_device(params.evaluate.device)
    pairs = load_split(Path(pairs_dir), psf_dir=paths.psf)
    purifier = deployed_purifier(params, paths, device)
    t_star = selected_t_star(params, paths)
    x_pur = purify_set(purifier, pairs.lq, list(pairs.ids), t_star=t_star, seed=params.purify.seed,
                       batch_size=params.purify.batch_size, desc="purify pairs", **sampler_options(params, t_star))
    records: list[dict] = []
    for r in params.restorers:
        base, ft = load_restorer(paths.model(r.name), device), load_restorer(paths.finetuned(r.name), device)
        for d, net, x in (("none", base, pairs.lq), ("purify", base, x_pur), ("purify+finetune", ft, x_pur)):
            o = predict(net, x, pairs.cond, batch_size=params.evaluate.batch_size, device=device)
            recs = merge_draws([score_images(o, pairs.gt, o, x, list(pairs.ids), restorer=r.name, attack="none",
                                             eps=0.0, defence=d, setting="clean")])
            records += [{**rec, "group": g} for rec, g in zip(recs, pairs.groups, strict=True)]
    rows = summary_table(records, n_boot=params.evaluate.bootstrap, seed=params.evaluate.seed)
    save_json(out / "metrics.json", nested(rows))
    write_csv(out / "metrics.csv", rows)
    write_csv(out / "per_image.csv", records)
    return {"rows": len(rows), "metrics": METRICS}

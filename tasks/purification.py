"""Tasks of the diffusion stages: train the purifier, purify input sets."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.common import Paths, progress, resolve_device
from tasks.tracking import RunLogger
from tasks.train import _fit_with_resume
from udcguard.config import Params
from udcguard.io.atomic import save_json
from udcguard.io.datasets import load_inputs, load_split, save_inputs
from udcguard.io.purifier_store import load_purifier, save_purifier
from udcguard.purify.diffusion import (
    Purifier,
    build_unet_preset,
    diffusion_loss,
    make_scheduler,
)
from udcguard.train.augment import sample_batch


def image_seeds(seed: int, ids: list[str]) -> list[int]:
    """One purification seed per image, from (seed, image id): independent of batching."""
    return [int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[:4], "little") for i in ids]


@task(name="train-purifier", cache_policy=NO_CACHE)
def train_purifier(params: Params, data_dir: str, out_dir: str, fp: str, run_id: str | None) -> dict:
    """Train the DDPM UNet on tone-mapped degraded train inputs (or adopt ``unet_path``)."""
    paths, p = Paths(data_dir), params.purifier
    device = resolve_device(p.device)
    scheduler = make_scheduler(p.num_train_timesteps)
    if p.unet_path is not None:
        adopted = load_purifier(p.unet_path, device="cpu")
        if not (Path(p.unet_path) / "scheduler").is_dir():  # a bare UNet folder: use params' schedule
            adopted = Purifier(adopted.unet, scheduler)
        save_purifier(adopted, Path(out_dir))
        return {"source": str(p.unet_path)}
    pairs = load_split(paths.udc / "train", psf_dir=None)
    with torch.random.fork_rng(devices=[]):  # initial weights depend on the seed only
        torch.manual_seed(p.seed)
        unet = build_unet_preset(p.unet, sample_size=p.crop_px).to(device)

    def sample(g: torch.Generator):
        lq, _, _ = sample_batch(pairs, batch_size=p.batch_size, crop_px=p.crop_px, generator=g)
        return lq, int(torch.randint(0, 2**31 - 1, (1,), generator=g))

    def loss_fn(model, batch):
        x0, seed = batch
        return diffusion_loss(model, scheduler, x0.to(device), torch.Generator().manual_seed(seed),
                              max_timestep=p.max_timestep)

    history = _fit_with_resume(
        unet, loss_fn, sample, steps=p.steps, lr=p.lr, lr_min=p.lr_min, seed=p.seed, device=device,
        amp=False, ckpt=paths.ckpt / "purifier.pt", fp=fp, every=p.checkpoint_every, log=RunLogger(run_id),
        desc="train purifier", prefix="purifier_")
    save_purifier(Purifier(unet.cpu().eval(), scheduler), Path(out_dir))
    save_json(Path(out_dir) / "history.json", history)
    return {"parameters": sum(q.numel() for q in unet.parameters()), "final_loss": history["loss"][-1]}


def purify_set(purifier: Purifier, x: torch.Tensor, ids: list[str], *, t_star: int, seed: int,
               batch_size: int, desc: str) -> torch.Tensor:
    """Purify (N, 3, H, W) in batches with per-image seeds; progress bar per batch."""
    seeds = image_seeds(seed, ids)
    out = []
    bar = progress(len(ids), desc)
    for i in range(0, len(ids), batch_size):
        out.append(purifier.purify(x[i : i + batch_size], t_star=t_star, seeds=seeds[i : i + batch_size]).cpu())
        bar.update(len(out[-1]))
    bar.close()
    return torch.cat(out) if out else x.clone()


@task(name="purify", cache_policy=NO_CACHE)
def purify_sets(params: Params, name: str, data_dir: str, out_dir: str) -> list[str]:
    """Purify the clean evaluation inputs and every adversarial set of one restorer."""
    paths, p = Paths(data_dir), params.purify
    purifier = load_purifier(paths.purifier, device=resolve_device(p.device))
    sets = sorted(d.name for d in paths.attacks(name).iterdir() if (d / "manifest.json").exists())
    written = []
    for set_name in sets:
        x, ids, extra = load_inputs(paths.attacks(name) / set_name)
        y = purify_set(purifier, x, list(ids), t_star=p.t_star, seed=p.seed, batch_size=p.batch_size,
                       desc=f"purify {name}/{set_name}")
        save_inputs(Path(out_dir) / set_name, y, ids, {**extra, "t_star": p.t_star, "purify_seed": p.seed})
        written.append(set_name)
    return written


@task(name="purify-train", cache_policy=NO_CACHE)
def purify_train_set(params: Params, data_dir: str, out_dir: str) -> list[int]:
    """Purify the first ``finetune.train_images`` train inputs at each strength in t_stars."""
    paths, f, p = Paths(data_dir), params.finetune, params.purify
    purifier = load_purifier(paths.purifier, device=resolve_device(p.device))
    pairs = load_split(paths.udc / "train", psf_dir=None, max_items=f.train_images)
    for t_star in f.t_stars:
        y = purify_set(purifier, pairs.lq, list(pairs.ids), t_star=t_star, seed=p.seed + t_star,
                       batch_size=p.batch_size, desc=f"purify train t*={t_star}")
        save_inputs(Path(out_dir) / f"t_{t_star}", y, pairs.ids, {"t_star": t_star, "split": "train"})
    return list(f.t_stars)

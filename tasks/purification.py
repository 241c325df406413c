"""Tasks of the diffusion stages: train the purifier, purify input sets."""

from __future__ import annotations

import functools
import hashlib
import threading
from pathlib import Path

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.common import Paths, draw_dir, progress, resolve_device, sampler_steps, selected_t_star
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
from udcguard.config import Params
from udcguard.io.atomic import save_json
from udcguard.io.datasets import INPUTS_FILE, TensorPairs, load_inputs, load_split, save_inputs
from udcguard.io.subsets import stratified_subset
from udcguard.io.purifier_store import load_purifier
from udcguard.purify.guidance import LowFreqGuidance
from udcguard.purify.purifier import Purifier


def image_seeds(seed: int, ids: list[str]) -> list[int]:
    """One purification seed per image, from (seed, image id): independent of batching."""
    return [int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[:4], "little") for i in ids]


def deployed_purifier(params: Params, paths: Paths, device: torch.device) -> Purifier:
    """The trained purifier with params.purify's speed options (CUDA only: autocast, channels_last, compile)."""
    p = params.purify
    base = load_purifier(paths.purifier, device=device)
    return Purifier(base.unet, base.scheduler, channels_last=p.channels_last, autocast=p.autocast, compile=p.compile)


def guidance_of(params: Params, scale: float | None = None) -> LowFreqGuidance | None:
    """The input guidance of params.purify.guidance (None when its scale is 0)."""
    g = params.purify.guidance
    scale = g.scale if scale is None else scale
    if scale == 0:
        return None
    return LowFreqGuidance(scale=scale, sigma_px=g.sigma_px, lowpass=g.lowpass, pool_factor=g.pool_factor,
                           schedule=g.schedule)


def sampler_options(params: Params, t_star: int) -> dict:
    """Purifier.purify keyword arguments from params.purify (sampler, tiles, guidance) at ``t_star``: DDIM takes
    ``ddim_steps`` steps, or t* steps when t* is smaller (one step per timestep at most)."""
    p = params.purify
    return {"sampler": p.sampler, "steps": sampler_steps(params, t_star),
            "eta": p.eta,
            "tile": p.tile_px, "overlap": p.tile_overlap_px if p.tile_px else None, "guidance": guidance_of(params)}


def draw_seed(seed: int, k: int) -> int:
    """Seed of purification draw k (k = 0: ``seed`` itself, as before draws existed)."""
    return seed + 1_000_003 * k


def purify_set(purifier: Purifier, x: torch.Tensor, ids: list[str], *, t_star: int, seed: int,
               batch_size: int, desc: str, **options) -> torch.Tensor:
    """Purify (N, 3, H, W) in batches with per-image seeds; progress bar per batch."""
    seeds = image_seeds(seed, ids)
    out = []
    bar = progress(len(ids), desc)
    for i in range(0, len(ids), batch_size):
        out.append(purifier.purify(x[i : i + batch_size], t_star=t_star, seeds=seeds[i : i + batch_size],
                                   **options).cpu())
        bar.update(len(out[-1]))
    bar.close()
    return torch.cat(out) if out else x.clone()


@functools.lru_cache(maxsize=8)
def _purifier(params_text: str, data_dir: str, _stamp: int, _thread: int) -> Purifier:
    """One purifier per process and thread: ``purify`` sets its scheduler's timesteps."""
    params = shard_params(params_text)
    return deployed_purifier(params, Paths(data_dir), resolve_device(params.purify.device))


@functools.lru_cache(maxsize=2)
def _source(source: str, indices: tuple[int, ...] | None, _stamp: int) -> tuple[torch.Tensor, tuple[str, ...]]:
    """(inputs, ids) of an input set folder, or of a split folder (the pairs at ``indices``)."""
    if (Path(source) / INPUTS_FILE).exists():
        x, ids, _ = load_inputs(source)
        return x, ids
    pairs = load_split(source, psf_dir=None)
    pairs = pairs if indices is None else pairs.subset(list(indices))
    return pairs.lq, pairs.ids


def purify_shard(ctx: dict, job: dict) -> str:
    """One shard: purify images [start, stop) of ``job["source"]`` at t*, per-image seeds -> its .pt file."""
    params = shard_params(ctx["params"])
    purifier = _purifier(ctx["params"], ctx["data_dir"], stamp(Paths(ctx["data_dir"]).purifier), threading.get_ident())
    indices = job.get("indices")
    x, ids = _source(job["source"], None if indices is None else tuple(indices), stamp(job["source"]))
    options, out = sampler_options(params, job["t_star"]), []
    for i, j in batches(job["start"], job["stop"], params.purify.batch_size):
        seeds = image_seeds(job["seed"], list(ids[i:j]))
        out.append(purifier.purify(x[i:j].clone(), t_star=job["t_star"], seeds=seeds, **options).cpu())
    save_shard(job["out"], {"ids": list(ids[job["start"]:job["stop"]]), "y": torch.cat(out)})
    return job["key"]


def _run_and_merge(params: Params, data_dir: str, out: Path, groups: list[tuple[str, list[str], dict, list[dict]]],
                   desc: str) -> list[str]:
    """Run every group's shards, then write each group (folder, ids, metadata, jobs) in order."""
    ctx = {"params": params.model_dump_json(), "data_dir": data_dir}
    run_shards("tasks.purification:purify_shard", ctx, [job for *_, jobs in groups for job in jobs],
               params.parallel, desc)
    for folder, ids, extra, jobs in groups:
        save_inputs(out / folder, gather(jobs, "y", ids, folder)[1], ids, extra)
    remove_shards(out)
    return [folder for folder, *_ in groups]


def _jobs(params: Params, out: Path, folder: str, n: int, **job) -> list[dict]:
    """Shard jobs of one output folder over n images (whole batches of purify.batch_size)."""
    return shard_jobs(out, folder, n, params.parallel.shard_images, params.purify.batch_size, **job)


@task(name="purify", cache_policy=NO_CACHE)
def purify_sets(params: Params, name: str, data_dir: str, out_dir: str) -> list[str]:
    """Purify the clean evaluation inputs and every adversarial set of one restorer, ``purify.seeds`` draws each."""
    paths, p, out = Paths(data_dir), params.purify, Path(out_dir)
    t_star = selected_t_star(params, paths)
    sets = sorted(d.name for d in paths.attacks(name).iterdir() if (d / "manifest.json").exists())
    groups = []
    for set_name in sets:
        _, ids, extra = load_inputs(paths.attacks(name) / set_name)
        for k in range(p.seeds):
            folder, seed = draw_dir(set_name, k), draw_seed(p.seed, k)
            meta = {**extra, "t_star": t_star, "purify_seed": seed, "draw": k, "sampler": p.sampler}
            source = str(paths.attacks(name) / set_name)
            groups.append((folder, ids, meta, _jobs(params, out, folder, len(ids), source=source, t_star=t_star,
                                                    seed=seed)))
    return _run_and_merge(params, data_dir, out, groups, f"purify {name}")


def finetune_t_stars(params: Params, paths: Paths) -> list[int]:
    """Strengths of the fine-tuning set: finetune.t_stars, or (auto) t_star_factors x the deployed t*.

    Fine-tuning should see the purification that is deployed: with ``purify.t_star: auto`` that is
    the select_tstar stage's choice, so the strengths follow data/tstar.json. A deployed t* of 0
    (no purification) gives no strengths: the set is then the clean copies alone.
    """
    f = params.finetune
    if f.t_stars != "auto":
        return list(f.t_stars)
    t, top = selected_t_star(params, paths), params.diffusion.max_timestep or params.diffusion.num_train_timesteps - 1
    return sorted({min(top, max(1, round(k * t))) for k in f.t_star_factors}) if t > 0 else []


def finetune_indices(params: Params, train: TensorPairs) -> list[int]:
    """Train pairs of the fine-tuning set: ``finetune.train_images`` stratified across scene groups."""
    return stratified_subset(train.groups, params.finetune.train_images, params.finetune.seed)


STRENGTHS_FILE = "strengths.json"


@task(name="purify-train", cache_policy=NO_CACHE)
def purify_train_set(params: Params, data_dir: str, out_dir: str) -> list[int]:
    """Purify the fine-tuning subset of the train split at each strength (``strengths.json`` lists them)."""
    paths, p, out = Paths(data_dir), params.purify, Path(out_dir)
    train = load_split(paths.udc / "train", psf_dir=None)
    indices = finetune_indices(params, train)
    ids, t_stars = [train.ids[i] for i in indices], finetune_t_stars(params, paths)
    groups = [(f"t_{t}", ids, {"t_star": t, "split": "train"},
               _jobs(params, out, f"t_{t}", len(ids), source=str(paths.udc / "train"), indices=indices,
                     t_star=t, seed=p.seed + t)) for t in t_stars]
    _run_and_merge(params, data_dir, out, groups, "purify train")
    save_json(out / STRENGTHS_FILE, {"t_stars": t_stars, "ids": ids,
                                     "scenes": len({train.groups[i] for i in indices})})
    return t_stars

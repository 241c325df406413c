"""Tasks of the training stages: restorers, the diffusion purifier, fine-tuning."""

from __future__ import annotations

from pathlib import Path

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.common import Paths, progress, resolve_device
from tasks.tracking import RunLogger
from udcguard.config import Params
from udcguard.io.atomic import save_json
from udcguard.io.checkpoints import (
    load_official_checkpoint,
    load_state,
    load_train_state,
    save_model,
    save_train_state,
)
from udcguard.io.datasets import TensorPairs, load_inputs, load_split
from udcguard.losses.perceptual import build_perceptual
from udcguard.models import build_restorer, num_parameters, restorer_spec
from udcguard.train.augment import sample_batch
from udcguard.train.loop import fit
from udcguard.train.restorer import restoration_loss


def load_restorer(model_dir: Path, device: torch.device) -> torch.nn.Module:
    """Rebuild a restorer from ``spec.json`` and load its safetensors weights."""
    state, spec = load_state(model_dir)
    model = build_restorer(spec["arch"], size=spec["size"], cond_dim=spec["cond_dim"])
    model.load_state_dict(state)
    return model.to(device).eval()


def _fit_with_resume(model, loss_fn, sample, *, steps, lr, lr_min, seed, device, amp, ckpt: Path,
                     fp: str, every: int, log: RunLogger, desc: str, prefix: str) -> dict:
    """Run :func:`fit` with a resumable checkpoint (ignored if its fingerprint differs)."""
    state = load_train_state(ckpt)
    resume = state if state is not None and state.get("fingerprint") == fp else None
    bar = progress(steps, desc)
    bar.update(resume["step"] if resume else 0)

    def on_step(step: int, m: dict) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{m['loss']:.4f}")
        if step % 10 == 0 or step == steps:
            log.log_metrics({f"{prefix}loss": m["loss"], f"{prefix}lr": m["lr"]}, step=step)

    history = fit(model, loss_fn, sample, steps=steps, lr=lr, lr_min=lr_min, seed=seed, device=device,
                  amp=amp and device.type == "cuda", resume=resume, checkpoint_every=every,
                  on_checkpoint=lambda s: save_train_state(ckpt, {**s, "fingerprint": fp}), on_step=on_step)
    bar.close()
    ckpt.unlink(missing_ok=True)
    return history


@task(name="train-restorer", cache_policy=NO_CACHE)
def train_restorer(params: Params, name: str, data_dir: str, out_dir: str, fp: str, run_id: str | None) -> dict:
    """Train one restorer on the train split; write model.safetensors + spec.json."""
    paths, r, t = Paths(data_dir), params.restorer(name), params.train
    device = resolve_device(t.device)
    pairs = load_split(paths.udc / "train", psf_dir=paths.psf)
    cond_dim = pairs.cond.shape[1] if pairs.cond is not None else 0
    with torch.random.fork_rng(devices=[]):  # initial weights depend on the seed only
        torch.manual_seed(t.seed)
        model = build_restorer(r.arch, size=r.size, cond_dim=cond_dim)
    if r.weights is not None:
        load_official_checkpoint(model, r.weights)
    model = model.to(device)
    sample = lambda g: sample_batch(pairs, batch_size=t.batch_size, crop_px=t.crop_px, generator=g)
    history = _fit_with_resume(
        model, restoration_loss(t.loss, device=device), sample, steps=t.steps, lr=t.lr, lr_min=t.lr_min,
        seed=t.seed, device=device, amp=t.amp, ckpt=paths.ckpt / f"train-{name}.pt", fp=fp,
        every=t.checkpoint_every, log=RunLogger(run_id), desc=f"train {name}", prefix="train_")
    save_model(model, Path(out_dir), restorer_spec(model))
    save_json(Path(out_dir) / "history.json", history)
    return {"parameters": num_parameters(model), "final_loss": history["loss"][-1]}


def finetune_pairs(params: Params, paths: Paths) -> TensorPairs:
    """Purified train inputs (each strength) + clean copies, all against the clean gt."""
    f = params.finetune
    base = load_split(paths.udc / "train", psf_dir=paths.psf, max_items=f.train_images)
    mix = None
    for t_star in f.t_stars:
        x, ids, _ = load_inputs(paths.purified_train / f"t_{t_star}")
        assert list(ids) == list(base.ids), "purified train set does not match the train split"
        part = TensorPairs(lq=x, gt=base.gt, cond=base.cond, ids=base.ids)
        mix = part if mix is None else mix.concat(part)
    for _ in range(f.clean_copies):
        mix = base if mix is None else mix.concat(base)
    return mix


@task(name="finetune", cache_policy=NO_CACHE)
def finetune_restorer(params: Params, name: str, data_dir: str, out_dir: str, fp: str, run_id: str | None) -> dict:
    """Fine-tune a trained restorer on purified + clean inputs (L2 + optional perceptual)."""
    paths, f = Paths(data_dir), params.finetune
    device = resolve_device(f.device)
    model = load_restorer(paths.model(name), device).train()
    pairs = finetune_pairs(params, paths)
    perceptual = build_perceptual(f.perceptual_weights_path)
    if perceptual is not None:
        perceptual = perceptual.to(device)
    sample = lambda g: sample_batch(pairs, batch_size=f.batch_size, crop_px=f.crop_px, generator=g, jitter=f.jitter)
    loss_fn = restoration_loss("l2", device=device, perceptual=perceptual, perceptual_weight=f.perceptual_weight)
    history = _fit_with_resume(
        model, loss_fn, sample, steps=f.steps, lr=f.lr, lr_min=f.lr_min, seed=f.seed, device=device,
        amp=f.amp, ckpt=paths.ckpt / f"finetune-{name}.pt", fp=fp, every=f.checkpoint_every,
        log=RunLogger(run_id), desc=f"finetune {name}", prefix="finetune_")
    save_model(model, Path(out_dir), restorer_spec(model))
    save_json(Path(out_dir) / "history.json", history)
    return {"pairs": len(pairs), "perceptual": perceptual is not None, "final_loss": history["loss"][-1]}

"""Tasks of the training stages: restorers, the diffusion purifier, fine-tuning."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.common import Paths, progress, resolve_device
from ops.launch import run_torchrun
from tasks.restorers import finetune_pairs, finetuning
from ops.tracking import RunLogger
from udcguard.config import Params
from udcguard.errors import ConfigError
from udcguard.io.atomic import read_json, save_json, write_bytes
from udcguard.io.checkpoints import load_official_checkpoint, load_train_state, save_model, save_train_state
from udcguard.io.restorer_store import saved_spec
from udcguard.io.datasets import load_split
from udcguard.models import build_restorer, num_parameters
from udcguard.train.augment import sample_batch
from udcguard.train.loop import fit
from udcguard.train.restorer import restoration_loss

__all__ = ["finetune_pairs", "finetune_restorer", "resolve_distributed", "train_purifier", "train_restorer"]


def _fit_with_resume(model, loss_fn, sample, *, steps, lr, lr_min, seed, device, amp, ckpt: Path,
                     fp: str, every: int, log: RunLogger, desc: str, prefix: str, channels_last: bool = False,
                     ema_decay: float | None = None) -> dict:
    """Run :func:`fit` with a resumable checkpoint (ignored if its fingerprint differs)."""
    state = load_train_state(ckpt)
    resume = state if state is not None and state.get("fingerprint") == fp else None
    bar = progress(steps, desc, unit="steps", initial=resume["step"] if resume else 0)

    def on_step(step: int, m: dict) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{m['loss']:.4f}")
        if step % 10 == 0 or step == steps:
            log.log_metrics({f"{prefix}loss": m["loss"], f"{prefix}lr": m["lr"]}, step=step)

    history = fit(model, loss_fn, sample, steps=steps, lr=lr, lr_min=lr_min, seed=seed, device=device,
                  amp=amp, channels_last=channels_last, ema_decay=ema_decay, resume=resume, checkpoint_every=every,
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
        model, restoration_loss(t.loss, device=device), sample, steps=r.steps or t.steps, lr=r.lr or t.lr,
        lr_min=t.lr_min,
        seed=t.seed, device=device, amp=t.amp, ckpt=paths.ckpt / f"train-{name}.pt", fp=fp,
        every=t.checkpoint_every, log=RunLogger(run_id), desc=f"train {name}", prefix="train_",
        channels_last=r.channels_last, ema_decay=t.ema_decay)
    save_model(model, Path(out_dir), saved_spec(model))
    save_json(Path(out_dir) / "history.json", history)
    return {"parameters": num_parameters(model), "final_loss": history["loss"][-1]}


@task(name="finetune", cache_policy=NO_CACHE)
def finetune_restorer(params: Params, name: str, data_dir: str, out_dir: str, fp: str, run_id: str | None) -> dict:
    """Fine-tune a trained restorer on purified + clean inputs (L2 + optional perceptual).

    With ``finetune.distributed`` resolving to more than one rank, torchrun runs
    ``tasks/ddp_finetune.py`` (DDP, same global batch); its history is logged here.
    """
    paths, f = Paths(data_dir), params.finetune
    device = resolve_device(f.device)
    world, backend = resolve_distributed(params, device)
    if world > 1:
        return _finetune_ddp(params, name, paths, Path(out_dir), fp, RunLogger(run_id), world, backend, device)
    run = finetuning(params, name, paths, device)
    history = _fit_with_resume(
        run.model, run.loss_fn, run.sample, steps=f.steps, lr=f.lr, lr_min=f.lr_min, seed=f.seed, device=device,
        amp=f.amp and device.type == "cuda",  # fp32 on CPUs: equal to the DDP ranks' updates (tests/train/test_ddp.py)
        ckpt=paths.ckpt / f"finetune-{name}.pt", fp=fp, every=f.checkpoint_every,
        log=RunLogger(run_id), desc=f"finetune {name}", prefix="finetune_")
    save_model(run.model, Path(out_dir), saved_spec(run.model))
    save_json(Path(out_dir) / "history.json", history)
    return {"pairs": len(run.pairs), "perceptual": run.perceptual, "final_loss": history["loss"][-1], "ranks": 1}


def _finetune_ddp(params: Params, name: str, paths: Paths, out: Path, fp: str, log: RunLogger, world: int,
                  backend: str, device: torch.device) -> dict:
    """Fine-tune with ``world`` DDP ranks under torchrun; then log the history to MLflow."""
    d, work = params.finetune.distributed, paths.ckpt / f"finetune-{name}.ddp"
    params_file, result = work / "params.json", work / "result.json"
    write_bytes(params_file, json.dumps(params.model_dump(mode="json")).encode())  # key order kept
    result.unlink(missing_ok=True)
    args = ["--params", str(params_file.resolve()), "--restorer", name, "--data-dir", str(paths.data.resolve()),
            "--out-dir", str(out.resolve()), "--fp", fp, "--result", str(result.resolve()),
            "--backend", backend, "--device", device.type]
    run_torchrun("tasks.ddp_finetune", args, nproc=world, work_dir=work, timeout_s=d.timeout_min * 60,
                 master_port=d.master_port, what=f"finetune {name} ({world} ranks)")
    history, info = read_json(out / "history.json", "history"), read_json(result, "DDP result")
    steps = len(history["loss"])
    for step, (loss, lr) in enumerate(zip(history["loss"], history["lr"]), start=1):
        if step % 10 == 0 or step == steps:
            log.log_metrics({"finetune_loss": loss, "finetune_lr": lr}, step=step)
    shutil.rmtree(work, ignore_errors=True)
    return {"pairs": info["pairs"], "perceptual": info["perceptual"], "final_loss": info["final_loss"],
            "ranks": info["world_size"]}


def resolve_distributed(params: Params, device: torch.device) -> tuple[int, str]:
    """``(ranks, backend)`` of ``finetune.distributed`` on this worker; ConfigError if it cannot run here."""
    f = params.finetune
    d, cuda = f.distributed, device.type == "cuda"
    world = d.world_size(torch.cuda.device_count() if cuda else 0)
    backend = d.backend if d.backend != "auto" else ("nccl" if cuda else "gloo")
    if f.batch_size % world:
        raise ConfigError(f"finetune.distributed.nproc={d.nproc} ({world} ranks) must divide "
                          f"finetune.batch_size={f.batch_size}")
    if world > 1 and backend == "nccl" and not cuda:
        raise ConfigError("finetune.distributed.backend: nccl needs CUDA (finetune.device resolved to cpu); use gloo")
    if world > 1 and cuda and world > torch.cuda.device_count():
        raise ConfigError(f"finetune.distributed.nproc={world} exceeds the {torch.cuda.device_count()} CUDA devices")
    return world, backend


@task(name="train-purifier", cache_policy=NO_CACHE)
def train_purifier(params: Params, data_dir: str, out_dir: str, fp: str, run_id: str | None) -> dict:
    """Train the DDPM UNet on tone-mapped degraded train inputs (or adopt ``unet_path``)."""
    from udcguard.io.purifier_store import load_purifier, save_purifier  # diffusers: only in this stage
    from udcguard.purify import Purifier, build_unet_preset, diffusion_loss, make_scheduler

    paths, p = Paths(data_dir), params.diffusion
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

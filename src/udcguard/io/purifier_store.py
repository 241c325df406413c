"""Saving and loading diffusion purifiers in diffusers' folder format (local only).

A purifier folder holds ``unet/`` (``config.json`` + ``diffusion_pytorch_model.safetensors``)
and ``scheduler/`` (``scheduler_config.json``), as a diffusers pipeline does. Loading also
accepts a folder that is itself a diffusers UNet (config and weights at its root) and then
uses the default DDPM schedule (:func:`udcguard.purify.make_scheduler`). Only safetensors
weights are read (no pickle), and nothing is ever fetched from the network.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel

from udcguard.errors import UdcGuardError
from udcguard.purify.purifier import Purifier
from udcguard.purify.unet import make_scheduler

_WEIGHTS = "diffusion_pytorch_model.safetensors"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def save_purifier(
    purifier_or_unet_and_scheduler: Purifier | tuple[UNet2DModel, DDPMScheduler], path: str | Path
) -> Path:
    """Save a purifier to ``path`` (replacing what is there) atomically.

    Everything is written into a temporary sibling directory that is renamed onto
    ``path`` only when complete, so a kill never leaves a half-written purifier.

    Args:
        purifier_or_unet_and_scheduler: a :class:`Purifier` or a ``(unet, scheduler)`` pair.
        path: target folder.

    Returns:
        ``path`` as a :class:`Path`.
    """
    obj = purifier_or_unet_and_scheduler
    unet, scheduler = (obj.unet, obj.scheduler) if isinstance(obj, Purifier) else obj
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        scheduler.save_pretrained(tmp / "scheduler")
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_purifier(path: str | Path, *, device: str | torch.device = "cpu") -> Purifier:
    """Load a purifier saved by :func:`save_purifier`, or any diffusers UNet folder.

    Args:
        path: a purifier folder (``unet/`` + optional ``scheduler/``), or a folder that is
            itself a diffusers ``UNet2DModel`` (``config.json`` + weights). Without a
            scheduler folder the default DDPM schedule is used.
        device: where the UNet goes (``"cpu"``, ``"cuda"``, ...); it is put in eval mode.

    Raises:
        UdcGuardError: one line naming ``path``: missing folder, no UNet config, unreadable
            or corrupt weights, a UNet that is not 3 -> 3 channels, a bad scheduler config.
    """
    path = Path(path)
    if not path.is_dir():
        raise UdcGuardError(f"{path}: no such purifier folder")
    if (path / "unet" / "config.json").is_file():
        unet_dir = path / "unet"
    elif (path / "config.json").is_file():
        unet_dir = path
    else:
        raise UdcGuardError(f"{path}: no diffusers UNet config (expected unet/config.json or config.json)")
    if not (unet_dir / _WEIGHTS).is_file():
        rel = _WEIGHTS if unet_dir == path else f"unet/{_WEIGHTS}"
        raise UdcGuardError(f"{path}: no {rel} (only safetensors weights are loaded)")
    try:  # diffusers / safetensors raise assorted types (OSError, ValueError, SafetensorError)
        unet = UNet2DModel.from_pretrained(
            unet_dir, local_files_only=True, use_safetensors=True, low_cpu_mem_usage=False
        )
    except Exception as exc:  # reported as one line naming the folder
        raise UdcGuardError(f"{path}: cannot load the UNet ({_one_line(exc)})") from exc
    if unet.config.in_channels != 3 or unet.config.out_channels != 3:
        raise UdcGuardError(
            f"{path}: UNet maps {unet.config.in_channels} -> {unet.config.out_channels} channels,"
            " expected 3 -> 3"
        )
    sched_dir = path / "scheduler"
    if (sched_dir / "scheduler_config.json").is_file():
        try:
            scheduler = DDPMScheduler.from_pretrained(sched_dir, local_files_only=True)
        except Exception as exc:
            raise UdcGuardError(f"{path}: cannot load the scheduler ({_one_line(exc)})") from exc
    else:
        scheduler = make_scheduler()
    return Purifier(unet.to(device).eval(), scheduler)

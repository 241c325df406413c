"""Loading the restorers that the train and finetune stages save (``spec.json`` + ``model.safetensors``,
see :func:`udcguard.io.checkpoints.save_model`), as :mod:`udcguard.io.purifier_store` loads purifiers."""

from __future__ import annotations

from pathlib import Path

import torch

from udcguard.io.checkpoints import load_state
from udcguard.models import build_restorer, restorer_spec


def load_restorer(model_dir: str | Path, device: str | torch.device = "cpu", *, frozen: bool = False) -> torch.nn.Module:
    """Rebuild a restorer from ``spec.json`` and load its safetensors weights, in eval mode.

    ``frozen``: no parameter requires a gradient (what attacks on the input and scoring want).
    Errors name the folder (:func:`~udcguard.io.checkpoints.load_state`).
    """
    state, spec = load_state(model_dir)
    model = build_restorer(spec["arch"], size=spec["size"], cond_dim=spec["cond_dim"])
    model.load_state_dict(state)
    if spec.get("channels_last"):
        model.to(memory_format=torch.channels_last)
    model = model.to(device).eval()
    return model.requires_grad_(False) if frozen else model


def saved_spec(model: torch.nn.Module) -> dict:
    """The ``spec.json`` of a restorer: :func:`~udcguard.models.restorer_spec` plus
    ``"channels_last": true`` when its convolution weights are in channels-last memory format
    (trained with ``restorers.<name>.channels_last``), so that :func:`load_restorer` runs it in
    the format it was trained in: on a CPU, inference 1.25-1.5x and input gradients 1.2-1.4x
    faster for DISCNet-small and UNet-small (oneDNN's NHWC kernels)."""
    spec = restorer_spec(model)
    weights = [w for w in model.parameters() if w.ndim == 4]
    if all(w.is_contiguous(memory_format=torch.channels_last) for w in weights) and any(
            not w.is_contiguous() for w in weights):
        spec["channels_last"] = True
    return spec

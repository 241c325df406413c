"""Loading the restorers that the train and finetune stages save (``spec.json`` + ``model.safetensors``,
see :func:`udcguard.io.checkpoints.save_model`), as :mod:`udcguard.io.purifier_store` loads purifiers."""

from __future__ import annotations

from pathlib import Path

import torch

from udcguard.io.checkpoints import load_state
from udcguard.models import build_restorer


def load_restorer(model_dir: str | Path, device: str | torch.device = "cpu", *, frozen: bool = False) -> torch.nn.Module:
    """Rebuild a restorer from ``spec.json`` and load its safetensors weights, in eval mode.

    ``frozen``: no parameter requires a gradient (what attacks on the input and scoring want).
    Errors name the folder (:func:`~udcguard.io.checkpoints.load_state`).
    """
    state, spec = load_state(model_dir)
    model = build_restorer(spec["arch"], size=spec["size"], cond_dim=spec["cond_dim"])
    model.load_state_dict(state)
    model = model.to(device).eval()
    return model.requires_grad_(False) if frozen else model

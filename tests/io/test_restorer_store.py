"""Restorers saved by the train and finetune stages load in the memory format they were trained in."""

from __future__ import annotations

from pathlib import Path

import torch

from udcguard.io.checkpoints import save_model
from udcguard.io.restorer_store import load_restorer, saved_spec
from udcguard.models import build_restorer, restorer_spec


def test_a_channels_last_restorer_loads_channels_last_and_restores_the_same(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x, cond = torch.rand(2, 3, 24, 24), torch.randn(2, 5)
    for arch in ("discnet", "unet", "nafnet"):  # dynamic filters, plain convs, depthwise convs
        model = build_restorer(arch, size="tiny", cond_dim=5).eval()
        assert saved_spec(model) == restorer_spec(model)  # contiguous: no key
        save_model(model, tmp_path / arch / "plain", saved_spec(model))
        model.to(memory_format=torch.channels_last)
        spec = saved_spec(model)
        assert spec == {**restorer_spec(model), "channels_last": True}
        save_model(model, tmp_path / arch / "nhwc", spec)
        plain, nhwc = load_restorer(tmp_path / arch / "plain"), load_restorer(tmp_path / arch / "nhwc", frozen=True)
        conv = next(w for w in nhwc.parameters() if w.ndim == 4 and w.shape[1] > 1 and w.shape[-1] > 1)
        assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
        assert all(w.is_contiguous() for w in plain.parameters())
        with torch.no_grad():
            torch.testing.assert_close(nhwc(x, cond), plain(x, cond), rtol=0, atol=2e-5)

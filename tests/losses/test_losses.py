"""Pixel losses and the VGG-19 perceptual loss (random weights written by the test)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from udcguard.errors import UdcGuardError, UnknownNameError
from udcguard.losses import PIXEL_LOSSES, VGGPerceptual, build_perceptual
from udcguard.losses.perceptual import VGG19_CFG, vgg19_relu_indices


def test_pixel_losses_match_torch() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 3, 5, 5, generator=g), torch.rand(2, 3, 5, 5, generator=g)
    assert torch.allclose(PIXEL_LOSSES.get("l1")(a, b), F.l1_loss(a, b))
    assert torch.allclose(PIXEL_LOSSES.get("l2")(a, b), F.mse_loss(a, b))
    ch = PIXEL_LOSSES.get("charbonnier")(a, b)
    assert F.l1_loss(a, b) < ch < F.l1_loss(a, b) + 1e-3
    for name in PIXEL_LOSSES:
        loss = PIXEL_LOSSES.get(name)
        assert float(loss(a, a)) <= 1.001e-3 and loss(a, b).shape == ()
    with pytest.raises(UnknownNameError, match="valid: charbonnier, l1, l2"):
        PIXEL_LOSSES.get("l3")


def test_relu_indices_match_torchvision() -> None:
    idx = vgg19_relu_indices()
    assert idx["relu1_1"] == 1 and idx["relu3_3"] == 15 and idx["relu4_2"] == 22 and idx["relu5_4"] == 35
    assert len(idx) == sum(v != "M" for v in VGG19_CFG)


def _torchvision_style_state(upto: int = 26) -> dict[str, torch.Tensor]:
    """Random torchvision-style vgg19 keys features.N.{weight,bias} for N < upto, plus a
    classifier entry (default: two conv layers past relu4_2, which must be ignored)."""
    g = torch.Generator().manual_seed(0)
    out: dict[str, torch.Tensor] = {}
    idx, c_in = 0, 3
    for v in VGG19_CFG:
        if v == "M":
            idx += 1
            continue
        if idx < upto:
            out[f"features.{idx}.weight"] = torch.randn(v, c_in, 3, 3, generator=g) * (2 / (9 * c_in)) ** 0.5
            out[f"features.{idx}.bias"] = torch.zeros(v)
        idx, c_in = idx + 2, v
    out["classifier.6.bias"] = torch.zeros(10)
    return out


def test_vgg_perceptual_loads_torchvision_keys(tmp_path: Path) -> None:
    path = tmp_path / "vgg19.safetensors"
    save_file(_torchvision_style_state(), path)
    loss = build_perceptual(path)
    assert isinstance(loss, VGGPerceptual) and len(loss.features) == 23
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    assert float(loss(x, x)) == 0.0
    x.requires_grad_(True)
    value = loss(x, y)
    value.backward()
    assert float(value.detach()) > 0 and x.grad is not None and float(x.grad.abs().sum()) > 0
    assert not any(p.requires_grad for p in loss.parameters())

    pth = tmp_path / "vgg19.pth"
    torch.save(_torchvision_style_state(), pth)
    assert torch.allclose(VGGPerceptual(pth)(x, y), value)


def test_vgg_perceptual_errors(tmp_path: Path) -> None:
    with pytest.raises(UdcGuardError, match=r"missing\.pth: weights file not found"):
        VGGPerceptual(tmp_path / "missing.pth")
    short = tmp_path / "short.safetensors"
    save_file(_torchvision_style_state(upto=20), short)  # lacks conv4_2 (index 21)
    with pytest.raises(UdcGuardError, match=r"short\.safetensors: no 'features\.21\.weight'"):
        VGGPerceptual(short)
    VGGPerceptual(short, layers=["relu3_3"])  # only needs layers up to index 15
    assert build_perceptual(None) is None

"""UDC-UNet: PSF conditioning, SFT modulation, kernel branch, released-checkpoint compatibility."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from udcguard.errors import UdcGuardError
from udcguard.io.checkpoints import load_official_checkpoint
from udcguard.models.base import build_restorer, num_parameters
from udcguard.models.discnet import dynamic_conv
from udcguard.models.udcunet import SFTLayer, SFTResBlock, UDCUNet

D = 5  # kernel-code length

#: Parameter names exactly as in the authors' released checkpoints (BasicSR ``params`` /
#: ``params_ema`` of ``UDCUNet(nf=32, depths=[2,2,2,8,2,2,2], DyK_size=3)``).
RELEASED_KEYS = [
    "cond_head.0.weight",
    "cond_first.1.conv2.bias",
    "CondNet0.6.weight",
    "CondNet3.4.bias",
    "k_head.0.weight",
    "k_first.0.conv1.weight",
    "KNet3.6.weight",
    "conv_first.0.bias",
    "enconv_layer0.1.sft1.SFT_scale_conv0.weight",
    "down_conv2.weight",
    "Bottom_conv.7.sft2.SFT_shift_conv1.bias",
    "up_conv2.0.weight",
    "deconv_layer1.0.conv1.weight",
    "deconv_layer0.1.sft2.SFT_scale_conv1.weight",
    "conv_last.bias",
]


def _tiny(seed: int = 0) -> UDCUNet:
    torch.manual_seed(seed)
    model = build_restorer("udcunet", size="tiny", cond_dim=D).eval()
    assert isinstance(model, UDCUNet)
    return model


def _inputs(b: int, h: int, w: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g), torch.randn(b, D, generator=g)


def test_paper_size_is_the_released_model() -> None:
    # nf 32, depths [2,2,2,8,2,2,2], DyK 3, d = 5: the released module's exact count (no
    # published figure found); see the module docstring.
    model = build_restorer("udcunet", size="paper", cond_dim=D)
    assert num_parameters(model) == 14_057_091
    assert model.config["depths"] == [2, 2, 2, 8, 2, 2, 2] and model.k == 3


def test_output_changes_with_the_psf_code() -> None:
    model = _tiny()
    x, c = _inputs(1, 32, 40)
    with torch.no_grad():
        y1, y2 = model(x, c), model(x, c + 0.5)
    assert y1.shape == x.shape
    assert (y1 - y2).abs().max() > 1e-6
    c.requires_grad_(True)
    model(x, c).sum().backward()
    assert c.grad is not None and c.grad.abs().sum() > 0


def test_missing_or_misshaped_code_raises() -> None:
    model = _tiny()
    x, c = _inputs(2, 16, 16)
    with pytest.raises(ValueError, match="UDCUNet.*cond"):
        model(x)
    with pytest.raises(ValueError, match=r"\(2, 5\)"):
        model(x, c[:, :4])


def test_sft_layer_applies_scale_and_shift_from_the_condition_map() -> None:
    torch.manual_seed(0)
    layer = SFTLayer(channels=4, cond_channels=6, hidden=5)
    feat, cond = torch.randn(2, 4, 7, 9), torch.randn(2, 6, 7, 9)
    with torch.no_grad():
        scale, shift = layer.scale_shift(cond)
        torch.testing.assert_close(layer(feat, cond), feat * (1 + scale) + shift)
        assert scale.shape == shift.shape == feat.shape
        # spatially variant: the scale differs between pixels with different conditions
        assert (scale[0, :, 1, 1] - scale[0, :, 5, 6]).abs().max() > 1e-4
        # constant scale s and shift t (zero weights): f * (1 + s) + t exactly
        for conv in (layer.SFT_scale_conv1, layer.SFT_shift_conv1):
            conv.weight.zero_()
        layer.SFT_scale_conv1.bias.fill_(0.5)
        layer.SFT_shift_conv1.bias.fill_(-2.0)
        torch.testing.assert_close(layer(feat, cond), feat * 1.5 - 2.0)


def test_sft_block_output_depends_on_the_condition_map() -> None:
    torch.manual_seed(0)
    block = SFTResBlock(channels=8, sft_hidden=8).eval()
    feat, cond = torch.randn(1, 8, 12, 12), torch.randn(1, 8, 12, 12)
    with torch.no_grad():
        y1, y2 = block(feat, cond), block(feat, cond + 1.0)
    assert y1.shape == feat.shape
    assert (y1 - y2).abs().max() > 1e-5
    # the whole model: condition maps of each scale modulate its stages
    model = _tiny()
    x, _ = _inputs(1, 32, 32)
    maps = model.condition_maps(x)
    nf = model.config["nf"]
    assert [tuple(m.shape) for m in maps] == [(1, nf << s, 32 >> s, 32 >> s) for s in range(4)]


def test_kernel_branch_gives_per_pixel_kernels_per_scale() -> None:
    model = _tiny()
    nf, k = model.config["nf"], model.k
    x, c = _inputs(2, 32, 48)
    with torch.no_grad():
        kernels = model.dynamic_kernels(x, c)
        other = model.dynamic_kernels(x, c + 1.0)
    assert [tuple(t.shape) for t in kernels] == [(2, (nf << s) * k * k, 32 >> s, 48 >> s) for s in range(4)]
    k0 = kernels[0][0]  # (nf k^2, H, W)
    assert (k0[:, 3, 4] - k0[:, 20, 30]).abs().max() > 1e-5  # spatially varying
    for a, b in zip(kernels, other, strict=True):
        assert (a - b).abs().max() > 1e-6  # they respond to the PSF code


def test_kernel_branch_feeds_the_output() -> None:
    """Zeroing the last layer of a KNet changes the output (its dynamic skip vanishes)."""
    model = _tiny()
    x, c = _inputs(1, 24, 24)
    with torch.no_grad():
        y = model(x, c)
        model.KNet0[-1].weight.zero_()
        model.KNet0[-1].bias.zero_()
        assert (model(x, c) - y).abs().max() > 1e-6


def test_dynamic_conv_matches_the_released_kernel_layout() -> None:
    """Released kernel2d_conv: kernel channel c k^2 + i k + j weights feat_pad[c, y + i, x + j]."""
    g = torch.Generator().manual_seed(0)
    b, ch, h, w, k = 1, 2, 5, 6, 3
    feat, kern = torch.randn(b, ch, h, w, generator=g), torch.randn(b, ch * k * k, h, w, generator=g)
    padded = torch.nn.functional.pad(feat, (1, 1, 1, 1), mode="replicate")
    ref = torch.zeros(b, ch, h, w)
    for c in range(ch):
        for i in range(k):
            for j in range(k):
                ref[:, c] += kern[:, c * k * k + i * k + j] * padded[:, c, i : i + h, j : j + w]
    torch.testing.assert_close(dynamic_conv(feat, kern, k), ref)


def test_released_parameter_names_map_onto_ours() -> None:
    own = build_restorer("udcunet", size="paper", cond_dim=D).state_dict()
    for key in RELEASED_KEYS:
        assert UDCUNet.official_key(key) in own, key
    assert UDCUNet.official_key("module.conv_last.weight") == "conv_last.weight"
    assert tuple(own["k_head.0.weight"].shape) == (32, 3 + D, 3, 3)
    assert tuple(own["KNet3.6.weight"].shape) == (32 * 8 * 9, 32, 1, 1)


def test_load_a_checkpoint_in_the_released_format(tmp_path: Path) -> None:
    src = _tiny(seed=3)
    path = tmp_path / "net_g_latest.pth"
    # BasicSR format: {"params": state_dict} (with EMA also "params_ema", preferred on load)
    torch.save({"params": {k: v.clone() for k, v in src.state_dict().items()}}, path)
    model = _tiny(seed=4)
    x, c = _inputs(1, 20, 27)
    with torch.no_grad():
        assert not torch.equal(model(x, c), src(x, c))
        loaded = load_official_checkpoint(model, path)
        assert torch.equal(model(x, c), src(x, c))
    assert set(loaded) == set(src.state_dict())

    bad = {k: v.clone() for k, v in src.state_dict().items()}
    bad["KNet1.6.weight"] = bad["KNet1.6.weight"][:-1]
    bad_path = tmp_path / "net_g_bad.pth"
    torch.save({"params": bad}, bad_path)
    with pytest.raises(UdcGuardError, match="net_g_bad.pth.*KNet1.6.weight"):
        load_official_checkpoint(_tiny(), bad_path)

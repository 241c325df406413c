"""DWFormer: depth-wise token mixer, global channel attention, sizes, released checkpoints."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from udcguard.errors import UdcGuardError
from udcguard.io.checkpoints import load_official_checkpoint
from udcguard.models.base import build_restorer, num_parameters, restorer_spec
from udcguard.models.dwformer import Block, DWFormer, GlobalChannelAttention, ReflectConv2d

#: Parameter names exactly as in the released checkpoints: train_DWFormer.py saves
#: {"state_dict": nn.DataParallel(DWFormer()).state_dict()} (github.com/SummerParadise-0922/MPGNet).
OFFICIAL_KEYS = [
    "module.downproj1.weight",
    "module.block1.blocks.0.inter.0.weight",
    "module.block1.blocks.0.inter.0.running_mean",
    "module.block1.blocks.0.inter.0.num_batches_tracked",
    "module.block1.blocks.0.inter.1.weight",
    "module.block1.blocks.0.inter.2.weight",
    "module.block1.blocks.0.inter.4.pwconv.weight",
    "module.block1.blocks.0.inter.4.mlp.0.weight",
    "module.block1.blocks.0.inter.4.mlp.2.weight",
    "module.block1.blocks.0.inter.5.bias",
    "module.block3.blocks.1.intra.1.weight",
    "module.block3.blocks.1.intra.3.bias",
    "module.downproj3.weight",
    "module.upproj4.0.weight",
    "module.fuse1.0.weight",
    "module.upproj5.0.bias",
    "module.fuse2.0.bias",
    "module.out.weight",
]


def _tiny(seed: int = 0, **kwargs: object) -> DWFormer:
    torch.manual_seed(seed)
    return DWFormer(**{**DWFormer.presets["tiny"], **kwargs}).eval()


def _x(b: int = 1, h: int = 32, w: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _blocks(model: nn.Module) -> list[Block]:
    return [m for m in model.modules() if isinstance(m, Block)]


# --- token mixer -------------------------------------------------------------------


@pytest.mark.parametrize("kernel_size", [5, 3])
def test_token_mixer_is_a_depthwise_conv_not_attention(kernel_size: int) -> None:
    model = _tiny(kernel_size=kernel_size)
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    blocks = _blocks(model)
    assert len(blocks) == sum(DWFormer.presets["tiny"]["depths"])
    for blk in blocks:
        mixer = blk.inter[2]
        assert isinstance(mixer, nn.Conv2d)
        c = mixer.in_channels
        assert mixer.groups == c == mixer.out_channels and mixer.weight.shape == (c, 1, kernel_size, kernel_size)
    # local and translation-equivariant: a unit impulse only reaches its k x k neighbourhood
    mixer = blocks[0].inter[2]
    x = torch.zeros(1, mixer.in_channels, 15, 15)
    x[0, :, 7, 7] = 1.0
    with torch.no_grad():
        response = mixer(x) - mixer(torch.zeros_like(x))
    r = kernel_size // 2
    inside = torch.zeros(15, 15, dtype=torch.bool)
    inside[7 - r : 8 + r, 7 - r : 8 + r] = True
    assert response[0][:, ~inside].abs().max() == 0
    assert response[0][:, inside].abs().max() > 0


def test_reflect_conv_matches_reflect_padding_and_survives_tiny_maps() -> None:
    torch.manual_seed(0)
    ours = ReflectConv2d(4, 4, 5, groups=4)
    ref = nn.Conv2d(4, 4, 5, padding=2, groups=4, padding_mode="reflect")
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 4, 9, 6)
    torch.testing.assert_close(ours(x), ref(x))
    assert ours(torch.randn(1, 4, 1, 2)).shape == (1, 4, 1, 2)  # replicate fallback


# --- global channel attention -------------------------------------------------------


def test_channel_attention_scales_channels_by_factors_in_0_1_from_global_statistics() -> None:
    torch.manual_seed(0)
    ca = GlobalChannelAttention(8, ratio=2)
    x = torch.randn(2, 8, 9, 11)
    with torch.no_grad():
        s = ca.scale(x)
        assert s.shape == (2, 8, 1, 1)
        assert (s > 0).all() and (s < 1).all()
        torch.testing.assert_close(ca(x), x * s)
        # attention pooling: softmax weights over the 9 x 11 positions from the 1x1 scoring conv
        w = torch.softmax(ca.pwconv(x).flatten(1), dim=1)  # (B, HW)
        context = (x.flatten(2) * w[:, None]).sum(-1)  # (B, C)
        torch.testing.assert_close(s.flatten(1), ca.mlp(context))
        # global: shuffling the pixels (all channels alike) leaves the factors unchanged
        perm = torch.randperm(9 * 11)
        torch.testing.assert_close(ca.scale(x.flatten(2)[..., perm].view_as(x)), s)


def test_released_channel_attention_pools_by_a_plain_sum() -> None:
    """The released Global_Block's softmax runs over a singleton dimension: all weights are 1."""
    torch.manual_seed(0)
    ca = GlobalChannelAttention(6, pooling="sum")
    x = torch.randn(2, 6, 5, 4)
    b, c, h, w = x.shape
    with torch.no_grad():
        weights = ca.pwconv(x).reshape(b, 1, -1).permute(2, 1, 0).softmax(dim=1)  # as released
        weights = weights.permute(2, 1, 0).reshape(b, 1, h * w)
        assert torch.equal(weights, torch.ones_like(weights))
        released = x * ca.mlp(torch.matmul(weights, x.permute(0, 2, 3, 1).reshape(b, -1, c))).view(b, c, 1, 1)
        torch.testing.assert_close(ca(x), released)
        torch.testing.assert_close(ca.scale(x).flatten(1), ca.mlp(x.sum(dim=(2, 3))))


def _lively(model: DWFormer) -> DWFormer:
    """Block weights at unit gain: the released init makes the token-mixer branch start ~1e-3 small."""
    with torch.no_grad():
        for blk in _blocks(model):
            for m in blk.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.kaiming_normal_(m.weight)
    return model


def test_output_depends_on_the_channel_attention() -> None:
    model = _lively(_tiny())
    x = _x(1, 32, 32)
    with torch.no_grad():
        y = model(x)
        for blk in _blocks(model):  # perturb the attention MLPs
            blk.inter[4].mlp[2].weight.add_(0.5)
        assert (model(x) - y).abs().max() > 1e-4
    disabled = _lively(_tiny())
    for blk in _blocks(disabled):  # remove the module altogether
        blk.inter[4] = nn.Identity()
    with torch.no_grad():
        assert (disabled(x) - y).abs().max() > 1e-4


def test_u_shape_concatenates_skips_and_pads_to_a_multiple_of_4() -> None:
    model = _tiny()
    d = DWFormer.presets["tiny"]["emb_dims"]
    assert model.multiple == 4
    assert model.fuse1[0].in_channels == 2 * d[1] and model.fuse2[0].in_channels == 2 * d[0]
    with torch.no_grad():
        for shape in [(1, 3, 37, 53), (1, 3, 3, 2), (2, 3, 6, 9)]:
            assert model(torch.rand(shape)).shape == shape


# --- sizes and configuration ------------------------------------------------------------


def test_sizes() -> None:
    counts = {s: num_parameters(build_restorer("dwformer", size=s)) for s in ("tiny", "small")}
    assert counts == {"tiny": 79_833, "small": 307_279}


def test_paper_size_is_the_released_default() -> None:
    # DWFormer() with the released defaults: emd_dims [24, 48, 96, 48, 24], mlp_ratios
    # [2, 4, 4, 2, 2], layer_num [8, 8, 8, 6, 6], se_ratio 1; the paper gives no parameter count
    with torch.device("meta"):
        model = DWFormer(**DWFormer.presets["paper"])
        released = DWFormer(**DWFormer.presets["paper"], ca_pooling="sum")
    assert num_parameters(model) == num_parameters(released) == 1_447_047
    assert restorer_spec(model) == {"arch": "dwformer", "size": "paper", "cond_dim": 0}
    with pytest.raises(ValueError, match="matches none of the presets"):
        restorer_spec(released)


def test_invalid_configurations_are_refused() -> None:
    with pytest.raises(ValueError, match="mirror"):
        DWFormer(emb_dims=(8, 16, 32, 8, 8))
    with pytest.raises(ValueError, match="ca_pooling"):
        DWFormer(ca_pooling="mean")
    with pytest.raises(ValueError, match="odd"):
        DWFormer(kernel_size=4)


# --- released checkpoints -----------------------------------------------------------


def test_official_names_map_onto_our_state_dict() -> None:
    own = set(_tiny().state_dict())
    for key in OFFICIAL_KEYS:
        assert DWFormer.official_key(key) in own, key


def _authors_format(model: DWFormer) -> dict[str, dict[str, torch.Tensor]]:
    return {"state_dict": {"module." + k: v.clone() for k, v in model.state_dict().items()}}


def test_official_checkpoint_loads_and_reproduces_the_outputs(tmp_path: Path) -> None:
    src = _tiny(seed=0)
    src.train()
    with torch.no_grad():
        src(_x(4, 32, 32, seed=5))  # non-trivial BatchNorm running statistics
    src.eval()
    path = tmp_path / "x.pth"
    torch.save(_authors_format(src), path)
    fresh = _tiny(seed=1)
    x = _x(2, 29, 31)
    with torch.no_grad():
        assert not torch.equal(fresh(x), src(x))
        loaded = load_official_checkpoint(fresh, path)
        assert torch.equal(fresh(x), src(x))
    assert {"module." + k for k in loaded} >= set(OFFICIAL_KEYS)


def test_wrongly_shaped_official_checkpoint_fails_naming_the_file(tmp_path: Path) -> None:
    ckpt = _authors_format(_tiny())
    ckpt["state_dict"]["module.block2.blocks.0.inter.2.weight"] = torch.zeros(24, 1, 3, 3)
    path = tmp_path / "x.pth"
    torch.save(ckpt, path)
    with pytest.raises(UdcGuardError, match=re.escape(str(path)) + ".*block2.blocks.0.inter.2.weight"):
        load_official_checkpoint(_tiny(seed=1), path)

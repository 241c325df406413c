"""Uformer: published size, window-confined attention, modulator, LeFF, released checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from udcguard.errors import UdcGuardError
from udcguard.io.checkpoints import load_official_checkpoint
from udcguard.models.base import build_restorer, num_parameters
from udcguard.models.uformer import LeWinBlock, Uformer

#: Parameter names of the authors' released Uformer-B checkpoints (``model.py``; trained with
#: DataParallel, hence ``module.``), one per kind of tensor.
RELEASED_KEYS = [
    "module.input_proj.proj.0.weight",
    "module.encoderlayer_0.blocks.0.norm1.weight",
    "module.encoderlayer_0.blocks.0.attn.relative_position_bias_table",
    "module.encoderlayer_0.blocks.0.attn.relative_position_index",
    "module.encoderlayer_1.blocks.1.attn.qkv.to_q.weight",
    "module.encoderlayer_2.blocks.7.attn.qkv.to_kv.bias",
    "module.encoderlayer_3.blocks.0.attn.proj.weight",
    "module.encoderlayer_0.blocks.0.mlp.linear1.0.weight",
    "module.encoderlayer_0.blocks.0.mlp.dwconv.0.weight",
    "module.encoderlayer_0.blocks.0.mlp.linear2.0.bias",
    "module.dowsample_3.conv.0.weight",
    "module.conv.blocks.1.norm2.bias",
    "module.upsample_0.deconv.0.weight",
    "module.decoderlayer_0.blocks.7.modulator.weight",
    "module.decoderlayer_3.blocks.0.attn.qkv.to_q.bias",
    "module.output_proj.proj.0.bias",
]


def _tiny(seed: int = 0) -> Uformer:
    torch.manual_seed(seed)
    model = build_restorer("uformer", size="tiny")
    assert isinstance(model, Uformer)
    return model.eval()


@pytest.fixture(scope="module")
def paper() -> Uformer:
    model = build_restorer("uformer", size="paper")
    assert isinstance(model, Uformer)
    return model


def test_paper_size_is_uformer_b(paper: Uformer) -> None:
    n = num_parameters(paper)
    assert abs(n - 50.88e6) / 50.88e6 < 0.10, n  # Uformer-B, 50.88 M in the paper
    assert n == 50_880_946
    assert paper.multiple == 128 and paper.levels == 4


def test_released_parameter_names_map_onto_ours(paper: Uformer) -> None:
    own = paper.state_dict()
    for key in RELEASED_KEYS:
        ours = Uformer.official_key(key)
        assert ours == key.removeprefix("module."), key
        assert ours in own, key
    assert paper.encoderlayer_0.blocks[0].attn.relative_position_bias_table.shape == (15 * 15, 1)
    assert paper.decoderlayer_0.blocks[0].modulator.weight.shape == (64, 512)


def _released_file(model: Uformer, path: Path) -> Path:
    """Save ``model`` as the authors' training script does: DataParallel names, epoch, optimizer."""
    state = {f"module.{k}": v.clone() for k, v in model.state_dict().items()}
    torch.save({"epoch": 250, "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}, path)
    return path


def test_released_checkpoint_loads_and_reproduces_the_outputs(tmp_path: Path) -> None:
    source, fresh = _tiny(seed=0), _tiny(seed=1)
    path = _released_file(source, tmp_path / "x.pth")
    x = torch.rand(1, 3, 40, 33, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert not torch.equal(fresh(x), source(x))
        loaded = load_official_checkpoint(fresh, path)
        assert torch.equal(fresh(x), source(x))
    assert set(loaded) == set(source.state_dict())


def test_released_checkpoint_with_a_wrong_shape_fails_naming_the_file(tmp_path: Path) -> None:
    source = _tiny()
    path = tmp_path / "x.pth"
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    state["module.encoderlayer_0.blocks.0.attn.qkv.to_q.weight"] = torch.zeros(3, 3)
    torch.save({"epoch": 1, "state_dict": state}, path)
    fresh = _tiny(seed=1)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(UdcGuardError, match=r"x\.pth.*to_q\.weight"):
        load_official_checkpoint(fresh, path)
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in before.items())  # untouched


# --- mechanism ----------------------------------------------------------------------


def _changed_tokens(block: LeWinBlock, h: int, w: int, pixel: tuple[int, int]) -> torch.Tensor:
    """(H, W) bool map of the attention-branch outputs that move when one token is perturbed."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, h * w, 16, generator=g)
    x2 = x.clone()
    x2[0, pixel[0] * w + pixel[1]] += 3.0 * torch.randn(16, generator=g)
    with torch.no_grad():
        diff = (block.attend(x2, h, w) - block.attend(x, h, w)).abs().amax(-1)  # (1, HW)
    return diff.view(h, w) > 1e-6


def test_attention_is_confined_to_its_window() -> None:
    torch.manual_seed(0)
    block = LeWinBlock(16, num_heads=2, win_size=8, shift_size=0, mlp_ratio=4.0, modulator=True).eval()
    changed = _changed_tokens(block, 24, 32, pixel=(9, 20))  # window (1, 2): rows 8-15, cols 16-23
    window = torch.zeros(24, 32, dtype=torch.bool)
    window[8:16, 16:24] = True
    assert torch.equal(changed, window)


def test_shifted_windows_move_the_attention_neighbourhood() -> None:
    torch.manual_seed(0)
    block = LeWinBlock(16, num_heads=2, win_size=8, shift_size=4, mlp_ratio=4.0, modulator=False).eval()
    changed = _changed_tokens(block, 24, 24, pixel=(9, 9))
    shifted = torch.zeros(24, 24, dtype=torch.bool)
    shifted[4:12, 4:12] = True  # the window rolled by -4 holds rows / cols 4 .. 11
    assert torch.equal(changed, shifted)
    # on a map of a single window the shift is skipped, as released for resolution <= win_size
    assert _changed_tokens(block, 8, 8, pixel=(0, 0)).all()


def test_full_block_spreads_one_pixel_beyond_the_window_through_leff() -> None:
    torch.manual_seed(0)
    block = LeWinBlock(16, num_heads=2, win_size=8, shift_size=0, mlp_ratio=4.0, modulator=False).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 24 * 24, 16, generator=g)
    x2 = x.clone()
    x2[0, 9 * 24 + 9] += 3.0 * torch.randn(16, generator=g)  # not constant: LayerNorm would remove it
    with torch.no_grad():
        changed = (block(x2, 24, 24) - block(x, 24, 24)).abs().amax(-1).view(24, 24) > 1e-6
    expected = torch.zeros(24, 24, dtype=torch.bool)
    expected[7:17, 7:17] = True  # the window plus the 3x3 depth-wise conv's reach
    assert torch.equal(changed, expected)


def test_modulator_lives_in_the_decoder_and_changes_the_output() -> None:
    model = _tiny()
    levels = model.levels
    for i in range(levels):
        for block in getattr(model, f"encoderlayer_{i}").blocks:
            assert block.modulator is None
    for block in model.conv.blocks:
        assert block.modulator is None
    for j in range(levels):
        for block in getattr(model, f"decoderlayer_{j}").blocks:
            assert isinstance(block.modulator, torch.nn.Embedding)
            assert block.modulator.weight.shape[0] == model.config["win_size"] ** 2
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = model(x)
        for j in range(levels):
            for block in getattr(model, f"decoderlayer_{j}").blocks:
                block.modulator.weight.zero_()
        assert (model(x) - y).abs().max() > 1e-5
    no_mod = Uformer(**{**Uformer.presets["tiny"], "modulator": False})
    assert num_parameters(model) - num_parameters(no_mod) == sum(
        64 * getattr(model, f"decoderlayer_{j}").blocks[0].norm1.weight.numel() for j in range(levels)
    )


def test_leff_has_a_depthwise_3x3_conv() -> None:
    model = _tiny()
    blocks = [m for m in model.modules() if isinstance(m, LeWinBlock)]
    assert len(blocks) == sum(model.config["depths"])
    for block in blocks:
        conv = block.mlp.dwconv[0]
        assert isinstance(conv, torch.nn.Conv2d)
        assert conv.kernel_size == (3, 3)
        assert conv.groups == conv.in_channels == conv.out_channels == 4 * block.norm1.weight.numel()


def test_sizes_and_odd_inputs() -> None:
    counts = [num_parameters(build_restorer("uformer", size=s)) for s in ("tiny", "small")]
    assert counts == [57_040, 791_552]
    model = _tiny()
    assert model.multiple == 32
    x = torch.rand(2, 3, 21, 70, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert model(x).shape == x.shape
    with pytest.raises(ValueError, match="num_heads"):
        Uformer(embed_dim=8, depths=[1, 1, 1], num_heads=[1, 3, 1])
    with pytest.raises(ValueError, match="odd length"):
        Uformer(depths=[1, 1])

"""Restormer: published size, channel attention (MDTA), gated feed-forward (GDFN), released checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from udcguard.errors import UdcGuardError
from udcguard.io.checkpoints import load_official_checkpoint
from udcguard.models.base import build_restorer, num_parameters
from udcguard.models.restormer import Attention, FeedForward, LayerNorm, Restormer

#: Parameter names of the authors' released checkpoints (``restormer_arch.py``, BasicSR's
#: ``{"params": state_dict}``), one per kind of tensor, indices valid for the paper preset.
RELEASED_KEYS = [
    "patch_embed.proj.weight",
    "encoder_level1.0.norm1.body.weight",
    "encoder_level1.0.norm1.body.bias",
    "encoder_level1.0.attn.temperature",
    "encoder_level1.0.attn.qkv.weight",
    "encoder_level1.0.attn.qkv_dwconv.weight",
    "encoder_level1.0.attn.project_out.weight",
    "encoder_level2.5.ffn.project_in.weight",
    "encoder_level3.0.ffn.dwconv.weight",
    "encoder_level3.5.ffn.project_out.weight",
    "down1_2.body.0.weight",
    "down3_4.body.0.weight",
    "latent.7.norm2.body.bias",
    "up4_3.body.0.weight",
    "reduce_chan_level3.weight",
    "decoder_level3.5.attn.temperature",
    "reduce_chan_level2.weight",
    "up2_1.body.0.weight",
    "decoder_level1.3.ffn.dwconv.weight",
    "refinement.3.attn.qkv_dwconv.weight",
    "output.weight",
]


def _tiny(seed: int = 0) -> Restormer:
    torch.manual_seed(seed)
    model = build_restorer("restormer", size="tiny")
    assert isinstance(model, Restormer)
    return model.eval()


@pytest.fixture(scope="module")
def paper() -> Restormer:
    model = build_restorer("restormer", size="paper")
    assert isinstance(model, Restormer)
    return model


def test_paper_size_matches_the_published_model(paper: Restormer) -> None:
    n = num_parameters(paper)
    assert abs(n - 26.13e6) / 26.13e6 < 0.10, n  # 26.13 M in the paper
    assert n == 26_126_644
    assert paper.multiple == 8


def test_released_parameter_names_map_onto_ours(paper: Restormer) -> None:
    own = paper.state_dict()
    for key in RELEASED_KEYS:
        assert Restormer.official_key(key) == key
        assert key in own, key
        assert Restormer.official_key(f"module.{key}") == key
    assert own["encoder_level1.0.attn.temperature"].shape == (1, 1, 1)
    assert own["latent.0.attn.temperature"].shape == (8, 1, 1)
    assert own["encoder_level1.0.ffn.project_in.weight"].shape == (2 * 127, 48, 1, 1)  # int(48 * 2.66) = 127
    assert "encoder_level1.0.attn.qkv.bias" not in own  # bias=False, as released


def _released_file(model: Restormer, path: Path) -> Path:
    """Save ``model`` as BasicSR does: ``{"params": state_dict}``."""
    torch.save({"params": {k: v.clone() for k, v in model.state_dict().items()}}, path)
    return path


def test_released_checkpoint_loads_and_reproduces_the_outputs(tmp_path: Path) -> None:
    source, fresh = _tiny(seed=0), _tiny(seed=1)
    with torch.no_grad():  # temperatures start at 1 and norms at identity: make every tensor differ
        for p in source.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = _released_file(source, tmp_path / "x.pth")
    x = torch.rand(1, 3, 29, 31, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert not torch.equal(fresh(x), source(x))
        loaded = load_official_checkpoint(fresh, path)
        assert torch.equal(fresh(x), source(x))
    assert set(loaded) == set(source.state_dict())


def test_released_checkpoint_with_a_wrong_shape_fails_naming_the_file(tmp_path: Path) -> None:
    state = dict(_tiny().state_dict())
    state["latent.0.attn.temperature"] = torch.ones(3, 1, 1)
    path = tmp_path / "x.pth"
    torch.save({"params": state}, path)
    with pytest.raises(UdcGuardError, match=r"x\.pth.*latent\.0\.attn\.temperature"):
        load_official_checkpoint(_tiny(seed=1), path)


# --- mechanism ----------------------------------------------------------------------


def test_mdta_attends_across_channels_independently_of_the_image_size() -> None:
    torch.manual_seed(0)
    attn = Attention(dim=16, num_heads=4, bias=False).eval()
    g = torch.Generator().manual_seed(1)
    for h, w in [(8, 8), (23, 41)]:
        x = torch.randn(2, 16, h, w, generator=g)
        with torch.no_grad():
            a = attn.attention_map(x)
            assert a.shape == (2, 4, 4, 4)  # (B, heads, C/heads, C/heads), not (HW x HW)
            torch.testing.assert_close(a.sum(-1), torch.ones(2, 4, 4))
            # q, k are L2-normalised over the pixels (no biases): the map ignores the input's scale
            torch.testing.assert_close(attn.attention_map(5.0 * x), a)
            assert attn(x).shape == x.shape


def test_mdta_temperature_sharpens_the_channel_attention() -> None:
    torch.manual_seed(0)
    attn = Attention(dim=8, num_heads=2, bias=False).eval()
    x = torch.randn(1, 8, 12, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        soft = attn.attention_map(x)
        attn.temperature.fill_(50.0)
        sharp = attn.attention_map(x)
    assert sharp.amax(-1).mean() > soft.amax(-1).mean() + 0.1


def test_mdta_matches_the_written_out_formula() -> None:
    torch.manual_seed(0)
    attn = Attention(dim=8, num_heads=2, bias=False).eval()
    x = torch.randn(1, 8, 6, 7, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        q, k, v = attn.qkv_dwconv(attn.qkv(x)).chunk(3, dim=1)  # (1, 8, 6, 7) each
        q, k, v = (t.reshape(1, 2, 4, 42) for t in (q, k, v))  # (B, heads, C/heads, HW)
        a = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1) * attn.temperature).softmax(-1)
        expected = attn.project_out((a @ v).reshape(1, 8, 6, 7))
        torch.testing.assert_close(attn(x), expected)


def test_gdfn_gate_half_controls_the_output() -> None:
    torch.manual_seed(0)
    ffn = FeedForward(dim=8, ffn_expansion_factor=2.66, bias=False).eval()
    hidden = int(8 * 2.66)
    assert ffn.dwconv.groups == ffn.dwconv.in_channels == 2 * hidden  # depth-wise
    x = torch.randn(1, 8, 10, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert ffn(x).abs().max() > 1e-4
        for half in (slice(0, hidden), slice(hidden, 2 * hidden)):  # GELU gate, then the value
            gated = FeedForward(dim=8, ffn_expansion_factor=2.66, bias=False).eval()
            gated.load_state_dict(ffn.state_dict())
            gated.dwconv.weight[half] = 0.0
            assert torch.equal(gated(x), torch.zeros_like(x))


def test_layernorm_variants() -> None:
    x = torch.randn(2, 6, 5, 4, generator=torch.Generator().manual_seed(0))
    with_bias, bias_free = LayerNorm(6, "WithBias"), LayerNorm(6, "BiasFree")
    ref = F.layer_norm(x.permute(0, 2, 3, 1), (6,)).permute(0, 3, 1, 2)
    torch.testing.assert_close(with_bias(x), ref)
    torch.testing.assert_close(bias_free(x), x / x.var(1, keepdim=True, unbiased=False).add(1e-5).sqrt())
    assert [n for n, _ in bias_free.named_parameters()] == ["body.weight"]
    model = Restormer(**{**Restormer.presets["tiny"], "layernorm_type": "BiasFree"})
    assert "encoder_level1.0.norm1.body.bias" not in model.state_dict()
    with pytest.raises(ValueError, match="layernorm_type"):
        Restormer(layernorm_type="Batch")


def test_sizes_and_odd_inputs() -> None:
    counts = [num_parameters(build_restorer("restormer", size=s)) for s in ("tiny", "small")]
    assert counts == [119_855, 872_209]
    model = _tiny()
    x = torch.rand(2, 3, 13, 30, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert model(x).shape == x.shape
    with pytest.raises(ValueError, match="heads"):
        Restormer(dim=6, heads=[4, 2, 4, 8])  # 4 does not divide 6

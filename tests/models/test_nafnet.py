"""NAFNet: activation-free mechanism, paper size, and loading the authors' released checkpoints."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from udcguard.errors import UdcGuardError
from udcguard.io.checkpoints import load_official_checkpoint
from udcguard.models.base import build_restorer, num_parameters, restorer_spec
from udcguard.models.nafnet import LayerNorm2d, NAFBlock, NAFNet, SimpleGate

#: Parameter names exactly as in the released checkpoints (BasicSR ``{"params": ...}``,
#: github.com/megvii-research/NAFNet, basicsr/models/archs/NAFNet_arch.py).
OFFICIAL_KEYS = [
    "intro.weight",
    "intro.bias",
    "encoders.0.0.norm1.weight",
    "encoders.0.0.conv1.weight",
    "encoders.0.0.conv2.weight",
    "encoders.0.0.sca.1.weight",
    "encoders.0.0.sca.1.bias",
    "encoders.0.0.beta",
    "downs.0.weight",
    "middle_blks.0.beta",
    "middle_blks.0.gamma",
    "ups.0.0.weight",
    "decoders.0.0.conv4.weight",
    "decoders.0.0.norm2.bias",
    "ending.weight",
    "ending.bias",
]

#: Names of nonlinear activation functions that must not appear in the traced graph.
ACTIVATIONS = {
    "relu", "relu_", "relu6", "gelu", "sigmoid", "tanh", "softmax", "log_softmax", "silu", "leaky_relu",
    "prelu", "elu", "selu", "celu", "softplus", "softsign", "mish", "hardtanh", "hardswish", "hardsigmoid",
    "glu", "logsigmoid", "exp",
}  # fmt: skip


def _tiny(seed: int = 0, *, active: bool = True) -> NAFNet:
    """Tiny NAFNet in eval mode; ``active`` gives beta / gamma random values (they start at 0)."""
    torch.manual_seed(seed)
    model = build_restorer("nafnet", size="tiny").eval()
    assert isinstance(model, NAFNet)
    if active:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(("beta", "gamma")):
                    p.normal_(0.0, 0.5)
    return model


def _x(b: int = 1, h: int = 32, w: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


# --- nonlinear activation free -------------------------------------------------------


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_no_activation_module_anywhere(size: str) -> None:
    model = build_restorer("nafnet", size=size)
    kinds = {type(m) for m in model.modules()}
    assert not [k for k in kinds if k.__module__ == "torch.nn.modules.activation"], kinds
    assert SimpleGate in kinds and LayerNorm2d in kinds and nn.PixelShuffle in kinds


def test_traced_graph_has_no_activation_function() -> None:
    model = _tiny()

    class Body(nn.Module):  # the network without the base class's data-dependent padding
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net._forward(x, None)

    graph = torch.fx.symbolic_trace(Body())
    names = set()
    for node in graph.graph.nodes:
        if node.op in ("call_function", "call_method"):
            names.add(node.target if isinstance(node.target, str) else node.target.__name__)
        elif node.op == "call_module":
            sub = graph.get_submodule(node.target)
            assert type(sub).__module__ != "torch.nn.modules.activation", node.target
    assert "mul" in names and "chunk" in names  # gates and channel attention are products
    assert not names & ACTIVATIONS, names & ACTIVATIONS
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(graph(x), model(x) - x)


def test_simple_gate_is_the_product_of_the_two_halves() -> None:
    x = torch.randn(2, 6, 5, 7)
    torch.testing.assert_close(SimpleGate()(x), x[:, :3] * x[:, 3:])
    # bilinear: no activation, scaling the input by t scales the output by t ** 2
    torch.testing.assert_close(SimpleGate()(3.0 * x), 9.0 * SimpleGate()(x))


def test_sca_is_a_per_channel_scale_from_the_global_mean() -> None:
    torch.manual_seed(0)
    block = NAFBlock(4)  # dw channels 8, gated to 4: SCA works on 4 channels
    u = torch.randn(2, 4, 6, 7)
    conv = block.sca[1]
    scale = block.sca(u)
    assert scale.shape == (2, 4, 1, 1)
    expected = F.conv2d(u.mean(dim=(2, 3), keepdim=True), conv.weight, conv.bias)  # no sigmoid
    torch.testing.assert_close(scale, expected)
    # global: shuffling the pixels changes nothing
    perm = torch.randperm(6 * 7)
    shuffled = u.flatten(2)[..., perm].view_as(u)
    torch.testing.assert_close(block.sca(shuffled), scale)


def test_layer_norm_2d_normalises_each_pixel_over_channels() -> None:
    norm = LayerNorm2d(5)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 5, 4, 3)
    ref = F.layer_norm(x.permute(0, 2, 3, 1), (5,), norm.weight, norm.bias, eps=1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(norm(x), ref)


def test_block_follows_the_published_equations() -> None:
    torch.manual_seed(0)
    block = NAFBlock(4)
    with torch.no_grad():
        x = torch.randn(2, 4, 8, 8)
        torch.testing.assert_close(block(x), x)  # beta = gamma = 0: every block starts as identity
        block.beta.normal_()
        block.gamma.normal_()
        u = block.conv2(block.conv1(block.norm1(x)))
        u = u[:, :4] * u[:, 4:]
        u = u * F.conv2d(u.mean(dim=(2, 3), keepdim=True), block.sca[1].weight, block.sca[1].bias)
        y = x + block.beta * block.conv3(u)
        v = block.conv4(block.norm2(y))
        z = y + block.gamma * block.conv5(v[:, :4] * v[:, 4:])
        torch.testing.assert_close(block(x), z)
    assert block.conv2.groups == block.conv2.in_channels == 8  # depth-wise 3x3
    assert block.conv2.kernel_size == (3, 3)


def test_u_shape_adds_skips_and_pads_to_its_multiple() -> None:
    model = _tiny()
    assert model.multiple == 2 ** len(model.encoders) == 8
    for i, dec in enumerate(model.decoders):
        enc = model.encoders[len(model.encoders) - 1 - i]
        # addition keeps the encoder width (a concatenation would double it)
        assert dec[0].conv1.in_channels == enc[0].conv1.in_channels
        assert model.ups[i][0].out_channels == 4 * dec[0].conv1.in_channels
    x = _x(1, 37, 53)
    with torch.no_grad():
        assert model(x).shape == x.shape


# --- sizes ------------------------------------------------------------------------


def test_sizes() -> None:
    counts = {s: num_parameters(build_restorer("nafnet", size=s)) for s in ("tiny", "small")}
    assert counts == {"tiny": 75_355, "small": 438_387}


def test_paper_size_is_the_released_sidd_width32_model() -> None:
    with torch.device("meta"):
        model = NAFNet(**NAFNet.presets["paper"])
    # options/train/SIDD/NAFNet-width32.yml: width 32, enc [2, 2, 4, 8], middle 12, dec [2, 2, 2, 2]
    # the authors' code builds 29,159,715 parameters for it (no count is printed in the paper)
    assert num_parameters(model) == 29_159_715
    assert model.multiple == 16
    assert restorer_spec(model) == {"arch": "nafnet", "size": "paper", "cond_dim": 0}


# --- released checkpoints -----------------------------------------------------------


def test_official_names_map_onto_our_state_dict() -> None:
    own = set(_tiny().state_dict())
    for key in OFFICIAL_KEYS:
        assert NAFNet.official_key(key) in own, key
        assert NAFNet.official_key("module." + key) in own, key


def test_official_checkpoint_loads_and_reproduces_the_outputs(tmp_path: Path) -> None:
    src = _tiny(seed=0)
    path = tmp_path / "x.pth"
    torch.save({"params": {k: v.clone() for k, v in src.state_dict().items()}}, path)
    fresh = _tiny(seed=1)
    x = _x(2, 29, 31)
    with torch.no_grad():
        assert not torch.equal(fresh(x), src(x))
        loaded = load_official_checkpoint(fresh, path)
        assert torch.equal(fresh(x), src(x))
    assert set(loaded) == set(src.state_dict()) and set(OFFICIAL_KEYS) <= set(loaded)


def test_wrongly_shaped_official_checkpoint_fails_naming_the_file(tmp_path: Path) -> None:
    state = {k: v.clone() for k, v in _tiny().state_dict().items()}
    state["encoders.0.0.sca.1.weight"] = torch.zeros(3, 3, 1, 1)
    path = tmp_path / "x.pth"
    torch.save({"params": state}, path)
    model = _tiny(seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UdcGuardError, match=re.escape(str(path)) + ".*encoders.0.0.sca.1.weight"):
        load_official_checkpoint(model, path)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # untouched

"""Restorers: invariants looped over every registry entry (tiny presets), plus mechanism tests."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from udcguard.errors import UnknownNameError
from udcguard.models.discnet import dynamic_conv_unfold
from udcguard.models import (
    RESTORERS,
    SIZES,
    DISCNet,
    Restorer,
    build_restorer,
    dynamic_conv,
    num_parameters,
    restorer_spec,
)

ARCHS = RESTORERS.names()
D = 5  # kernel-code length


def _tiny(arch: str, seed: int = 0) -> Restorer:
    torch.manual_seed(seed)
    return build_restorer(arch, size="tiny", cond_dim=D).eval()


def _inputs(b: int, h: int, w: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g), torch.randn(b, D, generator=g)


def test_registry_lists_the_architectures() -> None:
    assert set(ARCHS) == {"unet", "discnet", "uformer", "udcunet", "bnudc", "dwformer", "restormer", "nafnet"}
    with pytest.raises(UnknownNameError, match=r"valid: bnudc, discnet, dwformer, nafnet, restormer, udcunet, uformer, unet"):
        build_restorer("disnet")


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("shape", [(1, 3, 37, 53), (2, 3, 64, 64), (1, 3, 3, 2)])
def test_output_shape_equals_input_shape(arch: str, shape: tuple[int, ...]) -> None:
    model = _tiny(arch)
    x, c = _inputs(shape[0], *shape[2:])
    with torch.no_grad():
        y = model(x, c)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_gradients_reach_the_input(arch: str) -> None:
    model = _tiny(arch)
    x, c = _inputs(1, 37, 53)
    x.requires_grad_(True)
    y = model(x, c)
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0
    # more than the residual's identity path: the network itself passes gradient to x
    identity_only = 2 * y.detach() / y.numel()
    assert (x.grad - identity_only).abs().max() > 1e-3 * identity_only.abs().max()


@pytest.mark.parametrize("arch", ARCHS)
def test_deterministic_in_eval_mode(arch: str) -> None:
    model = _tiny(arch)
    x, c = _inputs(2, 40, 33)
    with torch.no_grad():
        assert torch.equal(model(x, c), model(x, c))


@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_round_trip_and_spec_rebuild(arch: str) -> None:
    model = _tiny(arch, seed=0)
    spec = restorer_spec(model)
    assert spec == {"arch": arch, "size": "tiny", "cond_dim": D if model.conditional else 0}
    fresh = build_restorer(**spec).eval()
    torch.manual_seed(99)
    x, c = _inputs(1, 29, 31)
    with torch.no_grad():
        assert not torch.equal(fresh(x, c), model(x, c))  # differently initialised
        fresh.load_state_dict(model.state_dict())
        assert torch.equal(fresh(x, c), model(x, c))
    assert restorer_spec(fresh) == spec


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_forward_backward_is_fast(arch: str) -> None:
    """Under a second of CPU time on one thread (process time: other load on the machine does not count)."""
    model = _tiny(arch).train()
    x, c = _inputs(1, 64, 64)
    x.requires_grad_(True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def step() -> float:
        t0 = time.process_time()
        model(x, c).square().mean().backward()
        return time.process_time() - t0

    try:
        step()  # warm-up
        best = min(step() for _ in range(3))
    finally:
        torch.set_num_threads(threads)
    assert best < 1.0, f"{arch} tiny forward+backward took {best:.3f} s of CPU time"


@pytest.mark.parametrize("arch", ARCHS)
def test_parameter_counts_grow_with_size(arch: str) -> None:
    counts = [num_parameters(build_restorer(arch, size=s, cond_dim=D)) for s in SIZES]
    assert counts == sorted(set(counts)), counts
    assert 30_000 < counts[0] < 200_000


def test_discnet_paper_size_matches_the_released_model() -> None:
    # released code (nf 32, kpn_sz 5, multi-scale, img-psf), six PReLU slopes included
    assert num_parameters(build_restorer("discnet", size="paper", cond_dim=5)) == 3_804_617


def test_unknown_size_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="tiny, small, paper"):
        build_restorer("unet", size="huge")


def test_spec_of_a_hand_built_model_names_its_preset_or_fails() -> None:
    assert restorer_spec(DISCNet(cond_dim=3, **DISCNet.presets["small"]))["size"] == "small"
    with pytest.raises(ValueError, match="matches none of the presets"):
        restorer_spec(DISCNet(nf=4, num_blocks=0))


def test_config_is_the_constructor_arguments_with_defaults() -> None:
    import inspect

    for arch in ARCHS:
        cls = RESTORERS.get(arch)
        model = _tiny(arch)
        names = [n for n in inspect.signature(cls.__init__).parameters if n != "self"]
        assert list(model.config) == names, arch
        for key, value in cls.presets["tiny"].items():
            assert model.config[key] == value, (arch, key)
        if cls.conditional:
            assert model.config["cond_dim"] == D
    # positional arguments, a list where the preset has a tuple, and a subclass that chains __init__
    unet = RESTORERS.get("unet")(width=8, depth=2)
    assert unet.config == {"channels": 3, "width": 8, "depth": 2}

    class Wide(unet.__class__):
        def __init__(self, extra: int = 7) -> None:
            super().__init__(width=8 * extra, depth=1)

    assert Wide(2).config == {"extra": 2} and Wide().config == {"extra": 7}
    nafnet = RESTORERS.get("nafnet")
    listed = {k: list(v) if isinstance(v, tuple) else v for k, v in nafnet.presets["tiny"].items()}
    assert restorer_spec(nafnet(**listed))["size"] == "tiny"


# --- conditioning -------------------------------------------------------------------


def test_discnet_needs_a_well_shaped_code() -> None:
    model = _tiny("discnet")
    x, c = _inputs(2, 16, 16)
    with pytest.raises(ValueError, match="DISCNet.*cond"):
        model(x)
    with pytest.raises(ValueError, match=r"DISCNet.*\(2, 5\)"):
        model(x, c[:1])
    with pytest.raises(ValueError, match=r"\(2, 5\)"):
        model(x, c[:, :3])


def test_unet_ignores_cond() -> None:
    model = _tiny("unet")
    x, c = _inputs(1, 24, 24)
    with torch.no_grad():
        y = model(x)
        assert torch.equal(model(x, c), y)
        assert torch.equal(model(x, torch.zeros(7)), y)


def test_discnet_output_depends_on_the_kernel_code() -> None:
    model = _tiny("discnet")
    x, c = _inputs(1, 32, 32)
    with torch.no_grad():
        y1, y2 = model(x, c), model(x, c + 1.0)
    assert (y1 - y2).abs().max() > 1e-5


def test_discnet_code_gradient_flows() -> None:
    model = _tiny("discnet")
    x, c = _inputs(1, 16, 16)
    c.requires_grad_(True)
    model(x, c).sum().backward()
    assert c.grad is not None and c.grad.abs().sum() > 0


# --- dynamic skip connections -------------------------------------------------------


def test_dynamic_filters_vary_in_space_and_per_scale() -> None:
    model = _tiny("discnet")
    nf, k = model.config["nf"], model.config["kernel_size"]
    x, c = _inputs(1, 64, 64)
    with torch.no_grad():
        feats, filters = model.dynamic_filters(x, c)
    assert [f.shape[1] for f in feats] == [nf, 2 * nf, 4 * nf]
    for s, (f, g) in enumerate(zip(feats, filters, strict=True)):
        assert g.shape == (1, f.shape[1] * k * k, 64 >> s, 64 >> s)
    g0 = filters[0][0]  # (C * k * k, H, W)
    assert (g0[:, 5, 5] - g0[:, 40, 21]).abs().max() > 1e-4
    # filters respond to the code too
    with torch.no_grad():
        _, other = model.dynamic_filters(x, c + 1.0)
    assert (other[0] - filters[0]).abs().max() > 1e-5


@pytest.mark.parametrize("size", ["tiny", "small", "paper"])
def test_dynamic_filters_start_near_the_identity(size: str) -> None:
    torch.manual_seed(0)
    model = build_restorer("discnet", size=size, cond_dim=5)
    k2 = model.config["kernel_size"] ** 2
    x, c = _inputs(1, 32, 32)
    with torch.no_grad():
        _, filters = model.dynamic_filters(x, c)
    for g in filters:  # (1, C * k * k, H, W)
        taps = g[0].reshape(-1, k2, *g.shape[-2:])  # (C, k * k, H, W)
        centre = taps[:, k2 // 2]
        others = torch.cat([taps[:, : k2 // 2], taps[:, k2 // 2 + 1 :]], dim=1)
        assert 0.8 < centre.mean() < 1.2 and others.abs().mean() < 0.2
        assert centre.std() > 0  # still image-dependent


def test_dynamic_conv_with_constant_filters_is_a_depthwise_conv() -> None:
    g = torch.Generator().manual_seed(0)
    b, ch, h, w, k = 2, 4, 9, 11, 3
    feat = torch.randn(b, ch, h, w, generator=g)
    weight = torch.randn(ch, 1, k, k, generator=g)
    filters = weight.reshape(1, ch * k * k, 1, 1).expand(b, -1, h, w)
    ref = F.conv2d(F.pad(feat, (1, 1, 1, 1), mode="replicate"), weight, groups=ch)
    torch.testing.assert_close(dynamic_conv(feat, filters, k), ref)
    identity = torch.zeros(ch, k * k)
    identity[:, k * k // 2] = 1
    ident = identity.reshape(1, -1, 1, 1).expand(b, -1, h, w)
    torch.testing.assert_close(dynamic_conv(feat, ident, k), feat)


def test_dynamic_conv_is_per_pixel() -> None:
    feat = torch.arange(16.0).reshape(1, 1, 4, 4)
    filters = torch.zeros(1, 9, 4, 4)
    filters[0, 4] = 1.0  # identity everywhere ...
    filters[0, 4, 1, 2] = 0.0
    filters[0, 5, 1, 2] = 1.0  # ... except (1, 2), which takes its right neighbour
    out = dynamic_conv(feat, filters, 3)
    expected = feat.clone()
    expected[0, 0, 1, 2] = feat[0, 0, 1, 3]
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("k", [3, 5])
def test_dynamic_conv_gradients_match_finite_differences(k: int) -> None:
    """The hand-written backward pass (taps, not unfold) against autograd's numerical gradients."""
    g = torch.Generator().manual_seed(k)
    feat = torch.randn(2, 3, 5, 6, generator=g, dtype=torch.double, requires_grad=True)
    filters = torch.randn(2, 3 * k * k, 5, 6, generator=g, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: dynamic_conv(a, b, k), (feat, filters))


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_dynamic_conv_matches_the_unfold_form(layout: torch.memory_format) -> None:
    """Values and both gradients equal the released code's unfold form, in fp32 and bf16, any layout."""
    g = torch.Generator().manual_seed(1)
    feat0 = torch.randn(2, 4, 8, 10, generator=g).contiguous(memory_format=layout)
    fil0 = torch.randn(2, 36, 8, 10, generator=g).contiguous(memory_format=layout)
    up = torch.randn(2, 4, 8, 10, generator=g)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 3e-2)):
        outs, grads = [], []
        for fn in (dynamic_conv, dynamic_conv_unfold):
            feat = feat0.to(dtype).detach().requires_grad_()
            fil = fil0.to(dtype).detach().requires_grad_()
            out = fn(feat, fil, 3)
            (out.float() * up).sum().backward()
            assert out.dtype == dtype and feat.grad.dtype == dtype and fil.grad.dtype == dtype
            outs.append(out.float())
            grads.append((feat.grad.float(), fil.grad.float()))
        torch.testing.assert_close(outs[0], outs[1], rtol=tol, atol=tol * 4)
        for a, b in zip(grads[0], grads[1], strict=True):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol * 4)


def test_dynamic_conv_refuses_filters_of_the_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"filters \(1, 18, 4, 4\) do not fit features \(1, 3, 4, 4\)"):
        dynamic_conv(torch.zeros(1, 3, 4, 4), torch.zeros(1, 18, 4, 4), 3)


def test_released_code_variant_runs() -> None:
    """filter_input="cond", k = 5: the released structure, at a small width."""
    torch.manual_seed(0)
    model = DISCNet(cond_dim=D, nf=4, num_blocks=1, kernel_size=5, filter_input="cond")
    x, c = _inputs(1, 21, 18)
    x.requires_grad_(True)
    y = model(x, c)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="filter_input"):
        DISCNet(filter_input="image")

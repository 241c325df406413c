"""LPIPS: the formula against a NumPy re-implementation, weight loading in the torchvision
and lpips package formats (random tensors written by the test), errors, and lpips_rand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from udcguard.errors import UdcGuardError
from udcguard.metrics import LPIPS, build_lpips, lpips_per_image

#: torchvision's alexnet().features / vgg16().features conv indices and shapes (out, in, k).
ALEX_CONVS = {0: (64, 3, 11), 3: (192, 64, 5), 6: (384, 192, 3), 8: (256, 384, 3), 10: (256, 256, 3)}
VGG16_CONVS = dict(
    zip(
        (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
        [(64, 3, 3), (64, 64, 3), (128, 64, 3), (128, 128, 3), (256, 128, 3), (256, 256, 3), (256, 256, 3),
         (512, 256, 3), (512, 512, 3), (512, 512, 3), (512, 512, 3), (512, 512, 3), (512, 512, 3)],
        strict=True,
    )
)
LIN_CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
SHIFT = np.array([-0.030, -0.088, -0.188]).reshape(1, 3, 1, 1)
SCALE = np.array([0.458, 0.448, 0.450]).reshape(1, 3, 1, 1)


def _torchvision_state(convs: dict[int, tuple[int, int, int]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random He-scaled weights under torchvision keys, plus classifier keys to be ignored."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for i, (co, ci, k) in convs.items():
        state[f"features.{i}.weight"] = torch.randn(co, ci, k, k, generator=g) * (2.0 / (ci * k * k)) ** 0.5
        state[f"features.{i}.bias"] = 0.1 * torch.randn(co, generator=g)
    state["classifier.1.weight"] = torch.randn(7, 5, generator=g)
    return state


def _lin_state(net: str, seed: int = 1) -> dict[str, torch.Tensor]:
    """The lpips package's lin-weights format: lin{l}.model.1.weight (1, C, 1, 1), >= 0."""
    g = torch.Generator().manual_seed(seed)
    return {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for i, c in enumerate(LIN_CHANNELS[net])}


@pytest.fixture(scope="module")
def alex_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("lpips")
    backbone, lin = d / "alexnet.pth", d / "alex_lin.pth"
    torch.save(_torchvision_state(ALEX_CONVS), backbone)
    torch.save(_lin_state("alex"), lin)
    return backbone, lin


@pytest.fixture(scope="module")
def alex(alex_files: tuple[Path, Path]) -> LPIPS:
    name, module = build_lpips(*alex_files)
    assert name == "lpips"
    return module


def _images(b: int = 3, size: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(b, 3, size, size, generator=g)
    return a, (a + 0.2 * torch.randn(a.shape, generator=g)).clamp(0, 1)


def _numpy_lpips(fa: list[torch.Tensor], fb: list[torch.Tensor], lins: list[np.ndarray]) -> np.ndarray:
    """The LPIPS formula in float64 NumPy on given features: (B,)."""
    total = 0.0
    for xa, xb, w in zip(fa, fb, lins, strict=True):
        xa, xb = xa.double().numpy(), xb.double().numpy()
        na = xa / (np.sqrt((xa**2).sum(axis=1, keepdims=True)) + 1e-10)
        nb = xb / (np.sqrt((xb**2).sum(axis=1, keepdims=True)) + 1e-10)
        d = ((na - nb) ** 2 * w.reshape(1, -1, 1, 1)).sum(axis=1)  # (B, h, w)
        total = total + d.mean(axis=(1, 2))
    return np.asarray(total)


def test_matches_numpy_formula(alex: LPIPS, alex_files: tuple[Path, Path]) -> None:
    a, b = _images()
    with torch.no_grad():
        fa, fb, value = alex.taps(a), alex.taps(b), alex(a, b)
    assert [f.shape[1] for f in fa] == list(LIN_CHANNELS["alex"])
    lins = [w.numpy() for w in _lin_state("alex").values()]
    expected = _numpy_lpips(fa, fb, lins)
    assert value.shape == (3,) and (expected > 0).all()
    np.testing.assert_allclose(value.numpy(), expected, rtol=1e-5, atol=1e-7)


def test_input_mapping_and_first_layer(alex: LPIPS) -> None:
    """Tap 0 = relu(conv0(((2x - 1) - shift) / scale)), conv0 from the torchvision keys."""
    a, _ = _images(b=2)
    state = _torchvision_state(ALEX_CONVS)
    z = torch.from_numpy(((2 * a.double().numpy() - 1) - SHIFT) / SCALE).float()
    ref = F.relu(F.conv2d(z, state["features.0.weight"], state["features.0.bias"], stride=4, padding=2))
    with torch.no_grad():
        assert torch.allclose(alex.taps(a)[0], ref, atol=1e-5)


def test_identity_symmetry_and_per_image(alex: LPIPS) -> None:
    a, b = _images()
    with torch.no_grad():
        assert torch.equal(alex(a, a), torch.zeros(3))
        assert torch.allclose(alex(a, b), alex(b, a), rtol=1e-6, atol=1e-8)
        one = alex(a[1:2], b[1:2])
        assert torch.allclose(alex(a, b)[1:2], one, rtol=1e-5)
    got = lpips_per_image(alex, a, b)
    assert got.shape == (3,) and not got.requires_grad and torch.allclose(got, alex(a, b).detach())
    assert alex(a.double(), b.double()).dtype == torch.float64


def test_weights_load_as_written(alex: LPIPS, tmp_path: Path) -> None:
    state, lin = _torchvision_state(ALEX_CONVS), _lin_state("alex")
    assert torch.equal(alex.features[3].weight, state["features.3.weight"])
    assert torch.equal(alex.features[10].bias, state["features.10.bias"])
    assert torch.equal(alex.lin2.model[1].weight, lin["lin2.model.1.weight"])
    assert set(alex.state_dict()) == {f"features.{i}.{p}" for i in ALEX_CONVS for p in ("weight", "bias")} | set(lin)
    # .safetensors and in-memory state_dicts load the same
    save_file(state, str(tmp_path / "alexnet.safetensors"))
    save_file(lin, str(tmp_path / "lin.safetensors"))
    a, b = _images(b=2)
    from_st = LPIPS(tmp_path / "alexnet.safetensors", tmp_path / "lin.safetensors")
    from_mem = LPIPS(state, lin)
    with torch.no_grad():
        assert torch.equal(from_st(a, b), alex(a, b)) and torch.equal(from_mem(a, b), alex(a, b))


def test_vgg16_loads_torchvision_keys() -> None:
    state, lin = _torchvision_state(VGG16_CONVS), _lin_state("vgg")
    name, vgg = build_lpips(state, lin, net="vgg16")
    assert name == "lpips" and vgg.net == "vgg"
    assert torch.equal(vgg.features[28].weight, state["features.28.weight"])
    a, b = _images(b=2, size=16)
    with torch.no_grad():
        fa, fb, value = vgg.taps(a), vgg.taps(b), vgg(a, b)
    assert [f.shape[1] for f in fa] == list(LIN_CHANNELS["vgg"]) and fa[-1].shape[-1] == 1
    expected = _numpy_lpips(fa, fb, [w.numpy() for w in lin.values()])
    np.testing.assert_allclose(value.numpy(), expected, rtol=1e-5, atol=1e-7)


def test_frozen_and_gradients(alex: LPIPS) -> None:
    assert all(not p.requires_grad for p in alex.parameters())
    alex.train()
    assert not alex.training
    a, b = _images(b=2)
    x = a.clone().requires_grad_(True)
    alex(x, b).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in alex.parameters())


def test_lpips_rand_is_named_and_deterministic() -> None:
    rng = torch.get_rng_state()
    name1, m1 = build_lpips()
    name2, m2 = build_lpips()
    assert torch.equal(torch.get_rng_state(), rng)  # global RNG untouched
    assert name1 == name2 == "lpips_rand" and m1.name == "lpips_rand" and not m1.pretrained
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert all(torch.equal(lin.weight, torch.ones_like(lin.weight)) for lin in m1.lins)
    a, b = _images()
    with torch.no_grad():
        assert torch.equal(m1(a, b), m2(a, b)) and (m1(a, b) > 0).all()
    assert build_lpips(net="vgg")[0] == "lpips_rand"
    assert not torch.equal(LPIPS(seed=1).features[0].weight, m1.features[0].weight)


def test_errors_name_the_file(alex_files: tuple[Path, Path], tmp_path: Path) -> None:
    backbone, lin = alex_files
    missing = tmp_path / "nope.pth"
    with pytest.raises(UdcGuardError, match="nope.pth: weights file not found"):
        build_lpips(missing, lin)
    with pytest.raises(UdcGuardError, match="nope.pth: weights file not found"):
        build_lpips(backbone, missing)
    # alexnet weights for the vgg backbone: shape mismatch names the file and key
    with pytest.raises(UdcGuardError, match=r"alexnet\.pth: features\.0\.weight has shape \(64, 3, 11, 11\)"):
        build_lpips(backbone, lin, net="vgg")
    # alex lin weights for vgg (lin1: 192 vs 128 channels)
    vgg_file = tmp_path / "vgg16.pth"
    torch.save(_torchvision_state(VGG16_CONVS), vgg_file)
    with pytest.raises(UdcGuardError, match=r"alex_lin\.pth: lin1\.model\.1\.weight has shape"):
        build_lpips(vgg_file, lin, net="vgg")
    # a backbone file where the lins belong, and keys missing
    with pytest.raises(UdcGuardError, match=r"alex_lin\.pth: no 'features\.0\.weight'"):
        build_lpips(lin, lin)
    with pytest.raises(UdcGuardError, match=r"alexnet\.pth: no 'lin0\.model\.1\.weight'"):
        build_lpips(backbone, backbone)
    neg = {k: -v for k, v in _lin_state("alex").items()}
    neg_file = tmp_path / "neg_lin.pth"
    torch.save(neg, neg_file)
    with pytest.raises(UdcGuardError, match="neg_lin.pth: lin0.model.1.weight has negative"):
        build_lpips(backbone, neg_file)
    with pytest.raises(UdcGuardError, match="without lin weights"):
        build_lpips(backbone)
    with pytest.raises(UdcGuardError, match="without backbone weights"):
        build_lpips(None, lin)
    with pytest.raises(UdcGuardError, match="unknown LPIPS backbone 'squeeze'"):
        build_lpips(net="squeeze")


def test_input_validation(alex: LPIPS) -> None:
    a, b = _images(size=30)
    with pytest.raises(ValueError, match="at least 31x31"):
        alex(a, b)
    a, b = _images()
    with pytest.raises(ValueError, match="shapes differ"):
        alex(a, b[:2])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        alex(a[:, :1], b[:, :1])


def test_unit_normalisation_gradient_is_finite_at_zero_features() -> None:
    """ReLU features can be 0 over all channels at a pixel: no NaN gradient there."""
    from udcguard.metrics.lpips import _unit

    f = torch.zeros(1, 4, 2, 2)
    f[0, :, 0, 0] = torch.tensor([1.0, 2.0, 0.0, 2.0])
    f.requires_grad_(True)
    (_unit(f) * torch.arange(16.0).view(1, 4, 2, 2)).sum().backward()
    assert f.grad is not None and torch.isfinite(f.grad).all()
    assert torch.allclose(_unit(f.detach())[0, :, 0, 0], torch.tensor([1.0, 2.0, 0.0, 2.0]) / 3)

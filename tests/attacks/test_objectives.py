"""Objectives: SSIM against scikit-image, LPIPS objectives (make_objective), and attacks
taking a name or a callable objective."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity
from torch import nn

from udcguard.attacks import PGD, AttackArgumentError
from udcguard.attacks.objectives import (
    OBJECTIVES,
    LPIPSObjective,
    make_objective,
    objective_name,
    resolve_objective,
)
from udcguard.errors import UdcGuardError, UnknownNameError
from udcguard.metrics import LPIPS


def _sk_ssim(a: np.ndarray, b: np.ndarray) -> float:  # (C, H, W)
    return structural_similarity(
        a, b, channel_axis=0, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("size", [(11, 11), (24, 37), (48, 48)])
def test_ssim_objective_matches_skimage(dtype: torch.dtype, size: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 3, *size, generator=g, dtype=torch.float64)
    b = (a + 0.1 * torch.randn(a.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    b[2] = torch.rand(b[2].shape, generator=g, dtype=torch.float64)  # an unrelated pair
    d = OBJECTIVES.get("ssim")(b.to(dtype), a.to(dtype))
    expected = [1.0 - _sk_ssim(b[i].numpy(), a[i].numpy()) for i in range(3)]
    assert d.shape == (3,) and d.dtype == dtype
    np.testing.assert_allclose(d.double().numpy(), expected, rtol=0, atol=1e-5)


def test_ssim_objective_zero_gradient_and_independence() -> None:
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(2, 3, 16, 16, generator=g), torch.rand(2, 3, 16, 16, generator=g)
    ssim_d = make_objective("ssim")
    assert ssim_d.name == "ssim"
    assert torch.equal(ssim_d(a, a), torch.zeros(2))
    out = b.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(ssim_d(out, a)[0], out)
    assert torch.isfinite(grad).all() and grad[0].abs().sum() > 0
    assert torch.equal(grad[1], torch.zeros_like(grad[1]))  # images are independent
    with pytest.raises(ValueError, match="shape"):
        ssim_d(a, a[:, :1])


def test_names_and_resolution() -> None:
    for name in ("mse", "l1", "ssim", "ce"):
        fn = make_objective(name)
        assert fn is OBJECTIVES.get(name) and objective_name(fn) == name == resolve_objective(name)[0]
    with pytest.raises(UnknownNameError, match="valid: ce, l1, mse, ssim; also lpips, lpips_rand"):
        make_objective("lpip")

    def my_d(o: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return (o - r).flatten(1).abs().amax(1)

    assert resolve_objective(my_d) == ("my_d", my_d)
    assert resolve_objective(lambda o, r: o.sum())[0] == "<lambda>"
    with pytest.raises(UdcGuardError, match="name or a callable"):
        resolve_objective(3)  # type: ignore[arg-type]


def test_lpips_needs_weights() -> None:
    with pytest.raises(UdcGuardError, match="needs pretrained LPIPS weights.*use objective 'lpips_rand'"):
        make_objective("lpips")
    with pytest.raises(UdcGuardError, match="needs pretrained LPIPS weights"):
        make_objective("lpips", lpips_backbone="alexnet.pth")
    with pytest.raises(UdcGuardError, match=r"missing\.pth: weights file not found"):
        make_objective("lpips", lpips_backbone="missing.pth", lpips_lin="missing.pth")
    d = make_objective("lpips_rand")
    assert isinstance(d, LPIPSObjective) and d.name == "lpips_rand"
    assert make_objective("mse", lpips_backbone="ignored.pth") is OBJECTIVES.get("mse")


def _alex_weights(tmp_path: Path) -> tuple[Path, Path]:
    """Random torchvision-format alexnet features and lpips-format lin weights on disk."""
    g = torch.Generator().manual_seed(0)
    convs = {0: (64, 3, 11), 3: (192, 64, 5), 6: (384, 192, 3), 8: (256, 384, 3), 10: (256, 256, 3)}
    state = {}
    for i, (co, ci, k) in convs.items():
        state[f"features.{i}.weight"] = torch.randn(co, ci, k, k, generator=g) * (2.0 / (ci * k * k)) ** 0.5
        state[f"features.{i}.bias"] = torch.zeros(co)
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for i, c in enumerate((64, 192, 384, 256, 256))}
    torch.save(state, tmp_path / "alexnet.pth")
    torch.save(lin, tmp_path / "lin.pth")
    return tmp_path / "alexnet.pth", tmp_path / "lin.pth"


@pytest.mark.parametrize("pretrained", [True, False])
def test_lpips_objective_gradient_and_frozen(tmp_path: Path, pretrained: bool) -> None:
    if pretrained:
        backbone, lin = _alex_weights(tmp_path)
        d = make_objective("lpips", lpips_backbone=backbone, lpips_lin=lin)
        assert d.name == "lpips"
    else:
        d = make_objective("lpips_rand")
    assert isinstance(d, LPIPSObjective) and isinstance(d.module, LPIPS)
    module = d.module
    assert not module.training and all(not p.requires_grad for p in module.parameters())
    g = torch.Generator().manual_seed(2)
    ref = torch.rand(2, 3, 32, 32, generator=g)
    out = (ref + 0.1 * torch.randn(ref.shape, generator=g)).clamp(0, 1).requires_grad_(True)
    value = d(out, ref)
    assert value.shape == (2,) and (value > 0).all()
    value.sum().backward()
    assert out.grad is not None and torch.isfinite(out.grad).all() and out.grad.abs().sum() > 0
    assert all(p.grad is None for p in module.parameters())
    with torch.no_grad():
        assert torch.equal(d(ref, ref), torch.zeros(2))
        assert torch.allclose(d(out, ref), d(ref, out), rtol=1e-6)


class _Restorer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


@pytest.mark.parametrize("objective", ["ssim", "lpips_rand", "callable"])
def test_attack_with_objective(objective: str) -> None:
    model = _Restorer().eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    obj = make_objective("lpips_rand") if objective == "callable" else objective
    attack = PGD(model, eps=4 / 256, steps=3, objective=obj)  # type: ignore[arg-type]
    assert attack.objective == ("lpips_rand" if objective == "callable" else objective)
    assert f"objective={attack.objective!r}" in repr(attack)
    res = attack(x, generator=torch.Generator().manual_seed(0))
    assert (res.objective > 0).all() and res.grads == 3
    with torch.no_grad():
        fn = resolve_objective(obj)[1]
        assert torch.allclose(res.objective, fn(model(res.x_adv), model(x)), atol=1e-6)
    assert all(p.grad is None for p in model.parameters())


def test_attack_objective_errors() -> None:
    model = _Restorer().eval()
    for bad, match in [("lpips", "lpips_rand"), ("msee", "valid: ce, l1, mse"), (3, "name or a callable")]:
        with pytest.raises(AttackArgumentError, match=match) as info:
            PGD(model, objective=bad)  # type: ignore[arg-type]
        assert isinstance(info.value, (UdcGuardError, ValueError))

"""Transfer: crafted on the surrogate, measured on the target, never differentiated there."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.attacks.conftest import Counted, TinyRestorer, gen as _gen
from udcguard.attacks.base import ATTACKS, AttackArgumentError
from udcguard.attacks.cw import CarliniWagnerL2  # noqa: F401  (registers "cw_l2")
from udcguard.attacks.objectives import objective
from udcguard.attacks.pgd import PGD
from udcguard.attacks.simba import SimBA  # noqa: F401  (registers "simba")
from udcguard.attacks.transfer import Transfer

PGD_KW = {"eps": 4 / 256, "steps": 4}


class BlackBox:
    """The target: counts calls and fails if it is called with autograd enabled."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.calls = model, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        assert not torch.is_grad_enabled() and not x.requires_grad, "the target was differentiated"
        self.calls += 1
        return self.model(x)


def _restorer(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return TinyRestorer().eval()


@pytest.fixture
def surrogate() -> nn.Module:
    return _restorer(0)


@pytest.fixture
def target() -> nn.Module:
    return _restorer(1)


def test_surrogate_equal_to_target_gives_the_inner_attack(surrogate, batch) -> None:
    x, _ = batch
    res = Transfer(surrogate, surrogate_fn=surrogate, inner="pgd_linf", inner_kwargs=PGD_KW)(
        x, generator=_gen(3)
    )
    ref = PGD(surrogate, **PGD_KW)(x, generator=_gen(3))
    assert torch.equal(res.x_adv, ref.x_adv)
    assert torch.allclose(res.objective, ref.objective, atol=1e-9)


@pytest.mark.parametrize("reference", ["clean_output", "gt"])
def test_objective_is_measured_on_the_target(surrogate, target, batch, reference) -> None:
    x, gt = batch
    params0 = [p.detach().clone() for p in target.parameters()]
    fn = BlackBox(target)
    atk = Transfer(fn, surrogate_fn=surrogate, inner_kwargs=PGD_KW, reference=reference)
    res = atk(x, gt=gt, generator=_gen())
    assert res.grads == 0 and res.queries == fn.calls == 2  # reference/clean + final only
    for p, p0 in zip(target.parameters(), params0, strict=True):
        assert torch.equal(p, p0) and p.grad is None
    inner = atk.last_inner
    assert inner is not None and inner.grads == PGD_KW["steps"]  # gradients: surrogate only
    assert torch.equal(res.x_adv, inner.x_adv)
    with torch.no_grad():
        r = target(x) if reference == "clean_output" else gt
        on_target = objective("mse")(target(res.x_adv), r)
        assert torch.allclose(res.objective_clean, objective("mse")(target(x), r), atol=1e-9)
    assert torch.allclose(res.objective, on_target, atol=1e-9)
    assert not torch.allclose(res.objective, inner.objective)  # not the surrogate's number
    assert (res.objective > res.objective_clean).all()  # it transfers (similar restorers)


def test_input_untouched_and_reproducible(surrogate, target, batch) -> None:
    x, _ = batch
    x0 = x.clone()
    atk = Transfer(target, surrogate_fn=surrogate, inner_kwargs=PGD_KW)
    a, b, c = (atk(x, generator=_gen(s)) for s in (7, 7, 8))
    assert torch.equal(x, x0)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.objective, b.objective)
    assert not torch.equal(a.x_adv, c.x_adv)
    assert a.x_adv.min() >= 0.0 and a.x_adv.max() <= 1.0
    assert (a.x_adv - x).abs().max() <= 4 / 256 + 1e-6


@pytest.mark.parametrize(
    ("inner", "kwargs"),
    [
        ("pgd_linf", PGD_KW),
        ("simba", {"iterations": 30, "basis": "dct"}),
        ("cw_l2", {"binary_steps": 2, "steps": 10}),
    ],
)
def test_any_inner_attack_mask_and_budget(surrogate, target, batch, inner, kwargs) -> None:
    x, _ = batch
    mask = torch.rand(1, 1, 16, 16, generator=_gen(11)) > 0.5
    fn = Counted(target)
    atk = Transfer(fn, surrogate_fn=surrogate, inner=inner, inner_kwargs=kwargs)
    inner_cls = ATTACKS.get(inner)
    assert isinstance(atk.inner, inner_cls)
    assert (atk.norm, atk.bounded) == (atk.inner.norm, atk.inner.bounded)
    assert getattr(atk, "eps", None) == getattr(atk.inner, "eps", None)
    res = atk(x, mask=mask, generator=_gen())
    assert res.queries == fn.calls == 2 and res.grads == 0
    delta = res.x_adv - x
    outside = ~mask.expand_as(delta)
    assert torch.count_nonzero(delta[outside]) == 0 and delta[~outside].abs().max() > 0
    assert (res.objective > 0).all()


def test_inner_objective_can_differ(surrogate, target, batch) -> None:
    x, _ = batch
    atk = Transfer(target, surrogate_fn=surrogate, inner_kwargs={**PGD_KW, "objective": "l1"})
    assert atk.inner.objective == "l1" and atk.objective == "mse"
    res = atk(x, generator=_gen())
    with torch.no_grad():
        assert torch.allclose(res.objective, objective("mse")(target(res.x_adv), target(x)), atol=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"inner": "nope"}, "valid:"),
        ({"inner": "transfer"}, "nest"),
        ({"inner_kwargs": {"model_fn": None}}, "model_fn"),
        ({"inner_kwargs": {"reference": "gt"}}, "reference"),
        ({"inner_kwargs": {"foo": 1}}, "inner attack 'pgd_linf'"),
        ({"inner_kwargs": {"steps": 0}}, "steps"),
        ({"surrogate_fn": 3}, "surrogate_fn must be callable"),
        ({"objective": "msee"}, "valid:"),
    ],
)
def test_validation(surrogate, target, kwargs, match) -> None:
    kw = {"surrogate_fn": surrogate, **kwargs}
    with pytest.raises(AttackArgumentError, match=match):
        Transfer(target, **kw)


def test_registered() -> None:
    assert ATTACKS.get("transfer") is Transfer

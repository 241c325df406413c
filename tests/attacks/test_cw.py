"""C&W-L2 for restorers: success criterion, binary search over c, minimal L2, counting, masks."""

from __future__ import annotations

import pytest
import torch

from tests.attacks.conftest import Counted, gen as _gen
from udcguard.attacks.base import ATTACKS, AttackArgumentError
from udcguard.attacks.cw import CarliniWagnerL2
from udcguard.attacks.objectives import objective

FAST = {"binary_steps": 3, "steps": 30}


def test_reaches_target_in_range_and_input_untouched(model, batch) -> None:
    x, _ = batch
    x0, params0 = x.clone(), [p.detach().clone() for p in model.parameters()]
    atk = CarliniWagnerL2(model, target=1e-3, **FAST)
    with torch.no_grad():  # the attack enables gradients itself
        res = atk(x, generator=_gen())
    assert torch.equal(x, x0) and not x.requires_grad
    for p, p0 in zip(model.parameters(), params0, strict=True):
        assert torch.equal(p, p0) and p.grad is None
    assert res.x_adv.min() >= 0.0 and res.x_adv.max() <= 1.0 and torch.isfinite(res.x_adv).all()
    assert not res.x_adv.requires_grad and res.x_adv.dtype == x.dtype
    assert atk.search is not None and atk.search.success.all()
    assert (res.objective >= 1e-3).all() and (res.objective > res.objective_clean).all()
    with torch.no_grad():  # the reported objective is that of the returned images
        assert torch.allclose(res.objective, objective("mse")(model(res.x_adv), model(x)), atol=1e-9)
    delta = (res.x_adv - x).flatten(1)
    assert torch.allclose(res.l2, delta.norm(dim=1)) and (res.l2 > 0).all()
    assert ATTACKS.get("cw_l2") is CarliniWagnerL2
    assert CarliniWagnerL2.norm == "l2" and CarliniWagnerL2.bounded is False


def test_binary_search_moves_c_both_ways(model, batch) -> None:
    x, _ = batch
    # image 0 can move everywhere (easy: c shrinks); image 1 cannot move at all (the mask is
    # empty, so it can never succeed: c grows x10 per binary step); both in one batch
    mask = torch.ones(3, 1, 16, 16)
    mask[1] = 0.0
    atk = CarliniWagnerL2(model, target=1e-3, c=1.0, binary_steps=4, steps=30)
    res = atk(x, mask=mask, generator=_gen())
    s = atk.search
    assert s is not None
    assert s.success[0] and s.upper[0] <= 1.0 and s.c[0] < 1.0  # decreased
    assert not s.success[1] and torch.isinf(s.upper[1])
    assert s.c[1] == pytest.approx(1e4) and s.lower[1] == pytest.approx(1e3)  # increased
    assert torch.equal(res.x_adv[1], x[1]) and res.objective[1] == 0.0


def test_unreachable_target_increases_c_and_keeps_largest_objective(model, batch) -> None:
    x, _ = batch
    atk = CarliniWagnerL2(model, target=10.0, c=0.1, binary_steps=3, steps=20)
    res = atk(x, generator=_gen())
    s = atk.search
    assert s is not None and not s.success.any()
    assert torch.allclose(s.c, torch.full((3,), 100.0)) and torch.isinf(s.upper).all()
    assert (res.objective > 0).all()  # the fallback: the largest objective seen


def test_smaller_target_gives_smaller_l2(model, batch) -> None:
    x, _ = batch
    small = CarliniWagnerL2(model, target=1e-4, **FAST)(x, generator=_gen())
    large = CarliniWagnerL2(model, target=1e-3, **FAST)(x, generator=_gen())
    assert (small.objective >= 1e-4).all() and (large.objective >= 1e-3).all()
    assert (small.l2 < large.l2).all()


def test_result_sits_on_the_target_boundary(model, batch) -> None:
    """Minimal L2: the returned delta just reaches the target; 0.9 * delta does not."""
    x, _ = batch
    res = CarliniWagnerL2(model, target=1e-3, c=100.0, binary_steps=6, steps=30)(x, generator=_gen())
    assert (res.objective >= 1e-3).all() and (res.objective < 1.1e-3).all()
    with torch.no_grad():
        shrunk = objective("mse")(model(x + 0.9 * (res.x_adv - x)), model(x))
    assert (shrunk < 1e-3).all()


def test_same_seed_same_result(model, batch) -> None:
    x, _ = batch
    atk = CarliniWagnerL2(model, target=1e-3, binary_steps=2, steps=10)
    a, b, c = (atk(x, generator=_gen(s)) for s in (7, 7, 8))
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.objective, b.objective)
    assert not torch.equal(a.x_adv, c.x_adv)


@pytest.mark.parametrize("mask_shape", [(1, 1, 16, 16), (3, 3, 16, 16)])
def test_mask_keeps_delta_zero_outside(model, batch, mask_shape) -> None:
    x, _ = batch
    mask = torch.rand(mask_shape, generator=_gen(11)) > 0.5
    res = CarliniWagnerL2(model, target=1e-3, binary_steps=2, steps=20)(x, mask=mask, generator=_gen())
    delta = res.x_adv - x
    outside = ~mask.expand_as(delta)
    assert torch.count_nonzero(delta[outside]) == 0
    assert delta[~outside].abs().max() > 0


@pytest.mark.parametrize("reference", ["clean_output", "gt"])
def test_query_and_grad_counts(model, batch, reference) -> None:
    x, gt = batch
    fn = Counted(model)
    res = CarliniWagnerL2(fn, reference=reference, binary_steps=2, steps=5)(x, gt=gt, generator=_gen())
    assert res.queries == fn.calls == 2 * 5 + 1
    assert res.grads == 2 * 5


def test_gt_reference_target_is_an_increase(model, batch) -> None:
    x, gt = batch
    atk = CarliniWagnerL2(model, reference="gt", target=1e-3, **FAST)
    res = atk(x, gt=gt)
    with torch.no_grad():
        clean = objective("mse")(model(x), gt)
    assert torch.allclose(res.objective_clean, clean)
    assert atk.search is not None and atk.search.success.all()
    assert (res.objective >= clean + 1e-3 - 1e-9).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"binary_steps": 0}, "binary_steps"),
        ({"binary_steps": 1.5}, "binary_steps"),
        ({"steps": 0}, "steps"),
        ({"c": 0.0}, "c must"),
        ({"c": float("inf")}, "c must"),
        ({"target": 0.0}, "target"),
        ({"target": float("nan")}, "target"),
        ({"lr": -0.1}, "lr"),
        ({"init_eps": 0.0}, "init_eps"),
        ({"init_eps": 2.0}, "init_eps"),
        ({"objective": "msee"}, "valid:"),
    ],
)
def test_validation(model, kwargs, match) -> None:
    with pytest.raises(AttackArgumentError, match=match):
        CarliniWagnerL2(model, **kwargs)

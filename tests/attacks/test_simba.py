"""SimBA: queries only (no gradient, no graph), query budget, bases, order, masks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tests.attacks.conftest import gen as _gen
from udcguard.attacks.base import ATTACKS, AttackArgumentError
from udcguard.attacks.objectives import objective
from udcguard.attacks.simba import SimBA, block_dct_matrix, dct_matrix, frequency_rings

TOL = 1e-6


class NoGradModel:
    """Counts calls and fails if the attack could differentiate through the model."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.calls = model, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        assert not torch.is_grad_enabled(), "SimBA called the model with autograd enabled"
        assert not x.requires_grad
        self.calls += 1
        return self.model(x)


@pytest.mark.parametrize("basis", ["pixel", "dct"])
@pytest.mark.parametrize("reference", ["clean_output", "gt"])
def test_queries_only_within_budget(model, batch, basis, reference) -> None:
    x, gt = batch
    x0, params0 = x.clone(), [p.detach().clone() for p in model.parameters()]
    fn = NoGradModel(model)
    iterations, eps = 60, 4 / 256
    atk = SimBA(fn, eps=eps, iterations=iterations, basis=basis, reference=reference)
    res = atk(x, gt=gt, generator=_gen())  # grad mode enabled outside: SimBA disables it
    assert res.grads == 0
    assert res.queries == fn.calls <= 1 + 2 * iterations
    assert torch.equal(x, x0)
    for p, p0 in zip(model.parameters(), params0, strict=True):
        assert torch.equal(p, p0) and p.grad is None
    assert res.x_adv.min() >= 0.0 and res.x_adv.max() <= 1.0 and not res.x_adv.requires_grad
    assert (res.objective > res.objective_clean).all()
    with torch.no_grad():
        r = model(x) if reference == "clean_output" else gt
        assert torch.allclose(res.objective, objective("mse")(model(res.x_adv), r), atol=1e-9)
        assert torch.allclose(res.objective_clean, objective("mse")(model(x), r), atol=1e-9)
    delta = (res.x_adv - x).flatten(1)
    assert delta.norm(dim=1).max() <= eps * math.sqrt(iterations) + TOL
    if basis == "pixel":  # each coordinate moved at most once, by +-eps (less if clipped)
        assert delta.abs().max() <= eps + TOL
        assert (torch.count_nonzero(delta, dim=1) <= iterations).all()
        assert atk.norm == "linf" and atk.eps == eps
    else:
        assert atk.norm == "l2" and atk.eps == pytest.approx(eps * math.sqrt(iterations))


def test_first_step_from_zero_is_accepted_against_clean_output(model, batch) -> None:
    """d(f(x), f(x)) = 0 is the minimum: any step that changes f(x) is an increase."""
    x, _ = batch
    res = SimBA(model, eps=4 / 256, iterations=1)(x, generator=_gen())
    assert res.queries == 2  # r, then +eps accepted for every image: no -eps query
    assert (res.objective > 0).all()
    delta = (res.x_adv - x).flatten(1)
    assert (torch.count_nonzero(delta, dim=1) <= 1).all()


def test_iterations_capped_at_the_basis_size(model) -> None:
    x = torch.rand(2, 3, 2, 2, generator=_gen(3))  # 12 directions
    fn = NoGradModel(model)
    res = SimBA(fn, eps=0.1, iterations=100)(x, generator=_gen())
    assert res.queries == fn.calls <= 1 + 2 * 12
    assert (res.objective > 0).all()


@pytest.mark.parametrize("basis", ["pixel", "dct"])
def test_same_seed_same_result(model, batch, basis) -> None:
    x, _ = batch
    atk = SimBA(model, iterations=30, basis=basis)
    a, b, c = (atk(x, generator=_gen(s)) for s in (7, 7, 8))
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.objective, b.objective)
    assert a.queries == b.queries
    assert not torch.equal(a.x_adv, c.x_adv)


@pytest.mark.parametrize("basis", ["pixel", "dct"])
@pytest.mark.parametrize("mask_shape", [(1, 1, 16, 16), (3, 3, 16, 16)])
def test_mask_keeps_delta_zero_outside(model, batch, basis, mask_shape) -> None:
    x, _ = batch
    mask = torch.rand(mask_shape, generator=_gen(11)) > 0.5
    res = SimBA(model, iterations=40, basis=basis)(x, mask=mask, generator=_gen())
    delta = res.x_adv - x
    outside = ~mask.expand_as(delta)
    assert torch.count_nonzero(delta[outside]) == 0
    assert delta[~outside].abs().max() > 0


def test_pixel_order_puts_masked_coordinates_first(model, batch) -> None:
    x, _ = batch
    mask = (torch.rand(3, 1, 16, 16, generator=_gen(5)) > 0.5).float()
    atk = SimBA(model)
    order = atk._orders(x, mask, _gen())
    inside = mask.expand_as(x).flatten(1)  # (B, N)
    for i in range(3):
        k = int(inside[i].sum())
        assert inside[i, order[i, :k]].all() and not inside[i, order[i, k:]].any()
        assert torch.equal(order[i].sort().values, torch.arange(order.shape[1]))  # a permutation


@pytest.mark.parametrize("block", [16, 8, 4])
def test_dct_basis_is_orthonormal(model, block) -> None:
    assert torch.allclose(dct_matrix(8) @ dct_matrix(8).T, torch.eye(8), atol=1e-6)
    m = block_dct_matrix(16, block, dtype=torch.float64, device=None)
    assert torch.allclose(m @ m.T, torch.eye(16, dtype=torch.float64), atol=1e-12)
    # every direction used by the attack is a unit vector, orthogonal to the others
    x = torch.rand(1, 3, 16, 16)
    atk = SimBA(model, basis="dct", block_size=block)
    mats = (block_dct_matrix(16, block, dtype=x.dtype, device=None),) * 2
    idx = torch.arange(3 * 16 * 16)
    q = torch.cat([atk._directions(i.view(1), x, mats).flatten(1) for i in idx])  # (N, N)
    assert torch.allclose(q @ q.T, torch.eye(q.shape[0]), atol=1e-5)
    # the DC coefficient of a block is constant over that block
    assert torch.allclose(q[0].view(3, 16, 16)[0, :block, :block], torch.tensor(1.0 / block))


def test_dct_order_is_low_frequency_first(model, batch) -> None:
    x, _ = batch
    rings = frequency_rings(16, 16, 16, 4, 2)
    assert rings[:4, :4].eq(0).all() and rings[4:6, :6].eq(1).all() and rings[15, 15] == 6
    atk = SimBA(model, basis="dct", freq_dims=4, stride=2)
    order = atk._orders(x, None, _gen())  # (B, 3*16*16)
    ring_of = rings.expand(3, 16, 16).flatten()
    for i in range(3):
        r = ring_of[order[i]]
        assert (r[1:] >= r[:-1]).all()  # rings in increasing order
        assert int((r == 0).sum()) == 3 * 4 * 4
    assert not torch.equal(order[0], order[1])  # each image its own permutation
    # block DCT: the order follows the frequency inside each block
    blk = frequency_rings(16, 16, 8, 1, 1)
    assert blk[0, 0] == blk[8, 8] == 0 and blk[7, 7] == blk[15, 15] == 7


def test_dct_perturbation_is_smooth(model, batch) -> None:
    """Low frequencies first: the first DCT steps are smoother than pixel steps."""
    x, _ = batch
    x = x.clamp(0.1, 0.9)  # no clipping
    pix = SimBA(model, iterations=12)(x, generator=_gen())
    dct = SimBA(model, iterations=12, basis="dct")(x, generator=_gen())  # ring 0: 3 x 2 x 2

    def tv(d: torch.Tensor) -> torch.Tensor:
        return (d[..., 1:, :] - d[..., :-1, :]).abs().sum() + (d[..., 1:] - d[..., :-1]).abs().sum()

    assert tv(dct.x_adv - x) < 0.6 * tv(pix.x_adv - x)  # measured: 0.42


def test_block_size_must_divide_the_image(model, batch) -> None:
    x, _ = batch
    with pytest.raises(AttackArgumentError, match="block_size=5 must divide"):
        SimBA(model, basis="dct", block_size=5, iterations=3)(x, generator=_gen())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"iterations": 0}, "iterations"),
        ({"iterations": 2.5}, "iterations"),
        ({"basis": "haar"}, "valid: pixel, dct"),
        ({"eps": -0.1}, "eps"),
        ({"eps": 2.0}, "eps"),
        ({"freq_dims": 4}, "basis='dct' only"),
        ({"basis": "dct", "stride": 0}, "stride"),
        ({"basis": "dct", "freq_dims": 0}, "freq_dims"),
        ({"basis": "dct", "block_size": 0}, "block_size"),
        ({"reference": "clean"}, "valid: clean_output, gt"),
    ],
)
def test_validation(model, kwargs, match) -> None:
    with pytest.raises(AttackArgumentError, match=match):
        SimBA(model, **kwargs)


def test_registered() -> None:
    assert ATTACKS.get("simba") is SimBA

"""Invariants every registered attack must keep, checked for EVERY entry of ``ATTACKS``.

An attack added to the registry is picked up here automatically; it only needs an entry in
:data:`KWARGS` (small, fast settings). For each attack, on a tiny residual restorer and
16x16 images, with both references:

- the input x (and the model) are not modified;
- x_adv is finite, in [0, 1], and inside the attack's ball (``attack.norm`` "linf" or
  "l2", radius ``attack.eps``) unless the attack declares ``bounded = False``;
- the reported objective is d(f(x_adv), r), and it is >= the clean objective;
- ``queries`` is the number of model calls;
- the same generator seed gives identical results;
- with a mask, delta is exactly 0 outside it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from tests.attacks.conftest import Counted, gen as _gen
from udcguard.attacks import ATTACKS, Attack, objective

TOL = 1e-6

#: Constructor kwargs per registered attack name (besides model_fn and reference), small
#: enough for a CPU test. An entry may also be a function of the model returning the kwargs
#: (e.g. to build a surrogate). Every name in ATTACKS must be here.
def _transfer_kwargs(model: nn.Module) -> dict[str, Any]:
    surrogate = copy.deepcopy(model)  # a different restorer, without touching the global RNG
    with torch.no_grad():
        surrogate.body[-1].weight.mul_(0.5)
    return {"surrogate_fn": surrogate, "inner_kwargs": {"eps": 4 / 256, "steps": 3}}


KWARGS: dict[str, dict[str, Any] | Callable[[nn.Module], dict[str, Any]]] = {
    "fgsm": {"eps": 4 / 256},
    "bim": {"eps": 4 / 256, "alpha": 1 / 256, "steps": 3},
    "mifgsm": {"eps": 4 / 256, "steps": 3},
    "pgd_linf": {"eps": 4 / 256, "steps": 3},
    "pgd_l2": {"eps": 0.3, "steps": 3},
    "cw_l2": {"target": 1e-3, "binary_steps": 2, "steps": 10},
    "simba": {"iterations": 30},
    "transfer": _transfer_kwargs,
}

NAMES = ATTACKS.names()
REFERENCES = ["clean_output", "gt"]


def _build(name: str, model_fn: Callable, model: nn.Module, reference: str) -> Attack:
    if name not in KWARGS:
        pytest.fail(
            f"attack {name!r} is registered in ATTACKS but has no entry in KWARGS of "
            f"tests/attacks/test_invariants.py: add small, fast constructor kwargs for it"
        )
    kw = KWARGS[name]
    if callable(kw):
        kw = kw(model)
    atk = ATTACKS.get(name)(model_fn, reference=reference, **kw)
    assert isinstance(atk, Attack)
    return atk


def _assert_in_budget(atk: Attack, x: torch.Tensor, x_adv: torch.Tensor) -> None:
    name = type(atk).__name__
    assert torch.isfinite(x_adv).all(), f"{name}: non-finite x_adv"
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0, f"{name}: x_adv outside [0, 1]"
    assert atk.norm in ("linf", "l2"), f"{name}: norm must be 'linf' or 'l2', got {atk.norm!r}"
    if not atk.bounded:
        return
    delta = (x_adv - x).flatten(1)
    if atk.norm == "linf":
        worst = delta.abs().amax(1).max().item()
        assert worst <= atk.eps + TOL, f"{name}: ||delta||_inf = {worst} > eps = {atk.eps}"
    else:
        worst = delta.norm(dim=1).max().item()
        assert worst <= atk.eps * (1 + TOL) + TOL, f"{name}: ||delta||_2 = {worst} > eps = {atk.eps}"


def test_every_attack_has_kwargs() -> None:
    missing = [n for n in NAMES if n not in KWARGS]
    assert not missing, (
        f"attacks {missing} have no entry in KWARGS of tests/attacks/test_invariants.py: "
        "add small, fast constructor kwargs for each"
    )
    assert set(KWARGS) <= set(NAMES), f"stale KWARGS entries: {sorted(set(KWARGS) - set(NAMES))}"


@pytest.mark.parametrize("reference", REFERENCES)
@pytest.mark.parametrize("name", NAMES)
def test_invariants(model, batch, name, reference) -> None:
    x, gt = batch
    x0, params0 = x.clone(), [p.detach().clone() for p in model.parameters()]
    fn = Counted(model)
    atk = _build(name, fn, model, reference)
    with torch.no_grad():  # attacks must enable gradients themselves
        res = atk(x, gt=gt, generator=_gen())

    # the input and the model are untouched
    assert torch.equal(x, x0) and not x.requires_grad
    for p, p0 in zip(model.parameters(), params0, strict=True):
        assert torch.equal(p, p0) and p.grad is None

    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype
    assert not res.x_adv.requires_grad
    _assert_in_budget(atk, x, res.x_adv)
    delta = (res.x_adv - x).flatten(1)
    assert torch.allclose(res.linf, delta.abs().amax(1)) and torch.allclose(res.l2, delta.norm(dim=1))

    # the objective: reported == recomputed; never below the clean one; something was gained
    with torch.no_grad():
        r = model(x) if reference == "clean_output" else gt
        clean = objective("mse")(model(x), r)
        assert torch.allclose(res.objective, objective("mse")(model(res.x_adv), r), atol=1e-9)
    assert res.objective.shape == (x.shape[0],)
    assert torch.allclose(res.objective_clean, clean, atol=1e-9)
    assert (res.objective >= res.objective_clean - 1e-9).all(), (
        f"{name}: objective {res.objective.tolist()} < clean {res.objective_clean.tolist()}"
    )
    assert (res.objective > res.objective_clean).any(), f"{name}: the attack gained nothing"

    # every model call is counted
    assert res.queries == fn.calls, f"{name}: queries={res.queries} but the model was called {fn.calls} times"
    assert isinstance(res.grads, int) and 0 <= res.grads <= res.queries


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_result(model, batch, name) -> None:
    x, gt = batch
    atk = _build(name, model, model, "clean_output")
    a, b = atk(x, gt=gt, generator=_gen(7)), atk(x, gt=gt, generator=_gen(7))
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.objective, b.objective)
    assert (a.queries, a.grads) == (b.queries, b.grads)


@pytest.mark.parametrize("mask_shape", [(1, 1, 16, 16), (3, 3, 16, 16)])
@pytest.mark.parametrize("name", NAMES)
def test_mask_keeps_delta_zero_outside(model, batch, name, mask_shape) -> None:
    x, gt = batch
    mask = torch.rand(mask_shape, generator=_gen(11)) > 0.5
    atk = _build(name, model, model, "clean_output")
    res = atk(x, gt=gt, mask=mask, generator=_gen())
    delta = res.x_adv - x
    outside = ~mask.expand_as(delta)
    assert torch.count_nonzero(delta[outside]) == 0, f"{name}: delta != 0 outside the mask"
    assert delta[~outside].abs().max() > 0, f"{name}: no perturbation inside the mask"
    _assert_in_budget(atk, x, res.x_adv)


@pytest.mark.parametrize("reference", REFERENCES)
@pytest.mark.parametrize("name", NAMES)
def test_model_is_always_called_on_the_whole_batch(model, batch, name, reference) -> None:
    """A restorer's side inputs (PSF codes) are bound to the batch: every call must pass all B images."""
    x, gt = batch
    b = x.shape[0]

    def bound(z: torch.Tensor) -> torch.Tensor:
        assert z.shape[0] == b, f"{name} called the model on {z.shape[0]} of {b} images"
        return model(z)

    _build(name, bound, model, reference)(x, gt=gt, generator=_gen(0))

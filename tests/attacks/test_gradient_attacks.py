"""FGSM, BIM, MI-FGSM, PGD-L2 and restarts: torchattacks parity, specific behaviour, validation.

The budget/range/mask/reproducibility invariants shared by every attack are in
test_invariants.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tests.attacks.conftest import TinyClassifier, gen as _gen
from udcguard.attacks import (
    ATTACKS,
    BIM,
    FGSM,
    MIFGSM,
    PGD,
    PGDL2,
    AttackArgumentError,
    objective,
)
from udcguard.attacks.base import l2_ball_start
from udcguard.attacks.bim import kurakin_steps
from udcguard.errors import UdcGuardError

TOL = 1e-6
GT = {"objective": "ce", "reference": "gt"}  # classifier parity setting


def _torchattacks():
    try:
        import torchattacks
    except ImportError as e:  # pragma: no cover - depends on the environment
        pytest.xfail(f"torchattacks unavailable: {e!r}")
    return torchattacks


@pytest.fixture
def clf_data() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    clf = TinyClassifier().eval()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(16, 3, 8, 8, generator=g)
    x[:4] = x[:4].round()  # some pixels at 0 and 1: clipping is compared too
    labels = torch.randint(0, 4, (16,), generator=g)
    return clf, x, labels


def _assert_parity(ours: torch.Tensor, ref: torch.Tensor, x: torch.Tensor, eps: float) -> float:
    diff = (ours - ref).abs().max().item()
    assert diff <= TOL, f"max |ours - torchattacks| = {diff}"
    # not vacuous: a substantial perturbation on every image
    assert ((ref - x).flatten(1).abs().amax(1) > eps / 2).all()
    return diff


# ------------------------------------------------------------ torchattacks 3.3.0 parity
@pytest.mark.parametrize("eps", [8 / 256, 2 / 256])
def test_fgsm_matches_torchattacks(clf_data, eps) -> None:
    ta = _torchattacks()
    clf, x, labels = clf_data
    ref = ta.FGSM(clf, eps=eps)(x, labels)
    ours = FGSM(clf, eps=eps, random_start=False, keep_best=False, **GT)(x, gt=labels)
    _assert_parity(ours.x_adv, ref, x, eps)
    with torch.no_grad():
        assert torch.allclose(ours.objective, objective("ce")(clf(ref), labels), atol=1e-5)
    assert (ours.objective > ours.objective_clean).all()


@pytest.mark.parametrize(("eps", "alpha", "steps"), [(8 / 256, 2 / 256, 10), (4 / 256, 1 / 256, 7)])
def test_bim_matches_torchattacks(clf_data, eps, alpha, steps) -> None:
    ta = _torchattacks()
    clf, x, labels = clf_data
    ref = ta.BIM(clf, eps=eps, alpha=alpha, steps=steps)(x, labels)
    ours = BIM(clf, eps=eps, alpha=alpha, steps=steps, keep_best=False, **GT)(x, gt=labels)
    _assert_parity(ours.x_adv, ref, x, eps)


def test_bim_default_steps_match_torchattacks_rule(clf_data) -> None:
    ta = _torchattacks()
    clf, x, labels = clf_data
    eps = 8 / 255  # torchattacks counts levels of 1/255, we count 1/256: same count here
    ref_atk = ta.BIM(clf, eps=eps, alpha=1 / 255, steps=0)
    ours_atk = BIM(clf, eps=eps, alpha=1 / 255, keep_best=False, **GT)
    assert ours_atk.steps == ref_atk.steps == 10
    _assert_parity(ours_atk(x, gt=labels).x_adv, ref_atk(x, labels), x, eps)
    assert [kurakin_steps(k / 256) for k in (0, 1, 2, 4, 8, 16, 32)] == [1, 1, 2, 5, 10, 20, 36]


@pytest.mark.parametrize(
    ("eps", "alpha", "steps", "decay"),
    [(8 / 256, 2 / 256, 10, 1.0), (4 / 256, 1 / 256, 8, 0.5)],
)
def test_mifgsm_matches_torchattacks(clf_data, eps, alpha, steps, decay) -> None:
    ta = _torchattacks()
    clf, x, labels = clf_data
    ref = ta.MIFGSM(clf, eps=eps, alpha=alpha, steps=steps, decay=decay)(x, labels)
    ours = MIFGSM(
        clf, eps=eps, alpha=alpha, steps=steps, decay=decay, keep_best=False, **GT
    )(x, gt=labels)
    _assert_parity(ours.x_adv, ref, x, eps)
    # momentum matters here: BIM with the same steps lands elsewhere
    bim = BIM(clf, eps=eps, alpha=alpha, steps=steps, keep_best=False, **GT)(x, gt=labels)
    assert not torch.allclose(bim.x_adv, ref, atol=TOL)


@pytest.mark.parametrize(("eps", "alpha", "steps"), [(1.0, 0.2, 10), (0.5, 0.1, 7)])
def test_pgd_l2_matches_torchattacks(clf_data, eps, alpha, steps) -> None:
    ta = _torchattacks()
    clf, x, labels = clf_data
    ref = ta.PGDL2(clf, eps=eps, alpha=alpha, steps=steps, random_start=False)(x, labels)
    ours = PGDL2(
        clf, eps=eps, alpha=alpha, steps=steps, random_start=False, keep_best=False, **GT
    )(x, gt=labels)
    diff = (ours.x_adv - ref).abs().max().item()
    assert diff <= TOL, f"max |ours - torchattacks| = {diff}"
    ref_l2 = (ref - x).flatten(1).norm(dim=1)
    assert (ref_l2 > eps / 2).all() and (ref_l2 <= eps * (1 + 1e-6)).all()  # not vacuous
    assert torch.allclose(ours.l2, ref_l2, atol=1e-5)


# ------------------------------------------------------------ behaviour
def test_fgsm_is_one_pgd_step(model, batch) -> None:
    x, _ = batch
    eps = 4 / 256
    fgsm = FGSM(model, eps=eps)(x, generator=_gen(3))
    pgd = PGD(model, eps=eps, steps=1)(x, generator=_gen(3))
    assert torch.equal(fgsm.x_adv, pgd.x_adv) and torch.equal(fgsm.objective, pgd.objective)
    assert (fgsm.objective > 0).all()  # the random start lets it move against f(x)


def test_mifgsm_without_momentum_is_bim(model, batch) -> None:
    x, gt = batch
    kw = {"eps": 4 / 256, "alpha": 1 / 256, "steps": 5, "reference": "gt", "keep_best": False}
    mi = MIFGSM(model, decay=0.0, **kw)(x, gt=gt)
    bim = BIM(model, **kw)(x, gt=gt)
    assert torch.equal(mi.x_adv, bim.x_adv)


def test_mifgsm_default_alpha_is_eps_over_steps(model) -> None:
    atk = MIFGSM(model, eps=8 / 256, steps=4)
    assert atk.alpha == pytest.approx(2 / 256) and atk.decay == 1.0


def test_pgd_l2_defaults_and_budget_above_one(model, batch) -> None:
    atk = PGDL2(model)
    assert (atk.eps, atk.steps, atk.alpha, atk.norm) == (0.5, 20, pytest.approx(2.5 * 0.5 / 20), "l2")
    x, _ = batch
    eps = 2.0  # an L2 budget may exceed 1: the diameter of [0, 1]^768 is ~27.7
    res = PGDL2(model, eps=eps, steps=3)(x, generator=_gen())
    assert (res.l2 <= eps * (1 + 1e-6)).all() and (res.l2 > eps / 2).all()


def test_pgd_l2_random_start_is_inside_the_ball(model, batch) -> None:
    x, _ = batch
    eps = 0.3
    atk = PGDL2(model, eps=eps, steps=1, keep_best=True)
    d = l2_ball_start(x, eps, None, _gen(4))
    n = d.flatten(1).norm(dim=1)
    assert (n <= eps * (1 + 1e-6)).all() and (n > 0).all() and n.unique().numel() == 3
    assert (atk(x, generator=_gen(4)).l2 <= eps * (1 + 1e-6)).all()


@pytest.mark.parametrize("cls", [PGD, PGDL2])
def test_restarts_keep_the_per_image_worst_case(model, batch, cls) -> None:
    x, _ = batch
    kw = {"eps": 4 / 256 if cls is PGD else 0.3, "steps": 2}
    g = _gen(5)  # three single runs drawing from one generator, in sequence
    singles = [cls(model, **kw)(x, generator=g) for _ in range(3)]
    multi = cls(model, restarts=3, **kw)(x, generator=_gen(5))
    stacked = torch.stack([s.objective for s in singles])  # (3, B)
    assert torch.equal(multi.objective, stacked.amax(0))
    pick = stacked.argmax(0)  # (B,), first of ties, as BestIterate
    for i, j in enumerate(pick.tolist()):
        assert torch.equal(multi.x_adv[i], singles[j].x_adv[i])
    # restarts differ, and the count of calls adds up: 3 * (steps + 1) + r = f(x)
    assert not torch.equal(singles[0].x_adv, singles[1].x_adv)
    assert multi.queries == 3 * (kw["steps"] + 1) + 1 and multi.grads == 3 * kw["steps"]


def test_restarts_with_gt_reference(model, batch) -> None:
    x, gt = batch
    res = PGD(model, eps=4 / 256, steps=2, restarts=2, random_start=True, reference="gt")(
        x, gt=gt, generator=_gen()
    )
    with torch.no_grad():
        assert torch.allclose(res.objective_clean, objective("mse")(model(x), gt))
    assert res.queries == 2 * 3 + 1  # + d(f(x), gt)


def test_registered() -> None:
    for name, cls in [("fgsm", FGSM), ("bim", BIM), ("mifgsm", MIFGSM), ("pgd_l2", PGDL2), ("pgd_linf", PGD)]:
        assert ATTACKS.get(name) is cls


# ------------------------------------------------------------ validation
@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (FGSM, {"eps": -0.01}, r"eps must be in \[0, 1\]"),
        (FGSM, {"eps": 1.5}, r"eps must be in \[0, 1\]"),
        (FGSM, {"eps": math.nan}, r"eps must be in \[0, 1\]"),
        (FGSM, {"alpha": -1 / 256}, "alpha"),
        (FGSM, {"random_start": False}, "zero at delta = 0"),
        (BIM, {"eps": -0.01}, "eps"),
        (BIM, {"eps": 1.01}, "eps"),
        (BIM, {"steps": 0}, "steps must be an integer >= 1"),
        (BIM, {"steps": 2.5}, "steps"),
        (BIM, {"alpha": 2.0}, "alpha"),
        (BIM, {"random_start": False}, "zero at delta = 0"),
        (MIFGSM, {"eps": 2.0}, "eps"),
        (MIFGSM, {"steps": 0}, "steps"),
        (MIFGSM, {"decay": -0.5}, "decay must be a finite number >= 0"),
        (MIFGSM, {"decay": math.nan}, "decay"),
        (MIFGSM, {"decay": math.inf}, "decay"),
        (PGD, {"restarts": 0}, "restarts must be an integer >= 1"),
        (PGD, {"restarts": 1.5}, "restarts"),
        (PGD, {"restarts": 2, "random_start": False, "reference": "gt"}, "needs random_start=True"),
        (PGDL2, {"eps": -0.1}, r"eps \(L2 budget\) must be a finite number >= 0"),
        (PGDL2, {"eps": math.inf}, "eps"),
        (PGDL2, {"eps": math.nan}, "eps"),
        (PGDL2, {"alpha": -0.1}, "alpha"),
        (PGDL2, {"steps": 0}, "steps"),
        (PGDL2, {"restarts": 0}, "restarts"),
        (PGDL2, {"restarts": 3, "reference": "gt"}, "needs random_start=True"),
        (PGDL2, {"random_start": False}, "zero at delta = 0"),
        (PGDL2, {"objective": "msee"}, "valid: ce, l1, mse"),
    ],
)
def test_validation(model, cls, kwargs, match) -> None:
    with pytest.raises(AttackArgumentError, match=match) as info:
        cls(model, **kwargs)
    assert isinstance(info.value, UdcGuardError) and isinstance(info.value, ValueError)

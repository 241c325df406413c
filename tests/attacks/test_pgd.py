"""PGD (L-inf): budget invariants, counting, masks, validation, and torchattacks parity."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from udcguard.attacks import (
    ATTACKS,
    OBJECTIVES,
    PGD,
    Attack,
    objective,
)
from tests.attacks.conftest import Counted, TinyClassifier, make_batch
from tests.attacks.conftest import gen as _gen
from udcguard.errors import UdcGuardError

TOL = 1e-6


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    return make_batch(4)


@pytest.mark.parametrize("k", [1, 2, 4, 8])
@pytest.mark.parametrize("reference", ["clean_output", "gt"])
def test_budget_and_range(model, batch, k, reference) -> None:
    x, gt = batch
    eps = k / 256
    res = PGD(model, eps=eps, steps=5, reference=reference)(x, gt=gt, generator=_gen())
    delta = res.x_adv - x
    assert delta.abs().max() <= eps + TOL
    assert res.x_adv.min() >= 0.0 and res.x_adv.max() <= 1.0
    assert torch.allclose(res.linf, delta.flatten(1).abs().amax(1))
    assert torch.allclose(res.l2, delta.flatten(1).norm(dim=1))
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype
    assert not res.x_adv.requires_grad and res.objective.shape == (4,)


def test_input_and_model_untouched(model, batch) -> None:
    x, gt = batch
    x0, params0 = x.clone(), [p.detach().clone() for p in model.parameters()]
    PGD(model, steps=3)(x, generator=_gen())
    PGD(model, steps=3, reference="gt", objective="l1")(x, gt=gt)
    assert torch.equal(x, x0) and not x.requires_grad
    for p, p0 in zip(model.parameters(), params0, strict=True):
        assert torch.equal(p, p0) and p.grad is None


def test_attack_beats_random_sign_noise(model, batch) -> None:
    x, _ = batch
    eps = 4 / 256
    res = PGD(model, eps=eps, steps=10)(x, generator=_gen())
    with torch.no_grad():
        r = model(x)
        assert torch.allclose(
            res.objective, objective("mse")(model(res.x_adv), r), atol=1e-9
        )
        g = _gen(5)
        rand = torch.stack(
            [
                objective("mse")(
                    model(
                        (
                            x
                            + eps
                            * torch.randint(0, 2, x.shape, generator=g).mul(2).sub(1)
                        ).clamp(0, 1)
                    ),
                    r,
                )
                for _ in range(8)
            ]
        ).mean(0)  # (B,)
    assert (res.objective > 0).all()
    assert (res.objective > rand).all()
    # the identity path of a residual net gives every sign pattern ~eps^2; PGD wins on the rest
    assert res.objective.mean() > 1.02 * rand.mean()
    assert torch.equal(res.objective_clean, torch.zeros(4))


@pytest.mark.parametrize("reference", ["clean_output", "gt"])
def test_keep_best_is_at_least_the_last_iterate(model, batch, reference) -> None:
    x, gt = batch
    kw = {"eps": 8 / 256, "alpha": 6 / 256, "steps": 8, "reference": reference}
    best = PGD(model, keep_best=True, **kw)(x, gt=gt, generator=_gen(3))
    last = PGD(model, keep_best=False, **kw)(x, gt=gt, generator=_gen(3))
    assert (best.objective >= last.objective).all()
    with torch.no_grad():  # the reported objective is that of the returned images
        r = gt if reference == "gt" else model(x)
        assert torch.allclose(
            last.objective, objective("mse")(model(last.x_adv), r), atol=1e-9
        )
        assert torch.allclose(
            best.objective, objective("mse")(model(best.x_adv), r), atol=1e-9
        )


def test_gt_reference_objective_clean(model, batch) -> None:
    x, gt = batch
    res = PGD(model, steps=4, reference="gt")(x, gt=gt)
    with torch.no_grad():
        clean = objective("mse")(model(x), gt)
    assert torch.allclose(res.objective_clean, clean)
    assert (res.objective > res.objective_clean).all()


def test_random_start_is_reproducible(model, batch) -> None:
    x, gt = batch
    atk = PGD(model, eps=2 / 256, steps=3, random_start=True, reference="gt")
    a, b = atk(x, gt=gt, generator=_gen(7)), atk(x, gt=gt, generator=_gen(7))
    c = atk(x, gt=gt, generator=_gen(8))
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.objective, b.objective)
    assert not torch.equal(a.x_adv, c.x_adv)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"eps": -0.01}, "eps"),
        ({"eps": 1.5}, "eps"),
        ({"eps": float("nan")}, "eps"),
        ({"alpha": -1 / 256}, "alpha"),
        ({"objective": "msee"}, "valid: ce, l1, mse"),
        ({"reference": "clean"}, "valid: clean_output, gt"),
        ({"random_start": False}, "zero at delta = 0"),
    ],
)
def test_validation(model, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match) as info:
        PGD(model, **kwargs)
    assert isinstance(info.value, UdcGuardError)


def test_call_validation(model, batch) -> None:
    x, _gt = batch
    with pytest.raises(ValueError, match="needs gt"):
        PGD(model, reference="gt")(x)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        PGD(model)(x + 0.5, generator=_gen())
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        PGD(model)(x[0], generator=_gen())
    with pytest.raises(
        ValueError, match=r"mask must have shape \(4 or 1, 3 or 1, 16, 16\)"
    ):
        PGD(model)(x, mask=torch.ones(4, 3, 8, 8), generator=_gen())
    with pytest.raises(ValueError, match="mask must have shape"):
        PGD(model)(x, mask=torch.ones(2, 1, 16, 16), generator=_gen())


@pytest.mark.parametrize("mask_shape", [(1, 1, 16, 16), (4, 1, 16, 16), (4, 3, 16, 16)])
def test_mask_restricts_delta(model, batch, mask_shape) -> None:
    x, _ = batch
    mask = torch.rand(mask_shape, generator=_gen(11)) > 0.5
    res = PGD(model, eps=8 / 256, steps=4)(x, mask=mask, generator=_gen())
    delta = res.x_adv - x
    outside = ~mask.expand_as(delta)
    assert torch.count_nonzero(delta[outside]) == 0
    assert delta[~outside].abs().max() > 0
    assert delta.abs().max() <= 8 / 256 + TOL


@pytest.mark.parametrize(
    ("reference", "random_start", "extra"),
    [("clean_output", True, 2), ("gt", False, 1), ("gt", True, 2)],
)
def test_query_and_grad_counts(model, batch, reference, random_start, extra) -> None:
    x, gt = batch
    fn = Counted(model)
    for steps in (1, 5):
        fn.calls = 0
        res = PGD(fn, steps=steps, reference=reference, random_start=random_start)(
            x, gt=gt, generator=_gen()
        )
        assert res.queries == fn.calls == steps + extra
        assert res.grads == steps


def test_no_grad_context_and_registry(model, batch) -> None:
    x, _ = batch
    with torch.no_grad():  # attacks enable grad themselves
        res = PGD(model, steps=2)(x, generator=_gen())
    assert (res.objective > 0).all()
    assert ATTACKS.get("pgd_linf") is PGD and issubclass(PGD, Attack)
    assert {"mse", "l1", "ce"} <= set(OBJECTIVES)


def test_objectives_values() -> None:
    a = torch.zeros(2, 3, 4, 4)
    b = torch.zeros(2, 3, 4, 4)
    b[1] = 0.5
    assert torch.allclose(objective("mse")(a, b), torch.tensor([0.0, 0.25]))
    assert torch.allclose(objective("l1")(a, b), torch.tensor([0.0, 0.5]))
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    ce = objective("ce")(logits, torch.tensor([0, 0]))
    assert ce.shape == (2,) and ce[1] > ce[0]
    with pytest.raises(ValueError, match="shape"):
        objective("mse")(a, b[:, :1])


# ------------------------------------------------------------ independent reference
@pytest.fixture
def classifier_batch() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    clf = TinyClassifier().eval()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(16, 3, 8, 8, generator=g)
    x[:4] = x[:4].round()  # some pixels at 0 and 1: clipping is compared too
    labels = torch.randint(0, 4, (16,), generator=g)
    return clf, x, labels


def _torchattacks():
    try:
        import torchattacks
    except ImportError as e:  # pragma: no cover - depends on the environment
        pytest.xfail(f"torchattacks unavailable: {e!r}")
    return torchattacks


@pytest.mark.parametrize(
    ("eps", "alpha", "steps"), [(8 / 256, 2 / 256, 10), (4 / 256, 4 / 256, 20)]
)
def test_matches_torchattacks_pgd(classifier_batch, eps, alpha, steps) -> None:
    ta = _torchattacks()
    clf, x, labels = classifier_batch
    ref = ta.PGD(clf, eps=eps, alpha=alpha, steps=steps, random_start=False)(x, labels)
    ours = PGD(
        clf,
        eps=eps,
        alpha=alpha,
        steps=steps,
        random_start=False,
        keep_best=False,
        objective="ce",
        reference="gt",
    )(x, gt=labels)
    assert (ref - x).abs().max() > eps / 2  # the comparison is not vacuous
    assert torch.allclose(ours.x_adv, ref, atol=TOL, rtol=0)


def test_one_step_matches_torchattacks_fgsm(classifier_batch) -> None:
    ta = _torchattacks()
    clf, x, labels = classifier_batch
    eps = 8 / 256
    ref = ta.FGSM(clf, eps=eps)(x, labels)
    ours = PGD(
        clf,
        eps=eps,
        steps=1,
        random_start=False,
        keep_best=False,
        objective="ce",
        reference="gt",
    )(x, gt=labels)
    assert torch.allclose(ours.x_adv, ref, atol=TOL, rtol=0)

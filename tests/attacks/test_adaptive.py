"""Adaptive attacks through the purifier: BPDA, EOT (via Calls), full DDIM gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.attacks.conftest import TinyRestorer
from udcguard.attacks import PGD, AttackArgumentError, objective
from udcguard.attacks.adaptive import DefendedModel
from udcguard.attacks.base import Calls
from udcguard.purify import Purifier, build_unet, make_scheduler

T_STAR = 10


def _purifier(dtype: torch.dtype = torch.float32) -> Purifier:
    torch.manual_seed(0)
    unet = build_unet(
        sample_size=16, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4
    )
    return Purifier(unet.to(dtype).eval(), make_scheduler(100))


@pytest.fixture(scope="module")
def purifier() -> Purifier:
    return _purifier()


@pytest.fixture(scope="module")
def restorer() -> nn.Module:
    torch.manual_seed(1)
    return TinyRestorer().eval()


@pytest.fixture
def x() -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    return torch.rand(2, 3, 16, 16, generator=g) * 0.8 + 0.1


def _grad(fn, x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fn(x), d <fn(x), w> / dx)."""
    xg = x.detach().requires_grad_(True)
    out = fn(xg)
    (g,) = torch.autograd.grad((out * w).sum(), xg)
    return out.detach(), g


# ---------------------------------------------------------------- BPDA
def test_bpda_forward_is_real_purification_and_backward_is_identity(purifier, restorer, x) -> None:
    model = DefendedModel(restorer, purifier, t_star=T_STAR, mode="bpda", seed=3)
    w = torch.randn_like(x)
    out, g = _grad(model, x, w)
    p = purifier.purify(x, t_star=T_STAR, generator=torch.Generator().manual_seed(3))
    assert not torch.allclose(p, x, atol=1e-3)  # the purifier does change the input
    out_ref, g_ref = _grad(restorer, p, w)  # restorer's gradient at the purified input
    assert torch.equal(out, out_ref)
    torch.testing.assert_close(g, g_ref, rtol=1e-6, atol=1e-7)


def test_bpda_ddim_sampler_forward(purifier, restorer, x) -> None:
    model = DefendedModel(restorer, purifier, t_star=T_STAR, mode="bpda", sampler="ddim", ddim_steps=3, seed=4)
    with torch.no_grad():
        p = purifier.purify(x, t_star=T_STAR, sampler="ddim", steps=3, generator=torch.Generator().manual_seed(4))
        assert torch.equal(model(x), restorer(p))
    # the "full" forward (same seed) is the same DDIM chain
    full = DefendedModel(restorer, purifier, t_star=T_STAR, mode="full", ddim_steps=3, seed=4)
    torch.testing.assert_close(full(x).detach(), restorer(p).detach(), rtol=1e-5, atol=1e-6)


def test_purify_options_reach_the_bpda_forward(purifier, restorer, x) -> None:
    """The BPDA forward can be exactly the deployed defence (its Purifier.purify options)."""
    opts = {"sampler": "ddim", "steps": 4, "eta": 1.0}
    model = DefendedModel(restorer, purifier, t_star=T_STAR, mode="bpda", seed=6, purify_options=opts)
    with torch.no_grad():
        p = purifier.purify(x, t_star=T_STAR, generator=torch.Generator().manual_seed(6), **opts)
        assert torch.equal(model(x), restorer(p))
    with pytest.raises(AttackArgumentError, match="may not set"):
        DefendedModel(restorer, purifier, t_star=T_STAR, mode="bpda", purify_options={"seeds": [1, 2]})


def test_fresh_noise_per_call_and_reset(purifier, restorer, x) -> None:
    model = DefendedModel(restorer, purifier, t_star=T_STAR, mode="bpda", seed=5)
    with torch.no_grad():
        a, b = model(x), model(x)
        model.reset()
        c = model(x)
    assert not torch.equal(a, b) and torch.equal(a, c)
    fixed = DefendedModel(restorer, purifier, t_star=T_STAR, mode="bpda", seed=5, fixed_noise=True)
    with torch.no_grad():
        assert torch.equal(fixed(x), fixed(x)) and torch.equal(fixed(x), a)


def test_t_star_zero_is_the_restorer(purifier, restorer, x) -> None:
    for mode in ("bpda", "full"):
        model = DefendedModel(restorer, purifier, t_star=0, mode=mode)
        w = torch.randn_like(x)
        out, g = _grad(model, x, w)
        out_ref, g_ref = _grad(restorer, x, w)
        assert torch.equal(out, out_ref) and torch.equal(g, g_ref)


# ---------------------------------------------------------------- EOT
@pytest.mark.parametrize("eot_backward", ["bpda", "full"])
def test_eot_averages_n_draws_and_counts_them(purifier, restorer, x, eot_backward) -> None:
    n = 3
    eot = DefendedModel(restorer, purifier, t_star=T_STAR, mode="eot", eot_samples=n,
                        eot_backward=eot_backward, ddim_steps=2, seed=7)
    single = DefendedModel(restorer, purifier, t_star=T_STAR, mode=eot_backward if eot_backward == "full" else "bpda",
                           ddim_steps=2, seed=7)
    with torch.no_grad():
        r = restorer(x)
    mse = objective("mse")
    calls = Calls(eot, mse)
    value, grad = calls.value_and_grad(x, r)
    assert (calls.queries, calls.grads) == (n, n)

    vals, grads = [], []
    for _ in range(n):  # the same n draws, by hand
        xg = x.clone().requires_grad_(True)
        v = mse(single(xg), r)
        (g,) = torch.autograd.grad(v.sum(), xg)
        vals.append(v.detach())
        grads.append(g)
    torch.testing.assert_close(value, torch.stack(vals).mean(0))
    torch.testing.assert_close(grad, torch.stack(grads).mean(0))
    assert not torch.allclose(grads[0], grads[1])  # the draws differ

    calls.value(x, r)
    assert (calls.queries, calls.grads) == (2 * n, n)


def test_eot_one_sample_equals_bpda(purifier, restorer, x) -> None:
    r = restorer(x).detach()
    mse = objective("mse")
    a = Calls(DefendedModel(restorer, purifier, t_star=T_STAR, mode="eot", eot_samples=1, seed=8), mse)
    b = Calls(DefendedModel(restorer, purifier, t_star=T_STAR, mode="bpda", seed=8), mse)
    va, ga = a.value_and_grad(x, r)
    vb, gb = b.value_and_grad(x, r)
    assert torch.equal(va, vb) and torch.equal(ga, gb)
    assert (a.queries, a.grads) == (1, 1)


def test_plain_model_fn_is_one_call(restorer, x) -> None:
    calls = Calls(restorer, objective("mse"))
    assert calls.eot_samples == 1
    calls.value_and_grad(x, x)
    assert (calls.queries, calls.grads) == (1, 1)


def test_bad_eot_attribute_is_refused(restorer, x) -> None:
    class Bad:
        eot_samples = 0

        def __call__(self, t):
            return restorer(t)

    with pytest.raises(AttackArgumentError, match="eot_samples"):
        PGD(Bad(), steps=1)(x)


# ---------------------------------------------------------------- full gradients
def test_full_gradient_matches_finite_differences() -> None:
    pur = _purifier(torch.float64)
    torch.manual_seed(1)
    rest = TinyRestorer().double().eval()
    model = DefendedModel(rest, pur, t_star=T_STAR, mode="full", ddim_steps=3, seed=9, fixed_noise=True)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1, 3, 16, 16, generator=g, dtype=torch.float64) * 0.8 + 0.1
    w = torch.randn(x.shape, generator=g, dtype=torch.float64)
    _, grad = _grad(model, x, w)
    h = 1e-6
    coords = [(0, 0, 0, 0), (0, 1, 5, 7), (0, 2, 15, 3), (0, 0, 8, 8), (0, 1, 12, 14)]
    with torch.no_grad():
        for c in coords:
            xp, xm = x.clone(), x.clone()
            xp[c] += h
            xm[c] -= h
            fd = ((model(xp) * w).sum() - (model(xm) * w).sum()) / (2 * h)
            assert abs(fd.item() - grad[c].item()) <= 1e-6 + 1e-5 * abs(fd.item()), (c, fd.item(), grad[c].item())
    # the purifier's part is not the identity: BPDA's gradient differs
    bpda = DefendedModel(rest, pur, t_star=T_STAR, mode="bpda", sampler="ddim", ddim_steps=3, seed=9,
                         fixed_noise=True)
    _, g_bpda = _grad(bpda, x, w)
    assert not torch.allclose(grad, g_bpda, rtol=1e-3, atol=1e-6)


def test_full_checkpointed_equals_plain(purifier, restorer, x) -> None:
    w = torch.randn_like(x)
    outs = []
    for ckpt in (True, False):
        model = DefendedModel(restorer, purifier, t_star=T_STAR, mode="full", ddim_steps=4,
                              checkpoint=ckpt, seed=10)
        outs.append(_grad(model, x, w))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=0, atol=0)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-6, atol=1e-8)


def _saved_bytes(purifier, x, steps: int, ckpt: bool) -> int:
    """Bytes of the tensors autograd's graph saves (outside checkpoint segments) in one
    forward of the DDIM chain."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    xg = x.clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = purifier.purify_differentiable(xg, t_star=8, steps=steps, noise=noise, checkpoint=ckpt,
                                         clamp="plain")
    out.sum().backward()  # the graph is usable
    return total


def test_checkpointing_keeps_the_graph_flat_in_k(purifier, x) -> None:
    ck = {k: _saved_bytes(purifier, x, k, True) for k in (1, 4, 8)}
    plain = {k: _saved_bytes(purifier, x, k, False) for k in (1, 4, 8)}
    image = x.numel() * x.element_size()
    # per step, outside the checkpointed UNet calls: the DDIM update's few image-sized tensors
    assert ck[8] - ck[1] <= 7 * 3 * image
    # without checkpointing every step keeps the UNet's activations (many images' worth)
    assert plain[8] - plain[4] >= 4 * 10 * image
    assert plain[8] > 5 * ck[8]


def test_one_step_chain_is_the_closed_form(purifier, x) -> None:
    """The chain "full" differentiates (clamp="plain") is eta-0 DDIM: k = 1 by hand."""
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    a = float(purifier.scheduler.alphas_cumprod[T_STAR])
    with torch.no_grad():
        z = a**0.5 * (2 * x - 1) + (1 - a) ** 0.5 * noise
        eps = purifier.unet(z, torch.full((2,), T_STAR)).sample
        x0 = ((z - (1 - a) ** 0.5 * eps) / a**0.5).clamp(-1, 1)
        out = purifier.purify_differentiable(x, t_star=T_STAR, steps=1, noise=noise, clamp="plain")
    torch.testing.assert_close(out, ((x0 + 1) / 2).clamp(0, 1))


def test_odd_sizes_are_padded(purifier, restorer) -> None:
    x = torch.rand(1, 3, 15, 13, generator=torch.Generator().manual_seed(0))
    for mode in ("bpda", "full"):
        model = DefendedModel(restorer, purifier, t_star=T_STAR, mode=mode, ddim_steps=2)
        out, g = _grad(model, x, torch.ones(1, 3, 15, 13))
        assert out.shape == x.shape and g.shape == x.shape and torch.isfinite(g).all()


# ---------------------------------------------------------------- PGD, unchanged
MODES = [
    {"mode": "bpda"},
    {"mode": "eot", "eot_samples": 2},
    {"mode": "eot", "eot_samples": 2, "eot_backward": "full", "ddim_steps": 2},
    {"mode": "full", "ddim_steps": 2},
]


@pytest.mark.parametrize("opts", MODES, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_pgd_runs_unchanged_on_the_defended_model(purifier, restorer, x, opts) -> None:
    eps, steps = 8 / 256, 4
    x0 = x.clone()
    runs = []
    for _ in range(2):
        model = DefendedModel(restorer, purifier, t_star=T_STAR, seed=11, **opts)
        res = PGD(model, eps=eps, steps=steps)(x, generator=torch.Generator().manual_seed(0))
        runs.append(res)
    a, b = runs
    assert torch.equal(x, x0)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.objective, b.objective)  # same seed
    assert (a.x_adv - x).abs().max() <= eps + 1e-6
    n = opts.get("eot_samples", 1)
    assert a.queries == 1 + n * steps + n and a.grads == n * steps

    # the composed model's objective grows vs clean (fresh noise draws, reference: the
    # undefended restoration of the clean input)
    score = DefendedModel(restorer, purifier, t_star=T_STAR, mode="bpda", seed=99)
    mse = objective("mse")
    with torch.no_grad():
        r = restorer(x)
        clean = torch.stack([mse(score(x), r) for _ in range(4)]).mean(0)
        adv = torch.stack([mse(score(a.x_adv), r) for _ in range(4)]).mean(0)
    assert (adv > clean).all(), (adv, clean)


def test_pgd_deterministic_with_fixed_noise(purifier, restorer, x) -> None:
    model = DefendedModel(restorer, purifier, t_star=T_STAR, mode="full", ddim_steps=2, fixed_noise=True)
    res = PGD(model, eps=4 / 256, steps=3)(x, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(res.objective, objective("mse")(model(res.x_adv), model(x)))
    assert (res.objective > 0).all()


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "pgd"}, "unknown adaptive mode 'pgd'"),
        ({"mode": "eot", "eot_samples": 0}, "eot_samples must be an integer >= 1"),
        ({"mode": "eot", "eot_samples": 2.5}, "eot_samples must be an integer >= 1"),
        ({"mode": "bpda", "eot_samples": 4}, "needs mode='eot'"),
        ({"mode": "full", "ddim_steps": 0}, "ddim_steps must be an integer >= 1"),
        ({"mode": "full", "ddim_steps": T_STAR + 1}, r"ddim_steps=11 must lie in \[1, t_star=10\]"),
        ({"mode": "bpda", "t_star": 100}, r"t_star=100 must lie in \[0, 99\]"),
        ({"mode": "bpda", "t_star": -1}, r"t_star=-1 must lie in \[0, 99\]"),
        ({"mode": "bpda", "t_star": 1.5}, r"fraction of the schedule in \[0, 1\)"),
        ({"mode": "full", "clamp": "soft"}, "unknown clamp"),
        ({"mode": "eot", "eot_backward": "x"}, "unknown eot_backward"),
        ({"mode": "bpda", "sampler": "euler"}, "unknown sampler"),
        ({"mode": "eot", "eot_samples": 2, "fixed_noise": True}, "identical draws"),
        ({"mode": "bpda", "seed": 1, "generator": torch.Generator()}, "at most one"),
    ],
)
def test_validation(purifier, restorer, kwargs, match) -> None:
    kwargs = {"t_star": T_STAR, **kwargs}
    with pytest.raises(AttackArgumentError, match=match) as e:
        DefendedModel(restorer, purifier, **kwargs)
    assert isinstance(e.value, ValueError)


def test_bpda_ignores_ddim_steps_above_t_star(purifier, restorer, x) -> None:
    """ddim_steps > t* is accepted for BPDA (its DDPM forward does not use it): same output as without it."""
    with torch.no_grad():
        long = DefendedModel(restorer, purifier, t_star=3, mode="bpda", ddim_steps=5, seed=2)(x)
        ref = restorer(purifier.purify(x, t_star=3, generator=torch.Generator().manual_seed(2)))
    assert torch.equal(long, ref)
    with pytest.raises(AttackArgumentError):  # the full-gradient chain does use it: refused there
        DefendedModel(restorer, purifier, t_star=3, mode="full", ddim_steps=5)

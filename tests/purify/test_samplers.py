"""Samplers: t* resolution, DDIM against diffusers, determinism and seeding, the
differentiable DDIM chain (finite differences, checkpointing), hooks and speed options."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from udcguard.purify import (
    Purifier,
    build_unet,
    ddim_step,
    ddim_timesteps,
    make_scheduler,
    resolve_t_star,
    reverse_timesteps,
    unet_calls,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _micro_unet(dtype: torch.dtype = torch.float32):
    torch.manual_seed(0)
    return build_unet(sample_size=16, block_out_channels=(8, 16, 16), norm_num_groups=4).to(dtype).eval()


@pytest.fixture(scope="module")
def purifier() -> Purifier:
    return Purifier(_micro_unet(), make_scheduler())


def _x(n: int = 2, h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    return 0.2 + 0.6 * torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


class _Counting(torch.nn.Module):
    """Wraps a UNet and records the timestep of every call."""

    def __init__(self, unet) -> None:
        super().__init__()
        self.unet, self.config, self.seen = unet, unet.config, []

    def forward(self, z, t):
        self.seen.append(int(t))
        return self.unet(z, t)


def test_resolve_t_star_ints_fractions_and_errors() -> None:
    assert resolve_t_star(0, 1000) == 0 and resolve_t_star(999, 1000) == 999
    assert resolve_t_star(np.int64(37), 1000) == 37
    assert resolve_t_star(0.1, 1000) == 100 and resolve_t_star(0.0, 1000) == 0
    assert resolve_t_star(0.5, 101) == 50 and resolve_t_star(0.999, 1000) == 998
    for bad, match in [(-1, r"\[0, 999\]"), (1000, r"\[0, 999\]"), (1.0, r"fraction .* \[0, 1\)"),
                       (1.5, "fraction"), (-0.1, "fraction"), (float("nan"), "fraction"),
                       (100.0, "pass an int"), (True, "int timestep"), ("10", "int timestep")]:
        with pytest.raises(ValueError, match=match):
            resolve_t_star(bad, 1000)


def test_ddim_timesteps_start_at_t_star_and_decrease() -> None:
    for t_star, k in [(100, 10), (37, 5), (7, 7), (1, 1), (999, 3)]:
        ts = ddim_timesteps(t_star, k)
        assert len(ts) == k and ts[0] == t_star and ts[-1] >= 1
        assert all(a > b for a, b in zip(ts, ts[1:]))
    assert ddim_timesteps(100, 4) == [100, 75, 50, 25]
    for k in (0, 11):
        with pytest.raises(ValueError, match=r"steps=.* must lie in \[1, t_star=10\]"):
            ddim_timesteps(10, k)


def test_t_star_zero_is_identity_for_every_sampler(purifier: Purifier) -> None:
    x = _x(2, 13, 15)
    for kw in ({}, {"sampler": "ddim", "steps": 3}, {"sampler": "ddim", "eta": 0.5}, {"tile": 8, "overlap": 4}):
        for t in (0, 0.0):
            y = purifier.purify(x, t_star=t, seeds=[1, 2], **kw)
            assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()
    y = purifier.purify_differentiable(x, t_star=0, noise=torch.zeros(0))
    assert torch.equal(y, x)


def test_unet_call_counts(purifier: Purifier) -> None:
    counting = Purifier(_Counting(purifier.unet), purifier.scheduler)
    x = _x(1)
    counting.purify(x, t_star=12, seeds=[0])
    assert counting.unet.seen == list(range(12, -1, -1)) and unet_calls(12) == 13
    counting.unet.seen.clear()
    counting.purify(x, t_star=12, sampler="ddim", steps=4, seeds=[0])
    assert counting.unet.seen == [12, 9, 6, 3] == ddim_timesteps(12, 4)
    assert unet_calls(12, sampler="ddim", steps=4) == 4 and unet_calls(0, sampler="ddim") == 0
    counting.unet.seen.clear()
    counting.purify(x, t_star=0.05, sampler="ddim", seeds=[0])  # 0.05 * 999 -> 50, default k = 10
    assert counting.unet.seen == ddim_timesteps(50, 10) and unet_calls(50, sampler="ddim") == 10


def test_ddim_step_equals_diffusers(purifier: Purifier) -> None:
    sched = DDIMScheduler.from_config(purifier.scheduler.config)
    assert torch.equal(sched.alphas_cumprod, purifier.scheduler.alphas_cumprod) and sched.config.clip_sample
    sched.set_timesteps(50)  # stride 1000 // 50 = 20
    g = torch.Generator().manual_seed(0)
    for t in [980, 500, 120, 20, 0]:  # 0 -> prev -20: abar_prev = 1 (set_alpha_to_one)
        z, eps = torch.randn(2, 3, 8, 8, generator=g) * 1.5, torch.randn(2, 3, 8, 8, generator=g)
        ref = sched.step(eps, t, z, eta=0.0).prev_sample
        ours = ddim_step(eps, z, t, t - 20 if t >= 20 else -1, sched.alphas_cumprod, clip_sample=1.0)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
        noise = torch.randn(2, 3, 8, 8, generator=g)
        ref = sched.step(eps, t, z, eta=0.7, variance_noise=noise).prev_sample
        ours = ddim_step(eps, z, t, t - 20 if t >= 20 else -1, sched.alphas_cumprod, eta=0.7, noise=noise)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_ddim_eta0_deterministic_given_forward_noise(purifier: Purifier) -> None:
    x = _x(2, seed=1)
    a = purifier.purify(x, t_star=40, sampler="ddim", steps=5, seeds=[3, 4])
    assert torch.equal(a, purifier.purify(x, t_star=40, sampler="ddim", steps=5, seeds=[3, 4]))
    # eta = 0 draws the forward noise only: two generators that agree on that one draw agree
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    b = purifier.purify(x, t_star=40, sampler="ddim", steps=5, generator=g1)
    torch.randn(x.shape, generator=g2)
    assert torch.equal(g1.get_state(), g2.get_state())
    g2.manual_seed(123)  # the two now differ after the forward draw: no effect at eta = 0
    g3 = torch.Generator().manual_seed(7)
    assert torch.equal(b, purifier.purify(x, t_star=40, sampler="ddim", steps=5, generator=g3))
    assert (a - purifier.purify(x, t_star=40, sampler="ddim", steps=5, seeds=[5, 6])).abs().mean() > 1e-3


def test_ddim_eta_positive_is_stochastic(purifier: Purifier) -> None:
    x = _x(2, seed=2)
    kw = {"t_star": 40, "sampler": "ddim", "steps": 5}
    a = purifier.purify(x, eta=1.0, seeds=[3, 4], **kw)
    assert torch.equal(a, purifier.purify(x, eta=1.0, seeds=[3, 4], **kw))
    assert (a - purifier.purify(x, eta=1.0, seeds=[8, 9], **kw)).abs().mean() > 1e-3
    assert (a - purifier.purify(x, eta=0.0, seeds=[3, 4], **kw)).abs().mean() > 1e-3
    # per-image seeds: batch split invariance holds for DDIM with eta > 0 as well
    one = purifier.purify(x, eta=1.0, seeds=[3, 4], batch_size=1, **kw)
    torch.testing.assert_close(one, a, rtol=0, atol=1e-5)


def test_differentiable_chain_equals_purify(purifier: Purifier) -> None:
    x = _x(2, 13, 18, seed=3)  # padded to 16 x 20
    noise = purifier.forward_noise(x, seeds=[5, 6])
    assert noise.shape == (2, 3, 16, 20)
    ref = purifier.purify(x, t_star=60, sampler="ddim", steps=4, seeds=[5, 6])
    for ck in (True, False):
        y = purifier.purify_differentiable(x, t_star=60, steps=4, noise=noise, checkpoint=ck)
        torch.testing.assert_close(y, ref, rtol=0, atol=1e-6)
    y = purifier.purify_differentiable(x, t_star=60, steps=4, noise=noise, clamp="plain")
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="padded shape"):
        purifier.purify_differentiable(x, t_star=60, steps=4, noise=torch.zeros(2, 3, 13, 18))


def test_differentiable_chain_gradient_matches_finite_differences() -> None:
    p = Purifier(_micro_unet(torch.float64), make_scheduler())
    p.unet.requires_grad_(False)
    x = _x(1, 8, 8, seed=4).double().requires_grad_(True)
    noise = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    w = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def loss(inp: torch.Tensor) -> torch.Tensor:
        y = p.purify_differentiable(inp, t_star=30, steps=3, noise=noise, clamp="plain", checkpoint=True)
        return (w * y).sum()

    (grad,) = torch.autograd.grad(loss(x), x)
    assert grad.abs().max() > 1e-3
    h = 1e-6
    with torch.no_grad():
        for idx in [(0, 0, 0, 0), (0, 1, 3, 5), (0, 2, 7, 7), (0, 0, 4, 2)]:
            e = torch.zeros_like(x)
            e[idx] = h
            fd = (loss(x + e) - loss(x - e)) / (2 * h)
            assert fd.item() == pytest.approx(grad[idx].item(), rel=1e-3, abs=1e-8), idx


def test_checkpointed_and_plain_gradients_agree(purifier: Purifier) -> None:
    x = _x(2, seed=5).requires_grad_(True)
    noise = purifier.forward_noise(x, seeds=[1, 2])
    grads = []
    for ck in (True, False):
        y = purifier.purify_differentiable(x, t_star=50, steps=3, noise=noise, checkpoint=ck)
        (g,) = torch.autograd.grad(y.square().sum(), x)
        grads.append(g)
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)
    # straight-through and plain clamps give the same forward values
    y_st = purifier.purify_differentiable(x, t_star=50, steps=3, noise=noise)
    y_pl = purifier.purify_differentiable(x, t_star=50, steps=3, noise=noise, clamp="plain")
    assert torch.equal(y_st, y_pl)


def test_checkpointing_keeps_the_graph_small(purifier: Purifier) -> None:
    """Bytes saved for backward per extra DDIM step: a few images with checkpointing, the
    UNet's activations (many times more) without."""
    x = _x(1, seed=8).requires_grad_(True)
    noise = purifier.forward_noise(x, seeds=[0])

    def saved_bytes(steps: int, ck: bool) -> int:
        total = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            purifier.purify_differentiable(x, t_star=40, steps=steps, noise=noise, checkpoint=ck)
        return total

    image = x.numel() * x.element_size()
    per_step_ck = (saved_bytes(4, True) - saved_bytes(2, True)) / 2
    per_step_plain = (saved_bytes(4, False) - saved_bytes(2, False)) / 2
    assert per_step_ck <= 8 * image < per_step_plain, (per_step_ck, per_step_plain, image)


def test_reverse_timesteps_pair_each_step_with_the_next() -> None:
    assert reverse_timesteps(3, "ddpm") == [(3, 2), (2, 1), (1, 0), (0, -1)]
    assert reverse_timesteps(100, "ddim", 4) == [(100, 75), (75, 50), (50, 25), (25, -1)]
    assert [t for t, _ in reverse_timesteps(12, "ddim")] == ddim_timesteps(12, 10)  # default: min(t*, 10) steps
    with pytest.raises(ValueError, match="sampler"):
        reverse_timesteps(10, "euler")


def test_guidance_hook_sees_every_step(purifier: Purifier) -> None:
    seen = []

    def hook(z, *, z_ref, t, abar, step):
        assert z.shape == z_ref.shape == step.z_t.shape == step.eps.shape == (1, 3, 16, 16)
        assert step.t > t and step.abar_t == pytest.approx(float(purifier.scheduler.alphas_cumprod[step.t]))
        assert abar == (1.0 if t < 0 else pytest.approx(float(purifier.scheduler.alphas_cumprod[t])))
        seen.append(t)
        return z

    x = _x(1, seed=6)
    plain = purifier.purify(x, t_star=9, sampler="ddim", steps=3, seeds=[1])
    hooked = purifier.purify(x, t_star=9, sampler="ddim", steps=3, seeds=[1], guidance=hook)
    assert seen == [6, 3, -1] and torch.equal(plain, hooked)
    seen.clear()
    purifier.purify(x, t_star=4, seeds=[1], guidance=hook)
    assert seen == [3, 2, 1, 0, -1]
    seen.clear()
    pulled = purifier.purify(x, t_star=9, seeds=[1], guidance=lambda z, z_ref, t, abar, step: z_ref * math.sqrt(abar))
    torch.testing.assert_close(pulled, x, rtol=0, atol=1e-6)  # a hook that returns the input's mean


def test_cuda_speed_options_are_ignored_on_cpu(purifier: Purifier) -> None:
    x = _x(1, seed=7)
    fast = Purifier(purifier.unet, purifier.scheduler, autocast="bf16", compile=True)
    for kw in ({}, {"sampler": "ddim", "steps": 3}):
        assert torch.equal(fast.purify(x, t_star=8, seeds=[0], **kw), purifier.purify(x, t_star=8, seeds=[0], **kw))
    assert fast._compiled is None and purifier.unet.conv_in.weight.is_contiguous()
    with pytest.raises(ValueError, match="autocast"):
        Purifier(purifier.unet, purifier.scheduler, autocast="fp8")


def test_channels_last_on_cpu_equals_contiguous_up_to_rounding(purifier: Purifier) -> None:
    x = _x(2, seed=3)
    nhwc = Purifier(copy.deepcopy(purifier.unet), purifier.scheduler, channels_last=True)
    t = torch.tensor([5, 9])
    z = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    eps = nhwc.eps(z, t)
    assert nhwc.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert eps.is_contiguous() and not torch.equal(eps, purifier.eps(z, t))  # other kernels ran
    torch.testing.assert_close(eps, purifier.eps(z, t), rtol=0, atol=1e-5)
    for kw in ({}, {"sampler": "ddim", "steps": 3}):
        torch.testing.assert_close(nhwc.purify(x, t_star=8, seeds=[0, 1], **kw),
                                   purifier.purify(x, t_star=8, seeds=[0, 1], **kw), rtol=0, atol=1e-5)


def test_argument_errors(purifier: Purifier) -> None:
    x = _x(1)
    for kw, match in [({"sampler": "euler"}, "sampler"), ({"steps": 3}, "sampler='ddim' only"), ({"eta": 0.5}, "sampler='ddim' only"),
                      ({"sampler": "ddim", "steps": 30}, r"\[1, t_star=20\]"),
                      ({"sampler": "ddim", "eta": -1.0}, "eta"), ({"t_star": 1.2}, "fraction")]:
        with pytest.raises(ValueError, match=match):
            purifier.purify(x, **{"t_star": 20, "seeds": [0], **kw})

"""Low-frequency input guidance: scale 0 is exactly the unguided purifier, guidance pulls
the low-pass view towards the input while the detail is still regenerated, the hook's
shift lowers the low-pass residual of x0_hat, and no gradient reaches the UNet."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from udcguard.purify import Purifier, build_unet, make_scheduler, to_model_space
from udcguard.purify.guidance import LowFreqGuidance, gaussian_blur, lowpass_mse


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def purifier() -> Purifier:
    """An untrained 2-level UNet (factor 2) and a 100-step DDPM schedule."""
    torch.manual_seed(0)
    unet = build_unet(sample_size=16, block_out_channels=(8, 16), norm_num_groups=4)
    return Purifier(unet, make_scheduler(num_train_timesteps=100))


def guided_ddpm_purify(purifier: Purifier, x: torch.Tensor, *, guidance: LowFreqGuidance | None = None,
                       **kw) -> torch.Tensor:
    """DDPM purification with the x0_hat form of the guidance (the step's z_t and eps)."""
    return purifier.purify(x, guidance=None if guidance is None else replace(guidance, estimate="x0_hat"), **kw)


def _scene(n: int, seed: int, size: int = 16) -> torch.Tensor:
    """Smooth layout plus fine texture (the part an attack would live in)."""
    g = torch.Generator().manual_seed(seed)
    lo = F.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=(size, size), mode="bilinear")
    return (lo + 0.05 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)


def test_scale_zero_equals_unguided_purify_exactly(purifier: Purifier) -> None:
    x = _scene(3, 1)
    ref = purifier.purify(x, t_star=40, seeds=[5, 6, 7])
    for gd in (None, LowFreqGuidance(), LowFreqGuidance(scale=0.0, lowpass="pool", through_unet=True)):
        assert torch.equal(guided_ddpm_purify(purifier, x, t_star=40, seeds=[5, 6, 7], guidance=gd), ref)
    # one generator, chunked, odd size (padding) too
    x = _scene(3, 2, size=15)
    ref = purifier.purify(x, t_star=25, generator=torch.Generator().manual_seed(3), batch_size=2)
    out = guided_ddpm_purify(
        purifier, x, t_star=25, generator=torch.Generator().manual_seed(3), batch_size=2, guidance=LowFreqGuidance()
    )
    assert torch.equal(out, ref)
    assert torch.equal(guided_ddpm_purify(purifier, x, t_star=0, seeds=[0, 1, 2]), x)


@pytest.mark.parametrize(
    "guidance",
    [
        LowFreqGuidance(scale=0.2, sigma_px=2.0),
        LowFreqGuidance(scale=0.2, sigma_px=2.0, schedule="sqrt_one_minus_abar"),
        LowFreqGuidance(scale=0.2, lowpass="pool", pool_factor=4),
    ],
)
def test_guidance_keeps_low_frequencies_and_changes_detail(purifier: Purifier, guidance: LowFreqGuidance) -> None:
    x, seeds, t_star = _scene(2, 3), [11, 12], 60  # abar_60 ~ 0.04 of T = 100: the scene is gone
    plain = purifier.purify(x, t_star=t_star, seeds=seeds)
    guided = guided_ddpm_purify(purifier, x, t_star=t_star, seeds=seeds, guidance=guidance)
    lp_plain, lp_guided = lowpass_mse(plain, x, guidance), lowpass_mse(guided, x, guidance)  # (2,)
    assert (lp_guided < 0.5 * lp_plain).all(), (lp_guided, lp_plain)
    # the high-pass part is regenerated, not copied from the input
    hp = lambda z: z - guidance.lowpass_filter(z)  # noqa: E731
    assert (hp(guided) - hp(x)).abs().mean() > 0.05
    assert guided.min() >= 0 and guided.max() <= 1 and guided.shape == x.shape
    # deterministic given the seeds
    assert torch.equal(guided, guided_ddpm_purify(purifier, x, t_star=t_star, seeds=seeds, guidance=guidance))


@pytest.mark.parametrize("through_unet", [False, True])
def test_shift_lowers_the_low_pass_residual_of_x0_hat(purifier: Purifier, through_unet: bool) -> None:
    """The hook a sampler calls: adding the shift to z moves x0_hat towards the input."""
    g = torch.Generator().manual_seed(4)
    z_ref = to_model_space(_scene(2, 4))
    abar_t, abar_prev = 0.3, 0.32
    z_t = math.sqrt(abar_t) * z_ref + math.sqrt(1 - abar_t) * torch.randn(z_ref.shape, generator=g)
    t = torch.tensor(30)
    with torch.no_grad():
        eps = purifier.unet(z_t, t).sample
    gd = LowFreqGuidance(scale=0.5, sigma_px=1.5, through_unet=through_unet)
    with torch.no_grad():
        d = gd.shift(
            z_t,
            eps,
            z_ref,
            alpha_bar_t=abar_t,
            alpha_bar_prev=abar_prev,
            eps_fn=lambda z: purifier.unet(z, t).sample,
            clip_range=None,
        )
    assert d.shape == z_t.shape and not d.requires_grad and d.abs().max() > 0

    def x0(z: torch.Tensor) -> torch.Tensor:
        return (z - math.sqrt(1 - abar_t) * eps) / math.sqrt(abar_t)

    before, after = lowpass_mse(x0(z_t), z_ref, gd), lowpass_mse(x0(z_t + d), z_ref, gd)  # (2,)
    assert (after < 0.75 * before).all(), (before, after)
    assert torch.equal(
        LowFreqGuidance().shift(z_t, eps, z_ref, alpha_bar_t=abar_t, alpha_bar_prev=1.0), torch.zeros_like(z_t)
    )


def test_no_gradient_reaches_the_unet(purifier: Purifier) -> None:
    unet = purifier.unet
    assert all(p.requires_grad and p.grad is None for p in unet.parameters())
    x = _scene(1, 5).requires_grad_(False)
    for gd in (LowFreqGuidance(scale=0.3), LowFreqGuidance(scale=0.3, through_unet=True)):
        out = guided_ddpm_purify(purifier, x, t_star=10, seeds=[0], guidance=gd)
        assert not out.requires_grad
    assert all(p.grad is None for p in unet.parameters())
    assert unet.training  # mode restored (built in train mode)


def test_gaussian_blur_preserves_constants_and_smooths() -> None:
    c = torch.full((1, 3, 9, 12), 0.3)
    torch.testing.assert_close(gaussian_blur(c, 1.0), c)
    torch.testing.assert_close(gaussian_blur(c[..., :2, :2], 3.0), c[..., :2, :2])  # replicate pad path
    noise = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert gaussian_blur(noise, 2.0).var() < 0.1 * noise.var()


def test_invalid_configurations_raise(purifier: Purifier) -> None:
    for kw in ({"scale": -0.1}, {"scale": math.nan}, {"sigma_px": 0.0}, {"lowpass": "box"}, {"schedule": "cosine"},
               {"estimate": "x0"}):
        with pytest.raises(ValueError):
            LowFreqGuidance(**kw)
    with pytest.raises(ValueError, match="eps_fn"):
        z = torch.zeros(1, 3, 8, 8)
        LowFreqGuidance(scale=1.0, through_unet=True).shift(z, z, z, alpha_bar_t=0.5, alpha_bar_prev=0.6)
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match="t_star"):
        guided_ddpm_purify(purifier, x, t_star=100, seeds=[0])
    with pytest.raises(ValueError, match="exactly one"):
        guided_ddpm_purify(purifier, x, t_star=5)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_hook_for_purifier_purify(purifier: Purifier, sampler: str) -> None:
    """As ``Purifier.purify``'s post-step ``guidance=`` hook: scale 0 changes nothing,
    scale > 0 pulls the low-pass view towards the input, detail is still regenerated."""
    x, seeds = _scene(2, 6), [3, 4]
    kw = {"t_star": 60, "seeds": seeds, "sampler": sampler}
    plain = purifier.purify(x, **kw)
    assert torch.equal(purifier.purify(x, guidance=LowFreqGuidance(), **kw), plain)
    gd = LowFreqGuidance(scale=0.2, sigma_px=2.0)
    guided = purifier.purify(x, guidance=gd, **kw)
    assert (lowpass_mse(guided, x, gd) < 0.5 * lowpass_mse(plain, x, gd)).all()
    hp = lambda z: z - gd.lowpass_filter(z)  # noqa: E731
    assert (hp(guided) - hp(x)).abs().mean() > 0.05


def test_hook_is_differentiable_in_the_ddim_chain(purifier: Purifier) -> None:
    x = _scene(1, 7).requires_grad_(True)
    noise = purifier.forward_noise(x, seeds=[0])
    y = purifier.purify_differentiable(x, t_star=30, steps=3, noise=noise, guidance=LowFreqGuidance(scale=0.3))
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    purifier.unet.zero_grad(set_to_none=True)

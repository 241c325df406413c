"""Reverse samplers for the purifier: t* resolution, DDIM steps, a differentiable DDIM chain.

DDIM (Song, Meng & Ermon, arXiv 2010.02502, eq. 12) runs the reverse process on a
sub-sequence tau_k = t* > ... > tau_1 of the training timesteps with the same trained
epsilon model: with abar = ``alphas_cumprod``,

    x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)          (clipped to [-1, 1])
    x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps + sigma z,
    sigma  = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev),

and abar_prev = 1 after the last step (diffusers' ``set_alpha_to_one``), so the chain ends
on the clean estimate. eta = 0 is deterministic given x_t*; eta = 1 is DDPM-like.
:func:`ddim_step` is this update in plain torch (equal to diffusers'
``DDIMScheduler.step`` wherever that one is defined, i.e. for a fixed stride T // n, but
for any pair (t, t_prev)); :func:`ddim_purify_differentiable` chains it with autograd on
for adaptive attacks (Athalye et al., arXiv 1802.00420, full-gradient attacks on
purification).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal, Protocol

import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

if TYPE_CHECKING:
    from udcguard.purify.diffusion import Purifier

#: DDIM steps when ``steps`` is not given: min(t*, this).
DEFAULT_DDIM_STEPS = 10

Sampler = Literal["ddpm", "ddim"]
Clamp = Literal["straight_through", "plain"]


class Guidance(Protocol):
    """Hook called after every reverse step (both samplers, tiled or not), GDMP-style
    (Wang et al., arXiv 2205.14969): returns the (possibly corrected) sample.

    Args:
        z: the sample just produced, in model space, at timestep ``t`` (``t = -1`` after the
            final step: the clean estimate).
        z_ref: the input being purified in model space ([-1, 1], padded like ``z``).
        t: the timestep ``z`` is at (-1 after the final step).
        abar: alphas_cumprod at ``t`` (1.0 for ``t = -1``); the reference diffused to ``t``
            has mean ``sqrt(abar) * z_ref``.

    Shape:
        z, z_ref (B, 3, H, W) -> (B, 3, H, W). Called under ``torch.no_grad`` by
        ``Purifier.purify`` (use ``torch.enable_grad()`` inside for autograd-based guidance).
    """

    def __call__(self, z: torch.Tensor, *, z_ref: torch.Tensor, t: int, abar: float) -> torch.Tensor: ...


def resolve_t_star(t: int | float, num_train_timesteps: int) -> int:
    """The integer diffusion timestep t* of a purification strength.

    Args:
        t: an integer timestep in [0, T - 1], or a float fraction f in [0, 1) of the
            schedule, mapped to ``round(f * (T - 1))`` (0.1 of T = 1000 -> 100; 0.0 -> 0).
            A float >= 1 is rejected (pass timesteps as ints).
        num_train_timesteps: T.

    Raises:
        ValueError: a bool, a non-number, an int outside [0, T - 1], a float outside [0, 1).
    """
    n = int(num_train_timesteps)
    if isinstance(t, bool) or not isinstance(t, int | float) and not hasattr(t, "__index__"):
        raise ValueError(f"t_star must be an int timestep or a float fraction in [0, 1), got {t!r}")
    if isinstance(t, float):
        if not (math.isfinite(t) and 0.0 <= t < 1.0):
            raise ValueError(
                f"t_star={t!r}: a float t_star is a fraction of the schedule in [0, 1); "
                f"pass an int timestep in [0, {n - 1}] otherwise"
            )
        return int(round(t * (n - 1)))
    ti = int(t)
    if not 0 <= ti < n:
        raise ValueError(f"t_star={ti} must lie in [0, {n - 1}] (T = {n} training timesteps)")
    return ti


def ddim_timesteps(t_star: int, steps: int) -> list[int]:
    """Evenly spaced DDIM sub-sequence starting exactly at t*: ``round(t* j / k)`` for
    j = k, ..., 1 (strictly decreasing; the step after the last goes to the clean sample).

    Raises:
        ValueError: ``steps`` not in [1, t*] (t* >= 1).
    """
    if not 1 <= steps <= t_star:
        raise ValueError(f"DDIM steps={steps} must lie in [1, t_star={t_star}]")
    return [int(round(t_star * j / steps)) for j in range(steps, 0, -1)]


def unet_calls(t_star: int, *, sampler: Sampler = "ddpm", steps: int | None = None) -> int:
    """UNet evaluations per (tile of a) purification: DDPM t* + 1 (t*, ..., 0), DDIM k."""
    if t_star == 0:
        return 0
    if sampler == "ddpm":
        return t_star + 1
    return steps if steps is not None else min(t_star, DEFAULT_DDIM_STEPS)


def _abar(alphas_cumprod: torch.Tensor, t: int, like: torch.Tensor) -> torch.Tensor:
    """alphas_cumprod[t] (1 for t < 0) as a 0-dim tensor of ``like``'s device and dtype."""
    a = alphas_cumprod[t] if t >= 0 else torch.tensor(1.0)
    return a.to(device=like.device, dtype=like.dtype)


def _clamp(x: torch.Tensor, lo: float, hi: float, mode: Clamp) -> torch.Tensor:
    if mode == "plain":
        return x.clamp(lo, hi)
    return x + (x.clamp(lo, hi) - x).detach()  # clamped value, identity gradient


def ddim_step(
    eps: torch.Tensor,
    z: torch.Tensor,
    t: int,
    t_prev: int,
    alphas_cumprod: torch.Tensor,
    *,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    clip_sample: float | None = 1.0,
    clamp: Clamp = "plain",
) -> torch.Tensor:
    """One DDIM update x_t -> x_{t_prev} (module docstring; eq. 12 of arXiv 2010.02502).

    Args:
        eps: predicted noise eps_theta(z, t).
        z: current sample x_t in model space.
        t, t_prev: current and target timesteps, t > t_prev >= -1 (-1: abar_prev = 1).
        alphas_cumprod: the schedule's abar (T,).
        eta: DDIM stochasticity; > 0 needs ``noise``.
        noise: standard normal (like ``z``), used only when eta > 0.
        clip_sample: clip x0_hat to [-c, c] (diffusers' ``clip_sample_range``); None: no clip.
        clamp: "plain" (exact gradient: zero where clipped) or "straight_through" (the
            clipped value forward, identity gradient backward).

    Shape:
        eps, z, noise (B, C, H, W) -> (B, C, H, W).
    """
    a_t, a_prev = _abar(alphas_cumprod, t, z), _abar(alphas_cumprod, t_prev, z)
    x0 = (z - (1 - a_t) ** 0.5 * eps) / a_t**0.5
    if clip_sample is not None:
        x0 = _clamp(x0, -clip_sample, clip_sample, clamp)
    sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
    out = a_prev**0.5 * x0 + (1 - a_prev - sigma**2) ** 0.5 * eps
    if eta > 0:
        if noise is None:
            raise ValueError("ddim_step with eta > 0 needs noise")
        out = out + sigma * noise
    return out


def ddim_purify_differentiable(
    purifier: Purifier,
    x: torch.Tensor,
    *,
    t_star: int | float,
    steps: int | None = None,
    noise: torch.Tensor,
    checkpoint: bool = True,
    clamp: Clamp = "straight_through",
    guidance: Guidance | None = None,
) -> torch.Tensor:
    """Purify with an eta = 0 DDIM chain, differentiable w.r.t. ``x`` (adaptive attacks).

    x_t* = sqrt(abar_t*) (2x - 1) + sqrt(1 - abar_t*) noise, then k :func:`ddim_step` s
    with autograd on. The caller owns the randomness: with
    ``noise = purifier.forward_noise(x, seeds=s)`` the result equals
    ``purifier.purify(x, t_star=t_star, sampler="ddim", steps=steps, seeds=s)`` (to float
    round-off); draw fresh ``noise`` per iteration for EOT.

    Args:
        purifier: the :class:`~udcguard.purify.diffusion.Purifier` (its UNet, schedule,
            speed options). The UNet is put in eval mode for the call and restored. Its
            parameters keep their ``requires_grad``: freeze them (``unet.requires_grad_(False)``)
            so that backward does not also compute weight gradients.
        x: images in [0, 1] (may require grad); any H, W (padded as ``purify`` does).
        t_star: int timestep or float fraction (:func:`resolve_t_star`); 0: identity.
        steps: DDIM steps k in [1, t*]; default min(t*, ``DEFAULT_DDIM_STEPS``).
        noise: forward-process noise of the padded shape (``purifier.forward_noise``),
            on any device (moved to the model's).
        checkpoint: wrap every UNet call in ``torch.utils.checkpoint`` (non-reentrant):
            activations are recomputed in backward, so the graph keeps only a few
            (B, 3, H, W) tensors per step (the step's input, the clip masks) instead of the
            UNet's activations. Ignored when grad is disabled.
        clamp: how the x0_hat clip to [-1, 1] (when the schedule has ``clip_sample``) and the
            final clip to [0, 1] differentiate: "straight_through" (default; values are
            clipped, gradients pass as identity: BPDA for the clips) or "plain" (exact
            gradient of the clipped function, zero where clipped).
        guidance: optional :class:`Guidance` hook after every step (autograd flows through).

    Returns:
        purified images in [0, 1], on ``x``'s device and dtype, attached to ``x``'s graph.

    Shape:
        (B, 3, H, W) -> (B, 3, H, W). Cost: k UNet calls forward, about 2k backward with
        checkpointing.
    """
    t_star = resolve_t_star(t_star, purifier.num_train_timesteps)
    if t_star == 0:
        return x.clone()
    steps = steps if steps is not None else min(t_star, DEFAULT_DDIM_STEPS)
    ts = ddim_timesteps(t_star, steps)
    device, dtype = purifier.place
    xp, (h, w) = purifier.pad(x.to(device=device, dtype=dtype))  # (B, 3, H', W')
    if tuple(noise.shape) != tuple(xp.shape):
        raise ValueError(f"noise {tuple(noise.shape)} must have the padded shape {tuple(xp.shape)}")
    sched = purifier.ddim_scheduler
    acp, clip = sched.alphas_cumprod, (sched.config.clip_sample_range if sched.config.clip_sample else None)
    z_ref = xp * 2.0 - 1.0
    a = _abar(acp, t_star, z_ref)
    z = a**0.5 * z_ref + (1 - a) ** 0.5 * noise.to(device=device, dtype=dtype)
    was_training = purifier.unet.training
    purifier.unet.eval()
    use_ckpt = checkpoint and torch.is_grad_enabled()
    try:
        for t, t_prev in zip(ts, ts[1:] + [-1]):
            tt = torch.tensor(t, device=device)
            eps = _checkpoint(purifier.eps, z, tt, use_reentrant=False) if use_ckpt else purifier.eps(z, tt)
            z = ddim_step(eps, z, t, t_prev, acp, clip_sample=clip, clamp=clamp)
            if guidance is not None:
                z = guidance(z, z_ref=z_ref, t=t_prev, abar=float(_abar(acp, t_prev, z)))
    finally:
        purifier.unet.train(was_training)
    y = _clamp((z[..., :h, :w] + 1.0) / 2.0, 0.0, 1.0, clamp)
    return y.to(device=x.device, dtype=x.dtype)

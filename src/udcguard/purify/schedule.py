"""The maths of purification, free of models: t*, the DDPM and DDIM reverse steps, model space.

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
for any pair (t, t_prev)). The DDPM step is diffusers' own ``DDPMScheduler.step``
(:class:`~udcguard.purify.purifier.Purifier`); :func:`reverse_timesteps` gives the (t, t_prev)
pairs of either chain.

This module imports nothing else from :mod:`udcguard.purify` (nor diffusers): the UNet
(:mod:`~udcguard.purify.unet`) and the loop (:mod:`~udcguard.purify.purifier`) build on it.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

#: DDIM steps when ``steps`` is not given: min(t*, this).
DEFAULT_DDIM_STEPS = 10

Sampler = Literal["ddpm", "ddim"]
Clamp = Literal["straight_through", "plain"]


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


def abar_at(alphas_cumprod: torch.Tensor, t: int, like: torch.Tensor) -> torch.Tensor:
    """alphas_cumprod[t] (1 for t < 0) as a 0-dim tensor of ``like``'s device and dtype."""
    a = alphas_cumprod[t] if t >= 0 else torch.tensor(1.0)
    return a.to(device=like.device, dtype=like.dtype)


def clamp_values(x: torch.Tensor, lo: float, hi: float, mode: Clamp) -> torch.Tensor:
    """Clip to [lo, hi]; "plain": the exact gradient (0 where clipped), "straight_through": identity gradient."""
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
    a_t, a_prev = abar_at(alphas_cumprod, t, z), abar_at(alphas_cumprod, t_prev, z)
    x0 = (z - (1 - a_t) ** 0.5 * eps) / a_t**0.5
    if clip_sample is not None:
        x0 = clamp_values(x0, -clip_sample, clip_sample, clamp)
    sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
    out = a_prev**0.5 * x0 + (1 - a_prev - sigma**2) ** 0.5 * eps
    if eta > 0:
        if noise is None:
            raise ValueError("ddim_step with eta > 0 needs noise")
        out = out + sigma * noise
    return out


def reverse_timesteps(t_star: int, sampler: Sampler, steps: int | None = None) -> list[tuple[int, int]]:
    """(t, t_prev) of every reverse step from t*: "ddpm" t*, t* - 1, ..., 0 (each to t - 1);
    "ddim" :func:`ddim_timesteps` (each to the next one, the last to -1: the clean sample).

    Raises:
        ValueError: an unknown sampler, or DDIM ``steps`` outside [1, t*].
    """
    if sampler == "ddpm":
        return [(t, t - 1) for t in range(t_star, -1, -1)]
    if sampler != "ddim":
        raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")
    ts = ddim_timesteps(t_star, min(t_star, DEFAULT_DDIM_STEPS) if steps is None else int(steps))
    return list(zip(ts, [*ts[1:], -1], strict=True))


def to_model_space(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> [-1, 1] model space (2x - 1)."""
    return x * 2.0 - 1.0


def from_model_space(z: torch.Tensor) -> torch.Tensor:
    """[-1, 1] model space -> [0, 1] images ((z + 1) / 2, clamped)."""
    return ((z + 1.0) / 2.0).clamp(0.0, 1.0)

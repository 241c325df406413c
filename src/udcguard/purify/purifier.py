"""Diffusion purification, DiffPure-style, with one reverse loop for every use.

DiffPure (Nie et al., ICML 2022, arXiv 2205.07460): diffuse the (possibly attacked) input
forward to a timestep t*, x_t* = sqrt(abar_t*) z0 + sqrt(1 - abar_t*) eps, then run the
reverse process back to t = 0. Small adversarial perturbations drown in the Gaussian noise
and the reverse process projects the sample back towards the data manifold. Song et al.
(arXiv 2402.13629) apply this to UDC inputs with a DDPM.

:class:`Purifier` holds the trained epsilon UNet (:mod:`udcguard.purify.unet`) and its DDPM
schedule. Its :meth:`Purifier._reverse` is the only reverse loop: the sampler's step
(diffusers' ``DDPMScheduler.step``, or :func:`~udcguard.purify.schedule.ddim_step`), the
epsilon function (plain, tiled in lockstep by :mod:`udcguard.purify.tiling`, or checkpointed
under autograd) and an optional :class:`Guidance` hook are its arguments. :meth:`Purifier.purify`
(no gradient; DDPM or DDIM; chunks, seeds, tiles) and :meth:`Purifier.purify_differentiable`
(the eta-0 DDIM chain with autograd, for adaptive attacks) share it, and share one place for
the checks, the padding and the forward noise.

Conventions: images are NCHW float32 in [0, 1] (tone-mapped); the model works in
[-1, 1] (:func:`~udcguard.purify.schedule.to_model_space`). Randomness comes only from the
``torch.Generator``\\ s passed in (or the noise given); the order of draws is documented on
:meth:`Purifier.purify` so that a hand-written loop over diffusers reproduces it exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor
from torch.utils.checkpoint import checkpoint as _checkpoint

from udcguard.models.base import pad_to_multiple
from udcguard.purify.schedule import (
    DEFAULT_DDIM_STEPS,
    Clamp,
    Sampler,
    clamp_values,
    ddim_step,
    ddim_timesteps,
    from_model_space,
    resolve_t_star,
    reverse_timesteps,
    to_model_space,
)
from udcguard.purify.tiling import check_tile, tiled_eps
from udcguard.purify.unet import model_place, unet_divisor

Generators = torch.Generator | list[torch.Generator]
EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: (eps, t, t_prev, z_t) -> z_{t_prev}: one reverse step of a sampler
StepFn = Callable[[torch.Tensor, torch.Tensor, int, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ReverseStep:
    """The step a guidance hook follows: the sample before it and the model's prediction there.

    Attributes:
        z_t: the sample at ``t``, before the step (model space).
        eps: eps_theta(z_t, t), as the loop used it (blended over tiles when tiling).
        t: the step's timestep.
        abar_t: alphas_cumprod at ``t``.
        eps_fn: z -> eps_theta(z, t) (untiled), for guidance that differentiates the UNet.
        clip: the schedule's x0 clip range (None: no clip).
    """

    z_t: torch.Tensor
    eps: torch.Tensor
    t: int
    abar_t: float
    eps_fn: Callable[[torch.Tensor], torch.Tensor]
    clip: float | None


class Guidance(Protocol):
    """Hook called after every reverse step (both samplers, tiled or not, with or without
    gradients), GDMP-style (Wang et al., arXiv 2205.14969): returns the (possibly corrected) sample.

    Args:
        z: the sample just produced, in model space, at timestep ``t`` (``t = -1`` after the
            final step: the clean estimate).
        z_ref: the input being purified in model space ([-1, 1], padded like ``z``).
        t: the timestep ``z`` is at (-1 after the final step).
        abar: alphas_cumprod at ``t`` (1.0 for ``t = -1``); the reference diffused to ``t``
            has mean ``sqrt(abar) * z_ref``.
        step: the step that produced ``z`` (:class:`ReverseStep`: the previous sample, eps).

    Shape:
        z, z_ref (B, 3, H, W) -> (B, 3, H, W). Called under ``torch.no_grad`` by
        :meth:`Purifier.purify` (use ``torch.enable_grad()`` inside for autograd-based guidance).
    """

    def __call__(self, z: torch.Tensor, *, z_ref: torch.Tensor, t: int, abar: float,
                 step: ReverseStep) -> torch.Tensor: ...


def _seed_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    return [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]


class Purifier:
    """DiffPure purification (Nie et al., arXiv 2205.07460): noise the input to t*, then run
    a reverse sampler back to t = 0 with the trained epsilon UNet. Samplers: "ddpm", the
    ancestral chain of Ho et al. (arXiv 2006.11239) over every timestep t*, ..., 0; "ddim"
    (Song et al., arXiv 2010.02502), k steps on an evenly spaced sub-sequence from t*
    (:mod:`udcguard.purify.schedule`), using the same betas (``DDIMScheduler.from_config``).

    Args:
        unet: epsilon-predicting ``UNet2DModel`` (3 -> 3 channels); its device and dtype
            are used for all computation.
        scheduler: the ``DDPMScheduler`` the model was trained with. ``purify`` calls its
            ``set_timesteps`` (the scheduler is the purifier's own state).
        channels_last: run the UNet in channels-last memory format (the UNet's parameters
            are converted on first use; epsilon comes back contiguous). On any device: on a
            CPU it makes the tiny UNet's forward about 1.4x and forward + backward 1.2x faster
            (oneDNN's NHWC kernels; equal to the contiguous call up to float rounding).
        autocast: "bf16" or "fp16" mixed precision for the UNet call only (epsilon is cast
            back to the UNet's dtype; the sampler update stays in full precision); None: off.
        compile: ``torch.compile`` the UNet (compiled on first use, then reused).

    ``autocast`` and ``compile`` act only when the UNet is on CUDA; on the CPU the UNet runs
    in fp32, eager, through the same code path.
    """

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler: DDPMScheduler,
        *,
        channels_last: bool = False,
        autocast: Literal["bf16", "fp16"] | None = None,
        compile: bool = False,
    ) -> None:
        if autocast not in (None, "bf16", "fp16"):
            raise ValueError(f"autocast must be 'bf16', 'fp16' or None, got {autocast!r}")
        self.unet = unet
        self.scheduler = scheduler
        self.channels_last, self.autocast, self.compile = bool(channels_last), autocast, bool(compile)
        self._ddim: DDIMScheduler | None = None
        self._compiled: torch.nn.Module | None = None
        self._nhwc = False

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def place(self) -> tuple[torch.device, torch.dtype]:
        """The UNet's (device, dtype)."""
        return model_place(self.unet)

    @property
    def ddim_scheduler(self) -> DDIMScheduler:
        """A ``DDIMScheduler`` with the DDPM schedule's config (same betas, clip_sample)."""
        if self._ddim is None:
            self._ddim = DDIMScheduler.from_config(self.scheduler.config)
        return self._ddim

    @property
    def clip(self) -> float | None:
        """The x0 clip range of the schedule (``clip_sample_range``), None without a clip."""
        config = self.scheduler.config
        return float(config.clip_sample_range) if config.clip_sample else None

    def _check_t(self, t_star: int | float) -> int:
        return resolve_t_star(t_star, self.num_train_timesteps)

    def pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Pad H and W up to the UNet's factor (:func:`~udcguard.models.base.pad_to_multiple`:
        reflect at the bottom and right, replicate when the image is smaller than the pad).
        Returns the padded images and (H, W).

        Shape:
            (B, C, H, W) -> (B, C, H + ph, W + pw).
        """
        return pad_to_multiple(x, unet_divisor(self.unet)), tuple(x.shape[-2:])

    def forward_noise(
        self, x: torch.Tensor, *, seeds: Sequence[int] | None = None, generator: Generators | None = None
    ) -> torch.Tensor:
        """The forward-process noise ``purify`` draws for ``x`` (in one chunk): with ``seeds``,
        one (1, 3, H', W') draw per image from ``Generator("cpu").manual_seed(seed)``.

        Shape:
            (B, 3, H, W) -> (B, 3, H', W') (padded), on the UNet's device and dtype.
        """
        if (generator is None) == (seeds is None):
            raise ValueError("pass exactly one of generator= or seeds=")
        device, dtype = self.place
        h, w = x.shape[-2:]
        k = unet_divisor(self.unet)
        shape = (x.shape[0], x.shape[1], h + (-h % k), w + (-w % k))
        gens = _seed_generators(seeds) if seeds is not None else generator
        return randn_tensor(shape, generator=gens, device=device, dtype=dtype)

    def eps(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """epsilon_theta(z, t), with the speed options (autocast and compile on CUDA only).

        Shape:
            (B, 3, H, W), t 0-dim or (B,) -> (B, 3, H, W) contiguous, in ``z``'s dtype.
        """
        cuda = z.device.type == "cuda"
        if self.channels_last and not self._nhwc:
            self.unet.to(memory_format=torch.channels_last)
            self._nhwc = True
        net = self.unet
        if cuda and self.compile:
            if self._compiled is None:
                self._compiled = torch.compile(self.unet)
            net = self._compiled
        zin = z.contiguous(memory_format=torch.channels_last) if self.channels_last else z
        if self.autocast is None or not cuda:
            out = net(zin, t).sample
        else:
            with torch.autocast("cuda", dtype=torch.bfloat16 if self.autocast == "bf16" else torch.float16):
                out = net(zin, t).sample
        return out.to(z.dtype).contiguous()

    def noised(self, z0: torch.Tensor, noise: torch.Tensor, t_star: int) -> torch.Tensor:
        """Forward process q(x_t* | x_0) in model space: sqrt(abar) z0 + sqrt(1 - abar) noise
        (``scheduler.add_noise``; differentiable w.r.t. ``z0``). Shape: (B, 3, H, W) x2 -> (B, 3, H, W)."""
        t = torch.full((z0.shape[0],), self._check_t(t_star), dtype=torch.long, device=z0.device)
        return self.scheduler.add_noise(z0, noise, t)

    def diffuse(self, z0: torch.Tensor, *, t_star: int, generator: Generators) -> torch.Tensor:
        """:meth:`noised` with eps drawn by diffusers' ``randn_tensor(z0.shape, generator=generator)``
        (one (1, 3, H, W) draw per image when ``generator`` is a list, one per image).

        Shape:
            (B, 3, H, W) in [-1, 1] -> (B, 3, H, W).
        """
        eps = randn_tensor(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
        return self.noised(z0, eps, t_star)

    def _reverse(self, z: torch.Tensor, z_ref: torch.Tensor, timesteps: list[tuple[int, int]], step: StepFn,
                 eps_fn: EpsFn, guidance: Guidance | None = None) -> torch.Tensor:
        """The reverse chain: for each (t, t_prev), eps = eps_fn(z, t), z = step(eps, t, t_prev, z),
        then the guidance hook. Gradients flow iff autograd is on (the caller decides).

        Shape: z, z_ref (B, 3, H', W') in model space -> (B, 3, H', W').
        """
        acp = self.ddim_scheduler.alphas_cumprod
        for t, t_prev in timesteps:
            tt = torch.tensor(t, device=z.device)
            eps = eps_fn(z, tt)
            z_prev = step(eps, tt, t_prev, z)
            if guidance is not None:
                info = ReverseStep(z_t=z, eps=eps, t=t, abar_t=float(acp[t]), clip=self.clip,
                                   eps_fn=lambda q, tt=tt: self.eps(q, tt))
                z_prev = guidance(z_prev, z_ref=z_ref, t=t_prev, abar=float(acp[t_prev]) if t_prev >= 0 else 1.0,
                                  step=info)
            z = z_prev
        return z

    def _step(self, sampler: Sampler, *, eta: float = 0.0, generator: Generators | None = None,
              clamp: Clamp = "plain") -> StepFn:
        """The update of one reverse step: diffusers' DDPM ``scheduler.step`` (one draw from
        ``generator`` per step with t > 0) or :func:`ddim_step` (a draw per step only when eta > 0)."""
        if sampler == "ddpm":
            self.scheduler.set_timesteps(self.num_train_timesteps)  # full schedule T-1 .. 0

            def ddpm(eps: torch.Tensor, t: torch.Tensor, t_prev: int, z: torch.Tensor) -> torch.Tensor:
                return self.scheduler.step(eps, t, z, generator=generator).prev_sample
            return ddpm
        acp, clip = self.ddim_scheduler.alphas_cumprod, self.clip

        def ddim(eps: torch.Tensor, t: torch.Tensor, t_prev: int, z: torch.Tensor) -> torch.Tensor:
            noise = randn_tensor(z.shape, generator=generator, device=z.device, dtype=z.dtype) if eta > 0 else None
            return ddim_step(eps, z, int(t), t_prev, acp, eta=eta, noise=noise, clip_sample=clip, clamp=clamp)
        return ddim

    def _check(self, x: torch.Tensor, t_star: int | float, sampler: str, steps: int | None, eta: float) -> tuple[int, int | None]:
        """The checks every purification makes; returns (t*, DDIM steps or None)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W) images, got {tuple(x.shape)}")
        if sampler not in ("ddpm", "ddim"):
            raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")
        if sampler == "ddpm" and (steps is not None or eta != 0.0):
            raise ValueError("steps= and eta= apply to sampler='ddim' only")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        t_star = self._check_t(t_star)
        if sampler == "ddim" and t_star > 0:
            steps = min(t_star, DEFAULT_DDIM_STEPS) if steps is None else int(steps)
            ddim_timesteps(t_star, steps)  # validates steps
        return t_star, steps

    @torch.no_grad()
    def purify(
        self,
        x: torch.Tensor,
        *,
        t_star: int | float,
        sampler: Sampler = "ddpm",
        steps: int | None = None,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        seeds: Sequence[int] | None = None,
        batch_size: int | None = None,
        tile: int | None = None,
        overlap: int | None = None,
        guidance: Guidance | None = None,
    ) -> torch.Tensor:
        """Purify images: diffuse to ``t_star``, then a reverse sampler back to 0.

        Randomness, exactly: for each chunk of ``batch_size`` images, in order,
        ``x_t* = scheduler.add_noise(2x - 1, eps, t*)`` with
        ``eps = randn_tensor(shape, generator)`` (:meth:`forward_noise`); then per reverse
        step, "ddpm": for t = t*, ..., 0 (the timesteps <= t* of
        ``scheduler.set_timesteps(T)``) ``z = scheduler.step(unet(z, t).sample, t, z,
        generator=generator).prev_sample`` (which draws once per step with t > 0); "ddim":
        :func:`~udcguard.purify.schedule.ddim_step` on ``ddim_timesteps(t*, k)``, drawing
        ``randn_tensor(shape, generator)`` once per step only when eta > 0. A CPU generator
        works with a model on any device (noise is drawn on the CPU and moved).

        With ``generator``, the draws of one chunk follow those of the previous chunk, so
        the result depends on ``batch_size``. With ``seeds`` (preferred), image i gets its
        own ``torch.Generator("cpu").manual_seed(seeds[i])``: the result is independent of
        ``batch_size`` and of the other images in the batch (up to float round-off of
        batched convolutions, ~1e-6), and equals purifying image i alone with
        ``generator=torch.Generator().manual_seed(seeds[i])``.

        Args:
            x: images in [0, 1].
            t_star: diffusion timestep t* in [0, T - 1] (int, out of T = 1000 by default)
                or a float fraction of the schedule in [0, 1)
                (:func:`~udcguard.purify.schedule.resolve_t_star`); 0 returns a clone of
                ``x`` (exact identity for every sampler, no randomness used).
            sampler: "ddpm" (t* + 1 UNet calls) or "ddim" (``steps`` UNet calls).
            steps: DDIM steps k in [1, t*]; default min(t*, 10). DDIM only.
            eta: DDIM stochasticity (0: deterministic given x_t*; 1: DDPM-like). DDIM only.
            generator: one generator for the whole batch (exclusive with ``seeds``).
            seeds: one integer seed per image (exclusive with ``generator``).
            batch_size: images per chunk (and, when tiling, tiles per UNet call); default
                all at once.
            tile: tile side in px (a multiple of the UNet's factor ``2 ** (levels - 1)``);
                None: whole images. Tiles run in lockstep with blended epsilons and one
                full-image step (:mod:`udcguard.purify.tiling`): the noise and the result
                do not depend on the tiling's batching, and a tile covering the padded
                image gives exactly the untiled result.
            overlap: blend width between tiles in px, 0 <= overlap < tile; default tile // 4.
            guidance: optional :class:`Guidance` hook applied to the full-image sample after
                every reverse step (e.g. :class:`~udcguard.purify.guidance.LowFreqGuidance`).

        Returns:
            purified images in [0, 1], on ``x``'s device and dtype. H and W need not be
            divisible by the UNet's factor: the input is reflect-padded at the bottom and
            right (replicate if smaller than the pad) and the result cropped back.

        Shape:
            (B, 3, H, W) -> (B, 3, H, W). Cost: ``unet_calls(t*, sampler=..., steps=...)``
            UNet calls per chunk (per tile when tiling).
        """
        t_star, steps = self._check(x, t_star, sampler, steps, eta)
        if (generator is None) == (seeds is None) and t_star != 0:
            raise ValueError("pass exactly one of generator= or seeds=")
        if seeds is not None and len(seeds) != x.shape[0]:
            raise ValueError(f"{len(seeds)} seeds for {x.shape[0]} images")
        if tile is not None:
            overlap = tile // 4 if overlap is None else int(overlap)
            check_tile(int(tile), overlap, unet_divisor(self.unet))
        if t_star == 0:
            return x.clone()
        device, dtype = self.place
        gens = _seed_generators(seeds) if seeds is not None else None
        bs = batch_size or x.shape[0]
        timesteps = reverse_timesteps(t_star, sampler, steps)
        eps_fn = self.eps if tile is None else (
            lambda z, t: tiled_eps(self.eps, z, t, tile=tile, overlap=overlap or 0, max_tiles=batch_size))
        was_training = self.unet.training
        self.unet.eval()
        try:
            outs = []
            for i in range(0, x.shape[0], bs):
                xi, (h, w) = self.pad(x[i : i + bs].to(device=device, dtype=dtype))  # (b, 3, H', W')
                g = gens[i : i + bs] if gens is not None else generator
                z_ref = to_model_space(xi)
                zt = self.diffuse(z_ref, t_star=t_star, generator=g)
                zi = self._reverse(zt, z_ref, timesteps, self._step(sampler, eta=eta, generator=g), eps_fn, guidance)
                outs.append(from_model_space(zi)[..., :h, :w])
        finally:
            self.unet.train(was_training)
        return torch.cat(outs).to(device=x.device, dtype=x.dtype)

    def purify_differentiable(
        self,
        x: torch.Tensor,
        *,
        t_star: int | float,
        steps: int | None = None,
        noise: torch.Tensor,
        checkpoint: bool = True,
        clamp: Clamp = "straight_through",
        guidance: Guidance | None = None,
    ) -> torch.Tensor:
        """Purify with an eta = 0 DDIM chain, differentiable w.r.t. ``x`` (adaptive attacks:
        Athalye et al., arXiv 1802.00420, full gradients through the purification).

        x_t* = sqrt(abar_t*) (2x - 1) + sqrt(1 - abar_t*) noise, then k DDIM steps of
        :meth:`_reverse` with autograd on. The caller owns the randomness: with
        ``noise = purifier.forward_noise(x, seeds=s)`` the result equals
        ``purifier.purify(x, t_star=t_star, sampler="ddim", steps=steps, seeds=s)`` (to float
        round-off); draw fresh ``noise`` per iteration for EOT.

        Args:
            x: images in [0, 1] (may require grad); any H, W (padded as ``purify`` does).
            t_star: int timestep or float fraction (:func:`~udcguard.purify.schedule.resolve_t_star`);
                0: identity.
            steps: DDIM steps k in [1, t*]; default min(t*, ``DEFAULT_DDIM_STEPS``).
            noise: forward-process noise of the padded shape (:meth:`forward_noise`), on any
                device (moved to the model's).
            checkpoint: wrap every UNet call in ``torch.utils.checkpoint`` (non-reentrant):
                activations are recomputed in backward, so the graph keeps only a few
                (B, 3, H, W) tensors per step (the step's input, the clip masks) instead of the
                UNet's activations. Ignored when grad is disabled.
            clamp: how the x0_hat clip to [-1, 1] (when the schedule has ``clip_sample``) and the
                final clip to [0, 1] differentiate: "straight_through" (default; values are
                clipped, gradients pass as identity: BPDA for the clips) or "plain" (exact
                gradient of the clipped function, zero where clipped).
            guidance: optional :class:`Guidance` hook after every step (autograd flows through).

        The UNet is put in eval mode for the call and restored. Its parameters keep their
        ``requires_grad``: freeze them (``unet.requires_grad_(False)``) so that backward does
        not also compute weight gradients.

        Returns:
            purified images in [0, 1], on ``x``'s device and dtype, attached to ``x``'s graph.

        Shape:
            (B, 3, H, W) -> (B, 3, H, W). Cost: k UNet calls forward, about 2k backward with
            checkpointing.
        """
        t_star, steps = self._check(x, t_star, "ddim", steps, 0.0)
        if t_star == 0:
            return x.clone()
        device, dtype = self.place
        xp, (h, w) = self.pad(x.to(device=device, dtype=dtype))  # (B, 3, H', W')
        if tuple(noise.shape) != tuple(xp.shape):
            raise ValueError(f"noise {tuple(noise.shape)} must have the padded shape {tuple(xp.shape)}")
        z_ref = to_model_space(xp)
        z = self.noised(z_ref, noise.to(device=device, dtype=dtype), t_star)
        use_ckpt = checkpoint and torch.is_grad_enabled()

        def eps_fn(q: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return _checkpoint(self.eps, q, t, use_reentrant=False) if use_ckpt else self.eps(q, t)

        was_training = self.unet.training
        self.unet.eval()
        try:
            z = self._reverse(z, z_ref, reverse_timesteps(t_star, "ddim", steps), self._step("ddim", clamp=clamp),
                              eps_fn, guidance)
        finally:
            self.unet.train(was_training)
        y = clamp_values((z[..., :h, :w] + 1.0) / 2.0, 0.0, 1.0, clamp)
        return y.to(device=x.device, dtype=x.dtype)

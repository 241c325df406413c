"""Diffusion purifier: a DDPM (Ho et al., arXiv 2006.11239) used DiffPure-style.

DiffPure (Nie et al., ICML 2022, arXiv 2205.07460): diffuse the (possibly attacked) input
forward to a timestep t*, x_t* = sqrt(abar_t*) z0 + sqrt(1 - abar_t*) eps, then run the
reverse process back to t = 0. Small adversarial perturbations drown in the Gaussian noise
and the reverse process projects the sample back towards the data manifold. Song et al.
(arXiv 2402.13629) apply this to UDC inputs with a DDPM.

The parts are diffusers' own (models, schedulers): a ``UNet2DModel`` predicting epsilon and
a ``DDPMScheduler``; :class:`Purifier` runs the reverse chain with ``scheduler.step`` (DDPM)
or a DDIM update on a short sub-sequence (:mod:`udcguard.purify.samplers`), optionally
tile by tile in lockstep (:mod:`udcguard.purify.tiling`).

Conventions: images are NCHW float32 in [0, 1] (tone-mapped); the model works in
[-1, 1] (:func:`to_model_space`). Randomness comes only from the ``torch.Generator``\\ s
passed in; the order of draws is documented on :meth:`Purifier.purify` so that a
hand-written loop over diffusers reproduces it exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

from udcguard.purify.samplers import (
    DEFAULT_DDIM_STEPS,
    Guidance,
    Sampler,
    ddim_purify_differentiable,
    ddim_step,
    ddim_timesteps,
    resolve_t_star,
)
from udcguard.purify.tiling import check_tile, tiled_eps

Generators = torch.Generator | list[torch.Generator]

#: Ho et al.'s 256 x 256 model (CelebA-HQ / LSUN; diffusers' ``google/ddpm-celebahq-256``):
#: base width 128, multipliers (1, 1, 2, 2, 4, 4), 2 residual blocks per level,
#: single-head self-attention at 16 x 16 and in the middle block, GroupNorm(32).
_HO256_CHANNELS = (128, 128, 256, 256, 512, 512)


def build_unet(
    *,
    sample_size: int = 64,
    block_out_channels: Sequence[int] = (32, 64, 64),
    layers_per_block: int = 1,
    attention: bool = False,
    norm_num_groups: int = 8,
    attention_levels: Sequence[int] | None = None,
) -> UNet2DModel:
    """An epsilon-predicting ``UNet2DModel`` with 3 input and 3 output channels.

    Args:
        sample_size: nominal training resolution in pixels (stored in the config; the
            network runs on any size divisible by ``2 ** (len(block_out_channels) - 1)``).
        block_out_channels: channel width per resolution level, full resolution first.
        layers_per_block: residual blocks per down level (up levels get one more).
        attention: add self-attention (single head) in the middle block and at the levels
            in ``attention_levels``.
        norm_num_groups: GroupNorm groups; must divide every width.
        attention_levels: level indices (0 = full resolution) whose blocks are
            ``AttnDownBlock2D`` / ``AttnUpBlock2D`` when ``attention``; default: the lowest
            resolution only.

    Shape:
        (B, 3, H, W) in model space [-1, 1] and integer timesteps (B,) or () -> (B, 3, H, W).
    """
    chans = tuple(int(c) for c in block_out_channels)
    n = len(chans)
    if n < 1 or any(c % norm_num_groups for c in chans):
        raise ValueError(f"block_out_channels {chans} must be non-empty and divisible by {norm_num_groups}")
    levels = set(attention_levels if attention_levels is not None else [n - 1]) if attention else set()
    if any(not 0 <= i < n for i in levels):
        raise ValueError(f"attention_levels {sorted(levels)} must lie in [0, {n - 1}]")
    down = tuple("AttnDownBlock2D" if i in levels else "DownBlock2D" for i in range(n))
    up = tuple("AttnUpBlock2D" if i in levels else "UpBlock2D" for i in reversed(range(n)))
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=3,
        out_channels=3,
        block_out_channels=chans,
        layers_per_block=layers_per_block,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=norm_num_groups,
        attention_head_dim=None,  # one head per block, as Ho et al.
        add_attention=attention,
    )


#: Named UNet sizes (``build_unet`` keyword arguments; parameter counts at 64 x 64, which
#: do not depend on the resolution for tiny / small).
#: tiny: 0.26 M parameters, for tests. small: 2.5 M, a laptop CPU. paper: see
#: :func:`_paper_kwargs` (113.7 M at 256 x 256, 71.4 M at 128, 28.5 M at 64, 17.6 M at 32);
#: the entry below is its 256 x 256 form.
UNET_PRESETS: dict[str, dict] = {
    "tiny": {"block_out_channels": (16, 32, 32), "layers_per_block": 1, "norm_num_groups": 8},
    "small": {"block_out_channels": (32, 64, 128), "layers_per_block": 1, "norm_num_groups": 8},
    "paper": {
        "block_out_channels": _HO256_CHANNELS,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "attention": True,
        "attention_levels": (4,),  # 256 / 2**4 = 16 x 16
    },
}


def _paper_kwargs(sample_size: int) -> dict:
    """Ho et al.'s 256 model scaled to ``sample_size``: as many of its levels (widths
    128, 128, 256, 256, 512, 512) as bring the lowest resolution down to 8 x 8 (all six at
    256 x 256: exactly ``google/ddpm-celebahq-256``), attention at the 16 x 16 level."""
    n = min(len(_HO256_CHANNELS), max(1, math.floor(math.log2(max(sample_size, 8) / 8)) + 1))
    attn = min(n - 1, max(0, round(math.log2(max(sample_size, 16) / 16))))
    return {**UNET_PRESETS["paper"], "block_out_channels": _HO256_CHANNELS[:n], "attention_levels": (attn,)}


def build_unet_preset(name: str, sample_size: int) -> UNet2DModel:
    """Build a named preset (``UNET_PRESETS``) for images of ``sample_size`` pixels."""
    if name not in UNET_PRESETS:
        raise ValueError(f"unknown UNet preset {name!r}; valid: {sorted(UNET_PRESETS)}")
    kwargs = _paper_kwargs(sample_size) if name == "paper" else UNET_PRESETS[name]
    return build_unet(sample_size=sample_size, **kwargs)


def make_scheduler(num_train_timesteps: int = 1000, beta_schedule: str = "linear") -> DDPMScheduler:
    """DDPM noise schedule (Ho et al.: linear betas 1e-4 .. 0.02 over T = 1000 steps).

    Epsilon prediction, predicted x0 clipped to [-1, 1], posterior variance "fixed_small".
    """
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=beta_schedule,
        clip_sample=True,
        prediction_type="epsilon",
    )


def to_model_space(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> [-1, 1] model space (2x - 1)."""
    return x * 2.0 - 1.0


def from_model_space(z: torch.Tensor) -> torch.Tensor:
    """[-1, 1] model space -> [0, 1] images ((z + 1) / 2, clamped)."""
    return ((z + 1.0) / 2.0).clamp(0.0, 1.0)


def _model_place(unet: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(unet.parameters())
    return p.device, p.dtype


def _divisor(unet: UNet2DModel) -> int:
    return 2 ** (len(unet.config.block_out_channels) - 1)


def diffusion_loss(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    x0: torch.Tensor,
    generator: torch.Generator,
    *,
    max_timestep: int | None = None,
) -> torch.Tensor:
    """DDPM training loss (Ho et al. eq. 14): E_{t, eps} || eps - eps_theta(x_t, t) ||^2.

    Draws, in order, from ``generator`` on its own device and then moved to the model's
    device: t ~ U{0, ..., T' - 1} of shape (B,) (``torch.randint``), then eps ~ N(0, I) of
    the shape of ``x0`` (``torch.randn``). T' = T, or ``max_timestep + 1`` when given: a
    purifier only ever runs the reverse chain from t* <= max_timestep, so its capacity can
    be spent on those noise levels (the schedule itself is unchanged).

    Args:
        unet: epsilon-predicting model; its device and dtype are used.
        scheduler: gives abar_t and T (``config.num_train_timesteps``).
        x0: clean training images in [0, 1]; H and W divisible by the UNet's
            downsampling factor ``2 ** (levels - 1)``.
        generator: source of t and eps.

    Shape:
        x0 (B, 3, H, W) -> scalar (mean over all elements).
    """
    k = _divisor(unet)
    if x0.shape[-2] % k or x0.shape[-1] % k:
        raise ValueError(f"training images {tuple(x0.shape)}: H and W must be divisible by {k}")
    device, dtype = _model_place(unet)
    b = x0.shape[0]
    n_t = scheduler.config.num_train_timesteps
    if max_timestep is not None:
        if not 0 <= max_timestep < n_t:
            raise ValueError(f"max_timestep={max_timestep} must lie in [0, {n_t - 1}]")
        n_t = max_timestep + 1
    t = torch.randint(0, n_t, (b,), generator=generator, device=generator.device)
    eps = torch.randn(x0.shape, generator=generator, device=generator.device, dtype=dtype)
    t, eps = t.to(device), eps.to(device)
    z0 = to_model_space(x0.to(device=device, dtype=dtype))  # (B, 3, H, W)
    zt = scheduler.add_noise(z0, eps, t)
    pred = unet(zt, t).sample
    return F.mse_loss(pred, eps)


def _seed_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    return [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]


class Purifier:
    """DiffPure purification (Nie et al., arXiv 2205.07460): noise the input to t*, then run
    a reverse sampler back to t = 0 with the trained epsilon UNet. Samplers: "ddpm", the
    ancestral chain of Ho et al. (arXiv 2006.11239) over every timestep t*, ..., 0; "ddim"
    (Song et al., arXiv 2010.02502), k steps on an evenly spaced sub-sequence from t*
    (:mod:`udcguard.purify.samplers`), using the same betas (``DDIMScheduler.from_config``).

    Args:
        unet: epsilon-predicting ``UNet2DModel`` (3 -> 3 channels); its device and dtype
            are used for all computation.
        scheduler: the ``DDPMScheduler`` the model was trained with. ``purify`` calls its
            ``set_timesteps`` (the scheduler is the purifier's own state).
        channels_last: run the UNet in channels-last memory format (the UNet's parameters
            are converted on first use).
        autocast: "bf16" or "fp16" mixed precision for the UNet call only (epsilon is cast
            back to the UNet's dtype; the sampler update stays in full precision); None: off.
        compile: ``torch.compile`` the UNet (compiled on first use, then reused).

    The three speed options act only when the UNet is on CUDA; on the CPU the UNet runs
    as is (fp32, eager, contiguous) through the same code path.
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
        self._cuda_unet: torch.nn.Module | None = None

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def place(self) -> tuple[torch.device, torch.dtype]:
        """The UNet's (device, dtype)."""
        return _model_place(self.unet)

    @property
    def ddim_scheduler(self) -> DDIMScheduler:
        """A ``DDIMScheduler`` with the DDPM schedule's config (same betas, clip_sample)."""
        if self._ddim is None:
            self._ddim = DDIMScheduler.from_config(self.scheduler.config)
        return self._ddim

    def _check_t(self, t_star: int | float) -> int:
        return resolve_t_star(t_star, self.num_train_timesteps)

    def pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Pad H and W up to the UNet's factor: reflect at the bottom and right (replicate
        when the image is smaller than the pad). Returns the padded images and (H, W).

        Shape:
            (B, C, H, W) -> (B, C, H + ph, W + pw).
        """
        h, w = x.shape[-2:]
        k = _divisor(self.unet)
        ph, pw = -h % k, -w % k
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        return x, (h, w)

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
        k = _divisor(self.unet)
        shape = (x.shape[0], x.shape[1], h + (-h % k), w + (-w % k))
        gens = _seed_generators(seeds) if seeds is not None else generator
        return randn_tensor(shape, generator=gens, device=device, dtype=dtype)

    def eps(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """epsilon_theta(z, t), with the speed options on CUDA (plain call elsewhere).

        Shape:
            (B, 3, H, W), t 0-dim or (B,) -> (B, 3, H, W) in ``z``'s dtype.
        """
        if z.device.type != "cuda":
            return self.unet(z, t).sample
        if self._cuda_unet is None:
            if self.channels_last:
                self.unet.to(memory_format=torch.channels_last)
            self._cuda_unet = torch.compile(self.unet) if self.compile else self.unet
        zin = z.contiguous(memory_format=torch.channels_last) if self.channels_last else z
        if self.autocast is None:
            return self._cuda_unet(zin, t).sample.to(z.dtype)
        amp = torch.bfloat16 if self.autocast == "bf16" else torch.float16
        with torch.autocast("cuda", dtype=amp):
            out = self._cuda_unet(zin, t).sample
        return out.to(z.dtype)

    def diffuse(self, z0: torch.Tensor, *, t_star: int, generator: Generators) -> torch.Tensor:
        """Forward process q(x_t* | x_0) in model space: sqrt(abar) z0 + sqrt(1 - abar) eps.

        eps is drawn by diffusers' ``randn_tensor(z0.shape, generator=generator)`` (one
        (1, 3, H, W) draw per image when ``generator`` is a list, one per image).

        Shape:
            (B, 3, H, W) in [-1, 1] -> (B, 3, H, W).
        """
        eps = randn_tensor(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
        t = torch.full((z0.shape[0],), self._check_t(t_star), dtype=torch.long, device=z0.device)
        return self.scheduler.add_noise(z0, eps, t)

    def _timesteps(self, t_star: int, sampler: str, steps: int | None) -> list[tuple[torch.Tensor, int]]:
        """(t, t_prev) pairs of the reverse chain; t_prev = -1 after the last step."""
        if sampler == "ddpm":
            self.scheduler.set_timesteps(self.num_train_timesteps)  # full schedule T-1 .. 0
            ts = list(self.scheduler.timesteps[self.scheduler.timesteps <= t_star])  # t*, ..., 0
        else:
            ts = [torch.tensor(t) for t in ddim_timesteps(t_star, steps)]
        return [(t, int(t) - 1 if sampler == "ddpm" else (int(ts[n + 1]) if n + 1 < len(ts) else -1))
                for n, t in enumerate(ts)]

    def _chain(self, z0: torch.Tensor, t_star: int, generator: Generators, *, sampler: str = "ddpm",
               steps: int | None = None, eta: float = 0.0, tile: int | None = None, overlap: int = 0,
               max_tiles: int | None = None, guidance: Guidance | None = None) -> torch.Tensor:
        zt = self.diffuse(z0, t_star=t_star, generator=generator)  # (b, 3, H', W')
        ddim = self.ddim_scheduler
        acp = ddim.alphas_cumprod
        clip = ddim.config.clip_sample_range if ddim.config.clip_sample else None
        for t, t_prev in self._timesteps(t_star, sampler, steps):
            if tile is None:
                eps = self.eps(zt, t)
            else:
                eps = tiled_eps(self.eps, zt, t, tile=tile, overlap=overlap, max_tiles=max_tiles)
            if sampler == "ddpm":
                zt = self.scheduler.step(eps, t, zt, generator=generator).prev_sample
            else:
                noise = (randn_tensor(zt.shape, generator=generator, device=zt.device, dtype=zt.dtype)
                         if eta > 0 else None)
                zt = ddim_step(eps, zt, int(t), t_prev, acp, eta=eta, noise=noise, clip_sample=clip)
            if guidance is not None:
                abar = float(acp[t_prev]) if t_prev >= 0 else 1.0
                zt = guidance(zt, z_ref=z0, t=t_prev, abar=abar)
        return zt

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
        :func:`~udcguard.purify.samplers.ddim_step` on ``ddim_timesteps(t*, k)``, drawing
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
                (:func:`~udcguard.purify.samplers.resolve_t_star`); 0 returns a clone of
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
            guidance: optional :class:`~udcguard.purify.samplers.Guidance` hook applied
                to the full-image sample after every reverse step.

        Returns:
            purified images in [0, 1], on ``x``'s device and dtype. H and W need not be
            divisible by the UNet's factor: the input is reflect-padded at the bottom and
            right (replicate if smaller than the pad) and the result cropped back.

        Shape:
            (B, 3, H, W) -> (B, 3, H, W). Cost: ``unet_calls(t*, sampler=..., steps=...)``
            UNet calls per chunk (per tile when tiling).
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W) images, got {tuple(x.shape)}")
        if sampler not in ("ddpm", "ddim"):
            raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")
        if sampler == "ddpm" and (steps is not None or eta != 0.0):
            raise ValueError("steps= and eta= apply to sampler='ddim' only")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        t_star = self._check_t(t_star)
        if (generator is None) == (seeds is None) and t_star != 0:
            raise ValueError("pass exactly one of generator= or seeds=")
        if seeds is not None and len(seeds) != x.shape[0]:
            raise ValueError(f"{len(seeds)} seeds for {x.shape[0]} images")
        if tile is not None:
            overlap = tile // 4 if overlap is None else int(overlap)
            check_tile(int(tile), overlap, _divisor(self.unet))
        if t_star == 0:
            return x.clone()
        if sampler == "ddim":
            steps = min(t_star, DEFAULT_DDIM_STEPS) if steps is None else int(steps)
            ddim_timesteps(t_star, steps)  # validates steps
        device, dtype = self.place
        gens = _seed_generators(seeds) if seeds is not None else None
        bs = batch_size or x.shape[0]
        was_training = self.unet.training
        self.unet.eval()
        try:
            outs = []
            for i in range(0, x.shape[0], bs):
                xi, (h, w) = self.pad(x[i : i + bs].to(device=device, dtype=dtype))  # (b, 3, H', W')
                g = gens[i : i + bs] if gens is not None else generator
                zi = self._chain(to_model_space(xi), t_star, g, sampler=sampler, steps=steps, eta=eta, tile=tile,
                                 overlap=overlap or 0, max_tiles=batch_size, guidance=guidance)
                outs.append(from_model_space(zi)[..., :h, :w])
        finally:
            self.unet.train(was_training)
        return torch.cat(outs).to(device=x.device, dtype=x.dtype)

    def purify_differentiable(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """:func:`~udcguard.purify.samplers.ddim_purify_differentiable` on this purifier."""
        return ddim_purify_differentiable(self, x, **kwargs)

r"""Adaptive attacks on a purified restorer: the defended model as one attackable callable.

A diffusion purifier (DiffPure, Nie et al., ICML 2022, arXiv 2205.07460) in front of a
restorer f gives the defended model g(x) = f(purify(x)). ``purify`` is stochastic (fresh
Gaussian noise at t* and, for DDPM, at every reverse step) and t* + 1 UNet calls deep, so
its gradient is either unavailable or expensive. Following Athalye et al., "Obfuscated
Gradients Give a False Sense of Security" (ICML 2018, arXiv 1802.00420) and Lee & Kim,
"Robust Evaluation of Diffusion-Based Adversarial Purification" (ICCV 2023,
arXiv 2301.06871), design.md section 3 asks for adaptive attacks through the purifier; a
defence is only called robust under its adaptive attack.

:class:`DefendedModel` is g as a plain ``model_fn(x) -> Tensor``: every attack of
:mod:`udcguard.attacks` runs on it unchanged. The four settings of the evaluation:

============== ================================================ ==========================
setting        attack's model_fn (gradients from)               scored on
============== ================================================ ==========================
gray-box       the undefended ``restorer_fn`` (no wrapper): the f(purify(x_adv))
               attacker ignores the purifier
adaptive-bpda  ``DefendedModel(mode="bpda")``: real purification  f(purify(x_adv))
               forward, identity backward through it (BPDA)
adaptive-eot   ``DefendedModel(mode="eot", eot_samples=N)``: BPDA f(purify(x_adv))
               (or full) gradients averaged over N purification
               noise draws (EOT)
adaptive-full  ``DefendedModel(mode="full", ddim_steps=k)``:      f(purify(x_adv))
               exact gradients through an eta-0 DDIM chain of k
               steps from t* (gradient checkpointing)
============== ================================================ ==========================

In every setting the attack's own ``objective`` values come from the draws it made (and, for
"full", from the k-step DDIM surrogate of the purifier): the evaluation re-scores ``x_adv``
through the deployed defence (the DDPM :meth:`Purifier.purify` with the evaluation's seeds).

Threat model (white-box on the whole pipeline, design.md section 3): the attacker knows the
restorer, the UNet, the noise schedule and t*, but not the defender's purification noise;
each call of the defended model draws fresh noise from the wrapper's own generator
(``fixed_noise=True`` is the exception, for deterministic tests: the attacker then fixes the
noise, which the real defence does not allow).

EOT needs no change in the attacks: a model_fn with an ``eot_samples`` attribute N > 1 is
called N times by :meth:`udcguard.attacks.base.Calls.value` and
:meth:`~udcguard.attacks.base.Calls.value_and_grad`, which average the values and gradients
(and count N queries and N backward passes).

The DDIM chain is the purifier's own (:mod:`udcguard.purify.schedule`: the eta-0 DDIM of
Song et al., arXiv 2010.02502, on ``ddim_timesteps(t*, k)``, differentiable through
:func:`~udcguard.purify.purifier.Purifier.purify_differentiable` with one
``torch.utils.checkpoint`` segment per UNet call).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from udcguard.attacks.base import AttackArgumentError
from udcguard.purify.purifier import Purifier
from udcguard.purify.schedule import resolve_t_star

#: Valid values of ``mode``.
MODES = ("bpda", "eot", "full")
#: Valid values of ``eot_backward``.
EOT_BACKWARDS = ("bpda", "full")
#: Valid values of ``sampler`` (the forward purification under a BPDA backward).
SAMPLERS = ("ddpm", "ddim")
#: Valid values of ``clamp`` (how the DDIM chain's clips differentiate).
CLAMPS = ("plain", "straight_through")


class _StraightThrough(torch.autograd.Function):
    """Forward: the purified image p (exactly); backward: identity to x (BPDA)."""

    @staticmethod
    def forward(ctx, x: Tensor, p: Tensor) -> Tensor:  # noqa: ARG004
        return p.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # noqa: ARG004
        return grad, None


# ---------------------------------------------------------------- the defended model
class DefendedModel:
    r"""The defended model g(x) = restorer_fn(purify(x)) as an attackable ``model_fn``.

    Papers: BPDA and EOT, Athalye et al., arXiv 1802.00420; adaptive evaluation of
    diffusion purification (full gradients through the sampler, EOT), Lee & Kim,
    arXiv 2301.06871; the purifier, DiffPure, Nie et al., arXiv 2205.07460; DDIM, Song et
    al., arXiv 2010.02502. Threat model: white-box on restorer + purifier, L-inf / L2 on the
    degraded input in [0, 1] (design.md section 3); the purification noise is the
    defender's: each call draws it afresh from this wrapper's generator.

    Modes (the backward through the purifier; the restorer is always differentiated):

    - "bpda": forward = the real purification (``sampler``: the DDPM chain of
      :meth:`Purifier.purify`, t* + 1 UNet calls, or its k-step eta-0 DDIM chain) under
      no_grad; backward = identity through the purifier (straight-through,
      d purify / dx := I). The gradient is the restorer's gradient at the purified input.
    - "eot": per draw as "bpda" (``eot_backward="bpda"``) or "full"
      (``eot_backward="full"``); the attribute ``eot_samples = N`` makes
      :class:`~udcguard.attacks.base.Calls` average values and gradients over N calls (N
      independent noise draws) per attack step.
    - "full": exact gradients through the k-step eta-0 DDIM chain
      (:func:`~udcguard.purify.purifier.Purifier.purify_differentiable`) from t*, forward
      noise at t* drawn per call, gradient checkpointing. Both the forward and the gradient
      are those of the DDIM chain, not of the t*-step DDPM (a surrogate of the deployed
      sampler with the same UNet and schedule; re-score x_adv on the deployed one).

    Args:
        restorer_fn: f(x) -> Tensor, the restorer (set eval()); differentiated w.r.t. its
            input in every mode.
        purifier: :class:`~udcguard.purify.purifier.Purifier` (UNet + DDPM scheduler).
            Freeze its UNet (``unet.requires_grad_(False)``) so that "full" backward passes
            do not also compute weight gradients (the attacks only read input gradients).
        t_star: diffusion timestep t* in [0, T - 1] (int, out of T train timesteps) or a
            float fraction of the schedule in [0, 1)
            (:func:`~udcguard.purify.schedule.resolve_t_star`); 0: no purification
            (identity; every mode is then the plain restorer).
        mode: "bpda", "eot" or "full" (above).
        eot_samples: N >= 1, noise draws averaged per attack step; N > 1 only with "eot".
        eot_backward: "bpda" (default) or "full", the gradient of each EOT draw.
        ddim_steps: k in [1, t*], UNet calls of the DDIM chain ("full", an EOT "full"
            backward, or ``sampler="ddim"``). Default 5.
        checkpoint: gradient checkpointing of each UNet call in the DDIM chain: memory is
            ~flat in k (one or two samples per step are kept, not the UNet's activations), at one
            extra UNet forward per step in the backward. Default True.
        sampler: forward purification under a BPDA backward: "ddpm" (default, the deployed
            defence) or "ddim" (the k-step eta-0 chain).
        generator: source of the purification noise (drawn on its device and moved; a
            CPU generator works with a model on any device); exclusive with ``seed``.
        seed: seed of a fresh CPU generator. Neither given: seed 0.
        fixed_noise: every call reuses the same noise (the generator is rewound to its
            initial state before each call): g becomes a deterministic function (finite
            differences, reproducible tests). An attacker-fixed noise the real defence does
            not grant; refused with ``eot_samples > 1``.
        clamp: how the DDIM chain's clips (x0 estimate to [-1, 1], output to [0, 1])
            differentiate: "plain" (default; the exact gradient, zero where clipped) or
            "straight_through" (identity through the clips, BPDA for them only).
        purify_options: extra keyword arguments of :meth:`Purifier.purify` for the BPDA
            forward (e.g. the deployed defence's ``sampler``, ``steps``, ``eta``, ``tile``,
            ``overlap``, ``guidance``, ``batch_size``), overriding ``sampler`` /
            ``ddim_steps`` there, so that the BPDA / EOT forward is exactly the deployed
            purification. Its ``guidance`` (if any) also enters the "full" chain (autograd
            through it); the "full" chain is never tiled.

    Shape:
        (B, 3, H, W) in [0, 1] -> restorer_fn's output on the purified (B, 3, H, W).

    Cost per call in UNet calls (the restorer adds one forward and, under grad, one
    backward): "bpda" / EOT-"bpda": t* + 1 (ddpm) or k (ddim) forward, no graph, 0 in the
    backward; "full" / EOT-"full": k forward; backward k UNet backward passes plus k
    recomputed forwards with checkpointing. Per attack step (one ``value_and_grad``) EOT
    multiplies this by N, counted as N queries and N backward passes.
    """

    def __init__(
        self,
        restorer_fn: Callable[[Tensor], Tensor],
        purifier: Purifier,
        *,
        t_star: int | float,
        mode: str,
        eot_samples: int = 1,
        eot_backward: str = "bpda",
        ddim_steps: int = 5,
        checkpoint: bool = True,
        sampler: str = "ddpm",
        generator: torch.Generator | None = None,
        seed: int | None = None,
        fixed_noise: bool = False,
        clamp: str = "plain",
        purify_options: Mapping[str, Any] | None = None,
    ) -> None:
        if not callable(restorer_fn):
            raise AttackArgumentError(f"restorer_fn must be callable, got {type(restorer_fn).__name__}")
        for name, value, valid in (
            ("adaptive mode", mode, MODES),
            ("eot_backward", eot_backward, EOT_BACKWARDS),
            ("sampler", sampler, SAMPLERS),
            ("clamp", clamp, CLAMPS),
        ):
            if value not in valid:
                raise AttackArgumentError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")
        try:
            self.t_star = resolve_t_star(t_star, purifier.num_train_timesteps)
        except ValueError as e:
            raise AttackArgumentError(str(e)) from None
        for name, v in (("eot_samples", eot_samples), ("ddim_steps", ddim_steps)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise AttackArgumentError(f"{name} must be an integer >= 1, got {v!r}")
        if eot_samples > 1 and mode != "eot":
            raise AttackArgumentError(f"eot_samples={eot_samples} needs mode='eot', got mode={mode!r}")
        if fixed_noise and eot_samples > 1:
            raise AttackArgumentError(
                f"fixed_noise=True with eot_samples={eot_samples} would average identical draws"
            )
        if generator is not None and seed is not None:
            raise AttackArgumentError("pass at most one of generator= or seed=")
        purify_options = dict(purify_options or {})
        reserved = sorted(set(purify_options) & {"t_star", "generator", "seeds"})
        if reserved:
            raise AttackArgumentError(f"purify_options may not set {reserved}: the wrapper owns them")
        self.backward = mode if mode != "eot" else eot_backward
        uses_ddim = self.backward == "full" or sampler == "ddim"
        if uses_ddim and self.t_star > 0 and ddim_steps > self.t_star:
            raise AttackArgumentError(
                f"ddim_steps={ddim_steps} must lie in [1, t_star={self.t_star}] (one UNet call per "
                "distinct DDIM timestep)"
            )
        self.restorer_fn = restorer_fn
        self.purifier = purifier
        self.mode = mode
        self._eot_samples = int(eot_samples)
        self.eot_backward = eot_backward
        self.ddim_steps = int(ddim_steps)
        self.checkpoint = bool(checkpoint)
        self.sampler = sampler
        self.clamp = clamp
        self.fixed_noise = bool(fixed_noise)
        self.purify_options = purify_options
        self.generator = (
            generator if generator is not None else torch.Generator().manual_seed(0 if seed is None else int(seed))
        )
        self._initial_state = self.generator.get_state()

    @property
    def eot_samples(self) -> int:
        """N, the calls :class:`~udcguard.attacks.base.Calls` averages per value / gradient."""
        return self._eot_samples if self.mode == "eot" else 1

    def __repr__(self) -> str:
        return (
            f"DefendedModel(mode={self.mode!r}, t_star={self.t_star}, eot_samples={self.eot_samples}, "
            f"backward={self.backward!r}, sampler={self.sampler!r}, ddim_steps={self.ddim_steps}, "
            f"checkpoint={self.checkpoint}, fixed_noise={self.fixed_noise})"
        )

    def reset(self) -> None:
        """Rewind the noise generator to its state at construction (replays the same draws)."""
        self.generator.set_state(self._initial_state)

    def purify(self, x: Tensor) -> Tensor:
        """The purification of one call, (B, 3, H, W) -> (B, 3, H, W); draws fresh noise
        from the generator (unless ``fixed_noise``). Differentiable (through the DDIM chain)
        iff the backward is "full"; otherwise computed without a graph.

        Draws: "full" (and ``sampler="ddim"``): the forward noise at t*,
        ``purifier.forward_noise(x, generator=...)``, one (B, 3, H', W') draw; "ddpm": the
        draws of :meth:`Purifier.purify` with ``generator``.
        """
        if self.fixed_noise:
            self.reset()
        if self.t_star == 0:
            return x
        if self.backward == "full":
            noise = self.purifier.forward_noise(x, generator=self.generator)
            return self.purifier.purify_differentiable(
                x,
                t_star=self.t_star,
                steps=self.ddim_steps,
                noise=noise,
                checkpoint=self.checkpoint,
                clamp=self.clamp,
                guidance=self.purify_options.get("guidance"),
            )
        opts = {
            "sampler": self.sampler,
            "steps": self.ddim_steps if self.sampler == "ddim" else None,
            **self.purify_options,
        }
        with torch.no_grad():
            return self.purifier.purify(x, t_star=self.t_star, generator=self.generator, **opts)

    def __call__(self, x: Tensor) -> Tensor:
        """restorer_fn(purify(x)); with a BPDA backward the purifier is the identity in the
        backward (the forward value is exactly restorer_fn of the purified image)."""
        p = self.purify(x)
        if self.backward == "bpda" and self.t_star > 0:
            p = _StraightThrough.apply(x, p.detach())
        return self.restorer_fn(p)

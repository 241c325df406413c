"""C&W-L2: Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks",
arXiv 1608.04644, adapted to restoration.

    x_adv = x + mask * ((tanh(w0 + m) + 1) / 2 - (tanh(w0) + 1) / 2),  w0 = atanh(2x - 1)
    min_m  ||x_adv - x||_2^2 / n  +  c * max(tau - d(f(x_adv), r), 0)      (Adam on m)

with tau = d(f(x), r) + target. A classifier attack succeeds when the label flips; a
restorer has no label, so success is explicit here: image i succeeds when the attack adds at
least ``target`` to its distortion, d(f(x_adv_i), r_i) >= d(f(x_i), r_i) + target (against
the clean output d(f(x), r) = 0, so simply d >= target). The hinge max(tau - d, 0) is the
paper's f_6 with confidence 0 (``target`` plays the role of the decision margin): once the
target is reached only the distance term acts, so the attack then shrinks delta, and the
binary search over c finds, per image, the smallest perturbation that reaches the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from udcguard.attacks.base import (
    ATTACKS,
    Attack,
    AttackArgumentError,
    BestIterate,
    Calls,
    ModelFn,
    Perturbation,
    check_eps,
    check_steps,
)

#: |2x - 1| is clamped to 1 - _TANH_MARGIN before atanh (x = 0 or 1 would give -inf / inf).
_TANH_MARGIN = 1e-6


@dataclass
class CWSearch:
    """The per-image state of the binary search over c after a call (all (B,)).

    - c: the constant the search would try next (after the last update); it lies in
      [lower, upper] once an upper bound exists, else it is c0 * 10**binary_steps.
    - lower: the largest c that failed (0 if none).
    - upper: the smallest c that succeeded (inf if none).
    - success: some iterate reached ``target`` (the returned image then did).
    """

    c: Tensor
    lower: Tensor
    upper: Tensor
    success: Tensor


def _to_tanh_space(x: Tensor) -> Tensor:
    """w with (tanh(w) + 1) / 2 ~= x; finite at x = 0 and 1. (B, C, H, W)."""
    return torch.atanh(torch.clamp(2.0 * x - 1.0, -1.0 + _TANH_MARGIN, 1.0 - _TANH_MARGIN))


def _from_tanh_space(w: Tensor) -> Tensor:
    return (torch.tanh(w) + 1.0) / 2.0


@ATTACKS.register("cw_l2")
class CarliniWagnerL2(Attack):
    r"""Smallest L2 perturbation (tanh space, Adam) with d(f(y + delta), r) >= d(f(y), r) + target.

    Paper: arXiv 1608.04644 (Carlini & Wagner), L2 attack with the change of variables
    x_adv = (tanh(w) + 1) / 2 (x_adv in [0, 1] by construction; a straight-through clamp only
    trims the ~1e-7 rounding of atanh at 0 and 1), Adam, and a binary
    search over c per image. Threat model: white-box, unbounded L2 (the norm is minimised,
    not bounded), on the degraded input in [0, 1] (design.md, section 3). The paper's UDC
    protocol uses 9 binary-search steps and confidence 0.

    Success (restorers have no label): image i succeeds when
    d(f(x_adv_i), r_i) >= d(f(x_i), r_i) + target (d(f(x), r) = 0 for "clean_output").
    Binary search, per image and as in the paper's code: after each binary step, if some
    iterate of that step succeeded, upper = min(upper, c); otherwise lower = max(lower, c);
    then c = (lower + upper) / 2 if an upper bound exists, else c *= 10. Each binary step
    restarts the optimisation from the initial point (no warm start). The returned image is,
    per image, the successful iterate with the smallest L2 over all binary steps; if none
    succeeded, the iterate with the largest objective (x itself included, so the objective
    is never below the clean one). After a call, ``self.search``
    (:class:`CWSearch`) holds the per-image c, bounds and success flags.

    Args:
        model_fn: f(x) -> Tensor, the restorer; called in its current mode (set eval()).
        target: the increase of the objective that counts as success (> 0, in the units
            of the objective). Default 1e-2: for "mse" against the clean output, a PSNR of
            20 dB between the attacked and the clean restoration; with reference "gt", the
            restoration error (MSE to gt) grows by 1e-2 over the clean one.
        c: initial trade-off constant c0. Default 1.0. The distance term is the *mean*
            squared perturbation ||delta||_2^2 / n (n = C*H*W, the units of "mse"), so c does
            not depend on the image size: c = 1 makes a unit of objective worth a unit of
            mean squared perturbation (the break-even point of an identity restorer and
            "mse"); the paper's 1e-3 assumes the sum and a classifier margin.
        binary_steps: binary-search steps over c. Default 9 (the UDC protocol).
        steps: Adam iterations per binary step (one forward + one backward each).
            Default 100 (the paper's 10000 is out of reach for restorers at full resolution;
            there is no early abort, so the cost is fixed).
        lr: Adam learning rate, in tanh-space units. Default 0.01 (the paper's).
        init_eps: each binary step starts from x + U[-init_eps, init_eps] (inside the mask,
            drawn from the call's ``generator``, mapped to tanh space). Default None: 1/256
            for reference "clean_output", 0 for "gt". Against the clean output both terms of
            the loss have a zero gradient at delta = 0, so init_eps=0 with reference
            "clean_output" is refused.
        objective: "mse" (default) or "l1" ("ce" for classifier reference tests).
        reference: "clean_output" (default) or "gt".

    Shape:
        - x: (B, C, H, W) in [0, 1]; gt: like f(x) (labels (B,) for "ce").
        - result.x_adv: (B, C, H, W) in [0, 1]; delta is exactly 0 outside the mask.
        - self.search: :class:`CWSearch` of (B,) tensors.

    Cost: ``binary_steps * steps`` forward+backward passes, plus one forward: r = f(x)
    (reference "clean_output") or d(f(x), gt) (reference "gt", needed for tau).
    ``queries`` and ``grads`` count them.
    """

    norm: ClassVar[str] = "l2"
    bounded: ClassVar[bool] = False

    def __init__(
        self,
        model_fn: ModelFn,
        *,
        target: float = 1e-2,
        c: float = 1.0,
        binary_steps: int = 9,
        steps: int = 100,
        lr: float = 0.01,
        init_eps: float | None = None,
        objective: str = "mse",
        reference: str = "clean_output",
    ) -> None:
        super().__init__(model_fn, objective=objective, reference=reference)
        self.target = float(target)
        if not (math.isfinite(self.target) and self.target > 0.0):
            raise AttackArgumentError(f"target must be a finite number > 0, got {target}")
        self.c = float(c)
        if not (math.isfinite(self.c) and self.c > 0.0):
            raise AttackArgumentError(f"c must be a finite number > 0, got {c}")
        self.binary_steps = check_steps(binary_steps, "binary_steps")
        self.steps = check_steps(steps, "steps")
        self.lr = float(lr)
        if not (math.isfinite(self.lr) and self.lr > 0.0):
            raise AttackArgumentError(f"lr must be a finite number > 0, got {lr}")
        if init_eps is None:
            init_eps = 1 / 256 if reference == "clean_output" else 0.0
        self.init_eps = check_eps(init_eps, "init_eps")
        if self.init_eps == 0.0 and reference == "clean_output":
            raise AttackArgumentError(
                "init_eps=0 with reference='clean_output' cannot move: the gradient of "
                "d(f(x + delta), f(x)) and of ||delta||^2 is zero at delta = 0; use "
                "init_eps > 0 or reference='gt'"
            )
        self.search: CWSearch | None = None

    def __repr__(self) -> str:
        return (
            f"CarliniWagnerL2(target={self.target:.6g}, c={self.c:.6g}, "
            f"binary_steps={self.binary_steps}, steps={self.steps}, lr={self.lr:.6g}, "
            f"init_eps={self.init_eps:.6g}, objective={self.objective!r}, "
            f"reference={self.reference!r})"
        )

    def perturb(
        self,
        x: Tensor,
        r: Tensor,
        *,
        mask: Tensor | None,
        generator: torch.Generator | None,
        calls: Calls,
    ) -> Perturbation:
        b = x.shape[0]
        n = x[0].numel()
        w0 = _to_tanh_space(x)  # (B, C, H, W)
        t0 = _from_tanh_space(w0)  # ~x; subtracted so that m = 0 gives delta = 0 exactly
        keep = torch.ones_like(x) if mask is None else mask.expand_as(x)
        vec = dict(dtype=x.dtype, device=x.device)
        c = torch.full((b,), self.c, **vec)
        lower = torch.zeros(b, **vec)
        upper = torch.full((b,), math.inf, **vec)
        obj_clean = calls.value(x, r) if self.reference == "gt" else None  # (B,)
        # d(f(x), r): for "clean_output" d(f(x), f(x)), computed without a query
        clean = obj_clean if obj_clean is not None else self._objective_fn(r, r)
        tau = clean + self.target  # (B,) success threshold
        best_l2sq = torch.full((b,), math.inf, **vec)  # smallest successful ||delta||^2
        best_x, best_obj = x.clone(), torch.full((b,), -math.inf, **vec)
        fallback = BestIterate()  # largest objective, for images that never succeed
        fallback.update(x, clean)  # x itself: the objective never drops below the clean one

        for _ in range(self.binary_steps):
            m = self._initial_modifier(x, w0, keep, generator).requires_grad_(True)
            opt = torch.optim.Adam([m], lr=self.lr)
            succeeded = torch.zeros(b, dtype=torch.bool, device=x.device)
            for _ in range(self.steps):
                with torch.enable_grad():
                    raw = x + keep * (_from_tanh_space(w0 + m) - t0)
                    # clamp only trims the ~1e-7 atanh rounding; straight-through gradient
                    x_adv = raw + (raw.clamp(0.0, 1.0) - raw).detach()
                xa = x_adv.detach()
                obj, grad_d = calls.value_and_grad(xa, r)  # (B,), (B, C, H, W)
                l2sq = (xa - x).flatten(1).square().sum(1)
                success = obj >= tau  # NaN never succeeds
                better = success & (l2sq < best_l2sq)
                best_x = torch.where(better.view(-1, 1, 1, 1), xa, best_x)
                best_l2sq = torch.where(better, l2sq, best_l2sq)
                best_obj = torch.where(better, obj, best_obj)
                fallback.update(xa, obj)
                succeeded |= success
                # d loss / d x_adv; the hinge is active while the target is not reached
                weight = torch.where(success, torch.zeros_like(c), c).view(-1, 1, 1, 1)
                g_x = 2.0 * (xa - x) / n - weight * grad_d
                with torch.enable_grad():
                    (m.grad,) = torch.autograd.grad(x_adv, m, grad_outputs=g_x)
                opt.step()
            upper = torch.where(succeeded, torch.minimum(upper, c), upper)
            lower = torch.where(succeeded, lower, torch.maximum(lower, c))
            c = torch.where(torch.isfinite(upper), (lower + upper) / 2, c * 10)

        ever = torch.isfinite(best_l2sq)
        fb = fallback.result()
        self.search = CWSearch(c=c, lower=lower, upper=upper, success=ever)
        return Perturbation(
            torch.where(ever.view(-1, 1, 1, 1), best_x, fb.x_adv),
            torch.where(ever, best_obj, fb.objective),
            obj_clean,
        )

    def _initial_modifier(
        self, x: Tensor, w0: Tensor, keep: Tensor, generator: torch.Generator | None
    ) -> Tensor:
        """m such that x_adv(m) ~= clip(x + keep * U[-init_eps, init_eps]); 0 if init_eps = 0."""
        if self.init_eps == 0.0:
            return torch.zeros_like(x)
        noise = torch.empty_like(x).uniform_(-self.init_eps, self.init_eps, generator=generator)
        return (_to_tanh_space((x + keep * noise).clamp(0.0, 1.0)) - w0) * keep

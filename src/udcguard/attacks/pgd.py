"""PGD under an L-inf budget: Madry et al., "Towards Deep Learning Models Resistant to
Adversarial Attacks", arXiv 1706.06083.

    x_{k+1} = Proj_{ {|x' - x|_inf <= eps} ∩ [0, 1] } (x_k + alpha * sign(grad_x d(f(x_k), r)))
"""

from __future__ import annotations

import torch
from torch import Tensor

from udcguard.attacks.base import (
    ATTACKS,
    Attack,
    AttackArgumentError,
    Calls,
    ModelFn,
    Perturbation,
    best_of_restarts,
    check_eps,
    check_random_start,
    check_steps,
    gradient_ascent,
    project_linf,
    uniform_start,
)


@ATTACKS.register("pgd_linf")
class PGD(Attack):
    r"""Projected gradient ascent on d(f(y + delta), r) with ||delta||_inf <= eps.

    Paper: arXiv 1706.06083 (Madry et al.). Threat model: white-box, L-inf, on the
    degraded input in [0, 1]; y + delta is clipped to [0, 1] (design.md, section 3).
    The paper's UDC levels are eps = alpha = 1, 2, 4, 8 / 256 with 20 steps.

    Args:
        model_fn: f(x) -> Tensor, the restorer; called in its current mode (set eval()).
        eps: L-inf budget in image units ([0, 1] space). Default 8/256.
        alpha: step size in image units. Default None: alpha = eps (the paper's step = eps).
        steps: iterations (one forward + one backward each). Default 20.
        random_start: start from x + U[-eps, eps] (drawn from the call's ``generator``).
            Default None: True for reference "clean_output", False for "gt". Against the
            clean output the objective's gradient is exactly zero at delta = 0 (d(f(x), f(x))
            is at its minimum), so PGD from delta = 0 never moves; random_start=False with
            reference "clean_output" is therefore refused.
        keep_best: return, per image, the iterate (x_0 .. x_steps) with the highest
            objective. Default True. False: the last iterate, as in the paper's plain PGD.
        restarts: independent runs, each from a fresh random start drawn from the call's
            ``generator``; the result keeps, per image, the run with the highest objective
            (the worst case for the restorer). Default 1. ``restarts > 1`` needs a random
            start.
        objective: "mse" (default) or "l1" ("ce" for classifier reference tests).
        reference: "clean_output" (default) or "gt".

    Shape:
        - x: (B, C, H, W) in [0, 1]; gt: like f(x) (labels (B,) for "ce").
        - result.x_adv: (B, C, H, W) in [0, 1], |x_adv - x| <= eps elementwise.

    Cost: ``restarts * steps`` forward+backward passes, ``restarts`` forwards for the last
    iterates, plus one forward for r = f(x) when reference is "clean_output" and one for
    d(f(x), gt) when reference is "gt" with a random start. ``queries`` and ``grads`` count
    them.
    """

    def __init__(
        self,
        model_fn: ModelFn,
        *,
        eps: float = 8 / 256,
        alpha: float | None = None,
        steps: int = 20,
        random_start: bool | None = None,
        keep_best: bool = True,
        restarts: int = 1,
        objective: str = "mse",
        reference: str = "clean_output",
    ) -> None:
        super().__init__(model_fn, objective=objective, reference=reference)
        self.eps = check_eps(eps)
        self.alpha = self.eps if alpha is None else float(alpha)
        if not 0.0 <= self.alpha <= 1.0:
            raise AttackArgumentError(
                f"alpha must be in [0, 1] (image space), got {alpha}"
            )
        self.steps = check_steps(steps)
        self.restarts = check_steps(restarts, "restarts")
        self.random_start = check_random_start(random_start, reference, self.restarts)
        self.keep_best = bool(keep_best)

    def __repr__(self) -> str:
        return (
            f"PGD(eps={self.eps:.6g}, alpha={self.alpha:.6g}, steps={self.steps}, "
            f"random_start={self.random_start}, keep_best={self.keep_best}, "
            f"restarts={self.restarts}, "
            f"objective={self.objective!r}, reference={self.reference!r})"
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
        return best_of_restarts(
            self.restarts, lambda: self._run(x, r, mask, generator, calls)
        )

    def _run(
        self,
        x: Tensor,
        r: Tensor,
        mask: Tensor | None,
        generator: torch.Generator | None,
        calls: Calls,
    ) -> Perturbation:
        """One PGD run (one random start)."""
        x_k = x.clone()  # (B, C, H, W)
        if self.random_start:
            x_k = project_linf(
                x + uniform_start(x, self.eps, generator), x, self.eps, mask
            )
        return gradient_ascent(
            x_k, r, calls, steps=self.steps, keep_best=self.keep_best, from_x=not self.random_start,
            step=lambda x_k, grad: project_linf(x_k + self.alpha * grad.sign(), x, self.eps, mask),
        )

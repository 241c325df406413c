"""PGD under an L2 budget: Madry et al., "Towards Deep Learning Models Resistant to
Adversarial Attacks", arXiv 1706.06083 (the L2 variant).

    x_{k+1} = Proj_{ {||x' - x||_2 <= eps} ∩ [0, 1] } (x_k + alpha * g_k / ||g_k||_2),
    g_k = grad_x d(f(x_k), r), norms per image over (C, H, W).
"""

from __future__ import annotations

import torch
from torch import Tensor

from udcguard.attacks.base import (
    ATTACKS,
    Attack,
    Calls,
    ModelFn,
    Perturbation,
    best_of_restarts,
    check_nonneg,
    check_random_start,
    check_steps,
    gradient_ascent,
    l2_ball_start,
    normalize_l2,
    project_l2,
)


@ATTACKS.register("pgd_l2")
class PGDL2(Attack):
    r"""Projected gradient ascent on d(f(y + delta), r) with ||delta||_2 <= eps per image.

    Paper: arXiv 1706.06083 (Madry et al.). Threat model: white-box, L2, on the degraded
    input in [0, 1]; y + delta is clipped to [0, 1] (design.md, section 3). The budget is a
    per-image L2 norm over (C, H, W) in [0, 1] units, so it scales with the image size: an
    L-inf budget e on every pixel has L2 norm e * sqrt(C*H*W), e.g. 8/256 on a 64x64x3 crop
    is about 3.46, and eps = 0.5 there is a mean per-pixel change of 0.5 / 110.9 = 1.15/256.

    Args:
        model_fn: f(x) -> Tensor, the restorer; called in its current mode (set eval()).
        eps: L2 budget in image units, any finite value >= 0 (the L2 diameter of [0, 1]^n
            is sqrt(n), so values above 1 are meaningful). Default 0.5.
        alpha: L2 length of each step in image units. Default None: alpha = 2.5 * eps / steps
            (Madry et al.'s rule of thumb, so that the iterates can cross the ball).
        steps: iterations (one forward + one backward each). Default 20.
        random_start: start from x + delta_0 with delta_0 in the ball, as torchattacks'
            PGDL2: a Gaussian direction (zero outside the mask) scaled to radius r * eps,
            r ~ U[0, 1] per image, then clipped to [0, 1]; drawn from the call's
            ``generator``. Default None: True for reference "clean_output", False for "gt".
            Against the clean output the objective's gradient is exactly zero at delta = 0,
            so PGD from x never moves; random_start=False with reference "clean_output" is
            therefore refused.
        keep_best: return, per image, the iterate (x_0 .. x_steps) with the highest
            objective. Default True. False: the last iterate, as in plain PGD.
        restarts: independent runs, each from a fresh random start drawn from the call's
            ``generator``; the result keeps, per image, the run with the highest objective.
            Default 1. ``restarts > 1`` needs a random start.
        objective: "mse" (default) or "l1" ("ce" for classifier reference tests).
        reference: "clean_output" (default) or "gt".

    Shape:
        - x: (B, C, H, W) in [0, 1]; gt: like f(x) (labels (B,) for "ce"); mask: the
          gradient and delta are zeroed outside it (the step is normalised on the mask).
        - result.x_adv: (B, C, H, W) in [0, 1], ||x_adv - x||_2 <= eps per image.

    Cost: ``restarts * steps`` forward+backward passes, ``restarts`` forwards for the last
    iterates, plus one forward for r = f(x) when reference is "clean_output" and one for
    d(f(x), gt) when reference is "gt" with a random start. ``queries`` and ``grads`` count
    them.
    """

    norm = "l2"

    def __init__(
        self,
        model_fn: ModelFn,
        *,
        eps: float = 0.5,
        alpha: float | None = None,
        steps: int = 20,
        random_start: bool | None = None,
        keep_best: bool = True,
        restarts: int = 1,
        objective: str = "mse",
        reference: str = "clean_output",
    ) -> None:
        super().__init__(model_fn, objective=objective, reference=reference)
        self.eps = check_nonneg(eps, "eps (L2 budget)")
        self.steps = check_steps(steps)
        self.alpha = (
            2.5 * self.eps / self.steps
            if alpha is None
            else check_nonneg(alpha, "alpha (L2 step)")
        )
        self.restarts = check_steps(restarts, "restarts")
        self.random_start = check_random_start(random_start, reference, self.restarts)
        self.keep_best = bool(keep_best)

    def __repr__(self) -> str:
        return (
            f"PGDL2(eps={self.eps:.6g}, alpha={self.alpha:.6g}, steps={self.steps}, "
            f"random_start={self.random_start}, keep_best={self.keep_best}, "
            f"restarts={self.restarts}, objective={self.objective!r}, "
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
        """One PGD-L2 run (one random start)."""
        x_k = x.clone()  # (B, C, H, W)
        if self.random_start:
            x_k = torch.clamp(
                x + l2_ball_start(x, self.eps, mask, generator), min=0.0, max=1.0
            )

        def step(x_k: Tensor, grad: Tensor) -> Tensor:
            if mask is not None:  # step on the attacked pixels only, at full length
                grad = grad * mask
            return project_l2(x_k + self.alpha * normalize_l2(grad), x, self.eps, mask)

        return gradient_ascent(x_k, r, calls, steps=self.steps, step=step, keep_best=self.keep_best,
                               from_x=not self.random_start)

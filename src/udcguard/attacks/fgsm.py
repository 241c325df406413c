"""FGSM: Goodfellow et al., "Explaining and Harnessing Adversarial Examples", arXiv 1412.6572.

    x_adv = clip_[0, 1](x + eps * sign(grad_x d(f(x), r)))

With a random start (needed against the clean output, see :class:`FGSM`) the single step is
taken from x_0 = x + U[-eps, eps] and projected back to the eps-ball, as in the "RAND+FGSM"
of Tramèr et al. (arXiv 1705.07204) and the "FGSM with random initialisation" of Wong et al.
(arXiv 2001.03994).
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
    check_eps,
    check_random_start,
    gradient_ascent,
    project_linf,
    uniform_start,
)


@ATTACKS.register("fgsm")
class FGSM(Attack):
    r"""One signed-gradient step on d(f(y + delta), r) with ||delta||_inf <= eps.

    Paper: arXiv 1412.6572 (Goodfellow et al.). Threat model: white-box, L-inf, on the
    degraded input in [0, 1]; y + delta is clipped to [0, 1] (design.md, section 3).

    Args:
        model_fn: f(x) -> Tensor, the restorer; called in its current mode (set eval()).
        eps: L-inf budget in image units ([0, 1] space). Default 8/256.
        alpha: step size in image units. Default None: alpha = eps (Goodfellow's FGSM; with a
            random start, Wong et al. use 1.25 * eps). The result is projected to the
            eps-ball, so alpha > eps only matters with a random start.
        random_start: take the step from x_0 = x + U[-eps, eps] (drawn from the call's
            ``generator``) instead of from x. Default None: True for reference
            "clean_output", False for "gt". Against the clean output the objective's
            gradient is exactly zero at delta = 0 (d(f(x), f(x)) is at its minimum), so
            sign(grad) = 0 and plain FGSM returns x unchanged; random_start=False with
            reference "clean_output" is therefore refused.
        keep_best: return, per image, whichever of x_0 and x_1 has the higher objective.
            Default True. False: x_1, the plain FGSM image (torchattacks' FGSM).
        objective: "mse" (default) or "l1" ("ce" for classifier reference tests).
        reference: "clean_output" (default) or "gt".

    Shape:
        - x: (B, C, H, W) in [0, 1]; gt: like f(x) (labels (B,) for "ce").
        - result.x_adv: (B, C, H, W) in [0, 1], |x_adv - x| <= eps elementwise.

    Cost: one forward+backward pass, one forward for x_1, plus one forward for r = f(x) when
    reference is "clean_output" and one for d(f(x), gt) when reference is "gt" with a random
    start. ``queries`` and ``grads`` count them.
    """

    def __init__(
        self,
        model_fn: ModelFn,
        *,
        eps: float = 8 / 256,
        alpha: float | None = None,
        random_start: bool | None = None,
        keep_best: bool = True,
        objective: str = "mse",
        reference: str = "clean_output",
    ) -> None:
        super().__init__(model_fn, objective=objective, reference=reference)
        self.eps = check_eps(eps)
        self.alpha = self.eps if alpha is None else check_eps(alpha, "alpha")
        self.random_start = check_random_start(random_start, reference)
        self.keep_best = bool(keep_best)

    def __repr__(self) -> str:
        return (
            f"FGSM(eps={self.eps:.6g}, alpha={self.alpha:.6g}, "
            f"random_start={self.random_start}, keep_best={self.keep_best}, "
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
        x_0 = x
        if self.random_start:
            x_0 = project_linf(
                x + uniform_start(x, self.eps, generator), x, self.eps, mask
            )
        return gradient_ascent(  # one step: x_1 = x_0 + alpha * sign(grad), projected
            x_0, r, calls, steps=1, keep_best=self.keep_best, from_x=not self.random_start,
            step=lambda x_k, grad: project_linf(x_k + self.alpha * grad.sign(), x, self.eps, mask),
        )

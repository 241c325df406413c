"""MI-FGSM: Dong et al., "Boosting Adversarial Attacks with Momentum", arXiv 1710.06081.

    g_{k+1} = mu * g_k + grad_k / mean(|grad_k|),   grad_k = grad_x d(f(x_k), r)
    x_{k+1} = Clip_{x, eps}(x_k + alpha * sign(g_{k+1}))

The gradient is normalised by its per-image mean absolute value (the paper's L1 norm up to
the constant C*H*W, as torchattacks' MIFGSM does; with a mask, the gradient outside it is
zeroed first); Clip_{x, eps} clips to the eps-ball around x and to [0, 1].
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
    check_nonneg,
    check_random_start,
    check_steps,
    gradient_ascent,
    project_linf,
    uniform_start,
)


@ATTACKS.register("mifgsm")
class MIFGSM(Attack):
    r"""Iterated FGSM with an accumulated, L1-normalised gradient (momentum), L-inf budget.

    Paper: arXiv 1710.06081 (Dong et al.). Threat model: white-box, L-inf, on the degraded
    input in [0, 1]; y + delta is clipped to [0, 1] (design.md, section 3). Momentum was
    proposed for transfer (black-box) attacks; it is run here as a white-box attack and on a
    surrogate for transfer.

    Args:
        model_fn: f(x) -> Tensor, the restorer; called in its current mode (set eval()).
        eps: L-inf budget in image units ([0, 1] space). Default 8/256.
        alpha: step size in image units. Default None: alpha = eps / steps (the paper's
            choice, so that the steps add up to eps).
        steps: iterations (one forward + one backward each). Default 10 (the paper's T).
        decay: momentum factor mu >= 0. Default 1.0 (the paper's). 0 gives BIM.
        random_start: start from x + U[-eps, eps] (drawn from the call's ``generator``).
            Default None: True for reference "clean_output", False for "gt" (the paper starts
            at x). Against the clean output the objective's gradient is exactly zero at
            delta = 0, so MI-FGSM from x never moves; random_start=False with reference
            "clean_output" is therefore refused.
        keep_best: return, per image, the iterate (x_0 .. x_steps) with the highest
            objective. Default True. False: the last iterate (the paper's MI-FGSM).
        objective: "mse" (default) or "l1" ("ce" for classifier reference tests).
        reference: "clean_output" (default) or "gt".

    Shape:
        - x: (B, C, H, W) in [0, 1]; gt: like f(x) (labels (B,) for "ce").
        - result.x_adv: (B, C, H, W) in [0, 1], |x_adv - x| <= eps elementwise.

    Cost: ``steps`` forward+backward passes, one forward for the last iterate, plus one
    forward for r = f(x) when reference is "clean_output" and one for d(f(x), gt) when
    reference is "gt" with a random start. ``queries`` and ``grads`` count them.
    """

    def __init__(
        self,
        model_fn: ModelFn,
        *,
        eps: float = 8 / 256,
        alpha: float | None = None,
        steps: int = 10,
        decay: float = 1.0,
        random_start: bool | None = None,
        keep_best: bool = True,
        objective: str = "mse",
        reference: str = "clean_output",
    ) -> None:
        super().__init__(model_fn, objective=objective, reference=reference)
        self.eps = check_eps(eps)
        self.steps = check_steps(steps)
        self.alpha = (
            self.eps / self.steps if alpha is None else check_eps(alpha, "alpha")
        )
        self.decay = check_nonneg(decay, "decay")
        self.random_start = check_random_start(random_start, reference)
        self.keep_best = bool(keep_best)

    def __repr__(self) -> str:
        return (
            f"MIFGSM(eps={self.eps:.6g}, alpha={self.alpha:.6g}, steps={self.steps}, "
            f"decay={self.decay:.6g}, random_start={self.random_start}, "
            f"keep_best={self.keep_best}, objective={self.objective!r}, "
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
        x_k = x.clone()  # (B, C, H, W)
        if self.random_start:
            x_k = project_linf(
                x + uniform_start(x, self.eps, generator), x, self.eps, mask
            )
        momentum = torch.zeros_like(x)  # (B, C, H, W)
        tiny = torch.finfo(x.dtype).tiny  # an all-zero gradient stays zero

        def step(x_k: Tensor, grad: Tensor) -> Tensor:
            nonlocal momentum
            if mask is not None:  # normalise by the gradient on the attacked pixels only
                grad = grad * mask
            l1 = grad.abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(tiny)
            momentum = self.decay * momentum + grad / l1
            return project_linf(x_k + self.alpha * momentum.sign(), x, self.eps, mask)

        return gradient_ascent(x_k, r, calls, steps=self.steps, step=step, keep_best=self.keep_best,
                               from_x=not self.random_start)

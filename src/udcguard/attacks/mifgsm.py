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

from udcguard.attacks.base import ATTACKS, ModelFn, check_nonneg, project_linf
from udcguard.attacks.iterative import IterativeAttack, Step


@ATTACKS.register("mifgsm")
class MIFGSM(IterativeAttack):
    r"""Iterated FGSM with an accumulated, L1-normalised gradient (momentum), L-inf budget.

    Paper: arXiv 1710.06081 (Dong et al.). Threat model: white-box, L-inf, on the degraded
    input in [0, 1]; y + delta is clipped to [0, 1] (design.md, section 3). Momentum was
    proposed for transfer (black-box) attacks; it is run here as a white-box attack and on a
    surrogate for transfer. Random start, keep-best and cost:
    :class:`~udcguard.attacks.iterative.IterativeAttack`.

    Args:
        model_fn: f(x) -> Tensor, the restorer; called in its current mode (set eval()).
        eps: L-inf budget in image units ([0, 1] space). Default 8/256.
        alpha: step size in image units. Default None: alpha = eps / steps (the paper's
            choice, so that the steps add up to eps).
        steps: iterations (one forward + one backward each). Default 10 (the paper's T).
        decay: momentum factor mu >= 0. Default 1.0 (the paper's). 0 gives BIM.
        random_start: start from x + U[-eps, eps]. Default None: True for reference
            "clean_output", False for "gt" (the paper starts at x).
        keep_best: return, per image, the iterate (x_0 .. x_steps) with the highest
            objective. Default True. False: the last iterate (the paper's MI-FGSM).
        objective: "mse" (default) or "l1" ("ce" for classifier reference tests).
        reference: "clean_output" (default) or "gt".

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
        self.decay = check_nonneg(decay, "decay")
        super().__init__(model_fn, eps=eps, alpha=alpha, steps=steps, random_start=random_start,
                         keep_best=keep_best, objective=objective, reference=reference)

    def default_alpha(self) -> float:
        return self.eps / self.steps  # the paper's: the steps add up to eps

    def step_rule(self, x: Tensor, mask: Tensor | None) -> Step:
        momentum = torch.zeros_like(x)  # (B, C, H, W), fresh for each run
        tiny = torch.finfo(x.dtype).tiny  # an all-zero gradient stays zero

        def step(x_k: Tensor, grad: Tensor) -> Tensor:
            nonlocal momentum
            if mask is not None:  # normalise by the gradient on the attacked pixels only
                grad = grad * mask
            l1 = grad.abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(tiny)
            momentum = self.decay * momentum + grad / l1
            return project_linf(x_k + self.alpha * momentum.sign(), x, self.eps, mask)

        return step

"""PGD under an L-inf budget: Madry et al., "Towards Deep Learning Models Resistant to
Adversarial Attacks", arXiv 1706.06083.

    x_{k+1} = Proj_{ {|x' - x|_inf <= eps} ∩ [0, 1] } (x_k + alpha * sign(grad_x d(f(x_k), r)))
"""

from __future__ import annotations

from torch import Tensor

from udcguard.attacks.base import ATTACKS, ModelFn, project_linf
from udcguard.attacks.iterative import IterativeAttack, Step


@ATTACKS.register("pgd_linf")
class PGD(IterativeAttack):
    r"""Projected signed-gradient ascent on d(f(y + delta), r) with ||delta||_inf <= eps.

    Paper: arXiv 1706.06083 (Madry et al.). Threat model: white-box, L-inf, on the
    degraded input in [0, 1]; y + delta is clipped to [0, 1] (design.md, section 3).
    The paper's UDC levels are eps = alpha = 1, 2, 4, 8 / 256 with 20 steps. Random start,
    keep-best, restarts and cost: :class:`~udcguard.attacks.iterative.IterativeAttack`.

    Args:
        model_fn: f(x) -> Tensor, the restorer; called in its current mode (set eval()).
        eps: L-inf budget in image units ([0, 1] space). Default 8/256.
        alpha: step size in image units. Default None: alpha = eps (the paper's step = eps).
        steps: iterations (one forward + one backward each). Default 20.
        random_start: start from x + U[-eps, eps]. Default None: True for reference
            "clean_output", False for "gt".
        keep_best: the best iterate per image (default) or the last one (the paper's plain PGD).
        restarts: independent random starts, the best run per image kept. Default 1.
        objective: "mse" (default) or "l1" ("ce" for classifier reference tests).
        reference: "clean_output" (default) or "gt".
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
        super().__init__(model_fn, eps=eps, alpha=alpha, steps=steps, random_start=random_start,
                         keep_best=keep_best, restarts=restarts, objective=objective, reference=reference)

    def step_rule(self, x: Tensor, mask: Tensor | None) -> Step:
        return lambda x_k, grad: project_linf(x_k + self.alpha * grad.sign(), x, self.eps, mask)

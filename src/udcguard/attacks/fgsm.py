"""FGSM: Goodfellow et al., "Explaining and Harnessing Adversarial Examples", arXiv 1412.6572.

    x_1 = Proj_{ {|x' - x|_inf <= eps} ∩ [0, 1] } (x_0 + alpha * sign(grad_x d(f(x_0), r)))
"""

from __future__ import annotations

from udcguard.attacks.base import ATTACKS, ModelFn
from udcguard.attacks.pgd import PGD


@ATTACKS.register("fgsm")
class FGSM(PGD):
    r"""One signed-gradient step on d(f(y + delta), r) with ||delta||_inf <= eps: PGD with one step.

    Paper: arXiv 1412.6572 (Goodfellow et al.). Threat model: white-box, L-inf, on the
    degraded input in [0, 1]; y + delta is clipped to [0, 1] (design.md, section 3). Random
    start and cost: :class:`~udcguard.attacks.iterative.IterativeAttack` (with steps = 1).

    Args:
        model_fn: f(x) -> Tensor, the restorer; called in its current mode (set eval()).
        eps: L-inf budget in image units ([0, 1] space). Default 8/256.
        alpha: step size in image units. Default None: alpha = eps (Goodfellow's FGSM; with a
            random start, Wong et al. use 1.25 * eps). The result is projected to the
            eps-ball, so alpha > eps only matters with a random start.
        random_start: take the step from x_0 = x + U[-eps, eps] instead of from x. Default
            None: True for reference "clean_output", False for "gt".
        keep_best: return, per image, whichever of x_0 and x_1 has the higher objective.
            Default True. False: x_1, the plain FGSM image (torchattacks' FGSM).
        objective: "mse" (default) or "l1" ("ce" for classifier reference tests).
        reference: "clean_output" (default) or "gt".
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
        super().__init__(model_fn, eps=eps, alpha=alpha, steps=1, random_start=random_start, keep_best=keep_best,
                         objective=objective, reference=reference)

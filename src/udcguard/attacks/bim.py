"""BIM / I-FGSM: Kurakin et al., "Adversarial examples in the physical world",
arXiv 1607.02533.

    x_0 = x,  x_{k+1} = Clip_{x, eps}(x_k + alpha * sign(grad_x d(f(x_k), r)))

where Clip_{x, eps} clips to the eps-ball around x and to [0, 1] after every step.
"""

from __future__ import annotations

from udcguard.attacks.base import ATTACKS, ModelFn, check_eps
from udcguard.attacks.pgd import PGD


def kurakin_steps(eps: float) -> int:
    """Kurakin et al.'s iteration count min(eps + 4, 1.25 eps), eps in intensity levels
    (here 1/256 of the [0, 1] range), rounded down, at least 1."""
    levels = eps * 256
    return max(1, int(min(levels + 4, 1.25 * levels)))


@ATTACKS.register("bim")
class BIM(PGD):
    r"""Iterated FGSM on d(f(y + delta), r), clipped to ||delta||_inf <= eps and [0, 1].

    Paper: arXiv 1607.02533 (Kurakin et al.). Threat model: white-box, L-inf, on the
    degraded input in [0, 1]; y + delta is clipped to [0, 1] (design.md, section 3). BIM is
    PGD without a random start and with a small step; random start and cost:
    :class:`~udcguard.attacks.iterative.IterativeAttack`.

    Args:
        model_fn: f(x) -> Tensor, the restorer; called in its current mode (set eval()).
        eps: L-inf budget in image units ([0, 1] space). Default 8/256.
        alpha: step size in image units. Default 1/256 (Kurakin's one intensity level).
        steps: iterations (one forward + one backward each). Default None: Kurakin's rule
            min(eps + 4, 1.25 eps) with eps in levels of 1/256, rounded down, at least 1
            (torchattacks' ``steps=0``, which uses levels of 1/255): 10 steps at eps = 8/256,
            1 at 1/256. With the default alpha the steps reach the boundary of the ball.
        random_start: start from x + U[-eps, eps]. Default None: True for reference
            "clean_output", False for "gt" (the paper's BIM starts at x).
        keep_best: return, per image, the iterate (x_0 .. x_steps) with the highest
            objective. Default True. False: the last iterate (the paper's BIM).
        objective: "mse" (default) or "l1" ("ce" for classifier reference tests).
        reference: "clean_output" (default) or "gt".
    """

    def __init__(
        self,
        model_fn: ModelFn,
        *,
        eps: float = 8 / 256,
        alpha: float = 1 / 256,
        steps: int | None = None,
        random_start: bool | None = None,
        keep_best: bool = True,
        objective: str = "mse",
        reference: str = "clean_output",
    ) -> None:
        steps = kurakin_steps(check_eps(eps)) if steps is None else steps
        super().__init__(model_fn, eps=eps, alpha=alpha, steps=steps, random_start=random_start,
                         keep_best=keep_best, objective=objective, reference=reference)

    def default_alpha(self) -> float:
        return 1 / 256

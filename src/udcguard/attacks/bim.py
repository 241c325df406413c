"""BIM / I-FGSM: Kurakin et al., "Adversarial examples in the physical world",
arXiv 1607.02533.

    x_0 = x,  x_{k+1} = Clip_{x, eps}(x_k + alpha * sign(grad_x d(f(x_k), r)))

where Clip_{x, eps} clips to the eps-ball around x and to [0, 1] after every step.
"""

from __future__ import annotations

from udcguard.attacks.base import (
    ATTACKS,
    Attack,
    ModelFn,
    check_eps,
    check_random_start,
    check_steps,
)
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
    PGD without a random start and with a small step.

    Args:
        model_fn: f(x) -> Tensor, the restorer; called in its current mode (set eval()).
        eps: L-inf budget in image units ([0, 1] space). Default 8/256.
        alpha: step size in image units. Default 1/256 (Kurakin's one intensity level).
        steps: iterations (one forward + one backward each). Default None: Kurakin's rule
            min(eps + 4, 1.25 eps) with eps in levels of 1/256, rounded down, at least 1
            (torchattacks' ``steps=0``, which uses levels of 1/255): 10 steps at eps = 8/256,
            1 at 1/256. With the default alpha the steps reach the boundary of the ball.
        random_start: start from x + U[-eps, eps] (drawn from the call's ``generator``).
            Default None: True for reference "clean_output", False for "gt" (the paper's
            BIM starts at x). Against the clean output the objective's gradient is exactly
            zero at delta = 0, so BIM from x never moves; random_start=False with reference
            "clean_output" is therefore refused.
        keep_best: return, per image, the iterate (x_0 .. x_steps) with the highest
            objective. Default True. False: the last iterate (the paper's BIM).
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
        alpha: float = 1 / 256,
        steps: int | None = None,
        random_start: bool | None = None,
        keep_best: bool = True,
        objective: str = "mse",
        reference: str = "clean_output",
    ) -> None:
        Attack.__init__(self, model_fn, objective=objective, reference=reference)
        self.restarts = 1  # the iteration itself is PGD's (PGD._run), from x unless random_start
        self.eps = check_eps(eps)
        self.alpha = check_eps(alpha, "alpha")
        self.steps = kurakin_steps(self.eps) if steps is None else check_steps(steps)
        self.random_start = check_random_start(random_start, reference)
        self.keep_best = bool(keep_best)

    def __repr__(self) -> str:
        return (
            f"BIM(eps={self.eps:.6g}, alpha={self.alpha:.6g}, steps={self.steps}, "
            f"random_start={self.random_start}, keep_best={self.keep_best}, "
            f"objective={self.objective!r}, reference={self.reference!r})"
        )

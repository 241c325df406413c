"""PGD under an L2 budget: Madry et al., "Towards Deep Learning Models Resistant to
Adversarial Attacks", arXiv 1706.06083 (the L2 variant).

    x_{k+1} = Proj_{ {||x' - x||_2 <= eps} ∩ [0, 1] } (x_k + alpha * g_k / ||g_k||_2),
    g_k = grad_x d(f(x_k), r), norms per image over (C, H, W).
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from udcguard.attacks.base import ATTACKS, ModelFn, normalize_l2, project_l2
from udcguard.attacks.iterative import IterativeAttack, Step


@ATTACKS.register("pgd_l2")
class PGDL2(IterativeAttack):
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

    Random start, keep-best, restarts and cost: :class:`~udcguard.attacks.iterative.IterativeAttack`.
    """

    norm: ClassVar[str] = "l2"

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
        super().__init__(model_fn, eps=eps, alpha=alpha, steps=steps, random_start=random_start,
                         keep_best=keep_best, restarts=restarts, objective=objective, reference=reference)

    def default_alpha(self) -> float:
        return 2.5 * self.eps / self.steps  # Madry et al.'s rule of thumb

    def step_rule(self, x: Tensor, mask: Tensor | None) -> Step:
        def step(x_k: Tensor, grad: Tensor) -> Tensor:
            if mask is not None:  # step on the attacked pixels only, at full length
                grad = grad * mask
            return project_l2(x_k + self.alpha * normalize_l2(grad), x, self.eps, mask)

        return step

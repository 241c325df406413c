"""The base of the iterative gradient attacks (FGSM, BIM, PGD, PGD-L2, MI-FGSM), as torchattacks
keeps one ``Attack`` base: a subclass supplies its step rule and its defaults, nothing else
(the class attribute ``norm``, "linf" by default, picks the ball).

    x_0 = x (or a random start in the ball),  x_{k+1} = step(x_k, grad_x d(f(x_k), r)),  k < steps
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
import torch
from torch import Tensor

from udcguard.attacks.base import (
    Attack,
    Calls,
    ModelFn,
    Perturbation,
    best_of_restarts,
    check_eps,
    check_nonneg,
    check_random_start,
    check_steps,
    gradient_ascent,
    l2_ball_start,
    project_linf,
    uniform_start,
)

#: A step rule: (x_k, grad_k) -> x_{k+1}, already projected to the ball and to [0, 1].
Step = Callable[[Tensor, Tensor], Tensor]


class IterativeAttack(Attack):
    r"""Gradient ascent on d(f(y + delta), r) inside the ``norm`` ball of radius ``eps``.

    The base owns the budget ``eps``, the step size ``alpha``, ``steps``, the random start,
    keep-best, restarts, their checks, :meth:`perturb` and a ``__repr__`` built from the
    constructor's arguments. A subclass sets ``norm`` ("linf" or "l2"), its defaults (the
    signature of its ``__init__`` and :meth:`default_alpha`) and its :meth:`step_rule`.

    Budgets: L-inf ``eps`` and ``alpha`` in [0, 1] (image space); L2 ones any finite value
    >= 0 (per-image norms over (C, H, W), so they scale with the image size).

    Random start. Against reference "clean_output" the objective d(f(x + delta), f(x)) is at
    its minimum at delta = 0 and its gradient there is exactly zero, so an iteration started
    at x never moves. ``random_start=None`` therefore means True for "clean_output" and False
    for "gt" (the papers start at x); False with "clean_output" is refused. The start is
    x + U[-eps, eps] projected to the ball (L-inf), or a point of the L2 ball
    (:func:`~udcguard.attacks.base.l2_ball_start`), drawn from the call's ``generator``.

    keep_best: return, per image, the iterate (x_0 .. x_steps) with the highest objective;
    False: the last iterate (the papers' plain attacks). restarts: independent runs, each from
    a fresh random start; the result keeps, per image, the run with the highest objective
    (the worst case for the restorer). ``restarts > 1`` needs a random start.

    Cost: ``restarts * steps`` forward+backward passes, ``restarts`` forwards for the last
    iterates, plus one forward for r = f(x) when reference is "clean_output" and one for
    d(f(x), gt) when reference is "gt" with a random start. ``queries`` and ``grads`` count
    them.

    Shape:
        - x: (B, C, H, W) in [0, 1]; gt: like f(x) (labels (B,) for "ce").
        - result.x_adv: (B, C, H, W) in [0, 1], inside the eps-ball around x.
    """

    def __init__(
        self,
        model_fn: ModelFn,
        *,
        eps: float,
        alpha: float | None,
        steps: int,
        random_start: bool | None,
        keep_best: bool,
        restarts: int = 1,
        objective: str = "mse",
        reference: str = "clean_output",
    ) -> None:
        super().__init__(model_fn, objective=objective, reference=reference)
        l2 = self.norm == "l2"
        self.eps = check_nonneg(eps, "eps (L2 budget)") if l2 else check_eps(eps)
        self.steps = check_steps(steps)
        if alpha is None:
            self.alpha = self.default_alpha()
        else:
            self.alpha = check_nonneg(alpha, "alpha (L2 step)") if l2 else check_eps(alpha, "alpha")
        self.restarts = check_steps(restarts, "restarts")
        self.random_start = check_random_start(random_start, reference, self.restarts)
        self.keep_best = bool(keep_best)

    def default_alpha(self) -> float:
        """The step size when ``alpha`` is None (after ``eps`` and ``steps`` are set): eps."""
        return self.eps

    def step_rule(self, x: Tensor, mask: Tensor | None) -> Step:
        """The step of one run around the clean input ``x`` (a fresh closure per run: it may keep state)."""
        raise NotImplementedError

    def start(self, x: Tensor, mask: Tensor | None, generator: torch.Generator | None) -> Tensor:
        """The random start x_0 in the ball (and in [0, 1])."""
        if self.norm == "l2":
            return torch.clamp(x + l2_ball_start(x, self.eps, mask, generator), min=0.0, max=1.0)
        return project_linf(x + uniform_start(x, self.eps, generator), x, self.eps, mask)

    def perturb(self, x: Tensor, r: Tensor, *, mask: Tensor | None, generator: torch.Generator | None,
                calls: Calls) -> Perturbation:
        return best_of_restarts(self.restarts, lambda: self._run(x, r, mask, generator, calls))

    def _run(self, x: Tensor, r: Tensor, mask: Tensor | None, generator: torch.Generator | None,
             calls: Calls) -> Perturbation:
        """One run (one random start)."""
        x_0 = self.start(x, mask, generator) if self.random_start else x.clone()  # (B, C, H, W)
        return gradient_ascent(x_0, r, calls, steps=self.steps, step=self.step_rule(x, mask),
                               keep_best=self.keep_best, from_x=not self.random_start)

    def __repr__(self) -> str:
        names = [n for n in inspect.signature(type(self).__init__).parameters if n not in ("self", "model_fn")]
        values = [(n, getattr(self, n)) for n in names]
        return f"{type(self).__name__}({', '.join(f'{n}={_fmt(v)}' for n, v in values)})"


def _fmt(v: object) -> str:
    return f"{v:.6g}" if isinstance(v, float) else repr(v)

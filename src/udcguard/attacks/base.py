"""The small base every attack builds on: reference, mask, counting, result.

Threat model (design.md, section 3): the attacker perturbs the degraded, tone-mapped input
y in [0, 1] (NCHW float) by delta, y + delta clipped to [0, 1], and maximises
d(f(y + delta), r), where r is the restorer's output on the clean input
(``reference="clean_output"``, default) or the ground truth (``reference="gt"``), and d is
an objective from :mod:`udcguard.attacks.objectives`. Budgets (eps, step) are in the same
[0, 1] space (the paper's levels 1, 2, 4, 8 / 256 are ``eps = k / 256``).

The model is injected as a callable ``model_fn(x) -> Tensor`` (side inputs such as PSF
codes live inside the closure and are not attacked). Attacks call it in whatever mode it is
in (the caller sets ``eval()``), take gradients with respect to the input only
(``torch.autograd.grad``: the model's ``.grad`` fields are never touched) and count every
call: ``queries`` forward calls, ``grads`` backward passes. Nothing here reads the clock.

Expectation over transformation (EOT, Athalye et al., arXiv 1802.00420): a stochastic
``model_fn`` (e.g. :class:`udcguard.attacks.adaptive.DefendedModel`, a restorer behind a
diffusion purifier) may carry an integer attribute ``eot_samples = N``; :class:`Calls` then
averages :meth:`Calls.value` and :meth:`Calls.value_and_grad` over N calls (N draws of its
randomness), counting N queries (and N backward passes). Attacks need no change.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from udcguard.attacks.objectives import Objective, resolve_objective
from udcguard.errors import UdcGuardError
from udcguard.registry import Registry

ModelFn = Callable[[Tensor], Tensor]

#: Valid values of ``reference``.
REFERENCES = ("clean_output", "gt")


class AttackArgumentError(UdcGuardError, ValueError):
    """An attack argument or input is invalid (a ValueError the CLI reports on one line)."""


@dataclass
class AttackResult:
    """What an attack returns; every tensor is detached.

    Shape:
        - x_adv: (B, C, H, W), same dtype and device as the input, in [0, 1].
        - objective: (B,) d(f(x_adv), r), the distortion of the returned images.
        - objective_clean: (B,) d(f(x), r); exactly 0 for ``reference="clean_output"``.
        - linf, l2: (B,) norms of x_adv - x over (C, H, W).
        - queries: forward calls of ``model_fn`` in this call (reference included).
        - grads: backward passes (gradients with respect to the input) in this call.
    """

    x_adv: Tensor
    objective: Tensor
    objective_clean: Tensor
    linf: Tensor
    l2: Tensor
    queries: int
    grads: int


class Perturbation(NamedTuple):
    """What :meth:`Attack.perturb` hands back to :meth:`Attack.__call__`."""

    x_adv: Tensor  # (B, C, H, W)
    objective: Tensor  # (B,) d(f(x_adv), r)
    objective_clean: Tensor | None = (
        None  # (B,) d(f(x), r) if it was computed on the way
    )


def eot_samples_of(model_fn: ModelFn) -> int:
    """N, the calls averaged per value / gradient: ``model_fn.eot_samples`` if set, else 1."""
    n = getattr(model_fn, "eot_samples", 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise AttackArgumentError(f"model_fn.eot_samples must be an integer >= 1, got {n!r}")
    return n


class Calls:
    """Counted access to the model and the objective for one attack call.

    With ``model_fn.eot_samples = N > 1`` (a stochastic model), :meth:`value` and
    :meth:`value_and_grad` return the mean over N calls (EOT; N queries, N backward passes);
    :meth:`forward` is always one call.
    """

    def __init__(self, model_fn: ModelFn, objective: Objective) -> None:
        self._model_fn = model_fn
        self._objective = objective
        self.eot_samples = eot_samples_of(model_fn)
        self.queries = 0
        self.grads = 0

    def forward(self, x: Tensor) -> Tensor:
        """f(x); one query. Runs under the caller's grad mode."""
        self.queries += 1
        return self._model_fn(x)

    def value(self, x: Tensor, r: Tensor) -> Tensor:
        """d(f(x), r), (B,), without a graph; one query (EOT: mean of N, N queries)."""
        with torch.no_grad():
            value = self._objective(self.forward(x), r)
            for _ in range(self.eot_samples - 1):
                value = value + self._objective(self.forward(x), r)
        return value / self.eot_samples if self.eot_samples > 1 else value

    def value_and_grad(self, x: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
        """(d(f(x), r) (B,), its gradient w.r.t. x (B, C, H, W)); one query, one backward.

        The images are independent: the gradient of the batch sum is each image's own.
        EOT (``eot_samples = N > 1``): the means of the N values and N gradients, one call
        and one backward pass each (N queries, N backward passes).
        """
        value, grad = self._value_and_grad(x, r)
        if self.eot_samples == 1:
            return value, grad
        for _ in range(self.eot_samples - 1):
            v, g = self._value_and_grad(x, r)
            value, grad = value + v, grad + g
        return value / self.eot_samples, grad / self.eot_samples

    def _value_and_grad(self, x: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
        """One call and one backward pass (counted)."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            value = self._objective(self.forward(x), r)  # (B,)
            (grad,) = torch.autograd.grad(value.sum(), x)
        self.grads += 1
        return value.detach(), grad


def _per_image(v: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, 1, 1) for broadcasting against ``like`` (B, C, H, W)."""
    return v.view(-1, *([1] * (like.ndim - 1)))


class BestIterate:
    """Keeps, per image, the iterate with the highest objective seen so far (ties: earliest)."""

    def __init__(self) -> None:
        self.x: Tensor | None = None
        self.value: Tensor | None = None

    def update(self, x: Tensor, value: Tensor) -> None:
        if self.x is None or self.value is None:
            self.x, self.value = x, value
            return
        better = value > self.value  # (B,); NaN never wins
        self.x = torch.where(_per_image(better, x), x, self.x)
        self.value = torch.where(better, value, self.value)

    def result(self) -> Perturbation:
        if self.x is None or self.value is None:
            raise RuntimeError("BestIterate.result() before any update()")
        return Perturbation(self.x, self.value)


# ---------------------------------------------------------------- helpers for attacks
def check_eps(eps: float, name: str = "eps") -> float:
    """An L-inf budget (or L-inf step) in [0, 1] (the tone-mapped image space)."""
    eps = float(eps)
    if not 0.0 <= eps <= 1.0:  # also rejects NaN
        raise AttackArgumentError(f"{name} must be in [0, 1] (image space), got {eps}")
    return eps


def check_nonneg(value: float, name: str) -> float:
    """A finite value >= 0 (L2 budgets and steps, momentum decay)."""
    value = float(value)
    if not (math.isfinite(value) and value >= 0.0):
        raise AttackArgumentError(f"{name} must be a finite number >= 0, got {value}")
    return value


def check_steps(steps: int, name: str = "steps") -> int:
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise AttackArgumentError(f"{name} must be an integer >= 1, got {steps!r}")
    return int(steps)


def check_random_start(
    random_start: bool | None, reference: str, restarts: int = 1
) -> bool:
    """Resolve ``random_start``: None means True for "clean_output", False for "gt".

    Refuses False with reference "clean_output": the gradient of d(f(x + delta), f(x)) is
    exactly zero at delta = 0 (the objective is at its minimum), so a gradient attack
    started at x never moves. Refuses ``restarts > 1`` without a random start (every
    restart would be the same run).
    """
    if random_start is None:
        random_start = reference == "clean_output"
    if not random_start and reference == "clean_output":
        raise AttackArgumentError(
            "random_start=False with reference='clean_output' cannot move: the gradient of "
            "d(f(x + delta), f(x)) is zero at delta = 0; use random_start=True or "
            "reference='gt'"
        )
    if not random_start and restarts > 1:
        raise AttackArgumentError(
            f"restarts={restarts} needs random_start=True (without a random start every "
            "restart is the same run)"
        )
    return bool(random_start)


def best_of_restarts(restarts: int, run: Callable[[], Perturbation]) -> Perturbation:
    """Call ``run()`` ``restarts`` times; keep, per image, the result with the highest objective.

    Each call draws its own random start from the attack call's generator (consumed in
    sequence), so the restarts differ and the whole is reproducible from the generator's
    seed. Ties keep the earliest restart. ``objective_clean`` is the first one reported.
    """
    best = BestIterate()
    obj_clean = None
    for _ in range(check_steps(restarts, "restarts")):
        out = run()
        best.update(out.x_adv, out.objective)
        if obj_clean is None:
            obj_clean = out.objective_clean
    return best.result()._replace(objective_clean=obj_clean)


def gradient_ascent(
    x_0: Tensor,
    r: Tensor,
    calls: Calls,
    *,
    steps: int,
    step: Callable[[Tensor, Tensor], Tensor],
    keep_best: bool,
    from_x: bool,
) -> Perturbation:
    """The loop of the iterative gradient attacks: x_{k+1} = step(x_k, grad_k), k < steps.

    One forward+backward per step and one forward for the last iterate. ``keep_best`` returns,
    per image, the iterate (x_0 .. x_steps) with the highest objective, else the last one.
    ``from_x``: x_0 is the unperturbed input, so its objective is reported as the clean one.
    """
    x_k = x_0
    best = BestIterate()
    obj_clean = None
    for k in range(steps):
        obj, grad = calls.value_and_grad(x_k, r)  # (B,), (B, C, H, W)
        if k == 0 and from_x:
            obj_clean = obj
        if keep_best:
            best.update(x_k, obj)
        x_k = step(x_k, grad)
    obj = calls.value(x_k, r)
    if not keep_best:
        return Perturbation(x_k, obj, obj_clean)
    best.update(x_k, obj)
    return best.result()._replace(objective_clean=obj_clean)


def l2_norm(t: Tensor) -> Tensor:
    """Per-image L2 norm over (C, H, W): (B, C, H, W) -> (B,)."""
    return torch.linalg.vector_norm(t.flatten(1), dim=1)


def normalize_l2(t: Tensor) -> Tensor:
    """t / ||t||_2 per image; an all-zero image stays zero. (B, C, H, W) -> same."""
    n = l2_norm(t).clamp_min(torch.finfo(t.dtype).tiny)
    return t / _per_image(n, t)


def l2_ball_start(
    x: Tensor, eps: float, mask: Tensor | None, generator: torch.Generator | None
) -> Tensor:
    """Random delta inside the L2 ball, as torchattacks' PGDL2: a Gaussian direction scaled
    to radius r * eps with r ~ U[0, 1] per image (uniform in radius, not in volume).

    The direction is drawn, masked, then normalised, so ||delta||_2 = r * eps exactly
    (before any [0, 1] clipping) and delta is 0 outside the mask. (B, C, H, W).
    """
    direction = torch.empty_like(x).normal_(generator=generator)
    if mask is not None:
        direction = direction * mask
    r = torch.empty(x.shape[0], dtype=x.dtype, device=x.device).uniform_(
        0.0, 1.0, generator=generator
    )
    return normalize_l2(direction) * _per_image(r * eps, x)


def project_l2(x_adv: Tensor, x: Tensor, eps: float, mask: Tensor | None) -> Tensor:
    """Proj onto {||x_adv - x||_2 <= eps} (per image) then [0, 1]; delta zeroed where mask == 0.

    Same arithmetic as torchattacks' PGDL2: delta *= min(eps / ||delta||_2, 1);
    clamp(x + delta, 0, 1). The clamp only shrinks |delta| elementwise, so the result stays
    in the ball.
    """
    delta = x_adv - x
    if mask is not None:
        delta = delta * mask
    n = l2_norm(delta)
    factor = torch.where(n > eps, eps / n.clamp_min(torch.finfo(n.dtype).tiny), 1.0)
    return torch.clamp(x + delta * _per_image(factor, x), min=0.0, max=1.0)


def uniform_start(x: Tensor, eps: float, generator: torch.Generator | None) -> Tensor:
    """delta ~ U[-eps, eps] elementwise, (B, C, H, W); ``generator=None`` uses torch's."""
    return torch.empty_like(x).uniform_(-eps, eps, generator=generator)


def project_linf(x_adv: Tensor, x: Tensor, eps: float, mask: Tensor | None) -> Tensor:
    """Proj onto {|x_adv - x|_inf <= eps} then [0, 1]; delta is zeroed where mask == 0.

    Same arithmetic as torchattacks' PGD: delta = clamp(x_adv - x, -eps, eps);
    clamp(x + delta, 0, 1).
    """
    delta = torch.clamp(x_adv - x, min=-eps, max=eps)
    if mask is not None:
        delta = delta * mask
    return torch.clamp(x + delta, min=0.0, max=1.0)


# ---------------------------------------------------------------- the base class
class Attack:
    """Base of the attacks: validates inputs, computes r, counts calls, builds the result.

    Args:
        model_fn: ``f(x) -> Tensor``, the restorer (or, in tests, a classifier).
        objective: name in ``OBJECTIVES`` ("mse" default, "l1", "ssim"; "ce" for classifiers),
            "lpips_rand", or a callable ``d(output, reference) -> (B,)`` such as
            ``make_objective("lpips", lpips_backbone=..., lpips_lin=...)``. ``self.objective``
            holds its display name (the callable's ``name``, else ``__name__``).
        reference: "clean_output" (r = f(x), computed under no_grad) or "gt" (r = the
            ``gt`` passed to the call; labels for "ce").

    Subclasses implement :meth:`perturb` and describe their budget with class attributes
    (read by the invariant tests and reports):

    - ``norm``: "linf" or "l2", the norm of delta = x_adv - x the attack bounds or minimises.
    - ``bounded``: True if ``||delta||_norm <= eps`` is guaranteed; False for attacks that
      are unbounded and minimise the norm instead (C&W-L2).
    - ``eps``: the budget in image units (an instance attribute, set by bounded attacks).
    - ``needs_surrogate``: True if the attack is crafted on another model than the one it is
      scored on (the transfer attack): the stages give it a surrogate restorer, craft its sets
      once, and file its rows under the transfer setting.
    """

    norm: ClassVar[str] = "linf"
    bounded: ClassVar[bool] = True
    needs_surrogate: ClassVar[bool] = False
    eps: float

    def __init__(
        self,
        model_fn: ModelFn,
        *,
        objective: str | Objective = "mse",
        reference: str = "clean_output",
    ) -> None:
        if not callable(model_fn):
            raise AttackArgumentError(
                f"model_fn must be callable, got {type(model_fn).__name__}"
            )
        try:
            name, self._objective_fn = resolve_objective(objective)
        except UdcGuardError as e:
            raise AttackArgumentError(str(e)) from None
        if reference not in REFERENCES:
            raise AttackArgumentError(
                f"unknown reference {reference!r}; valid: {', '.join(REFERENCES)}"
            )
        self.model_fn = model_fn
        self.objective = name
        self.reference = reference

    def perturb(
        self,
        x: Tensor,
        r: Tensor,
        *,
        mask: Tensor | None,
        generator: torch.Generator | None,
        calls: Calls,
    ) -> Perturbation:
        """Find x_adv for a validated, detached x (B, C, H, W); mask is float 0/1 or None."""
        raise NotImplementedError

    def __call__(
        self,
        x: Tensor,
        *,
        gt: Tensor | None = None,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> AttackResult:
        """Attack the batch x (B, C, H, W) in [0, 1]; x itself is never modified.

        Args:
            gt: ground truth (B, C, H, W) (labels (B,) for "ce"); required iff
                ``reference="gt"``.
            mask: (B or 1, 1 or C, H, W); delta is kept where mask != 0 and is exactly 0
                elsewhere. None: the whole image.
            generator: source of randomness (random starts); None uses torch's default.
        """
        x = self._check_input(x)
        mask_f = self._check_mask(mask, x)
        calls = Calls(self.model_fn, self._objective_fn)
        if self.reference == "gt":
            if gt is None:
                raise AttackArgumentError(
                    "reference='gt' needs gt=... (the ground truth)"
                )
            if gt.shape[:1] != x.shape[:1]:
                raise AttackArgumentError(
                    f"gt batch size {gt.shape[0] if gt.ndim else None} != x batch size "
                    f"{x.shape[0]}"
                )
            r = gt.detach()
        else:
            with torch.no_grad():
                r = calls.forward(x).detach()
        out = self.perturb(x, r, mask=mask_f, generator=generator, calls=calls)
        x_adv = out.x_adv.detach()
        if self.reference == "clean_output":
            obj_clean = torch.zeros_like(out.objective)
        elif out.objective_clean is not None:
            obj_clean = out.objective_clean
        else:
            obj_clean = calls.value(x, r)
        delta = (x_adv - x).flatten(1)  # (B, C*H*W)
        return AttackResult(
            x_adv=x_adv,
            objective=out.objective.detach(),
            objective_clean=obj_clean.detach(),
            linf=delta.abs().amax(1),
            l2=torch.linalg.vector_norm(delta, dim=1),
            queries=calls.queries,
            grads=calls.grads,
        )

    # ------------------------------------------------------------ validation
    @staticmethod
    def _check_input(x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.ndim != 4 or not x.is_floating_point():
            desc = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise AttackArgumentError(
                f"x must be a float tensor (B, C, H, W), got {desc}"
            )
        if x.numel() == 0:
            raise AttackArgumentError(f"x is empty: {tuple(x.shape)}")
        lo, hi = torch.aminmax(x.detach())
        if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN
            raise AttackArgumentError(
                f"x must lie in [0, 1] (tone-mapped), got range [{lo.item()}, {hi.item()}]"
            )
        return x.detach()

    @staticmethod
    def _check_mask(mask: Tensor | None, x: Tensor) -> Tensor | None:
        if mask is None:
            return None
        b, c, h, w = x.shape
        ok = (
            isinstance(mask, Tensor)
            and mask.ndim == 4
            and mask.shape[0] in (1, b)
            and mask.shape[1] in (1, c)
            and tuple(mask.shape[2:]) == (h, w)
        )
        if not ok:
            got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise AttackArgumentError(
                f"mask must have shape ({b} or 1, {c} or 1, {h}, {w}), got {got}"
            )
        return (mask.detach() != 0).to(device=x.device, dtype=x.dtype)


#: Attack classes by name ("pgd_linf", ...); see udcguard.attacks.
ATTACKS: Registry[type[Attack]] = Registry("attack")

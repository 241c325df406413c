"""Transfer attack: craft on a surrogate restorer, evaluate on the target.

    x_adv = inner_attack(surrogate)(x);   objective = d(f_target(x_adv), r_target)

Papernot et al., "Transferability in Machine Learning", arXiv 1605.07277; the "transfer
from a surrogate restorer" row of design.md, section 3.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from udcguard.attacks.base import (
    ATTACKS,
    Attack,
    AttackArgumentError,
    AttackResult,
    Calls,
    ModelFn,
    Perturbation,
)
from udcguard.errors import UnknownNameError


@ATTACKS.register("transfer")
class Transfer(Attack):
    r"""Run a registered attack on a surrogate restorer and measure the result on the target.

    Paper: arXiv 1605.07277 (Papernot et al., transferability). Threat model: black-box on
    the target, with no query while crafting: the adversarial example is crafted white-box
    (or however ``inner`` works) on ``surrogate_fn``; the target is called only to compute
    its reference r = f_target(x) (reference "clean_output") or its clean objective
    d(f_target(x), gt) (reference "gt"), and once to evaluate d(f_target(x_adv), r). No
    gradient of the target is taken. Perturbation model, budget and mask are those of the
    inner attack (design.md, section 3): ``norm``, ``bounded`` and ``eps`` are copied from it.

    The inner attack uses the surrogate's own reference: with "clean_output" it attacks
    d(f_surrogate(x + delta), f_surrogate(x)), with "gt" d(f_surrogate(x + delta), gt). After a
    call, ``self.last_inner`` holds the inner attack's :class:`AttackResult` (its objective,
    queries and gradients are the surrogate's); the returned result counts the target only.

    Args:
        model_fn: f_target(x) -> Tensor, the attacked restorer (called under no_grad).
        surrogate_fn: f_surrogate(x) -> Tensor, the restorer the attack is crafted on.
        inner: name of the registered attack run on the surrogate. Default "pgd_linf".
        inner_kwargs: keyword arguments of the inner attack (eps, steps, ...). Default None:
            its defaults. ``objective`` may be set here to craft with another objective than
            the one measured on the target; ``reference`` and ``model_fn`` may not.
        objective: measured on the target (and the inner default). "mse" (default) or "l1".
        reference: "clean_output" (default) or "gt", for both the inner attack and the target.

    Shape:
        - x: (B, C, H, W) in [0, 1]; gt: like f(x) (labels (B,) for "ce").
        - result.x_adv: the inner attack's x_adv (same budget and mask guarantees).

    Cost on the target: 2 forward queries, no backward pass (``queries`` == 2, ``grads`` == 0).
    Cost on the surrogate: the inner attack's (see ``self.last_inner``).
    """

    needs_surrogate: ClassVar[bool] = True

    def __init__(
        self,
        model_fn: ModelFn,
        *,
        surrogate_fn: ModelFn,
        inner: str = "pgd_linf",
        inner_kwargs: Mapping[str, Any] | None = None,
        objective: str = "mse",
        reference: str = "clean_output",
    ) -> None:
        super().__init__(model_fn, objective=objective, reference=reference)
        if not callable(surrogate_fn):
            raise AttackArgumentError(
                f"surrogate_fn must be callable, got {type(surrogate_fn).__name__}"
            )
        try:
            inner_cls = ATTACKS.get(inner)
        except UnknownNameError as e:
            raise AttackArgumentError(f"inner: {e}") from None
        if inner_cls.needs_surrogate:
            raise AttackArgumentError(f"inner={inner!r} would nest transfer attacks")
        kwargs = dict(inner_kwargs or {})
        for bad in ("model_fn", "reference"):
            if bad in kwargs:
                raise AttackArgumentError(
                    f"inner_kwargs may not set {bad!r} (it is Transfer's own argument)"
                )
        kwargs.setdefault("objective", objective)
        try:
            self.inner = inner_cls(surrogate_fn, reference=reference, **kwargs)
        except TypeError as e:
            raise AttackArgumentError(f"inner attack {inner!r}: {e}") from None
        self.inner_name = inner
        self.surrogate_fn = surrogate_fn
        # the perturbation model is the inner attack's (instance attributes override the
        # class-level defaults of Attack)
        self.norm = self.inner.norm
        self.bounded = self.inner.bounded
        if hasattr(self.inner, "eps"):
            self.eps = self.inner.eps
        self.last_inner: AttackResult | None = None

    def __repr__(self) -> str:
        return (
            f"Transfer(inner={self.inner!r}, objective={self.objective!r}, "
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
        gt = r if self.reference == "gt" else None
        self.last_inner = self.inner(x, gt=gt, mask=mask, generator=generator)
        x_adv = self.last_inner.x_adv
        return Perturbation(x_adv, calls.value(x_adv, r))  # one target query, no_grad

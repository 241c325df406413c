"""Build an attack from params units (the one place that converts budgets).

params.yaml gives L-inf budgets (and SimBA's step) in 1/256 of the image range, L2
budgets as the L2 norm of delta in image units, and no budget for unbounded attacks
(C&W-L2). Attack constructors take image units.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from udcguard.attacks.base import ATTACKS, Attack, ModelFn
from udcguard.attacks.objectives import make_objective


def needs_surrogate(name: str) -> bool:
    """Whether the registered attack ``name`` is crafted on a surrogate model (its class says so)."""
    return ATTACKS.get(name).needs_surrogate


@functools.lru_cache(maxsize=4)
def build_objective(name: str, *, lpips_backbone: str | None = None, lpips_lin: str | None = None,
                    net: str = "alex") -> Any:
    """The attack objective ``name`` (LPIPS weights from local files), built once per process: the one
    place where the stages (attack, select_tstar, adaptive) get their objectives."""
    return make_objective(name, lpips_backbone=lpips_backbone, lpips_lin=lpips_lin, net=net)


def budget_kwargs(cls: type[Attack], eps: float, step: float | None) -> dict[str, float]:
    """Constructor budget of one level: ``eps`` (and ``alpha`` from ``step``) in image units."""
    if not getattr(cls, "bounded", True):
        return {}
    scale = 1 / 256 if getattr(cls, "norm", "linf") == "linf" else 1.0
    out = {"eps": eps * scale}
    if step is not None:
        out["alpha"] = step * scale
    return out


def build_attack(
    name: str,
    model_fn: ModelFn,
    *,
    eps: float = 0.0,
    step: float | None = None,
    objective: Any = "mse",
    reference: str = "clean_output",
    options: Mapping[str, Any] | None = None,
    surrogate_fn: ModelFn | None = None,
) -> Attack:
    """The registered attack ``name`` at one budget level (params units).

    For ``transfer``, ``options`` may hold ``inner`` (an attack name, default pgd_linf) and
    ``inner_options``; the inner attack's budget comes from ``eps``/``step`` in its own
    norm's units, and ``surrogate_fn`` is the model it is crafted on. ``options.surrogate``
    (a restorer name) is resolved by the caller into ``surrogate_fn``.
    """
    cls = ATTACKS.get(name)
    opts = dict(options or {})
    common = {"objective": objective, "reference": reference}
    if cls.needs_surrogate:
        inner = opts.pop("inner", "pgd_linf")
        inner_kwargs = {**dict(opts.pop("inner_options", {}) or {}), **budget_kwargs(ATTACKS.get(inner), eps, step)}
        opts.pop("surrogate", None)
        if surrogate_fn is None:
            raise ValueError(f"{name} needs the surrogate model (surrogate_fn)")
        return cls(model_fn, surrogate_fn=surrogate_fn, inner=inner, inner_kwargs=inner_kwargs, **common, **opts)
    return cls(model_fn, **budget_kwargs(cls, eps, step), **common, **opts)

"""The attack matrix (attack sets and their levels) and LPIPS weights."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_serializer, field_validator, model_validator

from udcguard.config.base import Device, Frozen, named_from_mapping
from udcguard.errors import ConfigError


#: Keys of an attack set that the stage sets itself (never in ``options``).
MANAGED_ATTACK_ARGS = ("model_fn", "eps", "alpha", "objective", "reference")


class AttackSpec(Frozen):
    """One attack set (params.yaml: ``attack.attacks.<id>``), run on every restorer.

    ``eps`` lists the budget levels; their unit follows the attack's norm: L-inf attacks
    (and SimBA's step) in 1/256 of the [0, 1] image range (the paper's 1, 2, 4, 8), L2
    attacks as the L2 norm of delta in image units (e.g. 0.5 for a 64 x 64 RGB crop). An
    unbounded attack (C&W-L2) takes no levels and is recorded at eps 0.
    """

    id: str = Field(pattern=r"^[A-Za-z0-9_-]+$", description="the key in params.yaml; names the outputs")
    attack: str = Field(description="registry name: pgd_linf | pgd_l2 | fgsm | bim | mifgsm | cw_l2 | simba | transfer")
    eps: tuple[Annotated[float, Field(gt=0.0)], ...] = ()
    step: tuple[Annotated[float, Field(gt=0.0)], ...] | None = Field(
        None, description="per level, same unit as eps; default: the attack's own rule (PGD: step = eps)"
    )
    objective: Literal["mse", "l1", "ssim", "lpips", "lpips_rand", "lpips_auto"] | None = Field(
        None, description="None: attack.objective; lpips_auto: lpips when lpips.* weights are given, else lpips_rand"
    )
    reference: Literal["clean_output", "gt"] | None = Field(None, description="None: attack.reference")
    region: Literal["full", "lights"] | None = Field(None, description="None: attack.region")
    max_images: int | None = Field(None, ge=1, description="a subset of N images, stratified across scene groups "
                                   "(costly attacks); None: attack.max_images")
    finetuned: bool = Field(True, description="also craft the set on the fine-tuned restorer (the gray-box rows of "
                            "purify+finetune); false: that defence is scored on the base restorer's set, as transfer")
    options: dict[str, Any] = Field(default_factory=dict, description="other constructor arguments of the attack")

    @model_validator(mode="after")
    def _check(self) -> AttackSpec:
        from udcguard.attacks import ATTACKS

        cls = ATTACKS.get(self.attack)
        norm, bounded = getattr(cls, "norm", "linf"), getattr(cls, "bounded", True)
        if not bounded and self.eps:
            raise ValueError(f"{self.attack} is unbounded (it minimises ||delta||_2): give no eps levels")
        if bounded and not self.eps:
            raise ValueError(f"{self.attack} needs eps levels")
        if len(set(self.eps)) != len(self.eps):
            raise ValueError("eps levels must be distinct")
        if norm == "linf" and any(e > 256 for e in self.eps):
            raise ValueError(f"eps is in 1/256 units for the L-inf attack {self.attack}: at most 256 (= 1.0)")
        if self.step is not None and len(self.step) != len(self.eps):
            raise ValueError(f"step needs one value per eps level ({len(self.eps)})")
        if cls.needs_surrogate:  # options: inner (attack name), inner_options, surrogate (restorer)
            _check_options(self.options, {"inner", "inner_options", "surrogate"}, "transfer")
            inner = self.options.get("inner", "pgd_linf")
            inner_cls = ATTACKS.get(inner)
            _check_options(self.options.get("inner_options") or {}, _init_args(inner_cls), inner, "options.inner_options.")
        else:
            _check_options(self.options, _init_args(cls), self.attack)
        return self


def _init_args(cls: type) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self"}


def _check_options(options: dict[str, Any], accepted: set[str], attack: str, where: str = "options.") -> None:
    """Option keys must be constructor arguments of ``attack`` that the stage does not set itself."""
    if not isinstance(options, dict):
        raise ValueError(f"{where.rstrip('.')}: expected a mapping")
    for key in options:
        if key in MANAGED_ATTACK_ARGS:
            raise ValueError(f"{where}{key}: set by the stage (use eps / step / objective / reference)")
        if key not in accepted:
            raise ValueError(f"{where}{key}: unknown argument of {attack}; valid: "
                             f"{', '.join(sorted(accepted - set(MANAGED_ATTACK_ARGS)))}")


class AttackParams(Frozen):
    """The attack matrix: every attack set in ``attacks`` on every restorer (design.md section 3)."""

    attacks: tuple[AttackSpec, ...] = Field(
        (), description="params.yaml: a mapping id -> {attack, eps, step, objective, ..., options}"
    )
    objective: Literal["mse", "l1", "ssim", "lpips", "lpips_rand", "lpips_auto"] = "mse"
    reference: Literal["clean_output", "gt"] = "clean_output"
    region: Literal["full", "lights"] = Field("full", description="lights: attack only around light sources")
    region_threshold: float = Field(0.9, ge=0.0, le=1.0, description="tone-mapped luma of a light")
    region_dilate_px: int = Field(4, ge=0, le=256)
    split: Literal["train", "val", "test"] = "test"
    max_images: int | None = Field(None, ge=1)
    batch_size: int = Field(8, ge=1, le=4096)
    device: Device = "auto"
    seed: int = Field(0, ge=0)

    @field_validator("attacks", mode="before")
    @classmethod
    def _attacks_from_mapping(cls, v: Any) -> Any:
        return named_from_mapping(v, "attack.attacks", "id")

    @field_serializer("attacks")
    def _attacks_to_mapping(self, v: tuple[AttackSpec, ...]) -> dict[str, dict[str, Any]]:
        return {a.id: a.model_dump(exclude={"id"}) for a in v}

    @model_validator(mode="after")
    def _constructible(self) -> AttackParams:
        # Build every attack once on a stand-in model: bad option values (steps 0, a decay
        # out of range, random_start false against the clean output, an unknown inner
        # attack...) fail here, before any work starts.
        from udcguard.attacks.build import build_attack, needs_surrogate

        ids = [a.id for a in self.attacks]
        if len(set(ids)) != len(ids):
            raise ValueError("attack ids must be unique")
        identity = lambda x: x  # noqa: E731
        for a in self.attacks:
            if needs_surrogate(a.attack) and needs_surrogate(a.options.get("inner", "pgd_linf")):
                raise ValueError(f"attacks.{a.id}: a transfer attack cannot wrap another transfer attack")
            for eps, step in zip(a.eps or (0.0,), a.step or (None,) * max(len(a.eps), 1), strict=True):
                options = {k: v for k, v in a.options.items() if k != "surrogate"}
                try:
                    build_attack(a.attack, identity, eps=eps, step=step, reference=a.reference or self.reference,
                                 options=options, surrogate_fn=identity)
                except (ValueError, TypeError) as err:  # AttackArgumentError / UnknownNameError are ValueErrors
                    raise ValueError(f"attacks.{a.id}: {err}") from None
        return self

    def spec(self, attack_id: str) -> AttackSpec:
        for a in self.attacks:
            if a.id == attack_id:
                return a
        raise ConfigError(f"attack.attacks: no attack set {attack_id!r}; configured: "
                          f"{', '.join(a.id for a in self.attacks)}")


class LpipsParams(Frozen):
    """LPIPS (Zhang et al., arXiv 1801.03924) for the ``lpips`` objective and metric.

    True LPIPS needs a pretrained backbone and the learned linear layers, both local files
    (nothing is downloaded). Without them the stages use ``lpips_rand``: the same network
    with seeded random backbone features and uniform linear weights, reported under that
    name and never as LPIPS.
    """

    net: Literal["alex", "vgg"] = "alex"
    backbone_path: Path | None = Field(None, description="torchvision-format AlexNet / VGG-16 state_dict")
    lin_path: Path | None = Field(None, description="LPIPS linear layers (the lpips package's v0.1 file format)")

    @model_validator(mode="after")
    def _both_or_none(self) -> LpipsParams:
        if (self.backbone_path is None) != (self.lin_path is None):
            raise ValueError("give both backbone_path and lin_path, or neither (lpips_rand)")
        return self

    @property
    def available(self) -> bool:
        return self.backbone_path is not None

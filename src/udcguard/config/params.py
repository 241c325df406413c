"""The root model of params.yaml and its cross-section checks (named validators)."""

from __future__ import annotations

import warnings
from typing import Any

from pydantic import Field, field_serializer, field_validator, model_validator

from udcguard.config.attacks import AttackParams, AttackSpec, LpipsParams
from udcguard.config.base import Frozen, named_from_mapping
from udcguard.config.data import DatasetParams, FormationParams, PSFParams, SceneParams
from udcguard.config.defences import AdaptiveParams, DiffusionParams, FinetuneParams, PurifyParams
from udcguard.config.models import RestorerParams, TrainParams
from udcguard.config.runtime import EvaluateParams, ParallelParams, TrackingParams
from udcguard.errors import ConfigError


#: Renamed params sections: old name -> new name (the old one loads with a FutureWarning).
RENAMED_SECTIONS = {"purifier": "diffusion"}


class Params(Frozen):
    """The whole params.yaml."""

    seed: int = Field(0, ge=0, lt=2**32)
    psf: PSFParams
    scenes: SceneParams = SceneParams()
    formation: FormationParams = FormationParams()
    dataset: DatasetParams = DatasetParams()
    restorers: tuple[RestorerParams, ...] = Field((), description="params.yaml: a mapping name -> {arch, size}")
    train: TrainParams = TrainParams()
    diffusion: DiffusionParams = DiffusionParams()
    attack: AttackParams = AttackParams()
    lpips: LpipsParams = LpipsParams()
    purify: PurifyParams = PurifyParams()
    adaptive: AdaptiveParams = AdaptiveParams()
    finetune: FinetuneParams = FinetuneParams()
    evaluate: EvaluateParams = EvaluateParams()
    tracking: TrackingParams = TrackingParams()
    parallel: ParallelParams = ParallelParams()

    @model_validator(mode="before")
    @classmethod
    def _renamed_sections(cls, data: Any) -> Any:
        """Old section names still load, with a warning: ``purifier`` is ``diffusion`` (training the
        purifier's UNet could be confused with ``purify``, running it)."""
        if not isinstance(data, dict):
            return data
        for old, new in RENAMED_SECTIONS.items():
            if old in data:
                if new in data:
                    raise ValueError(f"{old}: the old name of {new}; give only {new}")
                warnings.warn(f"params: section {old!r} is deprecated, rename it {new!r}", FutureWarning, stacklevel=2)
                data = {(new if k == old else k): v for k, v in data.items()}
        return data

    @field_validator("restorers", mode="before")
    @classmethod
    def _restorers_from_mapping(cls, v: Any) -> Any:
        # params.yaml keys restorers by name, so that DVC's foreach names stages
        # train_restorer@<name>; internally they are a tuple with the name inside.
        return named_from_mapping(v, "restorers", "name")

    @field_serializer("restorers")
    def _restorers_to_mapping(self, v: tuple[RestorerParams, ...]) -> dict[str, dict[str, Any]]:
        return {r.name: r.model_dump(exclude={"name"}) for r in v}

    def t_star_fixed(self) -> int:
        """purify.t_star as a timestep: a fraction f maps to round(f (T - 1)); "auto" is an error here."""
        t = self.purify.t_star
        if t == "auto":
            raise ConfigError("purify.t_star is auto: read the selected t* from the select_tstar stage")
        if isinstance(t, float):
            return round(t * (self.diffusion.num_train_timesteps - 1))
        return int(t)

    def objective_of(self, spec: AttackSpec) -> str:
        """The objective an attack set really uses: its own or attack.objective; lpips_auto resolved."""
        name = spec.objective or self.attack.objective
        if name == "lpips_auto":
            return "lpips" if self.lpips.available else "lpips_rand"
        return name

    def attack_label(self, spec: AttackSpec) -> str:
        """How rows name an attack set: its id, plus the objective it really used when that is not the
        matrix's default (e.g. ``lpips_pgd[lpips_rand]``)."""
        name = self.objective_of(spec)
        default = self.attack.objective if self.attack.objective != "lpips_auto" else None
        return spec.id if name == default else f"{spec.id}[{name}]"

    def restorer(self, name: str) -> RestorerParams:
        """The restorer called ``name``; ConfigError listing the configured ones otherwise."""
        for r in self.restorers:
            if r.name == name:
                return r
        raise ConfigError(f"restorers: no restorer named {name!r}; configured: {', '.join(r.name for r in self.restorers)}")

    @model_validator(mode="after")
    def _unique_restorer_names(self) -> Params:
        names = [r.name for r in self.restorers]
        if len(set(names)) != len(names):
            raise ValueError("restorers: names must be unique")
        return self

    @model_validator(mode="after")
    def _attack_sets_can_run(self) -> Params:
        """Transfer sets have a surrogate, lpips has weights, and the sets other sections name exist."""
        from udcguard.attacks.build import needs_surrogate

        names = [r.name for r in self.restorers]
        for a in self.attack.attacks:
            if needs_surrogate(a.attack) and len(names) < 2:
                raise ValueError(f"attack.attacks.{a.id}: a transfer attack needs a surrogate restorer other than "
                                 f"the target, and only {len(names)} restorer is configured (add one to restorers, "
                                 "or drop this attack set)")
            if (a.objective or self.attack.objective) == "lpips" and not self.lpips.available:
                raise ValueError(f"attack.attacks.{a.id}: objective lpips needs lpips.backbone_path and "
                                 "lpips.lin_path (local files; nothing is downloaded); without them use lpips_rand")
            surrogate = a.options.get("surrogate")
            if needs_surrogate(a.attack) and surrogate is not None and surrogate not in names:
                raise ValueError(f"attack.attacks.{a.id}.options.surrogate: no restorer {surrogate!r}; "
                                 f"configured: {', '.join(names)}")
        ids = [a.id for a in self.attack.attacks]
        for where, attack_id in (("purify.selection.attack", self.purify.selection.attack),
                                 ("adaptive.attack", self.adaptive.attack)):
            if ids and attack_id not in ids:
                raise ValueError(f"{where}: no attack set {attack_id!r} in attack.attacks; configured: {', '.join(ids)}")
        if ids:
            adaptive_spec = self.attack.spec(self.adaptive.attack)
            if needs_surrogate(adaptive_spec.attack) or not adaptive_spec.eps:
                raise ValueError(f"adaptive.attack: {adaptive_spec.id} ({adaptive_spec.attack}) must be a bounded "
                                 "gradient or query attack with eps levels (not transfer / cw_l2)")
        if self.purify.selection.restorer is not None and self.purify.selection.restorer not in names:
            raise ValueError(f"purify.selection.restorer: no restorer {self.purify.selection.restorer!r}")
        return self

    @model_validator(mode="after")
    def _timesteps_within_the_purifier(self) -> Params:
        """Every t* that purify, selection and fine-tuning use lies in the purifier's trained range."""
        top = self.diffusion.max_timestep if self.diffusion.max_timestep is not None else self.diffusion.num_train_timesteps - 1
        fixed = [self.t_star_fixed()] if self.purify.t_star != "auto" else []
        checks = [("purify.t_star", t) for t in fixed] + [("purify.selection.candidates", t)
                                                        for t in self.purify.selection.candidates]
        ft = self.finetune.t_stars if self.finetune.t_stars != "auto" else ()
        for where, t in checks + [("finetune.t_stars", t) for t in ft]:
            if t > top:
                raise ValueError(f"{where}={t} exceeds the purifier's trained range (t <= {top}: diffusion.max_timestep "
                                 "/ num_train_timesteps)")
        return self

    @model_validator(mode="after")
    def _ranks_divide_the_batch(self) -> Params:
        n, batch = self.finetune.distributed.nproc, self.finetune.batch_size
        if n != "auto" and batch % n:
            raise ValueError(f"finetune.distributed.nproc={n} must divide finetune.batch_size={batch} "
                             "(every rank takes an equal share of the global batch)")
        return self

    @model_validator(mode="after")
    def _crops_fit(self) -> Params:
        """Training crops fit the dataset's crops, which fit the scenes."""
        for section in ("train", "finetune"):
            crop = getattr(self, section).crop_px
            if crop > self.dataset.crop_px:
                raise ValueError(f"{section}.crop_px={crop} exceeds dataset.crop_px={self.dataset.crop_px}")
        if self.scenes.panoramas != "off" and self.scenes.view_px < self.dataset.crop_px:
            raise ValueError(
                f"scenes.view_px={self.scenes.view_px} is smaller than dataset.crop_px={self.dataset.crop_px}"
            )
        if self.scenes.max_side_px < self.dataset.crop_px:
            raise ValueError(
                f"scenes.max_side_px={self.scenes.max_side_px} is smaller than dataset.crop_px={self.dataset.crop_px}"
            )
        return self

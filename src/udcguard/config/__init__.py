"""Typed configuration: params.yaml is loaded once into frozen pydantic models.

One root :class:`Params`, its sections split by area: ``data`` (optics, scenes, formation,
dataset), ``models`` (restorers, training), ``attacks``, ``defences`` (diffusion, purify,
adaptive, finetune), ``runtime`` (evaluate, tracking, parallel), ``params`` (the root and
its cross-section checks) and ``loading`` (YAML, errors, overrides).

Every model forbids unknown keys, so a typo such as ``psf.wavelenghts`` fails with the key
path and the reason instead of being silently ignored. Units are in the field names
(``_mm``, ``_um``, ``_nm``, ``_deg``, ``_px``). Image budgets (later stages) are in the
tone-mapped [0, 1] space.

Only ``build_*`` functions elsewhere read these objects; library functions take plain
keyword arguments.
"""

from udcguard.config.attacks import AttackParams, AttackSpec, LpipsParams, MANAGED_ATTACK_ARGS
from udcguard.config.base import Device, Fraction, Frozen, Size, Wavelength
from udcguard.config.data import (
    DatasetParams,
    DisplayParams,
    FormationParams,
    HighlightParams,
    LightParams,
    MeasuredPSFParams,
    NoiseParams,
    OpticsParams,
    PSFParams,
    SceneParams,
    SplitParams,
    VariantParams,
)
from udcguard.config.defences import (
    AdaptiveParams,
    DiffusionParams,
    DistributedParams,
    FinetuneParams,
    GuidanceParams,
    PurifyParams,
    SelectionParams,
)
from udcguard.config.loading import flatten, load_params, params_from_dict, set_override
from udcguard.config.models import RestorerParams, TrainParams
from udcguard.config.params import Params
from udcguard.config.runtime import EvaluateParams, ParallelParams, TrackingParams

__all__ = [
    "AdaptiveParams",
    "AttackParams",
    "AttackSpec",
    "DatasetParams",
    "Device",
    "DiffusionParams",
    "DisplayParams",
    "DistributedParams",
    "EvaluateParams",
    "FinetuneParams",
    "FormationParams",
    "Fraction",
    "Frozen",
    "GuidanceParams",
    "HighlightParams",
    "LightParams",
    "LpipsParams",
    "MANAGED_ATTACK_ARGS",
    "MeasuredPSFParams",
    "NoiseParams",
    "OpticsParams",
    "PSFParams",
    "ParallelParams",
    "Params",
    "PurifyParams",
    "RestorerParams",
    "SceneParams",
    "SelectionParams",
    "Size",
    "SplitParams",
    "TrackingParams",
    "TrainParams",
    "VariantParams",
    "Wavelength",
    "flatten",
    "load_params",
    "params_from_dict",
    "set_override",
]

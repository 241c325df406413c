"""Typed configuration: params.yaml is loaded once into frozen pydantic models.

Every model forbids unknown keys, so a typo such as ``psf.wavelenghts`` fails with the key
path and the reason instead of being silently ignored. Units are in the field names
(``_mm``, ``_um``, ``_nm``, ``_deg``, ``_px``). Image budgets (later stages) are in the
tone-mapped [0, 1] space.

Only ``build_*`` functions elsewhere read these objects; library functions take plain
keyword arguments.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from udcguard.errors import ConfigError


class Frozen(BaseModel):
    """Base: immutable, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Wavelength = Annotated[float, Field(gt=300.0, lt=1100.0)]


# --------------------------------------------------------------------------- optics / PSF
class OpticsParams(Frozen):
    """Camera behind the display (Fourier optics, see udc-physics.md)."""

    focal_length_mm: float = Field(4.67, gt=0.1, le=100.0)
    aperture_mm: float = Field(2.0, gt=0.05, le=50.0, description="pupil diameter D")
    pupil_sample_um: float = Field(8.0, gt=0.1, le=100.0, description="display-mask sample spacing")
    pixel_pitch_um: float = Field(2.0, gt=0.1, le=50.0, description="sensor pixel pitch")
    oversample: int = Field(3, ge=1, le=15, description="fine samples per sensor pixel (odd keeps the axis centred)")
    # RGB channels, each a list of sub-wavelengths averaged into that channel.
    wavelengths_nm: tuple[tuple[Wavelength, ...], tuple[Wavelength, ...], tuple[Wavelength, ...]] = (
        (610.0,),
        (530.0,),
        (470.0,),
    )

    @field_validator("wavelengths_nm")
    @classmethod
    def _non_empty(cls, v: tuple[tuple[float, ...], ...]) -> tuple[tuple[float, ...], ...]:
        if any(len(ch) == 0 for ch in v):
            raise ValueError("every channel needs at least one wavelength")
        return v

    @model_validator(mode="after")
    def _no_aliasing(self) -> OpticsParams:
        # The far-field grid spans lambda f / delta2 on the pupil side; it must hold the
        # pupil D, or the FFT aliases: lambda_min * f * oversample / pitch >= D.
        lam_min = min(min(ch) for ch in self.wavelengths_nm) * 1e-9
        span_mm = lam_min * self.focal_length_mm * self.oversample / (self.pixel_pitch_um * 1e-6)
        if span_mm < self.aperture_mm:
            need = int(self.aperture_mm * self.pixel_pitch_um * 1e-6 / (lam_min * self.focal_length_mm)) + 1
            raise ValueError(
                f"far-field grid too small for the pupil (aliasing): need oversample >= {need} "
                f"or a smaller aperture_mm / larger focal_length_mm"
            )
        return self


class DisplayParams(Frozen):
    """One simulated display: a pixel-layout unit cell tiled over the pupil."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    layout: str = Field(description="open | toled | poled | custom")
    opaque_transmission: Fraction = Field(0.6, description="amplitude transmission t of opaque parts")
    slit_px: int = Field(7, ge=1, le=20, description="toled: slit width in pupil samples (cell 21)")
    cell_png: Path | None = Field(None, description="custom: grey/binary PNG, white = transparent")
    cell: tuple[tuple[Fraction, ...], ...] | None = Field(None, description="custom: openness array")
    randomize_cells: bool = Field(False, description="random 90-degree rotations/flips per cell")
    variants: int = Field(0, ge=0, le=64, description="extra affine variants of this PSF")

    @field_validator("layout")
    @classmethod
    def _known_layout(cls, v: str) -> str:
        from udcguard.optics.layouts import LAYOUTS

        LAYOUTS.get(v)  # raises UnknownNameError listing the valid names
        return v

    @model_validator(mode="after")
    def _custom_needs_cell(self) -> DisplayParams:
        if self.layout == "custom" and (self.cell_png is None) == (self.cell is None):
            raise ValueError("layout 'custom' needs exactly one of cell_png or cell")
        if self.layout != "custom" and (self.cell_png is not None or self.cell is not None):
            raise ValueError(f"cell_png/cell only apply to layout 'custom', not {self.layout!r}")
        if self.cell is not None and len({len(r) for r in self.cell}) != 1:
            raise ValueError("cell rows must all have the same length")
        return self


class MeasuredPSFParams(Frozen):
    """A measured PSF in DISCNet's format: .npy float (H, W, 3)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    path: Path
    fit: Literal["crop", "resize"] = "crop"
    variants: int = Field(0, ge=0, le=64)


class VariantParams(Frozen):
    """Affine variants, as DISCNet made nine PSFs from one measured PSF."""

    max_rotation_deg: float = Field(12.0, ge=0.0, le=45.0)
    max_shift_px: float = Field(1.0, ge=0.0, le=8.0)
    max_scale: float = Field(0.03, ge=0.0, le=0.3, description="relative scale change")


class PSFParams(Frozen):
    kernel_size: int = Field(63, ge=3, le=1023, description="K; odd so the axis is a pixel centre")
    code_dim: int = Field(5, ge=1, le=64, description="PCA kernel-code length d")
    optics: OpticsParams = OpticsParams()
    displays: tuple[DisplayParams, ...] = ()
    measured: tuple[MeasuredPSFParams, ...] = ()
    variant: VariantParams = VariantParams()

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError("must be odd")
        return v

    @model_validator(mode="after")
    def _names(self) -> PSFParams:
        names = [d.name for d in self.displays] + [m.name for m in self.measured]
        if not names:
            raise ValueError("give at least one entry in displays or measured")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate PSF names: {', '.join(dup)}")
        return self


# --------------------------------------------------------------------------- scenes
class HighlightParams(Frozen):
    """LDR -> pseudo-HDR: x (1 + alpha clip((max_c x - tau) / (1 - tau), 0, 1)^2)."""

    threshold: Fraction = 0.8
    alpha_min: float = Field(10.0, ge=1.0, le=1e4)
    alpha_max: float = Field(500.0, ge=1.0, le=1e4)

    @model_validator(mode="after")
    def _order(self) -> HighlightParams:
        if self.alpha_min > self.alpha_max:
            raise ValueError("alpha_min must not exceed alpha_max")
        return self


class LightParams(Frozen):
    """Small bright sources added to each scene so that diffraction flare appears."""

    max_count: int = Field(4, ge=0, le=100)
    radius_px: tuple[float, float] = (1.0, 6.0)
    intensity: tuple[float, float] = (10.0, 500.0)

    @field_validator("radius_px", "intensity")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not (0 < v[0] <= v[1]):
            raise ValueError("need 0 < low <= high")
        return v


class SceneParams(Frozen):
    photos: bool = Field(True, description="photographs shipped inside installed packages")
    wallpapers: Literal["auto", "required", "off"] = Field(
        "auto", description="camera photographs among Debian's mate-backgrounds wallpapers")
    wallpaper_dir: Path = Path("/usr/share/backgrounds")
    panoramas: Literal["auto", "required", "off"] = "auto"
    panorama_dir: Path = Path("/usr/share/blender/datafiles/studiolights/world")
    views_per_panorama: int = Field(4, ge=1, le=256)
    view_px: int = Field(256, ge=32, le=4096, description="side of a perspective view of a panorama")
    fov_deg: float = Field(90.0, gt=10.0, lt=150.0, description="90 deg of a 1024-px panorama ~ 256 px")
    folder: Path | None = Field(None, description="user folder of PNG/JPEG/EXR/.npy scenes")
    max_side_px: int = Field(384, ge=32, le=8192, description="scenes are downscaled to this")
    exposure_median: float = Field(0.18, gt=0.0, le=10.0, description="HDR scenes are scaled to this median")
    highlights: HighlightParams = HighlightParams()
    lights: LightParams = LightParams()

    @model_validator(mode="after")
    def _some_source(self) -> SceneParams:
        if not self.photos and self.wallpapers == "off" and self.panoramas == "off" and self.folder is None:
            raise ValueError("no scene source: enable photos, wallpapers, panoramas or give a folder")
        return self


# --------------------------------------------------------------------------- formation
class NoiseParams(Frozen):
    """Poisson-Gaussian sensor noise, sampled as in Brooks et al. 2019 (off in DISCNet)."""

    enabled: bool = False
    log_a_range: tuple[float, float] = (-9.21, -4.42)  # log 1e-4 .. log 1.2e-2


class FormationParams(Frozen):
    clip_max: float = Field(500.0, gt=0.0, le=1e5, description="DISCNet clips to [0, 500]")
    noise: NoiseParams = NoiseParams()


class SplitParams(Frozen):
    """How many scenes and pairs per split; splits never share a scene."""

    scene_fraction: Fraction
    pairs_per_scene: int = Field(ge=1, le=100_000)


class DatasetParams(Frozen):
    crop_px: int = Field(64, ge=8, le=4096)
    dtype: Literal["float16", "float32"] = "float32"
    train: SplitParams = SplitParams(scene_fraction=0.7, pairs_per_scene=8)
    val: SplitParams = SplitParams(scene_fraction=0.15, pairs_per_scene=2)
    test: SplitParams = SplitParams(scene_fraction=0.15, pairs_per_scene=2)
    preview_rows: int = Field(4, ge=1, le=16)

    @model_validator(mode="after")
    def _fractions(self) -> DatasetParams:
        total = self.train.scene_fraction + self.val.scene_fraction + self.test.scene_fraction
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train/val/test scene_fraction must sum to 1, got {total:g}")
        return self


# --------------------------------------------------------------------------- restorers
Device = Literal["auto", "cpu", "cuda"]
Size = Literal["tiny", "small", "paper"]


class RestorerParams(Frozen):
    """One restorer to train, attack, defend and evaluate (params.yaml: ``restorers.<name>``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$", description="the key in params.yaml")
    arch: str = Field(description="registry name: unet | discnet | ...")
    size: Size = "small"
    weights: Path | None = Field(
        None,
        description="local checkpoint to start training from: the authors' released format "
        "(keys renamed by the architecture's official_key) or ours; never downloaded",
    )
    steps: int | None = Field(None, ge=1, le=10_000_000, description="this restorer's train.steps (None: train.steps)")
    lr: float | None = Field(None, gt=0.0, le=1.0, description="this restorer's train.lr (None: train.lr)")
    channels_last: bool = Field(False, description="train, attack and score in channels-last memory format (on a "
                                "CPU, training steps: U-Net-small 1.4x, DISCNet-small 1.25x faster; recorded in "
                                "the saved spec.json)")

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str) -> str:
        from udcguard.models import RESTORERS

        RESTORERS.get(v)
        return v


class TrainParams(Frozen):
    """Restorer training (tone-mapped crops; Adam with cosine annealing)."""

    steps: int = Field(1500, ge=1, le=10_000_000)
    batch_size: int = Field(8, ge=1, le=4096)
    crop_px: int = Field(64, ge=8, le=4096)
    lr: float = Field(2e-4, gt=0.0, le=1.0)
    lr_min: float = Field(1e-6, ge=0.0, le=1.0)
    loss: Literal["l1", "l2", "charbonnier"] = "l1"
    checkpoint_every: int = Field(250, ge=0)
    device: Device = "auto"
    amp: bool = Field(True, description="mixed precision on CUDA (ignored on CPU)")
    seed: int = Field(0, ge=0)
    ema_decay: float | None = Field(None, ge=0.0, lt=1.0, description="return the weights' exponential moving "
                                    "average (BasicSR's ema_decay, e.g. 0.999) instead of the last iterate; None: off")


class PurifierParams(Frozen):
    """Diffusion purifier: diffusers UNet2DModel + DDPMScheduler trained on degraded inputs."""

    unet: Size = "small"
    unet_path: Path | None = Field(None, description="use this diffusers UNet folder instead of training")
    num_train_timesteps: int = Field(1000, ge=10, le=10_000)
    max_timestep: int | None = Field(
        None, ge=0, description="train only t <= this (purification never goes beyond its t*); None: all"
    )
    steps: int = Field(2000, ge=1, le=10_000_000)
    batch_size: int = Field(16, ge=1, le=4096)
    crop_px: int = Field(64, ge=8, le=4096)
    lr: float = Field(2e-4, gt=0.0, le=1.0)
    lr_min: float = Field(1e-6, ge=0.0, le=1.0)
    checkpoint_every: int = Field(250, ge=0)
    device: Device = "auto"
    seed: int = Field(0, ge=0)


#: Keys of an attack set that the stage sets itself (never in ``options``).
MANAGED_ATTACK_ARGS = ("model_fn", "eps", "alpha", "objective", "reference")
#: Objectives the attack stage can build (``lpips`` needs local weights; see AttackParams).
ATTACK_OBJECTIVES = ("mse", "l1", "ssim", "lpips", "lpips_rand", "lpips_auto")


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
        return _named_from_mapping(v, "attack.attacks", "id")

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


def _named_from_mapping(v: Any, where: str, key: str) -> Any:
    """``{name: {...}}`` -> ``[{key: name, ...}]``: params.yaml keys entries by name."""
    if isinstance(v, dict):
        out = []
        for name, spec in v.items():
            if not isinstance(spec, dict):
                raise ValueError(f"{where}.{name}: expected a mapping")
            if key in spec and spec[key] != name:
                raise ValueError(f"{where}.{name}: {key} {spec[key]!r} differs from its key")
            out.append({**spec, key: name})
        return out
    return v


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


class GuidanceParams(Frozen):
    """Input-guided purification (udcguard.purify.guidance.LowFreqGuidance); off at scale 0."""

    scale: float = Field(0.0, ge=0.0, le=10.0, description="fraction of the low-pass gap to the input removed per step")
    sigma_px: float = Field(2.0, gt=0.0, le=64.0)
    lowpass: Literal["gaussian", "pool"] = "gaussian"
    pool_factor: int = Field(4, ge=1, le=64)
    schedule: Literal["constant", "sqrt_one_minus_abar"] = "constant"
    compare_scale: float = Field(0.1, ge=0.0, le=10.0, description="guided curve shown next to the unguided one")


class SelectionParams(Frozen):
    """The PSNR-vs-t* trade-off on a held-out val slice; picks t* when purify.t_star is auto."""

    candidates: tuple[Annotated[int, Field(ge=0, le=10_000)], ...] = (0, 5, 10, 20, 40, 80)
    criterion: Literal["balanced", "max_attacked_within"] = "balanced"
    max_clean_drop_db: float | None = Field(None, gt=0.0, le=100.0)
    images: int = Field(8, ge=1, le=10_000, description="val images")
    attack: str = Field("pgd_linf", description="an id of attack.attacks: its strongest level attacks the slice")
    restorer: str | None = Field(None, description="None: the first restorer")

    @model_validator(mode="after")
    def _check(self) -> SelectionParams:
        if not self.candidates or len(set(self.candidates)) != len(self.candidates):
            raise ValueError("candidates: give distinct timesteps")
        if self.criterion == "balanced" and self.max_clean_drop_db is not None:
            raise ValueError("max_clean_drop_db applies to criterion max_attacked_within only")
        return self


class PurifyParams(Frozen):
    """DiffPure-style purification: noise to t*, reverse DDPM (or DDIM) back to 0."""

    t_star: int | float | Literal["auto"] = Field(
        100, description="timestep (int), fraction of the schedule (0 < f < 1), or auto (selection on val)"
    )
    sampler: Literal["ddpm", "ddim"] = "ddpm"
    ddim_steps: int = Field(10, ge=1, le=10_000)
    eta: float = Field(0.0, ge=0.0, le=1.0, description="DDIM stochasticity (0: deterministic)")
    tile_px: int | None = Field(None, ge=8, le=8192, description="purify in tiles of this size (any image size)")
    tile_overlap_px: int = Field(16, ge=0, le=4096)
    seeds: int = Field(1, ge=1, le=64, description="purification draws per image: scored as mean and worst case")
    autocast: Literal["bf16", "fp16"] | None = Field(None, description="CUDA only; CPU runs fp32")
    channels_last: bool = Field(False, description="run the UNet in channels-last memory format (any device; "
                                "a CPU: forward about 1.4x faster)")
    compile: bool = Field(False, description="torch.compile the UNet (CUDA only)")
    guidance: GuidanceParams = GuidanceParams()
    selection: SelectionParams = SelectionParams()
    batch_size: int = Field(16, ge=1, le=4096)
    device: Device = "auto"
    seed: int = Field(0, ge=0)

    @field_validator("t_star")
    @classmethod
    def _t_star(cls, v: int | float | str) -> int | float | str:
        if isinstance(v, bool):
            raise ValueError("t_star: a timestep, a fraction or auto")
        if isinstance(v, float) and not v.is_integer() and not 0.0 < v < 1.0:
            raise ValueError("a fractional t_star must lie in (0, 1)")
        if isinstance(v, (int, float)) and v < 0:
            raise ValueError("t_star must be >= 0")
        if isinstance(v, float) and v.is_integer():
            return int(v)
        return v

    @model_validator(mode="after")
    def _tiles(self) -> PurifyParams:
        if self.tile_px is not None and self.tile_overlap_px >= self.tile_px:
            raise ValueError("tile_overlap_px must be smaller than tile_px")
        return self


class AdaptiveParams(Frozen):
    """Adaptive attacks through the purifier (design.md section 3): BPDA, EOT, full gradients."""

    settings: tuple[Literal["bpda", "eot", "full"], ...] = ("bpda", "eot", "full")
    attack: str = Field("pgd_linf", description="an id of attack.attacks, run on restorer o purifier")
    eps: tuple[Annotated[float, Field(gt=0.0)], ...] = Field((8.0,), description="levels, the attack's units")
    eot_samples: int = Field(4, ge=1, le=1024)
    ddim_steps: int = Field(5, ge=1, le=1000, description="length of the differentiable DDIM chain (full)")
    max_images: int | None = Field(8, ge=1, description="images attacked adaptively: stratified across scene groups")
    seed: int = Field(0, ge=0, description="seed of the adaptive subset and of the attacks' randomness")


class DistributedParams(Frozen):
    """Data-parallel fine-tuning: torchrun starts ``nproc`` ranks on one worker (DDP).

    Every rank draws the same global batch and trains on its contiguous 1/nproc share;
    DDP averages the gradients, so an update equals the single-process one up to float
    reduction order. Launch settings only: left out of the stage's fingerprint.
    """

    nproc: int | Literal["auto"] = Field(1, description="ranks; 1: in-process, no DDP; auto: one per CUDA device")
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="auto: nccl on CUDA, gloo on CPU")
    master_port: int | None = Field(None, ge=1024, le=65535, description="None: a free loopback port")
    timeout_min: float = Field(24 * 60.0, gt=0.0, le=7 * 24 * 60.0, description="the launch is killed after this")

    @field_validator("nproc", mode="before")
    @classmethod
    def _nproc(cls, v: Any) -> Any:
        if v == "auto":
            return v
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1024:
            raise ValueError(f"an integer in 1..1024 or auto, got {v!r}")
        return v

    def world_size(self, cuda_devices: int) -> int:
        """Number of ranks: ``nproc``, or ``auto`` -> ``cuda_devices`` (at least 1)."""
        return max(1, cuda_devices) if self.nproc == "auto" else int(self.nproc)


class FinetuneParams(Frozen):
    """Fine-tuning on purified inputs mixed with clean ones, against the clean ground truth."""

    steps: int = Field(400, ge=1, le=10_000_000)
    batch_size: int = Field(8, ge=1, le=4096)
    crop_px: int = Field(64, ge=8, le=4096)
    lr: float = Field(5e-5, gt=0.0, le=1.0)
    lr_min: float = Field(1e-6, ge=0.0, le=1.0)
    t_stars: tuple[Annotated[int, Field(ge=1, le=10_000)], ...] | Literal["auto"] = Field(
        "auto", description="purification strengths of the fine-tuning set (the paper: 50-100 steps); auto: "
        "t_star_factors x the deployed t* (the select_tstar stage's choice when purify.t_star is auto)"
    )
    t_star_factors: tuple[Annotated[float, Field(gt=0.0, le=4.0)], ...] = Field(
        (0.5, 1.0), min_length=1, description="with t_stars auto: strengths as multiples of the deployed t*"
    )
    train_images: int | None = Field(64, ge=1, description="train pairs purified for fine-tuning (stratified "
                                      "across scene groups, seeded by finetune.seed)")
    clean_copies: int = Field(1, ge=0, le=16, description="clean inputs mixed in, per purified copy set")
    perceptual_weight: float = Field(0.0, ge=0.0, le=100.0)
    perceptual_weights_path: Path | None = Field(None, description="local VGG-19 weights; none: term off")
    jitter: float = Field(0.05, ge=0.0, le=0.5, description="colour jitter gain range")
    checkpoint_every: int = Field(100, ge=0)
    device: Device = "auto"
    amp: bool = True
    seed: int = Field(0, ge=0)
    distributed: DistributedParams = DistributedParams()


class EvaluateParams(Frozen):
    """Scoring: the evaluated images are the attack stage's (attack.split and its subsets)."""

    batch_size: int = Field(8, ge=1, le=4096)
    device: Device = "auto"
    report_examples: int = Field(3, ge=1, le=32)
    bootstrap: int = Field(2000, ge=100, le=100_000, description="bootstrap resamples (scenes, then images) per cell")
    seed: int = Field(0, ge=0)


class TrackingParams(Frozen):
    experiment: str = "udcguard"


class ParallelParams(Frozen):
    """How the attack and purify stages run their shards (contiguous image ranges).

    Outputs do not depend on the runner, the worker count or ``shard_images``: shards are
    whole batches of the stage and randomness is seeded per batch / image. CPU float
    rounding does depend on the torch threads per process, so bit-identical outputs across
    runs need the same ``torch_threads``.
    """

    runner: Literal["sequential", "threads", "dask"] = "sequential"
    workers: int = Field(2, ge=1, le=1024, description="threads or Dask worker processes")
    address: str | None = Field(
        None, pattern=r"^([a-z][a-z0-9+]*://)?[^\s/]+:\d+(/\S*)?$",
        description="an existing Dask scheduler (tcp://host:8786) instead of a local cluster; runner dask only",
    )
    shard_images: int = Field(4, ge=1, le=1_000_000, description="images per shard, rounded up to whole batches")
    torch_threads: int | None = Field(
        None, ge=1, le=1024, description="torch threads per worker; None: cpu count // workers (at least 1)"
    )

    @model_validator(mode="after")
    def _address_needs_dask(self) -> ParallelParams:
        if self.address is not None and self.runner != "dask":
            raise ValueError(f"address applies to runner dask only (runner is {self.runner})")
        return self


class Params(Frozen):
    """The whole params.yaml."""

    seed: int = Field(0, ge=0, lt=2**32)
    psf: PSFParams
    scenes: SceneParams = SceneParams()
    formation: FormationParams = FormationParams()
    dataset: DatasetParams = DatasetParams()
    restorers: tuple[RestorerParams, ...] = Field((), description="params.yaml: a mapping name -> {arch, size}")
    train: TrainParams = TrainParams()
    purifier: PurifierParams = PurifierParams()
    attack: AttackParams = AttackParams()
    lpips: LpipsParams = LpipsParams()
    purify: PurifyParams = PurifyParams()
    adaptive: AdaptiveParams = AdaptiveParams()
    finetune: FinetuneParams = FinetuneParams()
    evaluate: EvaluateParams = EvaluateParams()
    tracking: TrackingParams = TrackingParams()
    parallel: ParallelParams = ParallelParams()

    @field_validator("restorers", mode="before")
    @classmethod
    def _restorers_from_mapping(cls, v: Any) -> Any:
        # params.yaml keys restorers by name, so that DVC's foreach names stages
        # train_restorer@<name>; internally they are a tuple with the name inside.
        return _named_from_mapping(v, "restorers", "name")

    @field_serializer("restorers")
    def _restorers_to_mapping(self, v: tuple[RestorerParams, ...]) -> dict[str, dict[str, Any]]:
        return {r.name: r.model_dump(exclude={"name"}) for r in v}

    def t_star_fixed(self) -> int:
        """purify.t_star as a timestep: a fraction f maps to round(f (T - 1)); "auto" is an error here."""
        t = self.purify.t_star
        if t == "auto":
            raise ConfigError("purify.t_star is auto: read the selected t* from the select_tstar stage")
        if isinstance(t, float):
            return round(t * (self.purifier.num_train_timesteps - 1))
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
    def _crop_fits(self) -> Params:
        from udcguard.attacks.build import needs_surrogate

        names = [r.name for r in self.restorers]
        if len(set(names)) != len(names):
            raise ValueError("restorers: names must be unique")
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
        top = self.purifier.max_timestep if self.purifier.max_timestep is not None else self.purifier.num_train_timesteps - 1
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
        fixed = [self.t_star_fixed()] if self.purify.t_star != "auto" else []
        checks = [("purify.t_star", t) for t in fixed] + [("purify.selection.candidates", t)
                                                        for t in self.purify.selection.candidates]
        ft = self.finetune.t_stars if self.finetune.t_stars != "auto" else ()
        for where, t in checks + [("finetune.t_stars", t) for t in ft]:
            if t > top:
                raise ValueError(f"{where}={t} exceeds the purifier's trained range (t <= {top}: purifier.max_timestep "
                                 "/ num_train_timesteps)")
        n, batch = self.finetune.distributed.nproc, self.finetune.batch_size
        if n != "auto" and batch % n:
            raise ValueError(f"finetune.distributed.nproc={n} must divide finetune.batch_size={batch} "
                             "(every rank takes an equal share of the global batch)")
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


# --------------------------------------------------------------------------- loading
#: Sections that params.yaml keys by name (the models hold them as tuples).
NAMED_SECTIONS = (("restorers",), ("attack", "attacks"))


def _named_loc(loc: tuple, data: dict | None) -> tuple:
    """Replace a tuple index in an error location by the entry's params.yaml key."""
    for section in NAMED_SECTIONS:
        n = len(section)
        if tuple(loc[:n]) == section and len(loc) > n and isinstance(loc[n], int):
            node: Any = data
            for k in section:
                node = node.get(k) if isinstance(node, dict) else None
            if isinstance(node, dict) and loc[n] < len(node):
                return (*loc[:n], list(node)[loc[n]], *loc[n + 1:])
    return loc


def _format_error(source: str, err: ValidationError, data: dict | None = None) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in _named_loc(tuple(e["loc"]), data))
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        msg = "unknown key"
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{source}: {loc + ': ' if loc else ''}{msg}{more}"


def params_from_dict(data: dict, source: str = "params") -> Params:
    """Validate a plain dict; raise :class:`ConfigError` naming the first bad key path."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping, got {type(data).__name__}")
    try:
        return Params.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(source, err, data)) from None
    except ConfigError:
        raise
    except Exception as err:  # e.g. UnknownNameError from a field validator
        raise ConfigError(f"{source}: {err}") from None


def set_override(data: dict, dotted: str, value: object) -> None:
    """Apply ``a.b.c=value`` to a nested dict (used by the CLI's ``--set``)."""
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        nxt = node.get(k)
        if not isinstance(nxt, dict):
            nxt = {}
            node[k] = nxt
        node = nxt
    node[keys[-1]] = value


def load_params(path: str | Path = "params.yaml", overrides: dict[str, object] | None = None) -> Params:
    """Load and validate params.yaml; errors name the file and the key path."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} invalid YAML") from None
    for k, v in (overrides or {}).items():
        set_override(data, k, v)
    return params_from_dict(data, str(path))


def flatten(params: BaseModel, prefix: str = "") -> dict[str, str]:
    """Flatten a params model into dotted keys (for MLflow params)."""
    out: dict[str, str] = {}
    for key, value in params:
        name = f"{prefix}{key}"
        if isinstance(value, BaseModel):
            out.update(flatten(value, name + "."))
        elif isinstance(value, tuple) and value and all(isinstance(v, BaseModel) for v in value):
            for i, v in enumerate(value):
                out.update(flatten(v, f"{name}.{i}."))
        else:
            out[name] = str(value)
    return out

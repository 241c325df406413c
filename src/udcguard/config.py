"""Typed configuration: params.yaml is loaded once into frozen pydantic models.

Every model forbids unknown keys, so a typo such as ``psf.wavelenghts`` fails with the key
path and the reason instead of being silently ignored. Units are in the field names
(``_mm``, ``_um``, ``_nm``, ``_deg``, ``_px``). Image budgets (later stages) are in the
tone-mapped [0, 1] space.

Only ``build_*`` functions elsewhere read these objects; library functions take plain
keyword arguments.
"""

from __future__ import annotations

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
        if not self.photos and self.panoramas == "off" and self.folder is None:
            raise ValueError("no scene source: enable photos, panoramas or give a folder")
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


class AttackParams(Frozen):
    """White-box attack on each restorer (design.md section 3). Budgets in 1/256 units."""

    name: Literal["pgd_linf"] = "pgd_linf"
    eps: tuple[Annotated[float, Field(gt=0.0, le=256.0)], ...] = (1.0, 2.0, 4.0, 8.0)
    step: tuple[Annotated[float, Field(gt=0.0, le=256.0)], ...] | None = Field(
        None, description="per level; default = eps (the paper's setting)"
    )
    steps: int = Field(20, ge=1, le=100_000)
    objective: Literal["mse", "l1"] = "mse"
    reference: Literal["clean_output", "gt"] = "clean_output"
    random_start: bool | None = Field(
        None, description="None: on for clean_output (d(f(y + delta), f(y)) has zero gradient at delta = 0)"
    )
    split: Literal["train", "val", "test"] = "test"
    max_images: int | None = Field(None, ge=1)
    batch_size: int = Field(8, ge=1, le=4096)
    device: Device = "auto"
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _steps_match(self) -> AttackParams:
        if len(set(self.eps)) != len(self.eps):
            raise ValueError("eps levels must be distinct")
        if self.step is not None and len(self.step) != len(self.eps):
            raise ValueError(f"step needs one value per eps level ({len(self.eps)})")
        if self.random_start is False and self.reference == "clean_output":
            raise ValueError("random_start false with reference clean_output: the gradient at delta = 0 is zero, "
                             "PGD would never move (use null or true)")
        return self


class PurifyParams(Frozen):
    """DiffPure-style purification: noise to t*, reverse DDPM back to 0."""

    t_star: int = Field(100, ge=0, le=10_000, description="timestep of the forward diffusion")
    batch_size: int = Field(16, ge=1, le=4096)
    device: Device = "auto"
    seed: int = Field(0, ge=0)


class FinetuneParams(Frozen):
    """Fine-tuning on purified inputs mixed with clean ones, against the clean ground truth."""

    steps: int = Field(400, ge=1, le=10_000_000)
    batch_size: int = Field(8, ge=1, le=4096)
    crop_px: int = Field(64, ge=8, le=4096)
    lr: float = Field(5e-5, gt=0.0, le=1.0)
    lr_min: float = Field(1e-6, ge=0.0, le=1.0)
    t_stars: tuple[Annotated[int, Field(ge=1, le=10_000)], ...] = Field(
        (50, 100), description="purification strengths of the fine-tuning set (the paper: 50-100 steps)"
    )
    train_images: int | None = Field(64, ge=1, description="train pairs purified for fine-tuning")
    clean_copies: int = Field(1, ge=0, le=16, description="clean inputs mixed in, per purified copy set")
    perceptual_weight: float = Field(0.0, ge=0.0, le=100.0)
    perceptual_weights_path: Path | None = Field(None, description="local VGG-19 weights; none: term off")
    jitter: float = Field(0.05, ge=0.0, le=0.5, description="colour jitter gain range")
    checkpoint_every: int = Field(100, ge=0)
    device: Device = "auto"
    amp: bool = True
    seed: int = Field(0, ge=0)


class EvaluateParams(Frozen):
    split: Literal["train", "val", "test"] = "test"
    max_images: int | None = Field(None, ge=1)
    batch_size: int = Field(8, ge=1, le=4096)
    device: Device = "auto"
    report_examples: int = Field(3, ge=1, le=32)


class TrackingParams(Frozen):
    experiment: str = "udcguard"


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
    purify: PurifyParams = PurifyParams()
    finetune: FinetuneParams = FinetuneParams()
    evaluate: EvaluateParams = EvaluateParams()
    tracking: TrackingParams = TrackingParams()

    @field_validator("restorers", mode="before")
    @classmethod
    def _restorers_from_mapping(cls, v: Any) -> Any:
        # params.yaml keys restorers by name, so that DVC's foreach names stages
        # train_restorer@<name>; internally they are a tuple with the name inside.
        if isinstance(v, dict):
            out = []
            for name, spec in v.items():
                if not isinstance(spec, dict):
                    raise ValueError(f"restorers.{name}: expected a mapping with arch (and size)")
                if "name" in spec and spec["name"] != name:
                    raise ValueError(f"restorers.{name}: name {spec['name']!r} differs from its key")
                out.append({**spec, "name": name})
            return out
        return v

    @field_serializer("restorers")
    def _restorers_to_mapping(self, v: tuple[RestorerParams, ...]) -> dict[str, dict[str, Any]]:
        return {r.name: r.model_dump(exclude={"name"}) for r in v}

    def restorer(self, name: str) -> RestorerParams:
        """The restorer called ``name``; ConfigError listing the configured ones otherwise."""
        for r in self.restorers:
            if r.name == name:
                return r
        raise ConfigError(f"restorers: no restorer named {name!r}; configured: {', '.join(r.name for r in self.restorers)}")

    @model_validator(mode="after")
    def _crop_fits(self) -> Params:
        names = [r.name for r in self.restorers]
        if len(set(names)) != len(names):
            raise ValueError("restorers: names must be unique")
        top = self.purifier.max_timestep if self.purifier.max_timestep is not None else self.purifier.num_train_timesteps - 1
        for where, t in [("purify.t_star", self.purify.t_star)] + [("finetune.t_stars", t) for t in self.finetune.t_stars]:
            if t > top:
                raise ValueError(f"{where}={t} exceeds the purifier's trained range (t <= {top}: purifier.max_timestep "
                                 "/ num_train_timesteps)")
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
def _format_error(source: str, err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
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
        raise ConfigError(_format_error(source, err)) from None
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

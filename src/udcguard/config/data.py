"""Data: the display's optics and PSF bank, scenes, image formation and the dataset splits."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from udcguard.config.base import Fraction, Frozen, Wavelength


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

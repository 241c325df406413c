"""Build the PSF bank of a run from ``config.PSFParams`` (the only reader of config here).

Variants of simulated displays are simulated again with the display rotated in the pupil,
the focal length scaled and the wavefront tilted (``simulate_psf(rotation_deg=, scale=,
shift_px=)``); variants of measured PSFs are bilinear image warps (:func:`affine_variant`).
Both draw the same random :class:`AffineParams`, recorded in ``meta["variant"]``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from udcguard.config import DisplayParams, MeasuredPSFParams, PSFParams, VariantParams
from udcguard.errors import ConfigError
from udcguard.optics.layouts import fill_factor, load_cell_png, unit_cell
from udcguard.optics.measured import (
    AffineParams,
    affine_variant,
    fit_kernel,
    load_psf_npy,
    sample_affine_params,
)
from udcguard.optics.psf import Optics, simulate_psf


@dataclass(frozen=True)
class PSFEntry:
    """One PSF of the bank.

    Attributes:
        name: unique name (``<display>``, ``<display>-v1``, ...).
        psf: (K, K, 3) float32, each channel summing to 1.
        meta: JSON-serialisable description (optics, layout, variant parameters, source).
    """

    name: str
    psf: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


Render = Callable[[AffineParams], np.ndarray]  # variant parameters -> (K, K, 3) float32 PSF


def _resolve(path: Path, base_dir: Path) -> Path:
    return path if path.is_absolute() else Path(base_dir) / path


def _display_entry(
    d: DisplayParams, pp: PSFParams, optics: Optics, seed: int, base_dir: Path
) -> tuple[PSFEntry, Render]:
    meta: dict[str, Any] = {"kind": "simulated", "layout": d.layout}
    if d.layout == "custom":
        if d.cell_png is not None:
            path = _resolve(d.cell_png, base_dir)
            cell = load_cell_png(path)
            meta["cell_png"] = str(path)
        else:
            cell = np.asarray(d.cell, dtype=np.float64)
        meta["cell_shape"] = list(cell.shape)
        cell = unit_cell("custom", cell=cell)
    else:
        cell = unit_cell(d.layout, slit_px=d.slit_px)
        if d.layout == "toled":
            meta["slit_px"] = d.slit_px
    simulate = functools.partial(
        simulate_psf,
        cell,
        optics,
        wavelengths_nm=pp.optics.wavelengths_nm,
        kernel_size=pp.kernel_size,
        transmission=d.opaque_transmission,
        randomize=d.randomize_cells,
        seed=seed,  # the same cell arrangement for the variants, rotated with the display
    )
    psf = simulate()

    def render(p: AffineParams) -> np.ndarray:
        return simulate(rotation_deg=p.angle_deg, shift_px=p.shift_px, scale=p.scale)

    meta.update(
        transmission=d.opaque_transmission,
        fill_factor=fill_factor(cell),
        randomize_cells=d.randomize_cells,
        cell_seed=seed if d.randomize_cells else None,
        wavelengths_nm=[list(ch) for ch in pp.optics.wavelengths_nm],
        optics=dataclasses.asdict(optics),
        kernel_size=pp.kernel_size,
        variant_method="optics",
    )
    return PSFEntry(d.name, psf, meta), render


def _measured_entry(m: MeasuredPSFParams, pp: PSFParams, base_dir: Path) -> tuple[PSFEntry, Render]:
    path = _resolve(m.path, base_dir)
    raw = load_psf_npy(path)  # (H, W, 3)
    psf = fit_kernel(raw, pp.kernel_size, mode=m.fit)
    meta = {"kind": "measured", "source": str(path), "source_shape": list(raw.shape), "fit": m.fit,
            "kernel_size": pp.kernel_size, "variant_method": "bilinear warp"}

    def render(p: AffineParams) -> np.ndarray:
        return affine_variant(psf, angle_deg=p.angle_deg, shift_px=p.shift_px, scale=p.scale, order=1)

    return PSFEntry(m.name, psf, meta), render


def _variants(
    parent: PSFEntry, render: Render, count: int, vp: VariantParams, rng: np.random.Generator
) -> list[PSFEntry]:
    params = sample_affine_params(
        count, rng, max_rotation_deg=vp.max_rotation_deg, max_shift_px=vp.max_shift_px, max_scale=vp.max_scale
    )
    return [
        PSFEntry(f"{parent.name}-v{i}", render(p), {**parent.meta, "parent": parent.name, "variant": p.as_dict()})
        for i, p in enumerate(params, start=1)
    ]


def build_psf_bank(psf_params: PSFParams, seed: int, base_dir: Path) -> list[PSFEntry]:
    """Simulate / load every configured PSF and its affine variants (see the module docstring).

    Order: each display (then its variants ``<name>-v1`` ...), then each measured PSF (then
    its variants). Entry i of the config (displays first) draws its cell rotations and
    variant warps from ``np.random.SeedSequence([seed, i])``, so the bank is deterministic per
    seed and an entry does not change when another is added after it.

    Args:
        psf_params: the ``psf`` section of params.yaml.
        seed: the run seed.
        base_dir: directory that relative ``cell_png`` / measured ``path`` are resolved from.

    Returns:
        list of :class:`PSFEntry` with unique names.

    Raises:
        ConfigError: a variant name collides with another entry's name.
        ImageError / PSFError / UnknownNameError: bad cell PNG, PSF file or layout name.
    """
    pp = psf_params
    op = pp.optics
    optics = Optics(
        focal_length_mm=op.focal_length_mm,
        aperture_mm=op.aperture_mm,
        pupil_sample_um=op.pupil_sample_um,
        pixel_pitch_um=op.pixel_pitch_um,
        oversample=op.oversample,
    )
    bank: list[PSFEntry] = []
    items: list[DisplayParams | MeasuredPSFParams] = [*pp.displays, *pp.measured]
    for index, item in enumerate(items):
        cell_ss, variant_ss = np.random.SeedSequence([seed, index]).spawn(2)
        if isinstance(item, DisplayParams):
            cell_seed = int(cell_ss.generate_state(1)[0])
            entry, render = _display_entry(item, pp, optics, cell_seed, base_dir)
        else:
            entry, render = _measured_entry(item, pp, base_dir)
        bank.append(entry)
        bank.extend(_variants(entry, render, item.variants, pp.variant, np.random.default_rng(variant_ss)))
    names = [e.name for e in bank]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"psf: PSF names collide (variants are named <name>-vN): {', '.join(dup)}")
    return bank

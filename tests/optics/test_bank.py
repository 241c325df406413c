"""build_psf_bank: names, counts, determinism, custom PNG cells, measured PSFs, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from udcguard.config import DisplayParams, MeasuredPSFParams, PSFParams
from udcguard.errors import ConfigError, ImageError, UnknownNameError
from udcguard.optics.bank import build_psf_bank
from udcguard.optics.layouts import toled_cell, unit_cell
from udcguard.optics.measured import affine_variant
from udcguard.optics.psf import Optics, simulate_psf

K = 31


def _params(*displays: DisplayParams, measured: tuple[MeasuredPSFParams, ...] = ()) -> PSFParams:
    return PSFParams(kernel_size=K, displays=displays, measured=measured)


def test_names_count_meta() -> None:
    pp = _params(
        DisplayParams(name="tol", layout="toled", variants=2),
        DisplayParams(name="pol", layout="poled", randomize_cells=True),
    )
    bank = build_psf_bank(pp, seed=0, base_dir=Path("."))
    assert [e.name for e in bank] == ["tol", "tol-v1", "tol-v2", "pol"]
    for e in bank:
        assert e.psf.shape == (K, K, 3) and e.psf.dtype == np.float32
        np.testing.assert_allclose(e.psf.sum(axis=(0, 1)), 1.0, atol=1e-5)
        json.dumps(e.meta)  # JSON-serialisable
    assert bank[0].meta["layout"] == "toled" and bank[0].meta["fill_factor"] == pytest.approx(1 / 3)
    assert bank[0].meta["transmission"] == 0.6 and bank[0].meta["optics"]["aperture_mm"] == 2.0
    assert bank[1].meta["parent"] == "tol" and abs(bank[1].meta["variant"]["angle_deg"]) <= 12.0
    assert "parent" not in bank[0].meta
    assert not np.array_equal(bank[1].psf, bank[2].psf)


def test_deterministic_per_seed() -> None:
    pp = _params(
        DisplayParams(name="pol", layout="poled", randomize_cells=True, variants=1),
        DisplayParams(name="tol", layout="toled", variants=1),
    )
    a = build_psf_bank(pp, seed=3, base_dir=Path("."))
    b = build_psf_bank(pp, seed=3, base_dir=Path("."))
    c = build_psf_bank(pp, seed=4, base_dir=Path("."))
    for x, y in zip(a, b, strict=True):
        assert x.name == y.name and x.meta == y.meta
        np.testing.assert_array_equal(x.psf, y.psf)
    assert not np.array_equal(a[0].psf, c[0].psf)  # other cell rotations
    assert a[3].meta["variant"] != c[3].meta["variant"]


def test_unknown_layout_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError, match="unknown layout 'tolde'; valid: custom, open, poled, toled"):
        DisplayParams(name="x", layout="tolde")
    bad = DisplayParams.model_construct(name="x", layout="tolde")  # bypasses the config check
    with pytest.raises(UnknownNameError, match="valid: custom, open, poled, toled"):
        build_psf_bank(_params(bad), seed=0, base_dir=Path("."))


def test_custom_cell_png_matches_inline_and_toled(tmp_path: Path) -> None:
    cell = toled_cell(slit_px=7)
    Image.fromarray((cell * 255).astype(np.uint8), mode="L").save(tmp_path / "cell.png")
    pp = _params(
        DisplayParams(name="png", layout="custom", cell_png=Path("cell.png")),
        DisplayParams(name="inline", layout="custom", cell=tuple(map(tuple, cell.tolist()))),
        DisplayParams(name="tol", layout="toled", slit_px=7),
    )
    bank = build_psf_bank(pp, seed=0, base_dir=tmp_path)
    np.testing.assert_array_equal(bank[0].psf, bank[1].psf)
    np.testing.assert_array_equal(bank[0].psf, bank[2].psf)
    assert bank[0].meta["cell_png"] == str(tmp_path / "cell.png")


def test_missing_png_names_path(tmp_path: Path) -> None:
    pp = _params(DisplayParams(name="png", layout="custom", cell_png=Path("gone.png")))
    with pytest.raises(ImageError, match=r"gone\.png: file not found"):
        build_psf_bank(pp, seed=0, base_dir=tmp_path)


def test_measured_entry_and_variants(tmp_path: Path) -> None:
    y, x = np.mgrid[:81, :81] - 40
    raw = np.exp(-(y**2 + (x - 5) ** 2) / 20.0)[..., None] * np.array([1.0, 2.0, 3.0])
    np.save(tmp_path / "zte.npy", raw)
    pp = _params(measured=(MeasuredPSFParams(name="zte", path=Path("zte.npy"), variants=2),))
    bank = build_psf_bank(pp, seed=0, base_dir=tmp_path)
    assert [e.name for e in bank] == ["zte", "zte-v1", "zte-v2"]
    assert bank[0].meta["source"] == str(tmp_path / "zte.npy") and bank[0].meta["source_shape"] == [81, 81, 3]
    assert bank[2].meta["parent"] == "zte"
    np.testing.assert_allclose(bank[0].psf.sum(axis=(0, 1)), 1.0, atol=1e-5)
    v = bank[1].meta["variant"]
    assert bank[1].meta["variant_method"] == "bilinear warp"
    warped = affine_variant(
        bank[0].psf, angle_deg=v["angle_deg"], shift_px=tuple(v["shift_px"]), scale=v["scale"], order=1
    )
    np.testing.assert_array_equal(bank[1].psf, warped)


@pytest.mark.parametrize("randomize", [False, True])
def test_display_variants_are_simulated_in_the_optics(randomize: bool) -> None:
    pp = _params(
        DisplayParams(name="tol", layout="toled", variants=2),
        DisplayParams(name="pol", layout="poled", randomize_cells=randomize, opaque_transmission=0.7, variants=2),
    )
    bank = build_psf_bank(pp, seed=1, base_dir=Path("."))
    assert [e.name for e in bank] == ["tol", "tol-v1", "tol-v2", "pol", "pol-v1", "pol-v2"]
    for parent, variant, layout in [(bank[0], bank[1], "toled"), (bank[3], bank[5], "poled")]:
        v = variant.meta["variant"]
        assert variant.meta["variant_method"] == "optics" and set(v) == {"angle_deg", "shift_px", "scale"}
        ref = simulate_psf(
            unit_cell(layout),
            Optics(),
            wavelengths_nm=pp.optics.wavelengths_nm,
            kernel_size=K,
            transmission=parent.meta["transmission"],
            randomize=parent.meta["randomize_cells"],
            seed=parent.meta["cell_seed"] or 0,
            rotation_deg=v["angle_deg"],
            shift_px=tuple(v["shift_px"]),
            scale=v["scale"],
        )
        np.testing.assert_array_equal(variant.psf, ref)
    for e in bank:
        assert e.psf.min() >= 0.0
        np.testing.assert_allclose(e.psf.sum(axis=(0, 1)), 1.0, atol=1e-5)


def test_variant_name_collision() -> None:
    pp = _params(DisplayParams(name="a", layout="open", variants=1), DisplayParams(name="a-v1", layout="open"))
    with pytest.raises(ConfigError, match="a-v1"):
        build_psf_bank(pp, seed=0, base_dir=Path("."))

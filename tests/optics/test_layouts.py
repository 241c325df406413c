"""Layouts: registry, cells, fill factors, tiling, PNG cells."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from udcguard.errors import ImageError, PSFError, UnknownNameError
from udcguard.optics.layouts import (
    LAYOUTS,
    fill_factor,
    load_cell_png,
    tile_mask,
    unit_cell,
)

SMALL_CELL = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0], [0.25, 0.0, 1.0]])


def _cell(name: str) -> np.ndarray:
    return unit_cell(name, cell=SMALL_CELL if name == "custom" else None)


def test_registry_names() -> None:
    assert LAYOUTS.names() == ["custom", "open", "poled", "toled"]


@pytest.mark.parametrize("name", LAYOUTS.names())
def test_every_cell_is_float64_openness(name: str) -> None:
    cell = _cell(name)
    assert cell.dtype == np.float64 and cell.ndim == 2
    assert cell.min() >= 0.0 and cell.max() <= 1.0
    assert 0.0 < fill_factor(cell) <= 1.0


def test_cell_shapes_and_fill_factors() -> None:
    assert unit_cell("open").shape == (1, 1) and fill_factor(unit_cell("open")) == 1.0
    for slit, fill in [(5, 0.24), (7, 0.33), (9, 0.43)]:
        cell = unit_cell("toled", slit_px=slit)
        assert cell.shape == (21, 21)
        assert abs(fill_factor(cell) - fill) < 0.005
        assert np.all(cell[:, 10] == 1.0) and np.all(cell[:, 0] == 0.0)  # centred vertical slit
    poled = unit_cell("poled")
    assert poled.shape == (42, 42)
    assert 0.2 <= fill_factor(poled) <= 0.4


def test_unit_cell_dispatch_errors() -> None:
    with pytest.raises(UnknownNameError, match="valid: custom, open, poled, toled"):
        unit_cell("tolde")
    with pytest.raises(PSFError, match="needs a cell"):
        unit_cell("custom")
    with pytest.raises(PSFError, match="takes no cell"):
        unit_cell("toled", cell=SMALL_CELL)
    with pytest.raises(PSFError, match="slit_px"):
        unit_cell("toled", slit_px=30)


@pytest.mark.parametrize(
    ("bad", "msg"),
    [(np.ones(3), "2-D"), (np.full((2, 2), 1.5), r"\[0, 1\]"), (np.array([[np.nan]]), "NaN"), (np.array([["a"]]), "numeric")],
)
def test_custom_cell_rejects(bad: np.ndarray, msg: str) -> None:
    with pytest.raises(PSFError, match=msg):
        unit_cell("custom", cell=bad)


def test_tile_mask_amplitude_and_centring() -> None:
    cell = unit_cell("toled", slit_px=7)
    m = tile_mask(cell, 25, transmission=0.4)
    assert m.shape == (25, 25) and m.dtype == np.float64
    assert set(np.unique(m)) == {0.4, 1.0}
    assert np.all(m[:, 12] == 1.0)  # cell centre on grid centre
    np.testing.assert_array_equal(m[2:23, 2:23], 0.4 + 0.6 * cell)
    assert np.array_equal(m[:, 1], m[:, 22])  # period 21
    with pytest.raises(ValueError, match="transmission"):
        tile_mask(cell, 5, transmission=1.5)


def test_tile_mask_randomize() -> None:
    cell = np.zeros((4, 4))
    cell[0, :2] = 1.0  # asymmetric: every rotation / flip differs
    a = tile_mask(cell, 40, transmission=0.0, randomize=True, rng=np.random.default_rng(1))
    b = tile_mask(cell, 40, transmission=0.0, randomize=True, rng=np.random.default_rng(1))
    plain = tile_mask(cell, 40, transmission=0.0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, plain)
    # grid centre 20 is cell sample 2, so whole cells start at 2 (mod 4); each is a rotation / flip
    variants = [np.rot90(c, k) for c in (cell, cell[:, ::-1]) for k in range(4)]
    seen = set()
    for y in range(2, 38, 4):
        for x in range(2, 38, 4):
            block = a[y : y + 4, x : x + 4]
            matches = [i for i, v in enumerate(variants) if np.array_equal(block, v)]
            assert matches, (y, x)
            seen.add(matches[0])
    assert len(seen) == 8
    with pytest.raises(ValueError, match="square"):
        tile_mask(np.ones((2, 3)), 8, transmission=0.0, randomize=True, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="rng"):
        tile_mask(cell, 8, transmission=0.0, randomize=True)


def test_load_cell_png_modes(tmp_path: Path) -> None:
    grey = np.array([[0, 255, 128], [255, 0, 64]], dtype=np.uint8)
    Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
    np.testing.assert_allclose(load_cell_png(tmp_path / "g.png"), grey / 255.0)

    g16 = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    np.testing.assert_allclose(load_cell_png(tmp_path / "g16.png"), g16 / 65535.0)

    Image.fromarray(grey > 100).save(tmp_path / "b.png")  # mode "1"
    np.testing.assert_array_equal(load_cell_png(tmp_path / "b.png"), (grey > 100).astype(float))

    rgb = np.repeat(grey[..., None], 3, axis=2)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_allclose(load_cell_png(tmp_path / "rgb.png"), grey / 255.0)


def test_load_cell_png_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.png"
    with pytest.raises(ImageError, match=r"nope\.png: file not found"):
        load_cell_png(missing)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageError, match=r"bad\.png"):
        load_cell_png(bad)
    rgb = np.zeros((3, 3, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    with pytest.raises(ImageError, match=r"colour\.png: colour image"):
        load_cell_png(tmp_path / "colour.png")
    Image.fromarray(rgb).save(tmp_path / "x.jpg")
    with pytest.raises(ImageError, match=r"x\.jpg: expected a PNG"):
        load_cell_png(tmp_path / "x.jpg")

"""Display pixel layouts: unit cells of "openness" and the tiled pupil mask.

A unit cell is a float64 array (h, w) in [0, 1] sampled at the pupil sample spacing
(``Optics.pupil_sample_um``, 8 um by default): 1 = transparent gap, 0 = opaque
(sub-pixel, wiring). The display mask tiles the cell over the pupil; opaque parts keep an
amplitude transmission t (see udc-physics.md, "Fourier optics of a display in front of a
lens"; Zhou et al., CVPR 2021, arXiv 2003.04857).

Registered layouts (``LAYOUTS``) and their fill factors (mean openness):

==========  ======  =====================================================================
name        cell    fill
==========  ======  =====================================================================
open        1 x 1   1.0 (no display)
toled       21x21   slit_px / 21: 0.238 / 0.333 / 0.429 for slit 5 / 7 / 9 (168 um pitch)
poled       42x42   0.349 (336 um pitch, pentile-like; see :func:`poled_cell`)
custom      any     mean of the given cell
==========  ======  =====================================================================
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

import numpy as np

from udcguard.errors import ImageError, PSFError
from udcguard.registry import Registry

LAYOUTS: Registry[Callable[..., np.ndarray]] = Registry("layout")

TOLED_CELL_PX = 21  # 168 um at 8 um per sample
POLED_CELL_PX = 42  # 336 um at 8 um per sample


@LAYOUTS.register("open")
def open_cell() -> np.ndarray:
    """No display: a 1 x 1 cell of ones (fill 1)."""
    return np.ones((1, 1))


@LAYOUTS.register("toled")
def toled_cell(*, slit_px: int = 7) -> np.ndarray:
    """Transparent OLED: a 21 x 21 cell with one centred vertical transparent slit.

    Args:
        slit_px: slit width in pupil samples, 1..21 (5 / 7 / 9 give fill 0.24 / 0.33 / 0.43).

    Returns:
        (21, 21) float64 openness.
    """
    if not 1 <= int(slit_px) <= TOLED_CELL_PX:
        raise PSFError(f"toled: slit_px must be in 1..{TOLED_CELL_PX}, got {slit_px}")
    cell = np.zeros((TOLED_CELL_PX, TOLED_CELL_PX))
    x0 = (TOLED_CELL_PX - int(slit_px)) // 2
    cell[:, x0 : x0 + int(slit_px)] = 1.0
    return cell


@LAYOUTS.register("poled")
def poled_cell() -> np.ndarray:
    """Pentile-like P-OLED: a 42 x 42 cell (336 um at 8 um), fill 0.349.

    Design (distances in samples from sample centres, periodic over the cell):

    - red diamonds, |dy| + |dx| <= 8, at (10.5, 10.5) and (31.5, 31.5);
    - blue diamonds (larger, as blue is least efficient), |dy| + |dx| <= 9.5, at
      (10.5, 31.5) and (31.5, 10.5), so R and B form a checkerboard;
    - green discs of radius 5 at (0, 0), (0, 21), (21, 0), (21, 21) (the checkerboard's
      corners, shared with neighbouring cells through periodicity);
    - opaque wiring: 2-sample (16 um) rows and columns through the green discs;
    - everything else is a transparent gap.

    Returns:
        (42, 42) float64 binary openness.
    """
    n = POLED_CELL_PX
    y, x = np.mgrid[0:n, 0:n] + 0.5  # (n, n) sample centres

    def pdist(a: np.ndarray, c: float) -> np.ndarray:  # periodic |a - c|
        d = np.abs(a - c) % n
        return np.minimum(d, n - d)

    opaque = np.zeros((n, n), dtype=bool)
    for (cy, cx), r in [((10.5, 10.5), 8.0), ((31.5, 31.5), 8.0), ((10.5, 31.5), 9.5), ((31.5, 10.5), 9.5)]:
        opaque |= pdist(y, cy) + pdist(x, cx) <= r  # R / B diamonds
    for cy in (0.0, 21.0):
        for cx in (0.0, 21.0):
            opaque |= np.hypot(pdist(y, cy), pdist(x, cx)) <= 5.0  # G discs
    for c in (0.0, 21.0):
        opaque |= (pdist(y, c) <= 1.0) | (pdist(x, c) <= 1.0)  # wiring, 2 samples wide
    return (~opaque).astype(np.float64)


@LAYOUTS.register("custom")
def custom_cell(cell: np.ndarray) -> np.ndarray:
    """A user cell: any non-empty 2-D array of finite openness values in [0, 1].

    Returns:
        (h, w) float64 copy.
    """
    arr = np.asarray(cell)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise PSFError(f"custom cell: expected a numeric array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.ndim != 2 or arr.size == 0:
        raise PSFError(f"custom cell: expected a non-empty 2-D array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise PSFError("custom cell: contains NaN or infinite values")
    if arr.min() < 0.0 or arr.max() > 1.0:
        raise PSFError(f"custom cell: values must lie in [0, 1], got [{arr.min():g}, {arr.max():g}]")
    return arr


def unit_cell(layout: str, *, slit_px: int = 7, cell: np.ndarray | None = None) -> np.ndarray:
    """Build the unit cell of a registered layout, passing each builder only its own kwargs.

    Args:
        layout: a name in ``LAYOUTS`` (unknown names raise UnknownNameError listing valid ones).
        slit_px: toled slit width in samples (ignored by layouts without a slit).
        cell: openness array, required by (and only allowed for) ``custom``.

    Returns:
        (h, w) float64 openness in [0, 1].
    """
    builder = LAYOUTS.get(layout)
    params = inspect.signature(builder).parameters
    if cell is not None and "cell" not in params:
        raise PSFError(f"layout {layout!r} takes no cell (only 'custom' does)")
    if "cell" in params and cell is None:
        raise PSFError(f"layout {layout!r} needs a cell (an array or a PNG)")
    given = {"slit_px": slit_px, "cell": cell}
    return builder(**{k: v for k, v in given.items() if k in params})


def load_cell_png(path: str | Path) -> np.ndarray:
    """Read a grey or binary PNG unit cell; white = transparent.

    8-bit values are divided by 255, 16-bit by 65535. RGB(A) images are accepted only when
    their colour channels are equal (alpha is ignored). This is the one function of the
    optics package that reads a file.

    Returns:
        (h, w) float64 openness in [0, 1].

    Raises:
        ImageError: ``"<path>: ..."`` if the file is missing, corrupt, not a PNG or coloured.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            fmt, mode = img.format, img.mode
            if mode == "P":
                img = img.convert("RGBA")
                mode = "RGBA"
            arr = np.asarray(img)
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{path}: cannot read as an image ({type(err).__name__})") from None
    if fmt != "PNG":
        raise ImageError(f"{path}: expected a PNG, got {fmt}")
    if mode in ("1", "L", "LA", "I;16", "I;16B", "I;16L", "I"):
        scale = 1.0 if mode == "1" else (255.0 if mode in ("L", "LA") else 65535.0)
        grey = arr[..., 0] if mode == "LA" else arr
    elif mode in ("RGB", "RGBA"):
        rgb = arr[..., :3]
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise ImageError(f"{path}: colour image; expected grey or binary (equal R, G, B)")
        grey, scale = rgb[..., 0], 255.0
    else:
        raise ImageError(f"{path}: unsupported PNG mode {mode!r}; expected grey or binary")
    cell = grey.astype(np.float64) / scale  # (h, w)
    try:
        return custom_cell(cell)
    except PSFError as err:
        raise ImageError(f"{path}: {err}") from None


def fill_factor(cell: np.ndarray) -> float:
    """Mean openness of a cell (the transparent area fraction F for a binary cell)."""
    return float(np.mean(cell))


_DIHEDRAL: tuple[Callable[[np.ndarray], np.ndarray], ...] = tuple(
    (lambda a, k=k, f=f: np.rot90(a[:, ::-1] if f else a, k)) for f in (False, True) for k in range(4)
)


def tile_mask(
    cell: np.ndarray,
    n: int,
    *,
    transmission: float,
    randomize: bool = False,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Tile a unit cell over n x n samples and turn openness into amplitude transmission.

    The cell's centre sample (h // 2, w // 2) sits on the grid centre (n // 2, n // 2); for
    even cell sizes the geometric cell centre is thus half a sample up-left of it.

    Args:
        cell: (h, w) openness in [0, 1].
        n: output side in samples.
        transmission: amplitude transmission t of opaque parts, in [0, 1].
        randomize: give each tiled cell one of the 8 random 90-degree rotations / flips
            (square cells only), smoothing diffraction orders into a halo.
        rng: generator for ``randomize`` (required then).

    Returns:
        (n, n) float64 amplitude t + (1 - t) * openness.
    """
    cell = custom_cell(cell)
    if not 0.0 <= transmission <= 1.0:
        raise ValueError(f"transmission must lie in [0, 1], got {transmission}")
    h, w = cell.shape
    reps_y, reps_x = -(-n // h) + 2, -(-n // w) + 2  # whole cells covering n plus margin
    if randomize:
        if h != w:
            raise ValueError(f"randomize needs a square cell, got {h} x {w}")
        if rng is None:
            raise ValueError("randomize=True needs an rng (np.random.Generator)")
        picks = rng.integers(0, len(_DIHEDRAL), size=(reps_y, reps_x))
        rows = [np.concatenate([_DIHEDRAL[p](cell) for p in row], axis=1) for row in picks]
        big = np.concatenate(rows, axis=0)  # (reps_y h, reps_x w)
    else:
        big = np.tile(cell, (reps_y, reps_x))
    # choose the window so that grid centre n // 2 lands on a cell centre h // 2
    cy, cx = (reps_y // 2) * h + h // 2, (reps_x // 2) * w + w // 2
    openness = big[cy - n // 2 : cy - n // 2 + n, cx - n // 2 : cx - n // 2 + n]  # (n, n)
    return transmission + (1.0 - transmission) * openness

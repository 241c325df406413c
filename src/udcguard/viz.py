"""Pictures people would rather look at: PSFs on a log scale and titled image grids.

Rendering returns uint8 arrays (matplotlib's Agg canvas, no window, no file I/O).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from udcguard.degradation.tonemap import tonemap


def psf_to_rgb(psf: np.ndarray, decades: float = 5.0) -> np.ndarray:
    """(K, K, 3) PSF -> (K, K, 3) float in [0, 1], log scale over ``decades`` below the peak."""
    p = np.asarray(psf, dtype=np.float64)
    p = p / max(float(p.max()), 1e-30)
    return np.clip(1.0 + np.log10(np.maximum(p, 1e-30)) / decades, 0.0, 1.0)


def hdr_display(x: np.ndarray) -> np.ndarray:
    """Linear HDR -> displayable [0, 1] (sRGB-ish gamma of the value clipped at 1)."""
    return np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0) ** (1 / 2.2)


def tonemapped_display(x: np.ndarray) -> np.ndarray:
    """Linear HDR -> the networks' tone-mapped [0, 1] view."""
    return np.asarray(tonemap(np.asarray(x, dtype=np.float64)))


def image_grid(
    rows: Sequence[Sequence[np.ndarray]],
    col_titles: Sequence[str],
    row_titles: Sequence[str] | None = None,
    *,
    cell_inches: float = 1.8,
    dpi: int = 100,
) -> np.ndarray:
    """Render a grid of [0, 1] float RGB images with titles; returns (H, W, 3) uint8."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_r, n_c = len(rows), len(col_titles)
    fig = Figure(figsize=(cell_inches * n_c, cell_inches * n_r + 0.4), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(n_r, n_c, squeeze=False)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            ax = axes[i][j]
            ax.imshow(np.clip(img, 0.0, 1.0), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(col_titles[j], fontsize=8)
            if j == 0 and row_titles is not None:
                ax.set_ylabel(row_titles[i], fontsize=6)
    fig.tight_layout(pad=0.3)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return np.ascontiguousarray(rgba[..., :3])


def line_plot(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    logy: bool = False,
    inches: tuple[float, float] = (5.0, 3.4),
    dpi: int = 100,
    vline: tuple[float, str] | None = None,
) -> np.ndarray:
    """Render named (x, y) series as a line plot; returns (H, W, 3) uint8.

    ``vline``: (x, label) draws a dashed vertical marker (e.g. the selected t*).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=inches, dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.subplots()
    for label, (x, y) in series.items():
        ax.plot(list(x), list(y), marker="o" if len(x) < 30 else None, ms=3, lw=1.2, label=label)
    if vline is not None:
        ax.axvline(vline[0], ls="--", lw=1.0, color="k", label=vline[1])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=7)
    fig.tight_layout()
    canvas.draw()
    return np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[..., :3])

"""Figures for notebooks and run reports, written as PNG files.

Figures are built on matplotlib's object API with an Agg canvas, never through ``pyplot``:
no window opens, nothing depends on a display, and a notebook's own backend is left alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from .fieldio import atomic_path


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width`` x ``height`` inches drawn by the Agg (file-only) backend."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as a PNG atomically (a killed run never leaves half an image)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def fold_balance_heatmap(
    counts: np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    title: str = "",
    max_labelled_rows: int = 60,
) -> Path:
    """Heatmap of each class's share of its fields per fold, centred on the ideal 1/k.

    ``counts``: (C, k) fields of class c in fold f. Rows are normalised by the class total, so
    a white cell is a perfect share, red too many, blue too few; absent classes stay blank.
    Counts are written in the cells when the grid is small; class names label the rows when
    there are at most ``max_labelled_rows`` classes.
    """
    counts = np.asarray(counts, dtype=float)
    n_classes, k = counts.shape
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(totals > 0, counts / totals, np.nan)
    height = min(2.0 + 0.28 * min(n_classes, max_labelled_rows), 24.0) if n_classes <= max_labelled_rows else 10.0
    fig = new_figure(2.5 + 0.9 * k + (2.5 if n_classes <= max_labelled_rows else 0), height)
    ax = fig.add_subplot()
    norm = TwoSlopeNorm(vcenter=1.0 / k, vmin=0.0, vmax=2.0 / k)
    image = ax.imshow(np.clip(share, 0.0, 2.0 / k), cmap="RdBu_r", norm=norm, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(k), [f"fold {f}" for f in range(k)])
    if n_classes <= max_labelled_rows:
        ax.set_yticks(range(n_classes), [f"{c} {name}" for c, name in enumerate(class_names)], fontsize=8)
    else:
        ax.set_ylabel(f"class (0..{n_classes - 1})")
    if n_classes * k <= 400:
        for c in range(n_classes):
            for f in range(k):
                if totals[c, 0] > 0:
                    dark = abs(share[c, f] - 1.0 / k) > 0.6 / k  # text stays legible on saturated cells
                    ax.text(f, c, str(int(counts[c, f])), ha="center", va="center", fontsize=7, color="white" if dark else "black")
    fig.colorbar(image, ax=ax, label=f"share of the class's fields (ideal {1 / k:.2f})")
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path)

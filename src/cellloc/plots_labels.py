"""Figures about labels: class counts, class co-occurrence, and grids of fields or cell crops.

Pure functions: they take arrays and names and return a matplotlib ``Figure`` made by
:func:`cellloc.plots.new_figure` (Agg canvas, no pyplot); saving is left to the caller
(:func:`cellloc.plots.save_figure`) and a notebook simply displays the returned figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from .plots import new_figure


def class_counts(labels: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    """How many of the label lists contain each class: (num_classes,) int64."""
    counts = np.zeros(num_classes, np.int64)
    for ids in labels:
        for k in set(ids):
            counts[int(k)] += 1
    return counts


def cooccurrence(labels: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    """(C, C) int64: entry (i, j) counts label lists holding both i and j; the diagonal is the class count."""
    hot = np.zeros((len(labels), num_classes), np.int64)
    for r, ids in enumerate(labels):
        hot[r, list(set(int(k) for k in ids))] = 1
    return hot.T @ hot


def class_counts_figure(counts: Mapping[str, np.ndarray], class_names: Sequence[str], title: str = "") -> Figure:
    """One horizontal bar chart per entry of ``counts`` (e.g. ``{"fields": ..., "cells": ...}``), side by side.

    Each value is a (C,) count vector aligned with ``class_names``; the figure has ``len(counts)`` axes.
    """
    if not counts:
        raise ValueError("counts is empty")
    n = len(class_names)
    for name, v in counts.items():
        if np.shape(v) != (n,):
            raise ValueError(f"counts[{name!r}] has shape {np.shape(v)}, expected ({n},)")
    fig = new_figure(1.5 + 3.2 * len(counts), 1.2 + 0.22 * n)
    axes = fig.subplots(1, len(counts), sharey=True, squeeze=False)[0]
    y = np.arange(n)
    for ax, (name, v) in zip(axes, counts.items()):
        v = np.asarray(v)
        ax.barh(y, v, color="tab:blue")
        for yi, value in zip(y, v):
            ax.text(value, yi, f" {int(value)}", va="center", fontsize=7)
        ax.set_xlabel(f"{name} (total {int(v.sum())})")
        ax.set_xlim(0, max(1, v.max()) * 1.18)
    axes[0].invert_yaxis()  # class 0 on top; the axes share y
    axes[0].set_yticks(y, [f"{k} {c}" for k, c in enumerate(class_names)], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def cooccurrence_figure(matrix: np.ndarray, class_names: Sequence[str], title: str = "", normalise: bool = False) -> Figure:
    """Heatmap of a (C, C) co-occurrence matrix (two axes: the map and its colour bar).

    With ``normalise``, row i is divided by its diagonal: the share of class i's lists that also
    hold class j. Counts are written in the non-zero cells.
    """
    m = np.asarray(matrix, dtype=float)
    n = len(class_names)
    if m.shape != (n, n):
        raise ValueError(f"matrix has shape {m.shape}, expected ({n}, {n})")
    shown = m
    if normalise:
        diag = np.diag(m)[:, None]
        shown = np.divide(m, diag, out=np.zeros_like(m), where=diag > 0)
    fig = new_figure(2.5 + 0.32 * n, 1.5 + 0.3 * n)
    ax = fig.add_subplot()
    im = ax.imshow(shown, cmap="viridis", interpolation="nearest")
    ticks = [f"{k} {c}"[:24] for k, c in enumerate(class_names)]
    ax.set_xticks(range(n), ticks, rotation=90, fontsize=7)
    ax.set_yticks(range(n), ticks, fontsize=7)
    if n <= 40:
        top = shown.max() if shown.size else 0
        for i in range(n):
            for j in range(n):
                if m[i, j] > 0:
                    ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=6,
                            color="black" if shown[i, j] > 0.6 * top else "white")
    fig.colorbar(im, ax=ax, label="share of row class" if normalise else "lists with both classes")
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def image_grid_figure(images: Sequence[np.ndarray], titles: Sequence[str] | None = None, columns: int = 4,
                      tile_inches: float = 2.2, title: str = "") -> Figure:
    """Grid of RGB (HxWx3) or grey images, one axis per image (empty grid slots get no axis)."""
    if not len(images):
        raise ValueError("no images")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"{len(titles)} titles for {len(images)} images")
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    fig = new_figure(tile_inches * columns, tile_inches * rows + (0.3 if title else 0))
    grid = fig.add_gridspec(rows, columns)
    for i, img in enumerate(images):
        ax = fig.add_subplot(grid[i // columns, i % columns])
        ax.imshow(img, cmap=None if np.ndim(img) == 3 else "gray", interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def crops_grid_figure(crops: Mapping[int, Sequence[np.ndarray]], class_names: Sequence[str], per_class: int = 4,
                      tile_inches: float = 1.1, title: str = "") -> Figure:
    """One row per class in ``crops`` (class id -> RGB crops), up to ``per_class`` crops each.

    Every row has ``per_class`` axes (blank where a class has fewer crops), so the figure has
    ``len(crops) * per_class`` axes; the row's first axis carries the class name.
    """
    if not crops:
        raise ValueError("no crops")
    rows = len(crops)
    fig = new_figure(1.6 + tile_inches * per_class, tile_inches * rows + (0.3 if title else 0))
    axes = fig.subplots(rows, per_class, squeeze=False)
    for r, (k, items) in enumerate(crops.items()):
        for c in range(per_class):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if c < len(items):
                ax.imshow(items[c], interpolation="nearest")
        axes[r, 0].set_ylabel(f"{k} {class_names[k]}"[:22], fontsize=7, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig

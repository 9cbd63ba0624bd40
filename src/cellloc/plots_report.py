"""Figures for the run report: per-class AP against the label-frequency baseline.

Pure: a ``scores.csv``-shaped table in, a matplotlib ``Figure`` out (Agg canvas via
:func:`cellloc.plots.new_figure`, no pyplot); saving is the caller's (:func:`cellloc.plots.save_figure`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .plots import new_figure

# Label sources of scores.csv (column suffix), in drawing order, with their bar colours.
AP_SOURCES: dict[str, tuple[str, str]] = {
    "true": ("AP vs true cell labels", "tab:orange"),
    "weak": ("AP vs weak field labels", "tab:blue"),
}


def _value(row: pd.Series, col: str) -> float:
    v = row.get(col, np.nan)
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def ap_bars_figure(scores: pd.DataFrame, title: str = "") -> Figure:
    """Horizontal bars of each class's AP vs true and vs weak labels, with its baseline.

    ``scores`` has one row per class (``class``, ``name``, ``ap_true``/``ap_weak``,
    ``prevalence_true``/``prevalence_weak``; either source may be absent) and optionally a
    last ``macro`` row, whose values go into the legend. The baseline of a class is its
    prevalence, the AP a constant (label-frequency) score gets; it is drawn as a black tick on
    the bar, so a bar that barely passes its tick learnt little. Classes with no positive cell
    (AP undefined) get no bar and say so.
    """
    table = scores.copy()
    is_macro = table["class"].astype(str) == "macro"
    macro = table[is_macro].iloc[0] if is_macro.any() else None
    rows = table[~is_macro].reset_index(drop=True)
    sources = [s for s in AP_SOURCES if f"ap_{s}" in rows.columns]
    if rows.empty or not sources:
        raise ValueError("scores has no class rows with ap_true or ap_weak")
    n = len(rows)
    fig = new_figure(7.5, 1.8 + 0.26 * n)
    ax = fig.add_subplot()
    y = np.arange(n)
    height = 0.8 / len(sources)
    handles = []
    for i, source in enumerate(sources):
        label, colour = AP_SOURCES[source]
        offset = (i - (len(sources) - 1) / 2) * height
        ap = pd.to_numeric(rows[f"ap_{source}"], errors="coerce").to_numpy(float)
        ax.barh(y + offset, np.nan_to_num(ap), height=height * 0.95, color=colour)
        if f"prevalence_{source}" in rows.columns:
            base = pd.to_numeric(rows[f"prevalence_{source}"], errors="coerce").to_numpy(float)
            ok = np.isfinite(base)
            ax.plot(base[ok], (y + offset)[ok], "|", color="black", ms=9, mew=1.6)
        if macro is not None:
            label += f" (macro {_value(macro, f'ap_{source}'):.3f}, baseline {_value(macro, f'prevalence_{source}'):.3f})"
        handles.append(Patch(color=colour, label=label))
    handles.append(Line2D([], [], color="black", marker="|", ls="", ms=9, mew=1.6, label="baseline: class prevalence"))
    undefined = np.all([pd.to_numeric(rows[f"ap_{s}"], errors="coerce").isna().to_numpy() for s in sources], axis=0)
    for yi in np.flatnonzero(undefined):
        ax.text(0.01, yi, "no positive cell", va="center", fontsize=7, color="grey")
    ax.set_yticks(y, [f"{c} {name}"[:34] for c, name in zip(rows["class"], rows["name"])], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("average precision")
    ax.grid(axis="x", alpha=0.3)
    fig.legend(handles=handles, fontsize=7, loc="outside lower center", ncol=2)
    if title:
        ax.set_title(title, fontsize=10)
    return fig

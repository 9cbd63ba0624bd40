"""Training curves as a PNG: loss, validation AP/F1 and learning rate per epoch.

Uses ``matplotlib.figure.Figure`` directly (no pyplot), so drawing from a training loop or a
worker thread touches no global figure state and needs no display.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from .fieldio import atomic_path


def plot_training_curves(history: pd.DataFrame, path: str | Path, title: str = "") -> None:
    """Draw ``metrics.csv``-shaped ``history`` (one row per epoch) to ``path`` (PNG, atomic).

    Uses the columns that exist among ``train_loss``, ``valid_loss``, ``valid_macro_ap``,
    ``valid_macro_ap_true``, ``valid_macro_ap_weak``, ``valid_macro_f1`` and ``lr``; the best
    epoch (column ``best`` true) is marked on every panel.
    """
    if history.empty:
        raise ValueError("no epochs to plot")
    x = history["epoch"]
    fig = Figure(figsize=(12, 3.6), dpi=100)
    axes = fig.subplots(1, 3)
    panels = [
        ("loss (BCE)", ["train_loss", "valid_loss"]),
        ("validation score", ["valid_macro_ap", "valid_macro_ap_true", "valid_macro_ap_weak", "valid_macro_f1"]),
        ("learning rate", ["lr"]),
    ]
    best = history.loc[history["best"].astype(bool), "epoch"] if "best" in history else pd.Series(dtype=float)
    for ax, (label, cols) in zip(axes, panels):
        for col in cols:
            if col in history and history[col].notna().any():
                ax.plot(x, history[col], marker="o", ms=3, label=col)
        for b in best.tail(1):
            ax.axvline(b, color="grey", ls=":", lw=1)
        ax.set_xlabel("epoch")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        if len(ax.get_lines()) > 1:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")

"""Per-cell class scores: fold ensembles, TTA, field-level blending and Negative handling.

Pure functions on arrays; the run that streams fields through them is ``predict_run``.
Shapes: ``probs`` is (n_cells, n_classes) float in [0, 1], one field's cells.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

BLEND_MODES = ("none", "product", "mean")


def ensemble(predict_fns: Sequence[Callable[[np.ndarray], np.ndarray]], crops: np.ndarray) -> np.ndarray:
    """Mean probability over models (e.g. the K fold models; each may average TTA views itself)."""
    if not predict_fns:
        raise ValueError("no models to ensemble")
    return np.mean([fn(crops) for fn in predict_fns], axis=0).astype(np.float32)


def blend_with_field(probs: np.ndarray, mode: str = "product", field_weight: float = 0.3,
                     cell_weights: np.ndarray | None = None) -> np.ndarray:
    """Mix each cell's scores with its field's score (the weighted mean over the field's cells).

    Winning HPA solutions scored cells as cell x image, or 0.7-0.9 cell + 0.1-0.3 image: a class
    the whole field shows is more likely in each of its cells. ``product`` uses
    ``sqrt(cell * field)`` so scores stay on the probability scale; ``mean`` uses
    ``(1 - w) * cell + w * field``. ``cell_weights`` (n_cells,) down-weights e.g. small or
    edge-cut cells in the field score.
    """
    if mode not in BLEND_MODES:
        raise ValueError(f"blend mode must be one of {BLEND_MODES}, not {mode!r}")
    if mode == "none" or len(probs) == 0:
        return probs
    w = np.ones(len(probs)) if cell_weights is None else np.asarray(cell_weights, float)
    field_score = (probs * w[:, None]).sum(0) / max(w.sum(), 1e-9)
    if mode == "product":
        return np.sqrt(probs * field_score[None, :]).astype(np.float32)
    return ((1 - field_weight) * probs + field_weight * field_score[None, :]).astype(np.float32)


def with_negative(probs: np.ndarray, negative: int | None) -> np.ndarray:
    """Make the Negative score at least ``min over other classes of (1 - p)``.

    A cell with no confident class then still gets a confident Negative prediction, instead of
    being left with nothing but low scores (worth about +0.006 mAP in the competition).
    """
    if negative is None or len(probs) == 0:
        return probs
    out = probs.copy()
    others = np.delete(probs, negative, axis=1)
    out[:, negative] = np.maximum(probs[:, negative], (1.0 - others).min(axis=1))
    return out


def cell_weights(area: np.ndarray, edge: np.ndarray, edge_weight: float = 0.5) -> np.ndarray:
    """Weights for the field score: relative area (capped at 1) times ``edge_weight`` for edge-cut cells."""
    area = np.asarray(area, float)
    rel = np.clip(area / max(np.median(area), 1.0), 0.0, 1.0) if len(area) else area
    return rel * np.where(np.asarray(edge, bool), edge_weight, 1.0)

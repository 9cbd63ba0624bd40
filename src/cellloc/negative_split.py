"""Which cells of a field labelled Negative and other classes show no protein, from the protein channel.

A field's label is the union of its cells' labels, and Negative (no specific staining) excludes
every other class in one cell. So each cell of a field labelled Negative and O is either Negative
and none of O, or some of O and not Negative; trained on the field's label, every one of them is
told both. The model cannot tell which from those labels (within such fields its own Negative
score ranks the negative cells poorly), and a split on its own scores feeds on
itself: the model's first guesses become its targets (docs/cellgap.md, round 9, collapsed).

What does tell them apart is whether the cell's protein channel stands above background: a
negative cell shows nothing, so its brightest pixels stay dim. The training data itself says how
dim. Two kinds of fields carry a certain answer: a field labelled Negative alone (every cell shows
nothing) and a field whose label lacks Negative (every cell shows something). :func:`fit_shows_protein`
fits a logistic model of a cell's protein level (log percentiles of the channel inside the cell)
on the cells of those fields, and :func:`split_negative` uses its probability ``q`` that a cell
shows protein on the cells of mixed fields: their other classes' targets become ``q`` and their
Negative target ``1 - q``. No model of the network takes part, so nothing feeds back.

On the demo's training fields q ranks a mixed field's showing cells above its negative ones at ROC
AUC 0.85 within a field (the image-label network's own Negative score: 0.67), and the split raised
the demo's test mAP from 0.407 to 0.457 over five training seeds (docs/cellgap.md, round 10).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression

from .errors import InputError

PERCENTILES = (50.0, 90.0, 99.0)  # of the protein channel inside the cell: its typical and its brightest pixels
MIN_CELLS = 5  # of each certain kind, to fit on
# train.py --negative-split: how the cells of a field labelled Negative and other classes are told apart
NEGATIVE_SPLITS = {
    "auto": "intensity where it applies and can be fit, else none",
    "intensity": "by the protein channel (this module); an error where it cannot be fit",
    "none": "not: every cell keeps its field's label",
}


def protein_level(crop: np.ndarray, channel: int) -> np.ndarray:
    """(len(PERCENTILES),) ``log1p`` of the protein channel's :data:`PERCENTILES` inside the cell of an HxWxC crop.

    The cell is the crop's nonzero pixels (crops are cut with the pixels of other cells zeroed);
    an empty crop reads as 0.
    """
    inside = crop.max(axis=-1) > 0
    values = crop[..., channel][inside].astype(np.float64)
    if values.size == 0:
        return np.zeros(len(PERCENTILES))
    return np.log1p(np.percentile(values, PERCENTILES))


def protein_levels(crops: Sequence[np.ndarray], channel: int) -> np.ndarray:
    """(N, len(PERCENTILES)) :func:`protein_level` of each crop."""
    return np.stack([protein_level(c, channel) for c in crops]) if len(crops) else np.zeros((0, len(PERCENTILES)))


@dataclass(frozen=True)
class ShowsProtein:
    """A logistic model of P(the cell shows protein | its protein level)."""

    coef: tuple[float, ...]
    intercept: float
    cells_negative: int  # cells of fields labelled Negative alone it was fit on
    cells_showing: int  # cells of fields whose label lacks Negative

    def __call__(self, levels: np.ndarray) -> np.ndarray:
        """(N,) probability that each cell of ``levels`` (N, len(PERCENTILES)) shows protein."""
        z = np.asarray(levels, np.float64) @ np.asarray(self.coef) + self.intercept
        return 1.0 / (1.0 + np.exp(-z))


def certain_fields(labels: np.ndarray, negative: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks over the rows of ``labels`` (N, C, multi-hot field labels): Negative alone, no Negative, mixed."""
    labels = np.asarray(labels) > 0
    has_negative = labels[:, negative]
    others = np.delete(labels, negative, axis=1).any(axis=1)
    return has_negative & ~others, ~has_negative, has_negative & others


def too_few_certain(labels: np.ndarray, negative: int, min_cells: int = MIN_CELLS) -> str:
    """Why :func:`fit_shows_protein` cannot fit on these field labels ("" if it can): it needs at least
    ``min_cells`` cells of each certain kind."""
    alone, without, _ = certain_fields(labels, negative)
    if alone.sum() >= min_cells and without.sum() >= min_cells:
        return ""
    return (f"the training cells hold {int(alone.sum())} of fields labelled Negative alone and {int(without.sum())} "
            f"of fields without Negative (at least {min_cells} of each needed)")


def fit_shows_protein(levels: np.ndarray, labels: np.ndarray, negative: int, min_cells: int = MIN_CELLS) -> ShowsProtein:
    """Fit :class:`ShowsProtein` on the cells whose field label is certain (:func:`certain_fields`).

    Both kinds are weighted to count alike (fields labelled Negative alone are few). One-line
    error when either kind has fewer than ``min_cells`` cells (:func:`too_few_certain`).
    """
    reason = too_few_certain(labels, negative, min_cells)
    if reason:
        raise InputError(f"the Negative split learns what no protein looks like from fields labelled Negative alone "
                         f"and fields without Negative, but {reason}: use --negative-split none")
    alone, without, _ = certain_fields(labels, negative)
    fit = alone | without
    model = LogisticRegression(class_weight="balanced", C=10.0).fit(levels[fit], without[fit])
    return ShowsProtein(tuple(float(c) for c in model.coef_[0]), float(model.intercept_[0]),
                        int(alone.sum()), int(without.sum()))


def split_negative(targets: np.ndarray, labels: np.ndarray, shows: np.ndarray, negative: int) -> np.ndarray:
    """(N, C) ``targets`` with each mixed field's cells split by ``shows`` (N,), P(the cell shows protein).

    In a field labelled Negative and other classes, a cell's other classes are scaled by ``shows``
    and its Negative by ``1 - shows``; every other cell keeps its targets. ``labels`` are the field
    labels that say which fields are mixed (``targets`` may already be softened, e.g. by soft targets).
    """
    _, _, mixed = certain_fields(labels, negative)
    out = np.array(targets, dtype=np.float32, copy=True)
    q = np.clip(np.asarray(shows, np.float64)[mixed], 0.0, 1.0)[:, None]
    scale = np.repeat(q, out.shape[1], axis=1)
    scale[:, negative] = 1.0 - q[:, 0]
    out[mixed] = out[mixed] * scale
    return out

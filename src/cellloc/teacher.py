"""Which training cells a teacher trained on the certain fields can teach, and what they then train on.

A field's label is the union of its cells' labels. A field naming one class (besides, perhaps,
Negative) tells each of its cells what it may show: that class, or nothing (the negative split,
:mod:`cellloc.negative_split`, tells those two apart). A field naming several classes does not:
each of its cells shows some of them, and trained on the field's label every cell is told all of
them. ``train.py --teacher certain`` first trains the same network on the *certain* fields of the
training side only, then lets it predict the cells of the several-class fields, which it never
saw; those cells then train on their field's label times ``1 - w + w * prediction``
(:func:`cellloc.data.soft_targets`): never a class their field lacks, and less of the classes the
teacher does not see in them.

On the demo's fields it raised the test mAP from 0.457 (the negative split alone) to 0.479, on every
one of five training seeds: 0.93 of the true-label ceiling (docs/cellgap.md, round 11).
"""

from __future__ import annotations

import numpy as np

from .data import soft_targets

# train.py --teacher: where the several-class fields' cells get their targets from
TEACHERS = {
    "auto": "certain where it applies and the training cells hold enough of both kinds of field, else none",
    "certain": "a teacher trained on the fields naming at most one class besides Negative; an error where it cannot",
    "none": "no teacher: every cell trains on its field's label",
}
TEACHER_SUFFIX = "-teacher"  # the teacher's run folder is <run_name>-teacher/fold<K>, beside the student's
TEACHER_PREDICTIONS = "teacher_predictions.csv"  # in the teacher's run folder: its prediction of each taught cell
MIN_CERTAIN_CELLS = 64  # training cells of certain fields a teacher needs (two batches of the default size)


def teacher_epochs(epochs: int, asked: int = 0) -> int:
    """The teacher's epochs: ``asked``, or (0) half the student's ``epochs``, rounded up.

    Half is not a saving bought with quality: on the demo's fields a 5-epoch teacher of a 10-epoch
    student scored as well as a 10-epoch one (docs/cellgap.md, round 11)."""
    return asked or max(1, -(-epochs // 2))


def classes_named(labels: np.ndarray, negative: int | None) -> np.ndarray:
    """(N,) how many classes other than Negative each row of ``labels`` (N, C, multi-hot field labels) names."""
    named = np.asarray(labels) > 0
    if negative is not None:
        named = np.delete(named, negative, axis=1)
    return named.sum(axis=1)


def certain_cells(labels: np.ndarray, negative: int | None) -> np.ndarray:
    """(N,) bool: cells of fields naming at most one class besides Negative (the teacher's training cells)."""
    return classes_named(labels, negative) <= 1


def why_no_teacher(labels: np.ndarray, negative: int | None, min_cells: int = MIN_CERTAIN_CELLS) -> str:
    """Why a teacher cannot be trained on these training cells' field labels ('' when it can)."""
    certain = certain_cells(labels, negative)
    if certain.all():
        return "no training field names several classes besides Negative (nothing to teach)"
    if certain.sum() < min_cells:
        return (f"only {int(certain.sum())} training cells of fields naming at most one class besides Negative "
                f"(a teacher needs {min_cells})")
    return ""


def taught_targets(labels: np.ndarray, predictions: np.ndarray, taught: np.ndarray, weight: float) -> np.ndarray:
    """(N, C) targets: the ``taught`` rows' field ``labels`` softened by the teacher's ``predictions`` (N, C).

    Row i of ``taught`` gets ``labels * (1 - weight + weight * predictions)``; every other row keeps
    its field's label (its ``predictions`` row is ignored).
    """
    taught = np.asarray(taught, bool)
    preds = np.where(taught[:, None], np.asarray(predictions, np.float64), 1.0)
    return soft_targets(labels, preds, weight)

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

The teacher's prediction of a class is only a measurement where it trained on cells of that class,
and it answers a question the field has partly answered already: a cell of a several-class field
that shows protein shows at least one of the field's classes. By default (``--teacher-targets
posterior``) each taught cell's prediction is therefore replaced by :func:`at_least_one_posterior`:
the chance of each of its field's classes given that it shows one, with the classes the teacher saw
too few certain cells of (:func:`known_classes`; on the demo's fields Nuclear membrane, Endoplasmic
reticulum and Mitotic spindle) given the share of a certain field's cells that show its class
(:func:`shown_share`, measured by the negative split). The classes it could not judge then keep most
of their field's label (about 0.93 on the demo's fields) instead of half of it, and the others rise
towards their true share with the same contrast between the cells that show them and the others.

On the demo's fields it raised the test mAP from 0.457 (the negative split alone) to 0.479, on every
one of five training seeds: 0.93 of the true-label ceiling (docs/cellgap.md, round 11; 0.91 after round
12's optimizer step). The posterior then took it from 0.472 to 0.481 over five training seeds, 0.93 of
the ceiling again, and the demo from 0.487 to 0.495 over its five seeds (round 13).

The student then starts from the teacher's trained weights (``--student-init teacher``, round 16): the
certain fields' lessons are already in them, so its epochs go to the several-class fields' cells instead
of learning the classes again from nothing, at no extra training.
"""

from __future__ import annotations

import numpy as np

from .data import soft_targets
from .thresholds import sigmoid

# train.py --teacher: where the several-class fields' cells get their targets from
TEACHERS = {
    "auto": "certain where it applies and the training cells hold enough of both kinds of field, else none",
    "certain": "a teacher trained on the fields naming at most one class besides Negative; an error where it cannot",
    "none": "no teacher: every cell trains on its field's label",
}
# train.py --teacher-targets: what a taught cell's target takes from the teacher's predictions
TEACHER_TARGETS = {
    "posterior": "the chance that the cell shows each of its field's classes given that it shows at least one of "
                 "them, from the teacher's predictions of the classes it trained on and the certain fields' share of "
                 "cells showing their class for the others (at_least_one_posterior)",
    "levelled": "the posterior, with each field's level of each of its classes set to the certain fields' share of "
                "cells showing their class (one logit shift per field and class keeps the teacher's ranking of the "
                "field's cells; level_to_share); measured with --teacher-weight 1",
    "field-levelled": "levelled, with each field's level its own: the chance a cell of the field shows one of its "
                      "classes given that it shows protein, from how many classes it names and how many of its cells "
                      "show protein (the negative split; field_levels); measured with --teacher-weight 1",
    "prediction": "the teacher's predictions as they are (round 11)",
}
# train.py --student-init: where the student's weights start when a teacher taught it
STUDENT_INITS = {
    "teacher": "the teacher's trained weights: the student continues from what the certain fields taught and learns the "
               "several-class fields' cells on top (docs/cellgap.md round 16)",
    "scratch": "the weights --pretrained or --init-from give, as the teacher started (rounds 11-15)",
}
# Each target's share taken from the teacher when --teacher-weight is not given: the weight each was measured with
# (posterior and prediction at 0.5, rounds 11-13; levelled at 1, round 14: its level already is the share, so
# mixing in the field label again would only raise every taught cell back towards it).
TEACHER_WEIGHTS = {"posterior": 0.5, "levelled": 1.0, "field-levelled": 1.0, "prediction": 0.5}
LEVELLED = ("levelled", "field-levelled")  # the rules that set each taught field's level of each of its classes
KEEP_GRID = np.linspace(0.01, 0.99, 99)  # field_levels: the chances a cell shows each class that it weighs
KNOWN_MIN_CELLS = 10  # training cells of certain fields naming a class before the teacher's prediction of it counts
FALLBACK_SHOWN_SHARE = 0.75  # a field's cells showing its class where the split cannot measure it (demo: 0.71 measured)
TEACHER_SUFFIX = "-teacher"  # the teacher's run folder is <run_name>-teacher/fold<K>, beside the student's
TEACHER_PREDICTIONS = "teacher_predictions.csv"  # in the teacher's run folder: its prediction of each taught cell
MIN_CERTAIN_CELLS = 64  # training cells of certain fields a teacher needs (two batches of the default size)


def teacher_epochs(epochs: int, asked: int = 0) -> int:
    """The teacher's epochs: ``asked``, or (0) half the student's ``epochs``, rounded up.

    Half is not a saving bought with quality: on the demo's fields a 5-epoch teacher of a 10-epoch
    student scored as well as a 10-epoch one (docs/cellgap.md, round 11)."""
    return asked or max(1, -(-epochs // 2))


def named_besides_negative(labels: np.ndarray, negative: int | None) -> np.ndarray:
    """(N, C) bool: the classes other than Negative each row of ``labels`` (N, C, multi-hot field labels) names."""
    named = np.asarray(labels) > 0
    if negative is not None:
        named[:, negative] = False
    return named


def classes_named(labels: np.ndarray, negative: int | None) -> np.ndarray:
    """(N,) how many classes other than Negative each row of ``labels`` (N, C, multi-hot field labels) names."""
    return named_besides_negative(labels, negative).sum(axis=1)


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


def known_classes(labels: np.ndarray, certain: np.ndarray, min_cells: int = KNOWN_MIN_CELLS) -> np.ndarray:
    """(C,) bool: the classes named by at least ``min_cells`` of the ``certain`` rows of ``labels`` (N, C).

    These are the classes the teacher trained on: of the others it saw too few cells (on the demo's fields none of
    Nuclear membrane, Endoplasmic reticulum or Mitotic spindle), so its prediction of them is not a measurement.
    """
    return (np.asarray(labels)[np.asarray(certain, bool)] > 0).sum(axis=0) >= min_cells


def shown_share(labels: np.ndarray, shows: np.ndarray, negative: int) -> float:
    """The share of a field's cells that show its class, measured on the fields naming exactly one class besides
    Negative: each cell of such a field counts 1 when the field lacks Negative (every cell shows the class) and its
    ``shows`` (N,), P(the cell shows protein) from the negative split, when the field names Negative too.
    NaN when there are no such fields."""
    labels = np.asarray(labels) > 0
    single = classes_named(labels, negative) == 1
    if not single.any():
        return float("nan")
    shown = np.where(labels[:, negative], np.clip(np.asarray(shows, np.float64), 0.0, 1.0), 1.0)
    return float(shown[single].mean())


def at_least_one_posterior(labels: np.ndarray, predictions: np.ndarray, known: np.ndarray, prior: float,
                           negative: int | None) -> np.ndarray:
    """(N, C) P(a cell shows class k | it shows at least one of its field's classes), for the classes its field names.

    A cell of a field naming several classes that shows protein shows at least one of them. Taking the classes as
    independent, with ``p_k`` the teacher's prediction of each ``known`` class (C,) and ``prior`` for the others,
    that chance is ``p_k / (1 - prod_j (1 - p_j))`` over the field's classes j (Negative excluded). So a cell the
    teacher sees none of its known classes in is told the classes it could not judge, and a cell whose classes it
    judges all absent is told them at the chance it gives them relative to each other. Negative, classes the field
    lacks and rows naming no class keep ``predictions``.
    """
    p = np.asarray(predictions, np.float64)  # read only: the result is a new array
    named = named_besides_negative(labels, negative)
    guess = np.clip(np.where(np.asarray(known, bool)[None, :], p, prior), 0.0, 1.0)
    at_least_one = 1.0 - np.prod(np.where(named, 1.0 - guess, 1.0), axis=1, keepdims=True)
    post = np.clip(guess / np.maximum(at_least_one, 1e-12), 0.0, 1.0)
    return np.where(named & (at_least_one > 0), post, p)


def level_to_share(chances: np.ndarray, fields: np.ndarray, named: np.ndarray, share: float | np.ndarray) -> np.ndarray:
    """(N, C) ``chances`` with each field's mean chance of each class it names set to ``share``, the ranking kept.

    ``fields`` (N,) says which field each row belongs to, ``named`` (N, C) which classes each row's field names (the
    ones to level). The teacher ranks a field's cells better than it sets their level: it learned each class on fields
    where every cell that shows protein shows it, and on a field naming several it scores them too low (docs/cellgap.md,
    round 14). The certain fields measure what that level is (:func:`shown_share`), so one shift of the logits per field
    and class (found by bisection) moves the level there and keeps which of the field's cells are likelier to show the
    class. Entries not named keep ``chances``. ``share`` may instead be (N,), each row's field's own level.
    """
    out = np.array(chances, dtype=np.float64, copy=True)
    named = np.asarray(named, bool)
    per_row = np.broadcast_to(np.clip(np.asarray(share, np.float64), 1e-3, 1 - 1e-3), (len(out),))
    codes = np.unique(np.asarray(fields), return_inverse=True)[1].reshape(-1)
    rows, cols = np.nonzero(named)
    for f, k in sorted(set(zip(codes[rows].tolist(), cols.tolist()))):  # each field and class it names
        sel = rows[(codes[rows] == f) & (cols == k)]
        target = float(per_row[sel].mean())
        q = np.clip(out[sel, k], 1e-4, 1 - 1e-4)
        logits = np.log(q / (1 - q))
        lo, hi = -30.0, 30.0  # the mean chance rises with the shift: halve the bracket until it is exact
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if sigmoid(logits + mid).mean() < target else (lo, mid)
        out[sel, k] = sigmoid(logits + (lo + hi) / 2)
    return out


def field_levels(labels: np.ndarray, shows: np.ndarray | None, fields: np.ndarray, negative: int | None) -> np.ndarray:
    """(N,) each row's field level for ``--teacher-targets field-levelled``: the expected share of the field's cells
    showing protein that show one given class of the field.

    Take each cell to show each of the field's k classes (Negative aside) with one chance q of the field, alone of the
    others (the model :func:`at_least_one_posterior` already reads). A cell then shows protein with chance
    f = 1 - (1 - q)^k, and one given class given that with q / f: near q for fields whose cells mostly show one class,
    near 1 for fields whose cells show them all. Each field's cells say how likely each q is: ``shows`` (N,), the
    negative split's P(the cell shows protein), where the field names Negative, and 1 where it does not (every cell
    shows some class). The level is q / f averaged over :data:`KEEP_GRID` with those likelihoods (a flat prior), so a
    field of few cells, all showing protein, is not taken to show every class in every cell. It is truer than the one
    share ``levelled`` uses (below the true level, most of all for fields without Negative cells), yet trains worse:
    on the demo's fields the softer one share scored higher on every seed (docs/cellgap.md round 21). NaN for rows of
    fields naming fewer than two classes."""
    labels = np.asarray(labels) > 0
    k = named_besides_negative(labels, negative).sum(axis=1)
    s = np.ones(len(labels)) if shows is None else np.clip(np.asarray(shows, np.float64), 1e-4, 1 - 1e-4)
    if negative is not None:
        s = np.where(labels[:, negative], s, 1.0)
    out = np.full(len(labels), np.nan)
    codes = np.unique(np.asarray(fields), return_inverse=True)[1].reshape(-1)
    for f in np.unique(codes[k >= 2]):
        sel = codes == f
        kk = int(k[sel][0])
        shown = 1.0 - (1.0 - KEEP_GRID) ** kk  # (G,) f(q)
        log_l = s[sel].sum() * np.log(shown) + (1.0 - s[sel]).sum() * np.log1p(-np.minimum(shown, 1 - 1e-12))
        w = np.exp(log_l - log_l.max())
        out[sel] = float((w * KEEP_GRID / shown).sum() / w.sum())
    return out


def judged_targets(rule: str, labels: np.ndarray, predictions: np.ndarray, taught: np.ndarray, fields: np.ndarray,
                   known: np.ndarray, share: float, negative: int | None, weight: float,
                   levels: np.ndarray | None = None) -> np.ndarray:
    """(N, C) training targets of cells with field ``labels`` (N, C) from a judge's ``predictions`` (N, C).

    ``rule`` is a ``--teacher-targets`` name: ``prediction`` takes the predictions as they are, ``posterior`` their
    :func:`at_least_one_posterior` (``known`` classes judged, the others at ``share``), ``levelled`` that posterior with
    each ``taught`` field's level of each of its classes set to ``share`` (:func:`level_to_share`; ``fields`` (N,) names
    each row's field), ``field-levelled`` set to each row's ``levels`` (N,) instead (:func:`field_levels`). The
    ``taught`` rows then train on their field's label times ``1 - weight + weight * that``, the others on their field's
    label (:func:`taught_targets`). The teacher's targets and the student's own relabelling
    (``--relabel-after``, which judges every class) are both this function.
    """
    p = np.asarray(predictions, np.float64)
    if rule in ("posterior", *LEVELLED):
        p = at_least_one_posterior(labels, p, known, share, negative)
    if rule in LEVELLED:
        level = named_besides_negative(labels, negative) & np.asarray(taught, bool)[:, None]
        if rule == "field-levelled" and levels is None:
            raise ValueError("field-levelled targets need each row's field level (field_levels)")
        p = level_to_share(p, fields, level, share if rule == "levelled" else levels)
    return taught_targets(labels, p, taught, weight)


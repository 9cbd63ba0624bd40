"""Classification scores, segmentation quality and the competition metric, as pure functions on arrays.

The segmentation and competition functions take instance-label images (2-D integer arrays,
0 = background, any set of positive ids, contiguous or not) or small per-cell arrays, and do the
pixel work in a single ``np.bincount`` over a combined index: no Python loop over pairs of
cells, so a 2048^2 field with hundreds of cells is scored in tens of milliseconds. Reading
truth files is the submission formats' job (:mod:`cellloc.submission_formats`).

Three families:

* Classification, by task (:data:`METRICS`): macro AP and macro F1 for multilabel tasks,
  accuracy and top-k accuracy for multiclass ones, each a function of ``(probs (N, C), targets
  (N, C) 0/1)``; early stopping and checkpoint choice can watch any of them.
* Segmentation (the 2018 Data Science Bowl / cellpose definition): cells are matched one to one
  at an IoU threshold and ``AP = TP / (TP + FP + FN)``; :func:`match_cells` gives each
  segmented cell the true cell it covers, so it can inherit that cell's labels.
* Competition (HPA single-cell, Open Images style): :func:`competition_map`. Per class, the
  detections of every field are ranked by confidence; in each field a detection is a true
  positive when its best-overlapping true cell of that class has IoU >= 0.6 and no
  higher-ranked detection took that cell (a second detection of one cell is a false
  positive). AP is the area under the precision-recall curve made monotone, and the score is
  the mean AP over the classes that have at least one true cell: a class absent from the
  truth is left out of the mean, as in Kaggle's Open Images evaluation, so predicting it
  neither helps nor hurts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pycocotools import mask as coco_mask
from scipy.optimize import linear_sum_assignment
from scipy.special import expit, softmax
from sklearn.metrics import average_precision_score

from .registry import Registry
from .submission import FieldPrediction, field_rles, unpack_masks

DEFAULT_IOU_THRESHOLDS = np.round(np.arange(0.5, 1.0, 0.05), 2)


# --------------------------------------------------------------------------- classification


def per_class_ap(probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """AP per class ``(C,)``; NaN for classes without a positive (AP is undefined there)."""
    out = np.full(targets.shape[1], np.nan)
    for k in range(targets.shape[1]):
        if targets[:, k].any():
            out[k] = average_precision_score(targets[:, k] > 0.5, probs[:, k])
    return out


def per_class_f1(probs: np.ndarray, targets: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """F1 per class at ``threshold``; NaN for classes without a positive (as for AP)."""
    pred = probs >= threshold
    truth = targets > 0.5
    tp = (pred & truth).sum(0)
    denom = pred.sum(0) + truth.sum(0)
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0).astype(float)
    f1[~truth.any(0)] = np.nan
    return f1


def nanmean(v: np.ndarray) -> float:
    """Mean of the defined (non-NaN) values; NaN when none is defined (no class had a positive)."""
    return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


def score_table(probs: np.ndarray, weak: np.ndarray, true: np.ndarray | None, names: Sequence[str]) -> pd.DataFrame:
    """Per-class scores of ``probs`` against weak and (optionally) true labels, plus a ``macro`` row.

    ``prevalence_*`` is the share of positive cells: the AP a constant (label-frequency)
    predictor gets, so the macro row's prevalence is the baseline the macro AP must beat.
    Macro values average the classes with at least one positive.
    """
    rows: dict[str, Any] = {"class": list(range(len(names))), "name": list(names)}
    for tag, y in (("weak", weak), ("true", true)):
        if y is None:
            continue
        ap = per_class_ap(probs, y)
        rows[f"pos_{tag}"] = y.sum(0).astype(int)
        prev = y.mean(0)
        rows[f"prevalence_{tag}"] = np.where(np.isnan(ap), np.nan, prev)
        rows[f"ap_{tag}"] = ap
        rows[f"f1_{tag}"] = per_class_f1(probs, y)
    df = pd.DataFrame(rows)
    macro: dict[str, Any] = {"class": "macro", "name": "mean over classes with positives"}
    for col in df.columns[2:]:
        macro[col] = int(df[col].sum()) if col.startswith("pos_") else nanmean(df[col].to_numpy(float))
    return pd.concat([df.astype({"class": object}), pd.DataFrame([macro])], ignore_index=True)


def top_k_accuracy(probs: np.ndarray, targets: np.ndarray, k: int = 1) -> float:
    """Share of samples whose true class (the argmax of its target row) is among the ``k`` highest scores.

    Ties are broken at random, in expectation: with ``h`` classes scoring higher than the true
    one and ``e`` others scoring the same, the sample counts ``clip((k - h) / (e + 1), 0, 1)``.
    So a constant score over C classes gets ``k / C``, not a perfect score, and the label-frequency
    baseline is the share of the most common class. NaN for no samples.
    """
    probs, targets = np.asarray(probs, np.float64), np.asarray(targets)
    if len(probs) == 0:
        return float("nan")
    truth = targets.argmax(axis=1)
    own = probs[np.arange(len(probs)), truth]
    higher = (probs > own[:, None]).sum(axis=1)
    equal = (probs == own[:, None]).sum(axis=1) - 1
    return float(np.clip((k - higher) / (equal + 1), 0.0, 1.0).mean())


def to_probabilities(logits: np.ndarray, kind: str) -> np.ndarray:
    """Logits as probabilities: sigmoid per class (multilabel) or softmax over classes (multiclass)."""
    if kind == "multilabel":
        return expit(logits)  # overflow-free sigmoid
    if kind == "multiclass":
        return softmax(np.asarray(logits, np.float64), axis=1)
    raise ValueError(f"kind must be multilabel or multiclass, got {kind!r}")


@dataclass(frozen=True)
class Metric:
    """A score of ``(probs (N, C), targets (N, C))``, the task kinds it applies to; higher is better."""

    fn: Callable[[np.ndarray, np.ndarray], float]
    kinds: tuple[str, ...]
    label: str  # what a person reads


METRICS: Registry[Metric] = Registry("metric")
METRICS["macro_ap"] = Metric(lambda p, y: nanmean(per_class_ap(p, y)), ("multilabel",), "macro AP")
METRICS["macro_f1"] = Metric(lambda p, y: nanmean(per_class_f1(p, y)), ("multilabel",), "macro F1 at 0.5")
METRICS["accuracy"] = Metric(lambda p, y: top_k_accuracy(p, y, 1), ("multiclass",), "accuracy")
for _k in (3, 5, 10):
    METRICS[f"top{_k}_accuracy"] = Metric(lambda p, y, k=_k: top_k_accuracy(p, y, k), ("multiclass",), f"top-{_k} accuracy")


def metrics_for(kind: str) -> list[str]:
    """Names of the metrics that apply to a task kind."""
    return [name for name, m in METRICS.items() if kind in m.kinds]


def compute_metrics(names: Sequence[str], probs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """``{name: score}`` of the named metrics on one set of predictions."""
    return {name: float(METRICS[name].fn(probs, targets)) for name in names}


def multiclass_table(probs: np.ndarray, targets: np.ndarray, metrics: Sequence[str]) -> pd.DataFrame:
    """One row per metric with the score and the baseline a constant guess of the most common class gets."""
    prior = np.broadcast_to(targets.mean(axis=0, keepdims=True), targets.shape)
    rows: list[dict[str, Any]] = [
        {"metric": name, "value": METRICS[name].fn(probs, targets), "baseline": METRICS[name].fn(prior, targets)}
        for name in metrics
    ]
    return pd.DataFrame(rows)



# --------------------------------------------------------------------------- label images


def compact_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber an instance-label image to ``0..n`` so ids can index arrays directly.

    Args:
        labels: HxW (any shape) non-negative integer array, 0 = background.
    Returns:
        ``(compact, ids)``: ``compact`` has the same shape with values ``0..n`` (0 stays 0,
        the k-th smallest positive id becomes k), ``ids`` is the (n,) int64 array of the
        original positive ids in increasing order, so ``ids[k - 1]`` is the id of ``k``.
        Already-contiguous labels come back unchanged, without a copy.
    """
    labels = np.asarray(labels)
    if labels.dtype == bool:
        labels = labels.view(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"instance labels must be an integer array, got {labels.dtype}")
    if labels.size == 0:
        return labels, np.zeros(0, np.int64)
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0:
        raise ValueError(f"instance labels must be >= 0, found {lo}")
    if hi > 4 * labels.size + 1024:
        # Sparse huge ids (e.g. hashed): a lookup table would be larger than the image.
        ids, inverse = np.unique(labels, return_inverse=True)
        inverse = inverse.reshape(labels.shape)
        if ids[0] == 0:
            return inverse, ids[1:].astype(np.int64)
        return inverse + 1, ids.astype(np.int64)
    present = np.bincount(labels.ravel(), minlength=hi + 1) > 0
    present[0] = False
    ids = np.flatnonzero(present).astype(np.int64)
    if ids.size == hi:  # already 1..n
        return labels, ids
    lut = np.zeros(hi + 1, np.min_scalar_type(ids.size))
    lut[ids] = np.arange(1, ids.size + 1)
    return lut[labels], ids


def _overlap_compact(a: np.ndarray, n_a: int, b: np.ndarray, n_b: int) -> np.ndarray:
    """Pixel counts of every (a, b) label pair, for labels already in ``0..n``."""
    index = a.ravel().astype(np.int64) * (n_b + 1)
    index += b.ravel()
    return np.bincount(index, minlength=(n_a + 1) * (n_b + 1)).reshape(n_a + 1, n_b + 1)


def label_overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pixel counts shared by every pair of instances of two label images of one shape.

    Args:
        a, b: integer label images of the same shape (0 = background, ids need not be
            contiguous).
    Returns:
        ``(n_a + 1, n_b + 1)`` int64 matrix; entry ``[i, j]`` is the number of pixels labelled
        with the i-th smallest id of ``a`` and the j-th smallest id of ``b`` (row/column 0 is
        background). Row sums are the areas of ``a``'s instances. One ``bincount`` in total.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"label images differ in shape: {a.shape} vs {b.shape}")
    ca, ids_a = compact_labels(a)
    cb, ids_b = compact_labels(b)
    return _overlap_compact(ca, ids_a.size, cb, ids_b.size)


def _iou_with_ids(true_labels: np.ndarray, pred_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(iou (n_true, n_pred), true ids, pred ids) from one overlap matrix."""
    true_labels, pred_labels = np.asarray(true_labels), np.asarray(pred_labels)
    if true_labels.shape != pred_labels.shape:
        raise ValueError(f"label images differ in shape: {true_labels.shape} vs {pred_labels.shape}")
    ct, ids_t = compact_labels(true_labels)
    cp, ids_p = compact_labels(pred_labels)
    overlap = _overlap_compact(ct, ids_t.size, cp, ids_p.size)
    area_t = overlap.sum(axis=1, keepdims=True)
    area_p = overlap.sum(axis=0, keepdims=True)
    inter = overlap[1:, 1:]
    union = area_t[1:] + area_p[:, 1:] - inter
    iou = np.divide(inter, union, out=np.zeros(inter.shape, np.float64), where=union > 0)
    return iou, ids_t, ids_p


def iou_matrix(true_labels: np.ndarray, pred_labels: np.ndarray) -> np.ndarray:
    """Intersection over union of every true instance with every predicted instance.

    Returns:
        ``(n_true, n_pred)`` float64 in [0, 1]; rows and columns follow the positive ids of
        each image in increasing order (see :func:`compact_labels`).
    """
    return _iou_with_ids(true_labels, pred_labels)[0]


def _match_iou(iou: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of a maximum one-to-one matching among pairs with IoU >= threshold.

    Maximum cardinality first, then maximum total IoU (the cellpose rule). Above 0.5 each cell
    has at most one candidate, so the assignment solver only runs for the ambiguous case.
    """
    rows, cols = np.nonzero(iou >= threshold)
    if rows.size == 0:
        return rows, cols
    if np.unique(rows).size == rows.size and np.unique(cols).size == cols.size:
        return rows, cols
    ur, ri = np.unique(rows, return_inverse=True)
    uc, ci = np.unique(cols, return_inverse=True)
    sub = iou[np.ix_(ur, uc)]
    ok = np.zeros(sub.shape, bool)
    ok[ri, ci] = True
    # Each accepted pair is worth 1; the IoU term (< 0.5 in total) only breaks ties.
    cost = -ok.astype(np.float64) - np.where(ok, sub, 0.0) / (2.0 * min(sub.shape))
    r, c = linear_sum_assignment(cost)
    keep = ok[r, c]
    return ur[r[keep]], uc[c[keep]]


def match_instances(
    true_labels: np.ndarray, pred_labels: np.ndarray, threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Optimal one-to-one matching of predicted to true instances at ``IoU >= threshold``.

    The matching maximises the number of matched pairs, then their total IoU (Hungarian
    assignment, as cellpose does). For ``threshold > 0.5`` it is unique and equals the greedy
    one, since a cell cannot overlap two disjoint cells by more than half each.

    Returns:
        ``(true_ids, pred_ids, iou)``: three (k,) arrays (int64, int64, float64) of matched
        pairs, ordered by true id.
    """
    iou, ids_t, ids_p = _iou_with_ids(true_labels, pred_labels)
    r, c = _match_iou(iou, threshold)
    order = np.argsort(r, kind="stable")
    r, c = r[order], c[order]
    return ids_t[r], ids_p[c], iou[r, c]


def segmentation_scores(
    true_labels: np.ndarray,
    pred_labels: np.ndarray,
    thresholds: np.ndarray | list[float] = DEFAULT_IOU_THRESHOLDS,
) -> dict[str, np.ndarray | float | int]:
    """Instance-segmentation quality of one field at several IoU thresholds.

    ``AP(t) = TP / (TP + FP + FN)`` with cells matched one to one at ``IoU >= t``
    (:func:`match_instances`); the 2018 Data Science Bowl and cellpose definition. When both
    images are empty there is nothing to miss, and AP and F1 are 1.0.

    Returns:
        dict with ``thresholds``, ``ap``, ``f1`` (float64, (k,)), ``tp``, ``fp``, ``fn``
        (int64, (k,)), ``f1_50`` (F1 at IoU 0.5, float, computed whether or not 0.5 is among
        ``thresholds``), ``n_true`` and ``n_pred`` (ints).
    """
    thresholds = np.atleast_1d(np.asarray(thresholds, np.float64))
    iou, ids_t, ids_p = _iou_with_ids(true_labels, pred_labels)
    n_true, n_pred = ids_t.size, ids_p.size
    tp = np.array([_match_iou(iou, t)[0].size for t in thresholds], np.int64)
    fp, fn = n_pred - tp, n_true - tp

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.divide(num, den, out=np.ones(num.shape, np.float64), where=den > 0)

    tp50 = np.array([_match_iou(iou, 0.5)[0].size])
    f1_50 = ratio(2 * tp50, np.array([n_true + n_pred]))[0]
    return {
        "thresholds": thresholds,
        "ap": ratio(tp.astype(np.float64), tp + fp + fn),
        "f1": ratio(2.0 * tp, 2 * tp + fp + fn),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "f1_50": float(f1_50),
        "n_true": int(n_true),
        "n_pred": int(n_pred),
    }


def match_cells(pred_labels: np.ndarray, true_labels: np.ndarray, min_iou: float = 0.5) -> dict[int, tuple[int, float]]:
    """Which true cell each segmented cell is, so it can take that cell's true labels.

    Args:
        pred_labels, true_labels: label images of one shape (any positive ids).
        min_iou: pairs below this IoU are not matched; with the default 0.5 and above a
            segmented cell can correspond to at most one true cell.
    Returns:
        ``{pred_id: (true_id, iou)}`` for every matched segmented cell (one to one, see
        :func:`match_instances`); unmatched segmented cells are absent.
    """
    true_ids, pred_ids, ious = match_instances(true_labels, pred_labels, min_iou)
    return {int(p): (int(t), float(v)) for p, t, v in zip(pred_ids, true_ids, ious)}


# --------------------------------------------------------------------------- competition metric


@dataclass
class FieldTruth:
    """One field's truth: HxW instance labels (0 = background) and each cell's classes."""

    labels: np.ndarray
    cell_classes: dict[int, list[int]]


def match_detections(iou: np.ndarray, scores: np.ndarray, threshold: float = 0.6) -> np.ndarray:
    """True-positive flags of one field's detections of one class (Open Images rule).

    Args:
        iou: (n_det, n_truth) IoU of each detection with each true cell of the class.
        scores: (n_det,) confidences; higher-ranked detections claim cells first (ties keep
            input order).
    Returns:
        (n_det,) bool. A detection is a true positive when its highest-IoU true cell has
        ``IoU >= threshold`` and was not claimed by a higher-ranked detection; otherwise it
        is a false positive, duplicates included. Each detection looks only at its best
        cell, which loses nothing at thresholds above 0.5 (true cells are disjoint, so a mask
        overlaps at most one of them by more than half).
    """
    iou = np.asarray(iou, np.float64)
    n_det = iou.shape[0]
    tp = np.zeros(n_det, bool)
    if n_det == 0 or iou.shape[1] == 0:
        return tp
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    best = iou.argmax(axis=1)
    ok = iou[np.arange(n_det), best] >= threshold
    ranked = order[ok[order]]
    _, first = np.unique(best[ranked], return_index=True)
    tp[ranked[first]] = True
    return tp


def average_precision_open_images(scores: np.ndarray, is_tp: np.ndarray, n_truth: int) -> float:
    """Average precision of one class, as Open Images computes it.

    Args:
        scores: (n,) confidences of all the class's detections, over all fields.
        is_tp: (n,) bool from :func:`match_detections`.
        n_truth: number of true cells of the class (the recall denominator).
    Returns:
        Area under the precision-recall curve after making precision non-increasing in
        recall; ``nan`` when ``n_truth == 0`` (the class is then left out of the mean), 0.0
        when there are true cells but no detections. Ties in score keep input order.
    """
    if n_truth == 0:
        return float("nan")
    scores = np.asarray(scores, np.float64)
    if scores.size == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    tp = np.asarray(is_tp, bool)[order]
    cum_tp = np.cumsum(tp)
    precision = cum_tp / np.arange(1, tp.size + 1)
    recall = cum_tp / n_truth
    precision = np.concatenate(([0.0], precision, [0.0]))
    recall = np.concatenate(([0.0], recall, [1.0]))
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    step = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[step] - recall[step - 1]) * precision[step]))


def _rle_iou(pred: Sequence[bytes], truth: Sequence[bytes], height: int, width: int) -> np.ndarray:
    """(n_pred, n_truth) IoU of COCO RLE masks, computed on the runs (no mask is decoded)."""
    if not pred or not truth:
        return np.zeros((len(pred), len(truth)))
    size = [int(height), int(width)]
    dt = [{"size": size, "counts": b} for b in pred]
    gt = [{"size": size, "counts": b} for b in truth]
    return np.asarray(coco_mask.iou(dt, gt, [0] * len(gt)), np.float64).reshape(len(pred), len(truth))


def _validated_masks(
    truth: Mapping[str, FieldTruth], predictions: Mapping[str, FieldPrediction]
) -> tuple[dict[str, list[bytes]], dict[str, np.ndarray]]:
    """Each field's distinct mask texts as checked COCO bytes, and which one each detection uses.

    All fields' masks are validated together (in batches of bounded memory); the first bad one
    raises ``ValueError`` naming the submission line (when known), the field and the prediction.
    """

    def where(image_id: str) -> str:
        line = predictions[image_id].line
        return f"line {line}: field {image_id}" if line > 0 else f"field {image_id}"

    texts: list[str] = []
    sizes: list[tuple[int, int]] = []
    spans: dict[str, tuple[int, int]] = {}
    which: dict[str, np.ndarray] = {}
    for image_id in sorted(truth):
        p = predictions.get(image_id)
        if p is None or len(p.masks) == 0:
            continue
        height, width = truth[image_id].labels.shape
        if (p.height, p.width) != (height, width):
            raise ValueError(f"{where(image_id)}: submission says {p.width}x{p.height}, truth mask is {width}x{height}")
        unique: dict[str, int] = {}
        which[image_id] = np.array([unique.setdefault(m, len(unique)) for m in p.masks], np.int64)
        spans[image_id] = (len(texts), len(texts) + len(unique))
        texts += unique
        sizes += [(height, width)] * len(unique)
    hw = np.array(sizes, np.int64).reshape(-1, 2)
    coco, errors = unpack_masks(texts, hw[:, 0], hw[:, 1])
    for image_id, (a, b) in spans.items():
        for text, err in zip(texts[a:b], errors[a:b]):
            if err is not None:
                k = predictions[image_id].masks.index(text) + 1
                raise ValueError(f"{where(image_id)}: prediction {k}: {err}")
    return {k: coco[a:b] for k, (a, b) in spans.items()}, which  # type: ignore[misc]


def competition_map(
    truth: Mapping[str, FieldTruth],
    predictions: Mapping[str, FieldPrediction],
    num_classes: int,
    iou_threshold: float = 0.6,
) -> dict[str, np.ndarray | float]:
    """HPA single-cell competition score: mean over classes of Open Images AP at mask IoU.

    Every field counts for every class: a detection of a class in a field with no true cell
    of that class is a false positive. Detections are ranked by confidence over all fields.

    Args:
        truth: ``{ID: FieldTruth}``; every field scored, in ID order.
        predictions: ``{ID: FieldPrediction}`` (see :func:`cellloc.submission.parse_submission`);
            a truth field without predictions only adds misses.
        num_classes: classes of the task (ids ``0..num_classes - 1``).
        iou_threshold: a detection must reach this IoU with a true cell of its class.
    Returns:
        dict with ``ap`` ((num_classes,) float64, ``nan`` for classes with no true cell),
        ``n_truth`` and ``n_pred`` ((num_classes,) int64: true cells and detections per
        class) and ``map`` (mean of the non-nan APs; nan when the truth has no cell at all).
    Raises:
        ValueError: a prediction for a field not in ``truth``, a size that differs from the
        truth mask, or a mask text that is not a valid mask of the field's size.
    """
    unknown = sorted(set(predictions) - set(truth))
    if unknown:
        raise ValueError(f"predictions for {len(unknown)} field(s) not in the truth, e.g. {unknown[0]!r}")
    n_truth = np.zeros(num_classes, np.int64)
    scores: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    flags: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    coco, which = _validated_masks(truth, predictions)
    for image_id in sorted(truth):
        t = truth[image_id]
        height, width = t.labels.shape
        cell_ids = sorted(t.cell_classes)
        is_class = np.zeros((len(cell_ids), num_classes), bool)
        for row, cid in enumerate(cell_ids):
            is_class[row, t.cell_classes[cid]] = True
        n_truth += is_class.sum(axis=0)
        if image_id not in which:
            continue
        p = predictions[image_id]
        truth_rles = field_rles(t.labels, cell_ids)
        iou = _rle_iou(coco[image_id], [truth_rles[c] for c in cell_ids], height, width)[which[image_id]]
        for c in np.unique(p.classes):
            sel = p.classes == c
            tp = match_detections(iou[sel][:, is_class[:, c]], p.confidences[sel], iou_threshold)
            scores[c].append(p.confidences[sel])
            flags[c].append(tp)
    ap = np.array(
        [
            average_precision_open_images(
                np.concatenate(scores[c]) if scores[c] else np.zeros(0),
                np.concatenate(flags[c]) if flags[c] else np.zeros(0, bool),
                int(n_truth[c]),
            )
            for c in range(num_classes)
        ]
    )
    n_pred = np.array([sum(s.size for s in scores[c]) for c in range(num_classes)], np.int64)
    present = ~np.isnan(ap)
    return {
        "ap": ap,
        "n_truth": n_truth,
        "n_pred": n_pred,
        "map": float(ap[present].mean()) if present.any() else float("nan"),
    }

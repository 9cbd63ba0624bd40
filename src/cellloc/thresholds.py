"""Decision thresholds for multilabel scores, fitted for F1 (pure functions on arrays).

A multilabel model gives each image a probability per class; a submission needs a yes/no per
class. At 0.5 rare classes are almost never predicted (their probabilities stay low), and
macro F1 weighs each of them as much as the commonest class, so the threshold per class is
the step that matters most for this metric. Two ways are offered:

- ``method="f1"``: on out-of-fold probabilities, each class's threshold maximises its own F1,
  and one global threshold maximises macro F1. A class with few positives gets a noisy
  optimum, so it is pulled toward a prior threshold with weight ``n / (n + shrink)`` for its
  ``n`` positives, and below ``min_positives`` takes the prior alone. The pull is in logit
  space (rare classes' scores sit near 0, where equal steps in probability are very unequal in
  odds). The prior is either the global threshold (``fallback="global"``) or the class's
  share threshold on the same out-of-fold scores (``fallback="share"``: predict as many images
  positive as the class has). On simulated out-of-fold scores with the HPA 2018 class
  frequencies (``bench/bench_thresholds.py``; fitted on 300 / 1,000 / 5,000 images, scored on
  20,000 others) the share prior wins at every size: held-out macro F1 0.528 / 0.541 / 0.551,
  against 0.499 / 0.528 / 0.545 unguarded, 0.458-0.520 guarded toward the global threshold,
  and 0.42 with the global threshold alone. The global threshold is a poor prior for a rare
  class because its scores sit far below the common classes'. Hence the defaults: share prior,
  ``shrink=30``, ``min_positives=5``.
- ``method="share"`` (the HPA 2018 winner's): each class's threshold is set on the images to
  be labelled so that the share predicted positive equals a target share (for example the
  class's frequency in the training labels).

Either may keep each image's top class positive (every HPA 2018 image has at least one
label). F1 here is ``2 TP / (2 TP + FP + FN)``; a class with no positives in the truth and none
predicted has an undefined F1 that counts as ``empty`` (0 by default, as scikit-learn's
``f1_score`` does with its default ``zero_division``), and still counts in the macro mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

METHODS = ("f1", "share")
DEFAULT_GRID = np.round(np.arange(0.01, 1.0, 0.01), 2)  # candidate global thresholds


# --------------------------------------------------------------------------- F1


def f1_counts(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(TP, FP, FN) per class, each (C,) int64, of boolean (N, C) predictions against (N, C) truth."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if pred.shape != truth.shape or pred.ndim != 2:
        raise ValueError(f"pred and truth must be (N, C) of one shape, got {pred.shape} and {truth.shape}")
    tp = (pred & truth).sum(0)
    return tp, (pred & ~truth).sum(0), (~pred & truth).sum(0)


def f1_per_class(pred: np.ndarray, truth: np.ndarray, empty: float = 0.0) -> np.ndarray:
    """F1 of each class, (C,) float64: ``2 TP / (2 TP + FP + FN)``.

    ``empty`` is the value of a class with no positives in ``truth`` and none in ``pred``
    (0/0): 0.0 is scikit-learn's default (``zero_division="warn"``), 1.0 would reward
    predicting nothing for a class that is absent, NaN leaves it out of a ``nanmean``.
    """
    tp, fp, fn = f1_counts(pred, truth)
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), empty).astype(np.float64)


def macro_f1(pred: np.ndarray, truth: np.ndarray, empty: float = 0.0) -> float:
    """Mean of :func:`f1_per_class` over all C classes (absent-and-unpredicted ones count ``empty``)."""
    return float(np.mean(f1_per_class(pred, truth, empty)))


# --------------------------------------------------------------------------- fitting


def f1_curve(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every distinct decision for one class and its F1.

    ``scores`` (N,) float, ``truth`` (N,) bool. Returns ``(thresholds, f1)``, both (M,),
    thresholds descending: predicting ``scores >= thresholds[j]`` gives F1 ``f1[j]``. Each
    threshold sits halfway between two adjacent distinct scores (the lowest one: at the lowest
    score), so a score a little off the fitted ones falls on the same side. Predicting none is
    not listed (its F1 is 0 whenever the class has a positive).
    """
    scores = np.asarray(scores, np.float64)
    truth = np.asarray(truth, bool)
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], truth[order]
    tp = np.cumsum(t)
    n_pred = np.arange(1, len(s) + 1)
    last = np.append(s[1:] < s[:-1], True)  # cut after position i only between distinct scores
    below = np.append(s[1:], s[-1:]) if len(s) else s
    thr = np.where(np.arange(len(s)) == len(s) - 1, s, (s + below) / 2)
    denom = n_pred + t.sum()
    f1 = 2 * tp / np.maximum(denom, 1)
    return thr[last], f1[last]


def best_threshold(scores: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) that maximise one class's F1; NaN threshold when it has no positive.

    Among cuts with the same best F1 the middle one is taken, not the first or last, so the
    choice does not sit on the edge of a flat optimum.
    """
    truth = np.asarray(truth, bool)
    if not truth.any():
        return float("nan"), 0.0
    thr, f1 = f1_curve(scores, truth)
    best = np.flatnonzero(f1 >= f1.max() - 1e-12)
    j = best[len(best) // 2]
    return float(thr[j]), float(f1[j])


def f1_grid(probs: np.ndarray, truth: np.ndarray, grid: np.ndarray = DEFAULT_GRID, empty: float = 0.0) -> np.ndarray:
    """F1 of every class at every threshold of ``grid``, (C, G), predicting ``probs >= grid[g]``.

    Sorting each class once makes this O(C (N log N + G)) instead of thresholding G times.
    """
    probs = np.asarray(probs, np.float64)
    truth = np.asarray(truth, bool)
    grid = np.asarray(grid, np.float64)
    n = probs.shape[0]
    out = np.empty((probs.shape[1], grid.size))
    for k in range(probs.shape[1]):
        order = np.argsort(probs[:, k], kind="stable")
        s, t = probs[order, k], truth[order, k]
        pos_above = np.concatenate((np.cumsum(t[::-1])[::-1], [0]))  # positives in s[i:]
        first = np.searchsorted(s, grid, "left")  # first index with s >= threshold
        tp = pos_above[first]
        n_pred = n - first
        denom = n_pred + t.sum()
        out[k] = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), empty)
    return out


def logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def sigmoid(x: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


@dataclass
class Thresholds:
    """Fitted thresholds and how they were fitted; ``to_dict`` is what a model run saves.

    ``per_class`` (C,) is what :func:`apply_thresholds` uses; ``fitted`` (C,) are the raw
    per-class optima before the guard (NaN: no positive, or not fitted by F1).
    """

    global_threshold: float
    per_class: np.ndarray
    method: str = "f1"
    keep_top: bool = False
    min_positives: int = 0
    shrink: float = 0.0
    n_positives: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    fitted: np.ndarray = field(default_factory=lambda: np.zeros(0))
    oof_macro_f1: dict[str, float] = field(default_factory=dict)
    fallback: str = "share"
    target_share: np.ndarray = field(default_factory=lambda: np.zeros(0))  # method "share": each class's share

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; ``global`` and ``per_class`` are the recipe's keys, the rest says how."""

        def floats(a: np.ndarray) -> list[float | None]:
            return [None if not np.isfinite(v) else round(float(v), 6) for v in a]

        return {
            "global": round(float(self.global_threshold), 6),
            "per_class": floats(self.per_class),
            "method": self.method,
            "keep_top": bool(self.keep_top),
            "min_positives": int(self.min_positives),
            "shrink": float(self.shrink),
            "fallback": self.fallback,
            "n_positives": [int(v) for v in self.n_positives],
            "fitted": floats(self.fitted),
            "oof_macro_f1": {k: round(float(v), 6) for k, v in self.oof_macro_f1.items()},
            "target_share": floats(self.target_share),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Thresholds:
        """Read what :meth:`to_dict` wrote (or a bare ``{"global": g, "per_class": [...]}``)."""
        if "global" not in data:
            raise ValueError("thresholds need a 'global' value")
        g = float(data["global"])
        per = data.get("per_class")
        per_class = np.array([g if v is None else float(v) for v in per], np.float64) if per else np.zeros(0)
        if per_class.size and not np.all(np.isfinite(per_class) & (per_class >= 0)):
            raise ValueError("per-class thresholds must be finite and >= 0 (above 1: never predicted)")
        fitted = np.array([np.nan if v is None else float(v) for v in data.get("fitted") or []], np.float64)
        return cls(g, per_class, data.get("method", "f1"), bool(data.get("keep_top", False)),
                   int(data.get("min_positives", 0)), float(data.get("shrink", 0.0)),
                   np.array(data.get("n_positives") or [], np.int64), fitted, dict(data.get("oof_macro_f1") or {}),
                   str(data.get("fallback", "share")), np.array(data.get("target_share") or [], np.float64))

    def for_classes(self, num_classes: int) -> np.ndarray:
        """The (C,) thresholds to apply: ``per_class`` when fitted, else the global one for every class."""
        if self.per_class.size == 0:
            return np.full(num_classes, self.global_threshold)
        if self.per_class.size != num_classes:
            raise ValueError(f"thresholds are for {self.per_class.size} classes, the scores have {num_classes}")
        return self.per_class


def fit_global(probs: np.ndarray, truth: np.ndarray, grid: np.ndarray = DEFAULT_GRID) -> tuple[float, float]:
    """(threshold, macro F1) of the one threshold on ``grid`` that maximises macro F1.

    Classes without a positive are left out of the mean here: their F1 is 0 at every
    threshold, so they cannot move the choice. Ties: the middle of the best run.
    """
    truth = np.asarray(truth, bool)
    present = truth.any(0)
    if not present.any():
        return 0.5, 0.0
    curve = f1_grid(probs, truth, grid)[present].mean(0)
    best = np.flatnonzero(curve >= curve.max() - 1e-12)
    j = best[len(best) // 2]
    return float(grid[j]), float(curve[j])


def fit_thresholds(
    probs: np.ndarray,
    truth: np.ndarray,
    min_positives: int = 5,
    shrink: float = 30.0,
    keep_top: bool | str = "auto",
    grid: np.ndarray = DEFAULT_GRID,
    fallback: str = "share",
) -> Thresholds:
    """Per-class F1 thresholds from out-of-fold probabilities, guarded for rare classes.

    ``probs`` (N, C) float in [0, 1] and ``truth`` (N, C) bool are every fold's validation
    predictions together (each image scored by the model that did not train on it). Each
    class's F1 optimum is pulled toward a prior threshold in logit space with weight
    ``n / (n + shrink)`` for its ``n`` positives (``shrink=0``: no pull); a class with fewer
    than ``min_positives`` positives (or none) takes the prior. The prior is the global
    threshold (``fallback="global"``) or the threshold that predicts as many positives as the
    class has here (``fallback="share"``). ``keep_top="auto"`` keeps each image's top class
    positive when that scores higher on these same predictions.
    """
    probs = np.asarray(probs, np.float64)
    truth = np.asarray(truth, bool)
    if probs.shape != truth.shape or probs.ndim != 2:
        raise ValueError(f"probs and truth must be (N, C) of one shape, got {probs.shape} and {truth.shape}")
    if min_positives < 0 or shrink < 0:
        raise ValueError("min_positives and shrink must be >= 0")
    g, _ = fit_global(probs, truth, grid)
    n_pos = truth.sum(0)
    fitted = np.array([best_threshold(probs[:, k], truth[:, k])[0] for k in range(probs.shape[1])])
    if fallback == "global":
        prior = np.full(probs.shape[1], g)
    elif fallback == "share":
        prior = share_thresholds(probs, n_pos / max(len(probs), 1), False).per_class
    else:
        raise ValueError(f"fallback must be 'global' or 'share', not {fallback!r}")
    per_class = prior.copy()
    use = (n_pos >= max(min_positives, 1)) & np.isfinite(fitted)
    w = n_pos[use] / (n_pos[use] + shrink) if shrink > 0 else np.ones(use.sum())
    per_class[use] = sigmoid(w * logit(fitted[use]) + (1 - w) * logit(prior[use]))
    th = Thresholds(g, per_class, "f1", False, min_positives, shrink, n_pos.astype(np.int64), fitted, fallback=fallback)
    th.keep_top = _choose_keep_top(probs, truth, th, keep_top)
    th.oof_macro_f1 = oof_scores(probs, truth, th)
    return th


def share_thresholds(probs: np.ndarray, target_share: np.ndarray, keep_top: bool = True) -> Thresholds:
    """Thresholds that make each class's predicted-positive share match ``target_share``.

    ``probs`` (N, C) are the images to be labelled (for example the test set), ``target_share``
    (C,) the share of images each class should take (for example its training frequency).
    Class k's threshold is its ``ceil(share_k * N)``-th highest score (ties may add a few);
    a share of 0 puts the threshold above every score. The global threshold recorded is the
    median of the per-class ones (it is not used by this method).
    """
    probs = np.asarray(probs, np.float64)
    share = np.asarray(target_share, np.float64)
    if share.shape != (probs.shape[1],) or np.any((share < 0) | (share > 1)):
        raise ValueError(f"target_share must be {probs.shape[1]} values in [0, 1]")
    n = probs.shape[0]
    desc = -np.sort(-probs, axis=0)
    count = np.ceil(share * n - 1e-9).astype(int)
    per_class = np.ones(probs.shape[1])
    for k in range(probs.shape[1]):
        if count[k] > 0:
            per_class[k] = desc[count[k] - 1, k]
        elif n:
            per_class[k] = np.nextafter(desc[0, k], np.inf)  # above every score: none predicted
    return Thresholds(float(np.median(per_class)), per_class, "share", keep_top, fitted=np.full(probs.shape[1], np.nan),
                      target_share=share)


def apply_thresholds(probs: np.ndarray, thresholds: np.ndarray | float, keep_top: bool = False) -> np.ndarray:
    """Boolean (N, C): ``probs >= thresholds`` per class; ``keep_top`` also sets each row's argmax."""
    probs = np.asarray(probs, np.float64)
    pred = probs >= np.broadcast_to(np.asarray(thresholds, np.float64), probs.shape[1:])[None, :]
    if keep_top and probs.shape[0] and probs.shape[1]:
        pred[np.arange(probs.shape[0]), probs.argmax(1)] = True
    return pred


def predict_labels(probs: np.ndarray, th: Thresholds) -> np.ndarray:
    """Boolean (N, C) predictions of ``probs`` with fitted :class:`Thresholds`.

    Share thresholds that carry their ``target_share`` are set again on ``probs`` themselves
    (the images being labelled, as the 2018 winner did on the test set); the others are fixed.
    """
    probs = np.asarray(probs, np.float64)
    if th.method == "share" and th.target_share.size:
        th = share_thresholds(probs, th.target_share, th.keep_top)
    return apply_thresholds(probs, th.for_classes(probs.shape[1]), th.keep_top)


def label_lists(pred: np.ndarray) -> list[list[int]]:
    """Boolean (N, C) -> each row's positive class ids, ascending."""
    return [np.flatnonzero(row).tolist() for row in np.asarray(pred, bool)]


def oof_scores(probs: np.ndarray, truth: np.ndarray, th: Thresholds) -> dict[str, float]:
    """Macro F1 of the same predictions at 0.5, at the global threshold and per class (optimistic: fitted on them)."""
    return {
        "at_0.5": macro_f1(apply_thresholds(probs, 0.5), truth),
        "global": macro_f1(apply_thresholds(probs, th.global_threshold, th.keep_top), truth),
        "per_class": macro_f1(predict_labels(probs, th), truth),
    }


def _choose_keep_top(probs: np.ndarray, truth: np.ndarray, th: Thresholds, keep_top: bool | str) -> bool:
    if keep_top == "auto":
        thr = th.for_classes(probs.shape[1])
        return macro_f1(apply_thresholds(probs, thr, True), truth) > macro_f1(apply_thresholds(probs, thr, False), truth)
    if not isinstance(keep_top, bool):
        raise ValueError(f"keep_top must be True, False or 'auto', not {keep_top!r}")
    return keep_top

"""Combining saved scores of several models, and picking confident predictions as pseudo-labels.

Pure functions on arrays; the folders they come from are read in :mod:`cellloc.runs.ensemble`.

- :func:`average_scores`: the models' per-field probabilities (N, C) averaged, as the mean of
  their logits (the log-probabilities: a field's logits less one constant, so the softmax of
  their mean is the softmax of the mean logits) or as the mean probability. RxRx1's channel-subset
  models (one per 5-of-6 stains) are combined this way.
- :func:`pick_rows`: each field's row from the model of its own group (one model per cell type,
  merged into one table).
- :func:`confident`: which predicted labels are sure enough to train on (pseudo-labels).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .plate_assignment import log_softmax

AVERAGES = ("logits", "probs")


def average_scores(scores: Sequence[np.ndarray], how: str = "logits") -> np.ndarray:
    """(N, C) float32 probabilities: the mean over ``scores`` (each (N, C) probabilities, same rows).

    ``how="logits"``: the softmax of the mean log-probability (multiclass models);
    ``"probs"``: the mean probability (also right for multilabel sigmoid outputs).
    """
    if how not in AVERAGES:
        raise ValueError(f"how must be one of {', '.join(AVERAGES)}, got {how!r}")
    if not scores:
        raise ValueError("nothing to average")
    shapes = {np.shape(s) for s in scores}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"scores must all be (N, C) of one shape, got {sorted(shapes)}")
    stack = np.stack([np.asarray(s, np.float64) for s in scores])
    if how == "probs":
        return stack.mean(axis=0).astype(np.float32)
    mean_log = np.log(np.clip(stack, 1e-38, None)).mean(axis=0)
    return np.exp(log_softmax(mean_log)).astype(np.float32)


def pick_rows(scores: Mapping[str, np.ndarray], keys: Sequence[str]) -> np.ndarray:
    """(N, C): row ``i`` taken from ``scores[keys[i]]`` (each (N, C), same rows), e.g. each well
    from the model fine-tuned on its cell type. A key without scores is a ``KeyError`` naming it."""
    missing = sorted(set(keys) - set(scores))
    if missing:
        raise KeyError(f"no scores for {', '.join(missing)}")
    first = next(iter(scores.values()))
    out = np.empty_like(first)
    keys = np.asarray(keys)
    for key, arr in scores.items():
        if arr.shape != first.shape:
            raise ValueError(f"scores of {key} are {arr.shape}, others {first.shape}")
        rows = keys == key
        out[rows] = arr[rows]
    return out


def confident(probs: np.ndarray, labels: Sequence[int], threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(mask, confidence): ``confidence[i] = probs[i, labels[i]]``, the mask where it is >= ``threshold``.

    ``labels`` are the predicted ones (a well's argmax, or its plate-assigned siRNA); nothing
    here sees a true label, so pseudo-labels made from it cannot leak one.
    """
    probs = np.asarray(probs)
    labels = np.asarray(labels, np.int64)
    if probs.ndim != 2 or labels.shape != (len(probs),):
        raise ValueError(f"need (N, C) probabilities and N labels, got {probs.shape} and {labels.shape}")
    conf = probs[np.arange(len(probs)), labels].astype(np.float32)
    return conf >= threshold, conf


__all__ = ["AVERAGES", "average_scores", "confident", "pick_rows"]

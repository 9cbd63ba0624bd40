"""Averaging saved scores, merging per-group models, confident pseudo-labels: hand cases."""

from __future__ import annotations

import numpy as np
import pytest

from cellloc.ensembling import average_scores, confident, pick_rows


def test_the_mean_of_logits_is_the_softmax_of_the_mean_log_probability():
    a = np.array([[0.7, 0.2, 0.1]])
    b = np.array([[0.1, 0.2, 0.7]])
    probs = average_scores([a, b], "probs")
    np.testing.assert_allclose(probs, [[0.4, 0.2, 0.4]], rtol=1e-6)
    logits = average_scores([a, b], "logits")
    g = np.sqrt(a * b)
    np.testing.assert_allclose(logits, g / g.sum(), rtol=1e-6)
    # a confident model and an unsure one: the logit mean follows the confident one more than the probability mean
    sure, unsure = np.array([[0.98, 0.01, 0.01]]), np.array([[0.3, 0.4, 0.3]])
    assert average_scores([sure, unsure], "logits")[0, 0] > average_scores([sure, unsure], "probs")[0, 0]
    np.testing.assert_allclose(average_scores([a], "logits"), a, rtol=1e-6)
    with pytest.raises(ValueError):
        average_scores([a, np.ones((2, 3)) / 3])
    with pytest.raises(ValueError):
        average_scores([a], "votes")


def test_each_row_comes_from_the_model_of_its_group():
    scores = {"HEPG2": np.zeros((3, 2)), "RPE": np.ones((3, 2))}
    out = pick_rows(scores, ["RPE", "HEPG2", "RPE"])
    assert out[:, 0].tolist() == [1, 0, 1]
    with pytest.raises(KeyError, match="U2OS"):
        pick_rows(scores, ["U2OS", "RPE", "RPE"])


def test_confident_keeps_labels_whose_probability_reaches_the_threshold():
    probs = np.array([[0.6, 0.4], [0.45, 0.55], [0.5, 0.5]])
    keep, conf = confident(probs, [0, 0, 1], 0.5)
    assert keep.tolist() == [True, False, True]
    np.testing.assert_allclose(conf, [0.6, 0.45, 0.5])
    with pytest.raises(ValueError):
        confident(probs, [0, 1], 0.5)

"""Site averaging and plate-aware assignment on hand-made logit tables with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from cellloc.plate_assignment import (
    assign_by_plate,
    assign_once,
    assign_plate,
    average_by_sample,
    log_softmax,
    plate_confidence,
    plate_groups,
    sample_probabilities,
)


def test_average_by_sample_means_each_wells_sites():
    logits = np.array([[1.0, 0.0], [3.0, 2.0], [0.0, 4.0], [5.0, 5.0]], np.float32)
    ids, avg = average_by_sample(logits, ["w2", "w1", "w2", "w3"])
    assert ids == ["w2", "w1", "w3"] and avg.dtype == np.float32
    np.testing.assert_allclose(avg, [[0.5, 2.0], [3.0, 2.0], [5.0, 5.0]])
    with pytest.raises(ValueError):
        average_by_sample(logits, ["a"])


def test_log_softmax_rows_sum_to_one_and_survive_large_logits():
    lp = log_softmax(np.array([[1000.0, 1000.0], [0.0, np.log(3.0)]]))
    np.testing.assert_allclose(np.exp(lp).sum(1), 1.0)
    np.testing.assert_allclose(lp[0], np.log(0.5))
    np.testing.assert_allclose(np.exp(lp[1]), [0.25, 0.75])


def test_plate_groups_join_plates_that_share_sirnas():
    groups = plate_groups([{0, 1}, {2, 3}, {1, 4}, {5}, {3, 6}])
    assert groups == [frozenset({0, 1, 4}), frozenset({2, 3, 6}), frozenset({5})]


def test_assignment_gives_each_sirna_once_where_argmax_repeats_one():
    # three wells; argmax says 0, 0, 1. Well 0 is sure of 0, well 1 only leans to 0 and
    # would take 2 next: the one-to-one answer is 0, 2, 1 (total log-prob higher than any other).
    p = np.array([
        [0.90, 0.05, 0.05],
        [0.50, 0.10, 0.40],
        [0.20, 0.70, 0.10],
    ])
    assert p.argmax(1).tolist() == [0, 0, 1]
    pred, score = assign_once(np.log(p), [0, 1, 2])
    assert pred.tolist() == [0, 2, 1]
    assert score == pytest.approx(np.log(0.9 * 0.4 * 0.7))


def test_assignment_uses_only_the_candidates_and_allows_fewer_wells():
    p = np.full((2, 6), 0.01)
    p[0, 5], p[1, 5] = 0.9, 0.8  # both want class 5, which is not a candidate
    p[0, 1], p[1, 1] = 0.05, 0.04
    p[1, 3] = 0.03
    pred, _ = assign_once(np.log(p), [1, 3, 4])
    assert pred.tolist() == [1, 3]


def test_more_wells_than_candidates_repeats_them_evenly():
    pred, _ = assign_once(np.zeros((5, 3)), [0, 2])
    assert sorted(np.bincount(pred, minlength=3).tolist()) == [0, 2, 3]


def test_assign_plate_chooses_the_group_the_wells_look_like():
    # 4 classes in two groups {0, 1} and {2, 3}; the wells are unsure between 1 and 2, but
    # together they fit group {2, 3} better.
    logits = np.log(np.array([
        [0.05, 0.40, 0.35, 0.20],
        [0.05, 0.40, 0.20, 0.35],
    ]))
    pred, g = assign_plate(logits, [{0, 1}, {2, 3}])
    assert g == 1 and pred.tolist() == [2, 3]
    assert log_softmax(logits).argmax(1).tolist() == [1, 1]


def test_assign_by_plate_keeps_plates_apart():
    logits = np.log(np.array([
        [0.6, 0.3, 0.05, 0.05],  # plate A
        [0.6, 0.3, 0.05, 0.05],  # plate B
        [0.55, 0.4, 0.03, 0.02],  # plate A
    ]))
    pred = assign_by_plate(logits, [("E", 1), ("E", 2), ("E", 1)], [{0, 1}, {2, 3}])
    assert pred.tolist() == [0, 0, 1]  # each plate uses 0 once; plate A's second well takes 1


def test_sample_probabilities_average_logits_for_one_class_per_sample():
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [5.0, 5.0, 5.0]])
    probs = np.exp(log_softmax(logits))
    ids, out = sample_probabilities(probs, ["a", "a", "b"], "multiclass")
    assert ids == ["a", "b"]
    np.testing.assert_allclose(out[0], np.exp(log_softmax(logits[:2].mean(0, keepdims=True)))[0], rtol=1e-6)
    np.testing.assert_allclose(out[1], [1 / 3] * 3, rtol=1e-6)
    # not the mean probability: a sure site and an unsure one give a surer answer than their mean
    assert out[0, 0] != pytest.approx(probs[:2, 0].mean())
    _, ml = sample_probabilities(np.array([[0.2, 0.9], [0.4, 0.1]]), ["a", "a"], "multilabel")
    np.testing.assert_allclose(ml, [[0.3, 0.5]])


def test_plate_confidence_is_the_group_posterior_times_the_within_group_probability():
    groups = [frozenset({0, 1}), frozenset({2, 3})]
    # plate A looks like group {0, 1} (each well sure of its siRNA); plate B is torn between the groups
    probs = np.array([[0.80, 0.10, 0.05, 0.05],
                      [0.10, 0.80, 0.05, 0.05],
                      [0.30, 0.20, 0.30, 0.20],
                      [0.20, 0.30, 0.20, 0.30]])
    keys = ["A", "A", "B", "B"]
    labels = assign_by_plate(np.log(probs), keys, groups)
    conf = plate_confidence(np.log(probs), keys, groups, labels)
    scores = [assign_once(np.log(probs[:2]), sorted(g))[1] for g in groups]
    p_group = np.exp(scores[0]) / np.exp(scores).sum()
    np.testing.assert_allclose(conf[:2], p_group * 0.8 / 0.9)
    assert conf[0] > 0.8
    np.testing.assert_allclose(conf[2:], 0.5 * 0.3 / 0.5)  # B: either group alike, then 0.3 of the group's 0.5
    # a label outside every group is never confident; shapes are checked
    assert plate_confidence(np.log(probs), keys, [frozenset({0, 1})], [2, 2, 2, 2]).tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError):
        plate_confidence(np.log(probs), keys[:3], groups, labels)

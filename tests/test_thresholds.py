"""F1, macro F1 and decision thresholds on hand-made score tables."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn.metrics import f1_score

from cellloc.thresholds import (
    Thresholds,
    apply_thresholds,
    best_threshold,
    f1_curve,
    f1_grid,
    f1_per_class,
    fit_global,
    fit_thresholds,
    label_lists,
    macro_f1,
    predict_labels,
    share_thresholds,
)

# --------------------------------------------------------------------------- F1 on hand cases


def test_f1_hand_case():
    truth = np.array([[1, 0], [1, 1], [0, 0], [1, 0]], bool)
    pred = np.array([[1, 1], [0, 1], [0, 0], [1, 0]], bool)
    # class 0: TP 2, FN 1, FP 0 -> 4/5; class 1: TP 1, FP 1 -> 2/3
    np.testing.assert_allclose(f1_per_class(pred, truth), [0.8, 2 / 3])
    assert macro_f1(pred, truth) == pytest.approx((0.8 + 2 / 3) / 2)


def test_perfect_and_all_wrong():
    truth = np.eye(3, dtype=bool)
    assert macro_f1(truth, truth) == 1.0
    assert macro_f1(~truth, truth) == 0.0


def test_class_absent_from_truth_and_prediction_counts_zero_as_sklearn():
    """The 0/0 class: 0 and kept in the mean, exactly what sklearn's macro f1_score gives by default."""
    truth = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]], bool)
    pred = truth.copy()  # perfect on classes 0 and 1; class 2 absent and never predicted
    f1 = f1_per_class(pred, truth)
    assert f1.tolist() == [1.0, 1.0, 0.0]
    assert macro_f1(pred, truth) == pytest.approx(2 / 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert macro_f1(pred, truth) == pytest.approx(f1_score(truth, pred, average="macro"))
    assert macro_f1(pred, truth, empty=1.0) == 1.0  # the other convention, on request
    assert np.isnan(f1_per_class(pred, truth, empty=np.nan)[2])


def test_absent_class_that_is_predicted_counts_zero():
    truth = np.array([[1, 0], [1, 0]], bool)
    pred = np.array([[1, 1], [1, 0]], bool)
    assert f1_per_class(pred, truth).tolist() == [1.0, 0.0]


def test_matches_sklearn_on_random_tables():
    rng = np.random.default_rng(0)
    for _ in range(20):
        truth = rng.random((40, 6)) < rng.uniform(0, 0.4, 6)
        pred = rng.random((40, 6)) < 0.3
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = f1_score(truth, pred, average=None)
        np.testing.assert_allclose(f1_per_class(pred, truth), expected)


# --------------------------------------------------------------------------- one class


def test_best_threshold_of_a_separable_class_lies_in_the_gap():
    scores = np.array([0.9, 0.8, 0.35, 0.3, 0.1, 0.05])
    truth = np.array([1, 1, 1, 0, 0, 0], bool)  # every positive above 0.3, every negative at or below
    t, f1 = best_threshold(scores, truth)
    assert f1 == 1.0 and 0.3 < t <= 0.35
    assert t == pytest.approx(0.325)  # halfway between the last positive and the first negative


def test_best_threshold_with_a_known_optimum_below_half():
    # a rare class scored low: its positives sit at 0.2-0.25, negatives mostly below 0.1
    scores = np.array([0.25, 0.22, 0.2, 0.15, 0.08, 0.05, 0.04, 0.02, 0.01, 0.01])
    truth = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0], bool)
    t, f1 = best_threshold(scores, truth)
    assert t == pytest.approx(0.175) and f1 == 1.0
    assert f1_per_class(apply_thresholds(scores[:, None], 0.5), truth[:, None])[0] == 0.0


def test_best_threshold_trades_precision_for_recall():
    # taking the top 4 (3 TP, 1 FP) gives 6/7, better than top 2 (2/2 TP of 3: 0.8) or all 6 (2*3/9)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.3, 0.2])
    truth = np.array([1, 1, 0, 1, 0, 0], bool)
    thr, f1 = f1_curve(scores, truth)
    np.testing.assert_allclose(f1, [2 / 4, 4 / 5, 4 / 6, 6 / 7, 6 / 8, 6 / 9])
    t, best = best_threshold(scores, truth)
    assert best == pytest.approx(6 / 7) and 0.3 < t < 0.6


def test_ties_in_scores_are_one_decision():
    scores = np.array([0.7, 0.5, 0.5, 0.5, 0.1])
    truth = np.array([1, 1, 0, 0, 0], bool)
    thr, f1 = f1_curve(scores, truth)
    assert len(thr) == 3  # cuts below 0.7, below the tied 0.5s, and at 0.1
    np.testing.assert_allclose(f1, [2 / 3, 4 / 6, 4 / 7])


def test_class_without_positive_has_no_fitted_threshold():
    t, f1 = best_threshold(np.array([0.2, 0.9]), np.array([False, False]))
    assert np.isnan(t) and f1 == 0.0


def test_f1_grid_agrees_with_thresholding():
    rng = np.random.default_rng(3)
    probs = rng.random((50, 4))
    truth = rng.random((50, 4)) < 0.3
    grid = np.array([0.0, 0.1, 0.33, 0.5, 0.9, 1.0])
    out = f1_grid(probs, truth, grid)
    for j, t in enumerate(grid):
        np.testing.assert_allclose(out[:, j], f1_per_class(probs >= t, truth))


# --------------------------------------------------------------------------- fitting several classes


def rare_and_common(seed: int = 0, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """A common class scored around 0.5 and a rare one whose positives score only ~0.15."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((n, 2), bool)
    truth[:, 0] = rng.random(n) < 0.4
    truth[:, 1] = rng.random(n) < 0.05
    probs = np.empty((n, 2))
    probs[:, 0] = np.clip(np.where(truth[:, 0], 0.7, 0.3) + rng.normal(0, 0.1, n), 0, 1)
    probs[:, 1] = np.clip(np.where(truth[:, 1], 0.15, 0.03) + rng.normal(0, 0.02, n), 0, 1)
    return probs, truth


def test_per_class_thresholds_find_the_rare_class():
    probs, truth = rare_and_common()
    th = fit_thresholds(probs, truth, min_positives=1, shrink=0, keep_top=False)
    assert 0.4 < th.per_class[0] < 0.6
    assert 0.05 < th.per_class[1] < 0.12  # between the rare class's negatives (~0.03) and positives (~0.15)
    test_probs, test_truth = rare_and_common(seed=1)
    at_half = macro_f1(apply_thresholds(test_probs, 0.5), test_truth)
    fitted = macro_f1(predict_labels(test_probs, th), test_truth)
    assert at_half < 0.55 and fitted > 0.9  # at 0.5 the rare class is never predicted


def test_global_threshold_maximises_macro_f1_on_its_grid():
    probs, truth = rare_and_common()
    g, best = fit_global(probs, truth)
    for t in np.linspace(0.01, 0.99, 25):
        assert macro_f1(apply_thresholds(probs, t), truth) <= best + 1e-12
    assert macro_f1(apply_thresholds(probs, g), truth) == pytest.approx(best)


def test_guard_prior_for_classes_with_few_positives():
    probs, truth = rare_and_common()
    n_rare = int(truth[:, 1].sum())
    g, _ = fit_global(probs, truth)
    th = fit_thresholds(probs, truth, min_positives=n_rare + 1, shrink=0, fallback="global", keep_top=False)
    assert th.per_class[1] == pytest.approx(g)  # too few positives: the global threshold
    assert th.per_class[0] == pytest.approx(th.fitted[0])  # enough: its own optimum
    share = fit_thresholds(probs, truth, min_positives=n_rare + 1, shrink=0, fallback="share", keep_top=False)
    assert int((probs[:, 1] >= share.per_class[1]).sum()) == n_rare  # as many predicted as there are positives


def test_shrinkage_pulls_toward_the_prior_in_logit_space():
    probs, truth = rare_and_common()
    g, _ = fit_global(probs, truth)
    raw = fit_thresholds(probs, truth, min_positives=1, shrink=0, fallback="global", keep_top=False)
    n = truth.sum(0)
    shrunk = fit_thresholds(probs, truth, min_positives=1, shrink=float(n[1]), fallback="global", keep_top=False)

    def logit(p):
        return np.log(p / (1 - p))

    # weight n / (n + n) = 1/2 for the rare class: halfway between the two in logit space
    assert logit(shrunk.per_class[1]) == pytest.approx((logit(raw.per_class[1]) + logit(g)) / 2)
    w0 = n[0] / (n[0] + n[1])  # the common class keeps most of its own optimum
    assert logit(shrunk.per_class[0]) == pytest.approx(w0 * logit(raw.per_class[0]) + (1 - w0) * logit(g))


def test_class_absent_from_oof_takes_the_prior():
    probs, truth = rare_and_common()
    truth[:, 1] = False
    th = fit_thresholds(probs, truth, fallback="global")
    assert th.per_class[1] == th.global_threshold and th.n_positives[1] == 0 and np.isnan(th.fitted[1])


def test_keep_top_auto_turns_on_when_every_image_has_a_class():
    # every image has exactly one class, always ranked first, but on a scale that varies by image:
    # no threshold finds it in the dim images, the top-class rule does
    rng = np.random.default_rng(5)
    n = 200
    cls = rng.integers(0, 3, n)
    truth = np.eye(3, dtype=bool)[cls]
    scale = rng.uniform(0.02, 0.9, n)[:, None]
    probs = scale * np.where(truth, 1.0, 0.3)
    th = fit_thresholds(probs, truth, min_positives=1000, fallback="global")  # all at the global threshold
    assert th.keep_top
    assert np.all(predict_labels(probs, th).sum(1) >= 1)


def test_share_thresholds_match_target_share_and_keep_top():
    rng = np.random.default_rng(2)
    probs = rng.random((100, 3))
    th = share_thresholds(probs, np.array([0.3, 0.05, 0.0]), keep_top=False)
    pred = predict_labels(probs, th)
    assert pred.sum(0).tolist() == [30, 5, 0]
    top = share_thresholds(probs, np.array([0.3, 0.05, 0.0]), keep_top=True)
    assert np.all(predict_labels(probs, top).sum(1) >= 1)
    assert top.method == "share"


def test_apply_and_label_lists():
    probs = np.array([[0.6, 0.2, 0.1], [0.1, 0.05, 0.02], [0.9, 0.8, 0.7]])
    pred = apply_thresholds(probs, np.array([0.5, 0.5, 0.6]))
    assert label_lists(pred) == [[0], [], [0, 1, 2]]
    assert label_lists(apply_thresholds(probs, 0.5, keep_top=True)) == [[0], [0], [0, 1, 2]]


def test_thresholds_round_trip_through_json():
    probs, truth = rare_and_common()
    th = fit_thresholds(probs, truth)
    back = Thresholds.from_dict(json.loads(json.dumps(th.to_dict())))
    np.testing.assert_allclose(back.per_class, th.per_class, atol=1e-6)
    assert back.global_threshold == pytest.approx(th.global_threshold, abs=1e-6)
    assert (back.keep_top, back.method, back.fallback) == (th.keep_top, th.method, th.fallback)
    np.testing.assert_array_equal(predict_labels(probs, back), predict_labels(probs, th))
    bare = Thresholds.from_dict({"global": 0.3, "per_class": None})
    assert bare.for_classes(4).tolist() == [0.3] * 4
    assert set(th.oof_macro_f1) == {"at_0.5", "global", "per_class"}


def test_bad_inputs():
    with pytest.raises(ValueError):
        fit_thresholds(np.zeros((3, 2)), np.zeros((3, 3), bool))
    with pytest.raises(ValueError):
        fit_thresholds(np.zeros((3, 2)), np.zeros((3, 2), bool), fallback="median")
    with pytest.raises(ValueError):
        share_thresholds(np.zeros((3, 2)), np.array([0.5, 1.5]))
    with pytest.raises(ValueError):
        Thresholds.from_dict({"per_class": [0.5]})
    with pytest.raises(ValueError):
        Thresholds.from_dict({"global": 0.5, "per_class": [0.5, -0.1]})
    with pytest.raises(ValueError):
        Thresholds.from_dict({"global": 0.5, "per_class": [0.5, 0.5]}).for_classes(3)

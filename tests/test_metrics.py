"""Metrics on hand-made scores and masks: every expected number here can be checked with a pencil."""

from __future__ import annotations

import numpy as np
import pytest

from cellloc.metrics import (
    METRICS,
    FieldTruth,
    average_precision_open_images,
    compact_labels,
    competition_map,
    compute_metrics,
    iou_matrix,
    label_overlap,
    match_cells,
    match_detections,
    match_instances,
    metrics_for,
    multiclass_table,
    per_class_ap,
    per_class_f1,
    score_table,
    segmentation_scores,
    to_probabilities,
    top_k_accuracy,
)
from cellloc.submission import FieldPrediction, encode_mask


# --------------------------------------------------------------------------- classification

# 4 samples, 3 classes (multilabel): class 2 never occurs.
Y = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]], np.float32)


def test_macro_ap_perfect_constant_and_known():
    perfect = Y * 0.8 + 0.1
    assert METRICS["macro_ap"].fn(perfect, Y) == 1.0
    constant = np.full_like(Y, 0.3)
    # a constant score's AP is the prevalence: class 0 2/4, class 1 2/4; class 2 has no positive (left out)
    assert METRICS["macro_ap"].fn(constant, Y) == pytest.approx(0.5)
    # class 0 ranked [0.9 (pos), 0.8 (neg), 0.7 (pos), 0.1]: precision 1 at recall 0.5, 2/3 at recall 1
    known = np.array([[0.9, 0.1, 0], [0.8, 0.9, 0], [0.7, 0.8, 0], [0.1, 0.2, 0]], np.float32)
    ap = per_class_ap(known, Y)
    assert ap[0] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3) and ap[1] == 1.0 and np.isnan(ap[2])
    assert METRICS["macro_ap"].fn(known, Y) == pytest.approx((5 / 6 + 1) / 2)


def test_macro_f1_perfect_constant_and_known():
    assert METRICS["macro_f1"].fn(Y * 0.8 + 0.1, Y) == 1.0
    assert METRICS["macro_f1"].fn(np.full_like(Y, 0.3), Y) == 0.0  # nothing predicted at 0.5
    # everything predicted: each present class has precision 2/4, recall 1 -> F1 2/3
    assert METRICS["macro_f1"].fn(np.full_like(Y, 0.9), Y) == pytest.approx(2 / 3)
    # class 0: predicted on samples 0 and 1 -> tp 1, fp 1, fn 1 -> F1 0.5; class 1 perfect
    known = np.array([[0.6, 0, 0], [0.6, 0.7, 0], [0.2, 0.7, 0], [0, 0, 0]], np.float32)
    np.testing.assert_allclose(per_class_f1(known, Y)[:2], [0.5, 1.0])
    assert METRICS["macro_f1"].fn(known, Y) == pytest.approx(0.75)


def test_accuracy_and_top_k_perfect_constant_and_known():
    y = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0]]  # 5 samples, 4 classes, one each
    assert METRICS["accuracy"].fn(y * 0.7 + 0.1, y) == 1.0
    constant = np.full((5, 4), 0.25)
    # a constant score ties every class: broken at random, the true one is first 1 time in 4
    assert top_k_accuracy(constant, y, 1) == pytest.approx(0.25) and top_k_accuracy(constant, y, 3) == pytest.approx(0.75)
    # a tie of the true class with one other for the top place: half a hit
    assert top_k_accuracy(np.array([[0.4, 0.4, 0.2]]), np.eye(3)[[1]], 1) == pytest.approx(0.5)
    guess0 = np.tile([0.4, 0.3, 0.2, 0.1], (5, 1))  # always class 0 first, 1 second, ...
    assert METRICS["accuracy"].fn(guess0, y) == pytest.approx(2 / 5)
    assert top_k_accuracy(guess0, y, 2) == pytest.approx(3 / 5) and top_k_accuracy(guess0, y, 3) == pytest.approx(4 / 5)
    assert METRICS["top5_accuracy"].fn(guess0, y) == 1.0  # fewer classes than k
    assert np.isnan(top_k_accuracy(np.zeros((0, 4)), np.zeros((0, 4)), 1))


def test_metrics_by_kind_and_probabilities():
    assert metrics_for("multilabel") == ["macro_ap", "macro_f1"]
    assert metrics_for("multiclass")[:2] == ["accuracy", "top3_accuracy"] and "top5_accuracy" in metrics_for("multiclass")
    assert compute_metrics(["accuracy"], np.eye(2), np.eye(2)) == {"accuracy": 1.0}
    logits = np.array([[0.0, np.log(3.0)], [1000.0, -1000.0]])
    np.testing.assert_allclose(to_probabilities(logits, "multiclass"), [[0.25, 0.75], [1.0, 0.0]])
    np.testing.assert_allclose(to_probabilities(logits, "multilabel")[0], [0.5, 0.75])
    table = multiclass_table(np.tile([0.4, 0.3, 0.2, 0.1], (4, 1)), np.eye(4)[[0, 0, 1, 2]], ["accuracy"])
    assert table.to_dict("records") == [{"metric": "accuracy", "value": 0.5, "baseline": 0.5}]  # it always says class 0


def test_score_table_ap_baseline_and_macro():
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]], np.float32)
    perfect = y * 0.9 + 0.05
    constant = np.full_like(y, 0.3)
    true = y.copy()
    true[2, 0] = 0  # the field label did not apply to this cell
    t = score_table(perfect, y, true, ["a", "b", "c"])
    assert list(t["ap_weak"][:2]) == [1.0, 1.0] and np.isnan(t["ap_weak"][2])  # no positives: undefined
    assert t.iloc[-1]["ap_weak"] == 1.0 and t.iloc[-1]["pos_true"] == 2
    assert t["ap_true"][0] == pytest.approx(0.5)  # the weak-label-perfect scores rank a false positive first
    t = score_table(constant, y, None, ["a", "b", "c"])
    np.testing.assert_allclose(t["ap_weak"][:2], [0.5, 0.25])  # a constant score's AP is the prevalence
    assert t.iloc[-1]["ap_weak"] == pytest.approx(t.iloc[-1]["prevalence_weak"])
    assert "ap_true" not in t
    assert np.isnan(per_class_ap(perfect, np.zeros_like(y))).all()


def boxes(shape, rects, ids=None) -> np.ndarray:
    """Label image with rectangles ``(r0, r1, c0, c1)`` numbered 1.. (or by ``ids``)."""
    out = np.zeros(shape, np.uint16)
    for k, (r0, r1, c0, c1) in enumerate(rects):
        out[r0:r1, c0:c1] = ids[k] if ids is not None else k + 1
    return out


# --------------------------------------------------------------------------- label_overlap


def test_label_overlap_counts_pairs_and_areas():
    a = boxes((6, 6), [(0, 2, 0, 2), (3, 6, 3, 6)])  # areas 4, 9
    b = boxes((6, 6), [(0, 2, 1, 3)])  # area 4, overlaps a1 by 2 pixels
    m = label_overlap(a, b)
    assert m.shape == (3, 2)
    assert m[1, 1] == 2 and m[2, 1] == 0
    assert m.sum() == 36
    np.testing.assert_array_equal(m.sum(axis=1), [36 - 13, 4, 9])
    np.testing.assert_array_equal(m.sum(axis=0), [32, 4])


def test_label_overlap_non_contiguous_ids_match_contiguous():
    rects = [(0, 3, 0, 3), (4, 8, 4, 8), (0, 2, 5, 8)]
    a = boxes((8, 8), rects)
    a_sparse = boxes((8, 8), rects, ids=[7, 300, 65535])
    b = boxes((8, 8), [(1, 5, 1, 5)], ids=[42])
    np.testing.assert_array_equal(label_overlap(a_sparse, b), label_overlap(a, b))


def test_compact_labels_keeps_order_and_huge_ids():
    lab = np.array([[0, 9, 9], [3, 0, 2**40]], np.int64)
    compact, ids = compact_labels(lab)
    np.testing.assert_array_equal(ids, [3, 9, 2**40])
    np.testing.assert_array_equal(compact, [[0, 2, 2], [1, 0, 3]])


def test_compact_labels_rejects_negative_and_float():
    with pytest.raises(ValueError, match=">= 0"):
        compact_labels(np.array([[0, -1]]))
    with pytest.raises(ValueError, match="integer"):
        compact_labels(np.zeros((2, 2), np.float32))


def test_label_overlap_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        label_overlap(np.zeros((2, 3), int), np.zeros((3, 2), int))


# --------------------------------------------------------------------------- iou and matching


def test_iou_matrix_values():
    t = boxes((4, 8), [(0, 4, 0, 4)])  # 16 px
    p = boxes((4, 8), [(0, 4, 2, 6), (0, 4, 6, 8)])  # 16 px overlapping by 8; 8 px disjoint
    np.testing.assert_allclose(iou_matrix(t, p), [[8 / 24, 0.0]])


def test_match_instances_optimal_below_half():
    # t1-p2 is the best single pair (IoU 6/14); taking it greedily would leave t2 and p1
    # unmatched. The maximum matching pairs t1-p1 (0.4) and t2-p2 (0.25) instead.
    t = boxes((2, 20), [(0, 2, 0, 10), (0, 2, 10, 20)])
    p = boxes((2, 20), [(0, 2, 0, 4), (0, 2, 4, 14)])
    np.testing.assert_allclose(iou_matrix(t, p), [[0.4, 6 / 14], [0.0, 0.25]])
    ti, pi, v = match_instances(t, p, threshold=0.25)
    assert list(zip(ti.tolist(), pi.tolist())) == [(1, 1), (2, 2)]
    np.testing.assert_allclose(v, [0.4, 0.25])
    assert segmentation_scores(t, p, thresholds=[0.25])["tp"][0] == 2


def test_match_instances_never_pairs_cells_below_threshold():
    # t3 is split in two predictions, p1 covers two true cells: 3 true x 3 predicted cells
    # with candidates, but only 2 pairs can be matched at IoU >= 0.25.
    t = boxes((1, 18), [(0, 1, 10, 14), (0, 1, 14, 18), (0, 1, 0, 8)])
    p = boxes((1, 18), [(0, 1, 10, 18), (0, 1, 0, 4), (0, 1, 4, 8)])
    ti, pi, v = match_instances(t, p, threshold=0.25)
    assert len(ti) == 2 and (v >= 0.25).all()
    assert set(pi.tolist()) == {1, 2} or set(pi.tolist()) == {1, 3}
    assert segmentation_scores(t, p, thresholds=[0.25])["tp"][0] == 2


def test_match_instances_reports_original_ids():
    t = boxes((10, 10), [(0, 5, 0, 5), (5, 10, 5, 10)], ids=[11, 5])
    p = boxes((10, 10), [(5, 10, 5, 10), (0, 5, 0, 4)], ids=[900, 3])
    ti, pi, v = match_instances(t, p, 0.5)
    assert dict(zip(pi.tolist(), ti.tolist())) == {900: 5, 3: 11}
    np.testing.assert_allclose(v[ti == 11], [0.8])


# --------------------------------------------------------------------------- segmentation_scores


def test_segmentation_scores_perfect():
    t = boxes((20, 20), [(0, 5, 0, 5), (10, 20, 10, 20)], ids=[4, 9])
    s = segmentation_scores(t, t)
    np.testing.assert_allclose(s["ap"], 1.0)
    assert s["f1_50"] == 1.0 and s["n_true"] == 2 and s["n_pred"] == 2
    assert s["thresholds"].shape == (10,)


def test_segmentation_scores_counts_per_threshold():
    t = boxes((10, 10), [(0, 10, 0, 5), (0, 4, 6, 10)])  # 50 px, 16 px
    p = boxes((10, 10), [(0, 10, 0, 4), (8, 10, 8, 10)])  # IoU 40/50 = 0.8 with t1; p2 misses
    s = segmentation_scores(t, p, thresholds=[0.5, 0.8, 0.85])
    np.testing.assert_array_equal(s["tp"], [1, 1, 0])
    np.testing.assert_array_equal(s["fp"], [1, 1, 2])
    np.testing.assert_array_equal(s["fn"], [1, 1, 2])
    np.testing.assert_allclose(s["ap"], [1 / 3, 1 / 3, 0.0])
    np.testing.assert_allclose(s["f1"], [0.5, 0.5, 0.0])
    assert s["f1_50"] == pytest.approx(0.5)


def test_segmentation_scores_f1_50_without_half_threshold():
    t = boxes((10, 10), [(0, 10, 0, 5)])
    p = boxes((10, 10), [(0, 10, 0, 3)])  # IoU 0.6
    s = segmentation_scores(t, p, thresholds=[0.9])
    assert s["tp"][0] == 0 and s["f1_50"] == 1.0


def test_segmentation_scores_empty_masks():
    empty = np.zeros((8, 8), np.uint16)
    one = boxes((8, 8), [(0, 4, 0, 4)])
    both = segmentation_scores(empty, empty)
    np.testing.assert_allclose(both["ap"], 1.0)
    assert both["f1_50"] == 1.0
    missed = segmentation_scores(one, empty)
    np.testing.assert_allclose(missed["ap"], 0.0)
    np.testing.assert_array_equal(missed["fn"], 1)
    spurious = segmentation_scores(empty, one)
    np.testing.assert_allclose(spurious["ap"], 0.0)
    np.testing.assert_array_equal(spurious["fp"], 1)


# --------------------------------------------------------------------------- match_cells


def test_match_cells_maps_segmented_to_true_ids():
    true = boxes((12, 12), [(0, 6, 0, 6), (6, 12, 6, 12), (0, 3, 9, 12)], ids=[10, 20, 30])
    pred = boxes((12, 12), [(0, 6, 0, 5), (6, 12, 7, 12), (9, 12, 0, 3)], ids=[1, 2, 3])
    got = match_cells(pred, true)
    assert set(got) == {1, 2}
    assert got[1][0] == 10 and got[1][1] == pytest.approx(30 / 36)
    assert got[2][0] == 20 and got[2][1] == pytest.approx(30 / 36)


def test_match_cells_respects_min_iou():
    true = boxes((10, 10), [(0, 10, 0, 5)])
    pred = boxes((10, 10), [(0, 10, 0, 3)])  # IoU 0.6
    assert match_cells(pred, true, min_iou=0.5) == {1: (1, pytest.approx(0.6))}
    assert match_cells(pred, true, min_iou=0.7) == {}


# --------------------------------------------------------------------------- competition metric


def test_match_detections_claims_in_confidence_order():
    iou = np.array([[0.7, 0.0], [0.9, 0.0], [0.0, 0.59], [0.0, 0.6]])
    tp = match_detections(iou, scores=[0.5, 0.2, 0.9, 0.1], threshold=0.6)
    # det 0 outranks det 1 for cell 0 (det 1 is a duplicate); det 2 misses; det 3 hits at 0.6
    np.testing.assert_array_equal(tp, [True, False, False, True])
    assert not match_detections(np.zeros((2, 0)), [0.5, 0.4]).any()


def test_average_precision_open_images_by_hand():
    # ranks: TP, FP, TP with 3 true cells: precision 1, 1/2, 2/3 at recall 1/3, 1/3, 2/3
    ap = average_precision_open_images(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), 3)
    assert ap == pytest.approx(1 / 3 * 1 + 1 / 3 * 2 / 3)
    # the same detections with the false positive ranked last lose nothing
    ap = average_precision_open_images(np.array([0.9, 0.1, 0.7]), np.array([True, False, True]), 3)
    assert ap == pytest.approx(2 / 3)
    assert np.isnan(average_precision_open_images(np.array([0.5]), np.array([False]), 0))
    assert average_precision_open_images(np.zeros(0), np.zeros(0, bool), 4) == 0.0


H, W = 20, 24


def truth_field() -> FieldTruth:
    """Two 10x10 cells with non-contiguous ids: 5 is class 0, 65000 is classes 0 and 3."""
    labels = boxes((H, W), [(0, 10, 0, 10), (10, 20, 10, 20)], ids=[5, 65000])
    return FieldTruth(labels, {5: [0], 65000: [0, 3]})


def rect(r0, r1, c0, c1) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[r0:r1, c0:c1] = True
    return m


CELL5, CELL65000, NOWHERE = rect(0, 10, 0, 10), rect(10, 20, 10, 20), rect(0, 5, 18, 24)


def pred(*dets) -> FieldPrediction:
    """FieldPrediction from (class, confidence, mask) triples."""
    return FieldPrediction(
        W, H, np.array([d[0] for d in dets], np.int64), np.array([d[1] for d in dets]), [encode_mask(d[2]) for d in dets], 2
    )


def test_competition_map_perfect():
    r = competition_map({"f": truth_field()}, {"f": pred((0, 0.9, CELL5), (0, 0.9, CELL65000), (3, 0.8, CELL65000))}, 19)
    assert r["map"] == 1.0
    assert r["ap"][0] == 1.0 and r["ap"][3] == 1.0
    assert np.isnan(r["ap"][[1, 2, 4, 18]]).all()
    np.testing.assert_array_equal(r["n_truth"][[0, 3, 18]], [2, 1, 0])
    np.testing.assert_array_equal(r["n_pred"][[0, 3]], [2, 1])


@pytest.mark.parametrize(
    "mask, expected",
    [
        (rect(0, 10, 4, 14), 0.0),  # shifted 4 columns: IoU 60/140
        (rect(0, 10, 2, 12), 1.0),  # shifted 2 columns: IoU 80/120
        (rect(0, 10, 0, 6), 1.0),  # IoU exactly 0.6 counts
        (rect(0, 10, 0, 5), 0.0),  # IoU 0.5
    ],
)
def test_competition_map_iou_threshold(mask, expected):
    t = FieldTruth(truth_field().labels, {5: [2], 65000: [0]})
    r = competition_map({"f": t}, {"f": pred((2, 0.9, mask), (0, 0.9, CELL65000))}, 19)
    assert r["ap"][2] == expected
    assert r["map"] == pytest.approx((expected + 1.0) / 2)


def test_competition_map_confidence_order_and_duplicates():
    t = {"f": truth_field()}
    fp_first = competition_map(t, {"f": pred((0, 0.9, NOWHERE), (0, 0.8, CELL5), (0, 0.7, CELL65000))}, 19)
    fp_last = competition_map(t, {"f": pred((0, 0.1, NOWHERE), (0, 0.8, CELL5), (0, 0.7, CELL65000))}, 19)
    assert fp_first["ap"][0] == pytest.approx(2 / 3)
    assert fp_last["ap"][0] == pytest.approx(1.0)
    dup = competition_map(t, {"f": pred((0, 0.9, CELL5), (0, 0.8, CELL5), (0, 0.7, CELL65000))}, 19)
    assert dup["ap"][0] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_competition_map_ranks_across_fields():
    t = {"a": truth_field(), "b": truth_field()}
    p = {"a": pred((3, 0.9, NOWHERE)), "b": pred((3, 0.5, CELL65000))}
    r = competition_map(t, p, 19)
    # class 3: 2 true cells; ranked FP (a), TP (b): precision 1/2 at recall 1/2
    assert r["ap"][3] == pytest.approx(0.25)
    assert r["ap"][0] == 0.0  # class 0 present in truth, never predicted


def test_competition_map_ignores_classes_absent_from_truth():
    t = {"f": truth_field()}
    base = pred((0, 0.9, CELL5), (0, 0.9, CELL65000), (3, 0.8, CELL65000))
    extra = pred((0, 0.9, CELL5), (0, 0.9, CELL65000), (3, 0.8, CELL65000), (7, 0.99, CELL5), (18, 0.99, NOWHERE))
    r0, r1 = competition_map(t, {"f": base}, 19), competition_map(t, {"f": extra}, 19)
    assert r0["map"] == r1["map"] == 1.0
    assert np.isnan(r1["ap"][7]) and r1["n_pred"][7] == 1 and r1["n_truth"][7] == 0


def test_competition_map_empty_predictions():
    t = {"f": truth_field()}
    for p in ({}, {"f": pred()}):
        r = competition_map(t, p, 19)
        assert r["map"] == 0.0
        np.testing.assert_array_equal(r["ap"][[0, 3]], [0.0, 0.0])
    empty_truth = FieldTruth(np.zeros((H, W), np.uint16), {})
    r = competition_map({"f": empty_truth}, {"f": pred((0, 0.5, CELL5))}, 19)
    assert np.isnan(r["map"]) and r["n_pred"][0] == 1


def test_competition_map_rejects_mismatches():
    t = {"f": truth_field()}
    with pytest.raises(ValueError, match="not in the truth"):
        competition_map(t, {"g": pred()}, 19)
    wrong = pred((0, 0.5, CELL5))
    wrong.width = W + 1
    with pytest.raises(ValueError, match="submission says 25x20"):
        competition_map(t, {"f": wrong}, 19)
    bad = pred((0, 0.5, CELL5), (3, 0.5, CELL5))
    bad.masks[1] = "%%%"
    with pytest.raises(ValueError, match="field f: prediction 2: mask is not valid base64"):
        competition_map(t, {"f": bad}, 19)

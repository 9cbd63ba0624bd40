"""Outlines along pixel edges: they fill back to exactly the pixels they came from."""

from __future__ import annotations

import cv2
import numpy as np

from cellloc.outlines import fill_outline, label_outlines


def refill(labels: np.ndarray) -> np.ndarray:
    out = np.zeros_like(labels)
    for label, pieces in label_outlines(labels).items():
        for points in pieces:
            out[fill_outline(points, labels.shape)] = label
    return out


def test_one_pixel_is_its_four_corners_clockwise():
    lab = np.zeros((3, 4), np.int32)
    lab[1, 2] = 5
    (points,) = label_outlines(lab)[5]
    np.testing.assert_array_equal(points, [[2, 1], [3, 1], [3, 2], [2, 2]])
    assert label_outlines(np.zeros((3, 3), np.int32)) == {}


def test_a_shape_closing_on_itself_at_a_corner_keeps_its_inside_open():
    ring = np.zeros((8, 8), np.int32)
    ring[1, 1:6] = ring[1:5, 1] = ring[1:5, 5] = 1
    ring[5, 1:5] = 1  # the ring's last pixel (5, 4) meets (4, 5) only at a corner
    (points,) = label_outlines(ring)[1]
    assert np.array_equal(refill(ring), ring)
    assert (points == [5, 5]).all(axis=1).sum() == 2  # the pinch corner is visited twice


def test_touching_labels_holes_and_pieces():
    lab = np.zeros((9, 12), np.int32)
    lab[1:6, 1:6] = 3
    lab[3, 3] = 0  # a hole: an ImageJ polygon has none, so it is filled
    lab[1:6, 6:10] = 4  # touches 3 along a whole side
    lab[7:9, 0:2] = 4  # a second piece of 4, at the border
    out = label_outlines(lab)
    assert sorted(out) == [3, 4] and len(out[3]) == 1 and len(out[4]) == 2
    assert fill_outline(out[4][0], lab.shape).sum() == 20 and fill_outline(out[4][1], lab.shape).sum() == 4  # largest first
    back = refill(lab)
    assert back[3, 3] == 3 and np.array_equal(np.where(lab > 0, back, 0), lab)


def test_random_labels_round_trip_exactly():
    rng = np.random.default_rng(0)
    lab = np.zeros((200, 240), np.int32)
    for k in range(1, 30):
        cv2.ellipse(lab, (int(rng.integers(0, 240)), int(rng.integers(0, 200))), (int(rng.integers(2, 25)), int(rng.integers(2, 25))),
                    float(rng.integers(0, 180)), 0, 360, k, -1)
    notches = rng.random(lab.shape) < 0.01
    lab[notches & (cv2.erode((lab > 0).astype(np.uint8), np.ones((3, 3), np.uint8)) == 0)] = 0  # ragged rims, no holes
    assert np.array_equal(refill(lab), lab)

"""Class-balanced sampling weights and the resumable weighted sampler."""

from __future__ import annotations

import numpy as np
import pytest

from cellloc.sampling import BalancedEpochSampler, class_balanced_weights, expected_class_draws


def long_tail() -> np.ndarray:
    """100 images: class 0 in 90, class 1 in 9, class 2 in 1 (image 99 also has class 0)."""
    y = np.zeros((100, 3), bool)
    y[:90, 0] = True
    y[90:99, 1] = True
    y[99, [0, 2]] = True
    return y


def test_power_zero_is_uniform_and_one_balances_classes():
    y = long_tail()
    np.testing.assert_allclose(class_balanced_weights(y, 0.0), np.full(100, 0.01))
    w = class_balanced_weights(y, 1.0)
    draws = expected_class_draws(y, w, 300)
    # class 0 has 91 images, 1 has 9, 2 has 1: with power 1 the rare classes get the same number
    # of draws as the 90 class-0-only images together (class 0 also rides along with image 99)
    assert w[99] / w[0] == pytest.approx(91)  # image 99 weighs as its rarest class (1 image, not 91)
    assert draws[1] == pytest.approx(draws[2]) and draws[1] == pytest.approx(300 / (90 / 91 + 2))
    assert draws[0] == pytest.approx(300 - draws[1])


def test_square_root_balancing_sits_between():
    y = long_tail()
    rare = [expected_class_draws(y, class_balanced_weights(y, p), 100)[2] for p in (0.0, 0.5, 1.0)]
    assert rare[0] < rare[1] < rare[2]
    assert rare[0] == pytest.approx(1.0)


def test_image_without_class_and_bad_input():
    y = np.array([[1, 0], [0, 0], [0, 1], [1, 0]], bool)
    w = class_balanced_weights(y, 1.0)
    assert w[1] == pytest.approx(w[0])  # no class: the commonest class's weight
    with pytest.raises(ValueError):
        class_balanced_weights(np.zeros(3), 0.5)
    with pytest.raises(ValueError):
        class_balanced_weights(y, -1)


def test_sampler_draws_by_weight_and_repeats_by_epoch():
    y = long_tail()
    s = BalancedEpochSampler(class_balanced_weights(y, 1.0), seed=3, n=3000)
    s.set_epoch(0)
    first = list(s)
    assert len(first) == 3000 and len(s) == 3000
    idx = np.array([i for i, _ in first])
    seen = y[idx].sum(0)
    assert 800 < seen[2] < 1200  # the one rare image is drawn about a third of the time
    s.set_epoch(1)
    assert list(s) != first
    s.set_epoch(0)
    assert list(s) == first  # a resumed run sees the same epoch
    with pytest.raises(ValueError):
        BalancedEpochSampler(np.array([0.0, 0.0]), seed=0)

"""Class-balanced sampling weights and sampler; the byte-capped field cache."""

from __future__ import annotations

import numpy as np
import pytest

from cellloc.field_cache import FieldCache, parse_size
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


def test_cache_keeps_under_its_cap_and_evicts_least_recent():
    arr = lambda v: np.full((10, 10), v, np.float32)  # noqa: E731  (400 bytes each)
    cache = FieldCache(1000)
    loads = []

    def loader(v):
        def load():
            loads.append(v)
            return arr(v)

        return load

    for v in (1, 2):
        cache.get_or_load(v, loader(v))
    assert cache.get_or_load(1, loader(1))[0, 0] == 1  # hit: 1 is now the most recent
    cache.get_or_load(3, loader(3))  # 3 * 400 > 1000: the least recent (2) goes
    assert 2 not in cache and 1 in cache and 3 in cache
    assert cache.nbytes == 800 <= cache.max_bytes
    assert loads == [1, 2, 3]
    assert (cache.stats.hits, cache.stats.misses, cache.stats.evictions) == (1, 3, 1)
    with pytest.raises(ValueError):
        cache.get(1)[0, 0] = 5  # read-only: an in-place augmentation cannot corrupt the cache


def test_cache_off_and_too_big_entries():
    off = FieldCache(0)
    calls = []
    for _ in range(3):
        off.get_or_load("a", lambda: calls.append(1) or np.zeros(4))
    assert len(calls) == 3 and len(off) == 0
    small = FieldCache(10)
    small.get_or_load("big", lambda: np.zeros(100))
    assert len(small) == 0 and small.stats.too_big == 1


def test_parse_size():
    assert parse_size("2G") == 2 << 30 and parse_size("512M") == 512 << 20 and parse_size("300k") == 300 << 10
    assert parse_size("0") == 0 and parse_size(1234) == 1234 and parse_size("1.5GB") == int(1.5 * (1 << 30))
    for bad in ("lots", "-1G"):
        with pytest.raises(ValueError):
            parse_size(bad)

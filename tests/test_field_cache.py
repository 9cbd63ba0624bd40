"""The byte-capped field cache and the cached, resized field reader."""

from __future__ import annotations

import numpy as np
import pytest

from cellloc.data import FieldInput
from cellloc.field_cache import CachedFields, FieldCache


def block(v: float) -> np.ndarray:
    return np.full((10, 10), v, np.float32)  # 400 bytes


def test_cache_keeps_until_full_then_loads_on_demand():
    cache = FieldCache(1000)
    loads = []

    def loader(v):
        def load():
            loads.append(v)
            return block(v)

        return load

    for v in (1, 2, 3):
        assert cache.get_or_load(v, loader(v))[0, 0] == v
    assert 1 in cache and 2 in cache and 3 not in cache  # the third does not fit: returned, not kept
    assert cache.nbytes == 800 <= cache.max_bytes and cache.room() == 200
    assert cache.get_or_load(1, loader(1))[0, 0] == 1 and cache.get_or_load(3, loader(3))[0, 0] == 3
    assert loads == [1, 2, 3, 3]
    assert (cache.stats.hits, cache.stats.misses, cache.stats.full) == (1, 4, 2)
    with pytest.raises(ValueError):
        cache.get(1)[0, 0] = 5  # read-only: an in-place augmentation cannot corrupt the cache
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


def test_cache_off():
    off = FieldCache(0)
    calls = []
    for _ in range(3):
        off.get_or_load("a", lambda: calls.append(1) or np.zeros(4))
    assert len(calls) == 3 and len(off) == 0 and off.stats.full == 0
    with pytest.raises(ValueError):
        FieldCache(-1)


class CountingReader(list):
    """A list of fields that counts reads (stands in for a layout reader)."""

    reads = 0

    def __getitem__(self, i):
        CountingReader.reads += 1
        return super().__getitem__(i)


def fields(n: int, size: tuple[int, int] = (40, 30)) -> CountingReader:
    rng = np.random.default_rng(0)
    return CountingReader(rng.integers(0, 255, (*size, 4)).astype(np.uint8) for _ in range(n))


def test_cached_fields_give_what_the_field_input_would_see():
    raw = fields(3)
    cached = CachedFields(raw, 32, FieldCache(1 << 20))
    view = FieldInput(image_size=32, mean=(0.1,) * 4, std=(0.2,) * 4, resize=32)
    for i in range(3):
        np.testing.assert_array_equal(view.predict_views(cached[i]), view.predict_views(raw[i]))
        assert cached[i].shape == (32, 32, 4) and cached[i].dtype == np.uint8


def test_preload_fills_up_to_the_cap_and_later_reads_decode_nothing():
    raw = fields(10)
    one = 32 * 32 * 4  # bytes of one resized uint8 field
    cache = FieldCache(6 * one + 10)
    train = CachedFields(raw, 32, cache, key="train")
    valid = CachedFields(fields(3), 32, cache, key="valid")
    assert train.preload(threads=2) == 6  # the cap holds six
    assert valid.preload() == 0  # shared cap: nothing left for the validation fields
    CountingReader.reads = 0
    for i in range(6):
        train[i]
    assert CountingReader.reads == 0  # all six from memory
    train[7]
    assert CountingReader.reads == 1 and len(cache) == 6  # beyond the cap: decoded, not kept

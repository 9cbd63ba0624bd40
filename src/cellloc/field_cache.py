"""An in-memory cache of decoded, resized fields, bounded in bytes.

Whole-image training reads every field once per epoch: four PNG decodes and a resize from 512
(or 2048) px down to the network's input size, for an array that is then a few hundred KB. The
2018 competition's pipelines kept those arrays in RAM after the first epoch. This cache does
that under a memory cap: fields are kept until the cap is reached; the ones beyond it are
decoded each time they are read. (Evicting old entries would not help: an epoch visits every
field once in random order, so any policy hits about cap/size of the time; keeping what is
loaded avoids re-decoding churn.)

The cache lives in the process that reads the data. :meth:`CachedFields.preload` fills it in
the training process before the DataLoader starts its workers: forked workers then share the
arrays (copy-on-write pages) instead of each decoding and holding its own copy. Arrays are
stored read-only so a caller that augments in place cannot corrupt what the next epoch gets.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .cells import resize_square
from .data import pad_to_square


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    full: int = 0  # loads not kept because the cap was reached

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class FieldCache:
    """``key -> ndarray``, kept until ``max_bytes`` is reached (``max_bytes=0``: caching off).

    One code path serves cache on and off: :meth:`get_or_load` always returns the array, and
    keeps it when it fits.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self.stats = CacheStats()
        self._items: dict[Hashable, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def room(self) -> int:
        """Bytes still free under the cap."""
        return self.max_bytes - self.nbytes

    def get(self, key: Hashable) -> np.ndarray | None:
        return self._items.get(key)

    def put(self, key: Hashable, arr: np.ndarray) -> np.ndarray:
        """Keep ``arr`` (made read-only) under ``key`` if it fits under the cap; return it either way."""
        arr = np.asarray(arr)
        arr.flags.writeable = False
        if key in self._items:
            return self._items[key]
        if arr.nbytes > self.room():
            self.stats.full += self.max_bytes > 0
            return arr
        self._items[key] = arr
        self.nbytes += arr.nbytes
        return arr

    def get_or_load(self, key: Hashable, load: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached array for ``key``, or ``load()``'s result (kept if it fits). Read-only either way."""
        arr = self._items.get(key)
        if arr is not None:
            self.stats.hits += 1
            return arr
        self.stats.misses += 1
        return self.put(key, load())

    def clear(self) -> None:
        self._items.clear()
        self.nbytes = 0


class CachedFields(Sequence):
    """A field reader (``reader[i]`` -> HxWxC array) whose fields come back padded square and resized, cached.

    ``resize`` is the side :class:`cellloc.data.FieldInput` resizes fields to, so its own resize
    of these arrays is a no-op and training sees exactly what it would see without the cache.
    Several readers (training and validation) may share one :class:`FieldCache` and its cap;
    ``key`` keeps their entries apart.
    """

    def __init__(self, reader: Sequence[np.ndarray], resize: int, cache: FieldCache, key: str = "") -> None:
        self.reader = reader
        self.resize = int(resize)
        self.cache = cache
        self.key = key

    def __len__(self) -> int:
        return len(self.reader)

    def _load(self, i: int) -> np.ndarray:
        return resize_square(pad_to_square(self.reader[i]), self.resize)

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        return self.cache.get_or_load((self.key, int(i)), lambda: self._load(int(i)))

    def preload(self, threads: int = 2) -> int:
        """Decode and resize fields into the cache, in order, while they fit; returns how many it holds.

        Fields of one reader share a size and dtype after resizing, so the first one says how
        many fit. PNG decoding and OpenCV resizing release the GIL: a few threads decode in
        parallel without copying arrays between processes.
        """
        todo = [i for i in range(len(self)) if (self.key, i) not in self.cache]
        if todo and self.cache.room() > 0:
            first = self[todo[0]]
            n_fit = self.cache.room() // max(first.nbytes, 1) + ((self.key, todo[0]) in self.cache)
            todo = todo[1:n_fit]
            with ThreadPoolExecutor(max(1, threads)) as pool:
                for i, arr in zip(todo, pool.map(self._load, todo)):
                    self.cache.put((self.key, i), arr)
        return sum((self.key, i) in self.cache for i in range(len(self)))

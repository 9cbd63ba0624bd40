"""An in-memory cache of decoded, resized fields, bounded in bytes.

Whole-image training reads every field once per epoch: four PNG decodes and a resize from 512
(or 2048) px down to the network's input size, for an array that is then a few hundred KB. The
2018 competition's pipelines kept those arrays in RAM after the first epoch. This cache does
that under a memory cap: entries are kept until the cap is reached, then the least recently
used are dropped, so a dataset larger than the cap still trains (it just decodes more).

The cache lives in the process that reads the data; with DataLoader worker processes each
worker holds its own (the cap applies to each). Arrays are stored read-only so a caller that
augments in place cannot corrupt what the next epoch gets.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    too_big: int = 0  # entries larger than the whole cap, never stored

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class FieldCache:
    """``key -> ndarray`` with a byte cap and least-recently-used eviction.

    ``max_bytes=0`` disables caching (every ``get_or_load`` calls the loader), so one code path
    serves cache on and off.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self.stats = CacheStats()
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def get(self, key: Hashable) -> np.ndarray | None:
        arr = self._items.get(key)
        if arr is not None:
            self._items.move_to_end(key)
        return arr

    def put(self, key: Hashable, arr: np.ndarray) -> np.ndarray:
        """Store ``arr`` (made read-only) under ``key``, evicting old entries to stay under the cap."""
        arr = np.asarray(arr)
        arr.flags.writeable = False
        if key in self._items:
            self.nbytes -= self._items.pop(key).nbytes
        if arr.nbytes > self.max_bytes:
            self.stats.too_big += self.max_bytes > 0
            return arr
        while self.nbytes + arr.nbytes > self.max_bytes and self._items:
            _, old = self._items.popitem(last=False)
            self.nbytes -= old.nbytes
            self.stats.evictions += 1
        self._items[key] = arr
        self.nbytes += arr.nbytes
        return arr

    def get_or_load(self, key: Hashable, load: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached array for ``key``, or ``load()``'s result (then cached). Read-only either way."""
        arr = self.get(key)
        if arr is not None:
            self.stats.hits += 1
            return arr
        self.stats.misses += 1
        return self.put(key, load())

    def clear(self) -> None:
        self._items.clear()
        self.nbytes = 0


def parse_size(text: str | int) -> int:
    """Bytes from ``"2G"``, ``"512M"``, ``"300k"`` or a plain number (``"0"``: off)."""
    if isinstance(text, int):
        return text
    s = str(text).strip().upper().removesuffix("B")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    mult = units.get(s[-1:], 1)
    number = s[:-1] if s[-1:] in units else s
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"cannot read a memory size from {text!r} (e.g. 2G, 512M, 0)") from None
    if value < 0:
        raise ValueError(f"memory size must be >= 0, got {text!r}")
    return int(value * mult)

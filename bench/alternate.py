"""Settings of one job timed side by side in one process: alternated, each keeping its fastest run.

Alternating (A, B, A, B) rather than A, A, B, B spreads a change in the machine's load over both
settings, so the ratio of their best runs holds on a shared machine even when the seconds do not.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


def fastest_alternating(settings: Mapping[str, Callable[[], dict[str, Any]]], repeats: int,
                        key: str = "run_s") -> dict[str, dict[str, Any]]:
    """{setting: the result of its fastest run by ``result[key]``}, each setting run ``repeats`` times in turn."""
    best: dict[str, dict[str, Any]] = {}
    for _ in range(repeats):
        for name, job in settings.items():
            result = job()
            if name not in best or result[key] < best[name][key]:
                best[name] = result
    return best

"""Rasterising generated cells: the outline evaluated over each cell's whole bounding square against only
where a pixel could lie inside it (``synth.outline_distance``, what ``rasterise`` uses).

    PYTHONPATH=src python bench/bench_rasterise.py             # ~20 s on 2 CPU cores
    PYTHONPATH=src python bench/bench_rasterise.py --quick     # a smoke check

For generated HPA fields (512 and 2048 px, seeded), alternated in this one process, each keeping its fastest of
``--repeats``: seconds to rasterise every field's cells and nuclei both ways, their ratio, and whether the two
give the same labels to the bit (they must: the pixels skipped are ones no outline can reach).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from alternate import fastest_alternating
from cellloc import synth
from cellloc.synth import SPINDLE, SynthConfig, draw_field_classes, place_cells, rasterise, round_mitotic, shape_radius


def full_square(dy: np.ndarray, dx: np.ndarray, base: float, elong: float, angle: float, amp: np.ndarray,
                phase: np.ndarray) -> np.ndarray:
    """The outline distance evaluated at every pixel of the square (before ``outline_distance``)."""
    return np.sqrt(dy**2 + dx**2) / shape_radius(np.arctan2(dy, dx), base, elong, angle, amp, phase)


def fields(size: int, n: int) -> list[list]:
    """The cells of ``n`` generated fields of ``size`` px, drawn as ``generate_field`` draws them."""
    cfg = SynthConfig()
    out = []
    for i in range(n):
        rng = np.random.default_rng([7, i, size])
        cells = place_cells(rng, cfg, size)
        round_mitotic(rng, cells, SPINDLE in draw_field_classes(rng, cfg, i))
        out.append(cells)
    return out


def timed(cells_per_field: list[list], size: int, outline) -> dict:
    kept = synth.outline_distance
    synth.outline_distance = outline
    try:
        t0 = time.perf_counter()
        labels = [rasterise(cells, size) for cells in cells_per_field]
        return {"s": time.perf_counter() - t0, "labels": labels}
    finally:
        synth.outline_distance = kept


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    n = 2 if args.quick else 10
    print(f"{os.cpu_count()} CPU cores; load average at start {os.getloadavg()[0]:.2f}\n")
    print("| field size | fields | whole square s | where reachable s | faster | same labels |")
    print("|---|---|---|---|---|---|")
    for size in (512, 2048):
        cells = fields(size, n if size == 512 else max(1, n // 5))
        best = fastest_alternating({"full": lambda: timed(cells, size, full_square),
                                    "reach": lambda: timed(cells, size, synth.outline_distance)}, args.repeats, "s")
        same = all(np.array_equal(a, b) for x, y in zip(best["full"]["labels"], best["reach"]["labels"])
                   for a, b in zip(x, y))
        print(f"| {size} | {len(cells)} | {best['full']['s']:.2f} | {best['reach']['s']:.2f} | "
              f"{best['full']['s'] / best['reach']['s']:.1f}x | {'yes' if same else 'NO'} |")
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Generator speed vs the floor of writing the same images as PNG, in one run.

    python bench/bench_make_data.py [--fields 4]

For each size: time to draw a field (generate_field), time to encode+write its 4 channel PNGs
(the floor any generator pays), their ratio, and end-to-end fields/s of write_dataset with 1
and 2 worker processes on this machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cellloc.fieldio import write_png
from cellloc.generators import write_dataset
from cellloc.synth import SynthConfig, generate_field


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fields", type=int, default=4)
    a = ap.parse_args()
    print(f"cpus={os.cpu_count()} fields per size={a.fields}\n")
    print("| size | generate s/field | PNG write s/field | generate / PNG write | fields/s (1 worker) | fields/s (2 workers) |")
    print("|---|---|---|---|---|---|")
    for size in (1024, 2048):
        cfg = SynthConfig(size=size, seed=11)
        gen = write = 0.0
        with tempfile.TemporaryDirectory() as d:
            for i in range(a.fields):
                t = time.perf_counter()
                f = generate_field(cfg, i)
                gen += time.perf_counter() - t
                t = time.perf_counter()
                for c in range(4):
                    write_png(Path(d) / f"{i}_{c}.png", f.image[..., c])
                write += time.perf_counter() - t
        rates = []
        for workers in (1, 2):
            with tempfile.TemporaryDirectory() as d:
                t = time.perf_counter()
                write_dataset(cfg, d, a.fields, workers=workers)
                rates.append(a.fields / (time.perf_counter() - t))
        print(f"| {size} | {gen / a.fields:.2f} | {write / a.fields:.2f} | {gen / write:.1f}x | {rates[0]:.2f} | {rates[1]:.2f} |")


if __name__ == "__main__":
    main()

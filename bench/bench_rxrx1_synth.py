"""Time the RxRx1 generator: its tabulated rasteriser against the HPA generator's, and a whole site per cell type.

    PYTHONPATH=src python bench/bench_rxrx1_synth.py [--size 512] [--repeats 5]

The two rasterisers get the same cells (an RxRx1 site of each cell type) in the same run; the
ratio is old / new, and the share of pixels on which their labels agree is printed beside it
(the tabulated outline differs from the exact one by under a pixel at a few borders). Then the
time to draw one site (cells + six stains + optics) and to write it as six PNGs, per cell type.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np

from cellloc import synth
from cellloc.fieldio import write_png
from cellloc.synth_rxrx1 import RxRx1SynthConfig, generate_site, make_design, place_cells, rasterise, site_parameters


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(f"load average {os.getloadavg()}, python {platform.python_version()}, numpy {np.__version__}")
    cfg = RxRx1SynthConfig(size=args.size)
    design = make_design(cfg)
    print(f"{'cell type':<8} {'cells':>5} {'exact s':>8} {'table s':>8} {'ratio':>6} {'agree':>7} {'site s':>7} {'+png s':>7}")
    for ct in cfg.cell_types:
        well = next(w for w in design.wells if w.cell_type == ct and w.well_type == "negative_control")
        rng = np.random.default_rng(0)
        site, cells_p = site_parameters(cfg, design, well, rng, 400)
        cells = place_cells(rng, ct, site, cells_p, args.size)
        exact = best_of(lambda: synth.rasterise(cells, args.size), args.repeats)
        table = best_of(lambda: rasterise(cells, args.size), args.repeats)
        agree = float((synth.rasterise(cells, args.size)[0] == rasterise(cells, args.size)[0]).mean())
        gen = best_of(lambda: generate_site(cfg, well, 1), args.repeats)
        image = generate_site(cfg, well, 1)[0]
        with TemporaryDirectory() as tmp:
            png = best_of(lambda: [write_png(Path(tmp) / f"w{c}.png", image[..., c]) for c in range(6)], args.repeats)
        print(f"{ct:<8} {len(cells):>5} {exact:>8.3f} {table:>8.3f} {exact / table:>5.1f}x {agree:>7.4f} {gen:>7.3f} {png:>7.3f}")
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()

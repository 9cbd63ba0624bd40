"""BatchNorm recalibration: a training run with every validation recomputing the statistics over all the
training samples, against 512 samples before the last epoch (the default before d5259a2) and the default (128).

    PYTHONPATH=src python bench/bench_bn_recalibrate.py            # ~3-4 min on 2 CPU cores
    PYTHONPATH=src python bench/bench_bn_recalibrate.py --quick    # a smoke check

The demo's cell recipe (ResNet-18 from scratch, 64 px crops, batch 32, ``--monitor last``) on generated
crops (``write_synthetic_cells``), fold 0 of 10 validating. The settings run in this one process, alternated,
each keeping its fastest of ``--repeats`` runs; read the ratio, not the seconds (the load average is printed).
The saved weights of all must be identical (the last epoch recalibrates over every sample either way):
the bench checks that too.
"""

from __future__ import annotations

import argparse
import dataclasses
import contextlib
import io
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from alternate import fastest_alternating
from cellloc.data import write_synthetic_cells
from cellloc.runs.train import TrainConfig, train_fold

DEFAULT_INTERIM = {f.name: f.default for f in dataclasses.fields(TrainConfig)}["bn_recalibrate_interim"]


def run(csv: Path, out: Path, name: str, epochs: int, interim: int) -> dict[str, Any]:
    """Seconds of one training run (run, training, validation) and its saved weights (``weights``)."""
    cfg = TrainConfig(folds_csv=str(csv), out_dir=str(out), run_name=name, fold=0, epochs=epochs, image_size=64,
                      model="resnet18", pretrained="none", batch_size=32, num_workers=0, device="cpu", monitor="last",
                      bn_recalibrate_interim=interim, overwrite=True)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        train_fold(cfg)
    wall = time.perf_counter() - t0
    m = pd.read_csv(cfg.run_dir / "metrics.csv")
    return {"run_s": wall, "train_s": float(m["train_seconds"].sum()),
            "validate_s": float((m["epoch_seconds"] - m["train_seconds"]).sum()),
            "weights": torch.load(cfg.run_dir / "best.pt", map_location="cpu")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer cells and epochs")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    fields, epochs = (30, 2) if args.quick else (110, 4)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}; load average at start {os.getloadavg()[0]:.2f}")
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        csv = write_synthetic_cells(Path(tmp) / "cells", n_fields=fields, cells_per_field=10, n_folds=10, seed=1)
        n_train = int((pd.read_csv(csv)["fold"] != 0).sum())
        settings = {"every validation over all (interim 0)": 0, "interim 512 (the default before)": 512,
                    f"default (interim {DEFAULT_INTERIM})": DEFAULT_INTERIM}
        best = fastest_alternating({name: (lambda i=interim: run(csv, Path(tmp) / "runs", f"i{i}", epochs, i))
                                    for name, interim in settings.items()}, args.repeats)
    a, *others = (best[n]["weights"] for n in settings)
    same = all(a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a) for b in others)
    base = best["every validation over all (interim 0)"]
    print(f"\n### One training run: {n_train} training cells, {epochs} epochs, ResNet-18 64 px, --monitor last "
          f"(best of {args.repeats})\n")
    print("| BatchNorm recalibration | run s | training s | validation s (recalibration + scoring) | run vs all |")
    print("|---|---|---|---|---|")
    for name, t in best.items():
        print(f"| {name} | {t['run_s']:.1f} | {t['train_s']:.1f} | {t['validate_s']:.1f} | "
              f"{t['run_s'] / base['run_s']:.2f}x |")
    print(f"\nsaved weights (best.pt) identical: {'yes' if same else 'NO'}")
    print(f"bench wall time {time.perf_counter() - t_all:.0f} s; load average at end {os.getloadavg()[0]:.2f}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

"""Training on the CPU in float32 against bfloat16 autocast (``train.py --cpu-bf16 off`` / ``on``).

    PYTHONPATH=src python bench/bench_cpu_bf16.py            # ~3-4 min on 2 CPU cores
    PYTHONPATH=src python bench/bench_cpu_bf16.py --quick    # a smoke check

The demo's cell recipe (ResNet-18 from scratch, 64 px crops, batch 32, ``--monitor last``) on generated
crops (``write_synthetic_cells``), fold 0 of 10 validating. Both settings run in this one process, alternated,
each keeping its fastest of ``--repeats`` runs; read the ratio, not the seconds (the load average is printed).
The default, ``--cpu-bf16 auto``, takes bf16 only where the CPU computes it natively (AMX or AVX512-BF16):
the bench says which this CPU is, and on one without native bf16 the ratio shows what ``on`` would cost.
It also prints both runs' validation macro AP, to show the two train comparably (one small run each: not a
quality claim).

Then two processes at once, each taking training steps (the same network and batch) with as many threads as
the machine has CPUs, first both in float32, then both in bf16: two trainings on one machine, or one beside
a busy neighbour. On this machine's AMX cores the bf16 pair collapsed (11-17x slower per step than alone)
while the float32 pair only shared the cores, which is why ``--cpu-bf16`` is off by default.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from alternate import fastest_alternating
from cell_step import demo_batch, training_step
from cellloc.data import write_synthetic_cells
from cellloc.runs.train import TrainConfig, mixed_precision, train_fold
from cellloc.runtime import cpu_has_native_bf16


def run(csv: Path, out: Path, epochs: int, cpu_bf16: str) -> dict[str, float]:
    cfg = TrainConfig(folds_csv=str(csv), out_dir=str(out), run_name=f"bf16_{cpu_bf16}", fold=0, epochs=epochs,
                      image_size=64, model="resnet18", pretrained="none", batch_size=32, num_workers=0, device="cpu",
                      monitor="last", cpu_bf16=cpu_bf16, overwrite=True)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        result = train_fold(cfg)
    wall = time.perf_counter() - t0
    m = pd.read_csv(cfg.run_dir / "metrics.csv")
    return {"run_s": wall, "train_s": float(m["train_seconds"].sum()), "macro_ap": float(result.macro_ap_weak)}


def steps(mode: str, threads: int, n: int = 12) -> float:
    """Milliseconds per training step (ResNet-18, batch 32 of 4 x 64 x 64) in ``mode`` (float32 or bf16)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    from cellloc.models import create_model

    net = create_model("resnet18", in_chans=4, num_classes=19, pretrained="none")
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    x, y = demo_batch()
    step = training_step(net, opt, x, y, mode == "bf16")

    for _ in range(2):
        step()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t0) / n * 1000


def pair(mode: str, threads: int, n: int) -> list[float]:
    """ms per step of two processes stepping at once in ``mode``."""
    cmd = [sys.executable, __file__, "--steps", mode, "--threads", str(threads), "--n", str(n)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": "src"})
             for _ in range(2)]
    return [float(p.communicate()[0].split()[-1]) for p in procs]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer cells and epochs")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--steps", choices=["float32", "bf16"], help=argparse.SUPPRESS)  # one process of a pair
    ap.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=12, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.steps:
        print(f"{steps(args.steps, args.threads, args.n):.1f}")
        return 0
    fields, epochs = (30, 2) if args.quick else (110, 4)
    native = cpu_has_native_bf16()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}; native bf16 (AMX or AVX512-BF16): {'yes' if native else 'no'}, so "
          f"--cpu-bf16 auto trains in {mixed_precision(False, False, 'auto')}; load average at start "
          f"{os.getloadavg()[0]:.2f}")
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        csv = write_synthetic_cells(Path(tmp) / "cells", n_fields=fields, cells_per_field=10, n_folds=10, seed=1)
        n_train = int((pd.read_csv(csv)["fold"] != 0).sum())
        best = fastest_alternating({s: (lambda s=s: run(csv, Path(tmp) / "runs", epochs, s)) for s in ("off", "on")},
                                   args.repeats)
    base = best["off"]
    print(f"\n### One training run: {n_train} training cells, {epochs} epochs, ResNet-18 64 px, batch 32 "
          f"(best of {args.repeats})\n")
    print("| --cpu-bf16 | run s | training s | training vs float32 | validation macro AP |")
    print("|---|---|---|---|---|")
    for setting, t in best.items():
        print(f"| {setting} | {t['run_s']:.1f} | {t['train_s']:.1f} | {base['train_s'] / t['train_s']:.2f}x faster | "
              f"{t['macro_ap']:.4f} |")
    threads, n = os.cpu_count() or 1, 3 if args.quick else 12
    print(f"\n### Training steps, ms per step: one process alone, then two at once ({threads} threads each)\n")
    print("| precision | alone | two at once (each) | two at once vs alone |")
    print("|---|---|---|---|")
    for mode in ("float32", "bf16"):
        alone = float(subprocess.run([sys.executable, __file__, "--steps", mode, "--threads", str(threads),
                                                   "--n", str(n)], capture_output=True, text=True,
                                                  env={**os.environ, "PYTHONPATH": "src"}).stdout.split()[-1])
        both = pair(mode, threads, n)
        print(f"| {mode} | {alone:.0f} | {both[0]:.0f} / {both[1]:.0f} | {max(both) / alone:.1f}x |")
    print(f"\nbench wall time {time.perf_counter() - t_all:.0f} s; load average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

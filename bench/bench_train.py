"""Training throughput: data loader vs model step at 260 px, AMP/channels_last (GPU), epoch cost vs cells.

    PYTHONPATH=src python bench/bench_train.py           # ~1-3 min on 2 CPU cores
    PYTHONPATH=src python bench/bench_train.py --quick   # fewer samples, for a smoke check

Synthetic 4-channel crops of 150-300 px (HPA cells at full resolution) are written to a
temporary folder. Every number comes from this one run and is printed as markdown tables; read
ratios, not absolute rates, on a shared machine (the load average is printed with them).

* loader: the training Dataset (read .npy, pad, resize to 260, flips/transposes/rot90 + gain,
  normalise) through a DataLoader, all cells once, worker start-up included, best of 2;
* step: EfficientNet-B2, 4 channels, 19 outputs, 260 px, forward + BCE + backward + AdamW
  (the work per training batch), after one warm-up step;
* AMP/channels_last: the same step in fp32 and in fp16 autocast + channels_last, CUDA only;
* epoch cost: one real training epoch (``train_fold``, Tez loop, 64 px to keep it short) as the
  number of training cells doubles; linear means a constant cost per cell.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from cellloc.data import CellCropDataset, EpochSampler, build_augment, label_matrix, read_cells, write_synthetic_cells
from cellloc.models import create_model
from cellloc.runs.train import TrainConfig, train_fold


def loader_rate(csv: Path, image_size: int, workers: int, batch: int = 16) -> float:
    """Training-loader images per second over every cell of the table (worker start-up included)."""
    cells = read_cells(csv, 19)
    ds = CellCropDataset(cells["crop_path"], label_matrix(cells, "weak", 19), image_size, [0.1] * 4, [0.2] * 4,
                         build_augment(0.1), 4)
    sampler = EpochSampler(len(ds), seed=0)
    loader = DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers)
    t = time.perf_counter()
    n = sum(len(b["image"]) for b in loader)
    return n / (time.perf_counter() - t)


def step_rate(image_size: int, batch: int, steps: int, device: str, amp: bool = False, channels_last: bool = False,
              model: str = "efficientnet-b2", num_classes: int = 19) -> float:
    """Training steps (forward, BCE, backward, AdamW) of a 4-channel backbone in images per second."""
    dev = torch.device(device)
    net = create_model(model, 4, num_classes, "none", image_size=image_size).to(dev)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    x = torch.randn(batch, 4, image_size, image_size, device=dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, num_classes, device=dev) < 0.2).float()
    loss_fn = nn.BCEWithLogitsLoss()

    def step() -> None:
        with torch.autocast(dev.type, dtype=torch.float16, enabled=amp):
            loss = loss_fn(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    step()  # warm-up: allocator, kernels
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t)


def epoch_cost(folder: Path, counts: list[int], image_size: int, repeats: int = 2) -> pd.DataFrame:
    """Seconds of one training epoch (Tez loop, B2 from scratch) for each number of training cells.

    A warm-up run goes first and each count keeps its fastest of ``repeats`` runs, so a stall
    caused by another process on a shared machine does not read as non-linearity.
    """
    csv = write_synthetic_cells(folder / "scale", n_fields=(max(counts) * 5 // 4) // 10 + 2, cells_per_field=10,
                                n_folds=5, seed=1)
    def run(n: int) -> float:
        cfg = TrainConfig(folds_csv=str(csv), out_dir=str(folder / "runs"), run_name=f"n{n}", fold=0, limit=n,
                          epochs=1, image_size=image_size, pretrained="none", batch_size=16, num_workers=0,
                          device="cpu", stats_samples=32)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            train_fold(cfg)  # tez prints per-epoch lines and progress bars
        return float(pd.read_csv(cfg.run_dir / "metrics.csv").iloc[0]["train_seconds"])

    run(counts[0])  # warm-up
    rows = [{"cells": n, "train_s": min(run(n) for _ in range(repeats))} for n in counts]
    df = pd.DataFrame(rows)
    df["ms_per_cell"] = 1000 * df["train_s"] / df["cells"]
    df["cost_vs_smallest"] = df["train_s"] / df["train_s"].iloc[0]
    df["cells_vs_smallest"] = df["cells"] / df["cells"].iloc[0]
    return df


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer cells and steps")
    args = ap.parse_args()
    torch.manual_seed(0)
    n_fields = 6 if args.quick else 12
    steps = 2 if args.quick else 3
    counts = [32, 64, 128] if args.quick else [64, 128, 256, 512]
    cuda = torch.cuda.is_available()
    t_all = time.perf_counter()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, CUDA {'yes: ' + torch.cuda.get_device_name(0) if cuda else 'no'}; "
          f"load average at start {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        csvs = {dt: write_synthetic_cells(tmp / dt, n_fields=n_fields, cells_per_field=8, dtype=dt, size_range=(150, 300))
                for dt in ("uint8", "uint16")}
        n_cells = n_fields * 8

        print("\n### Data loader vs model step at 260 px (CPU)\n")
        cases = [("uint8", 1), ("uint16", 0), ("uint16", 1), ("uint16", 2)]
        loader = {(dt, w): max(loader_rate(csvs[dt], 260, w) for _ in range(2)) for dt, w in cases}
        train_step = step_rate(260, 8, steps, "cpu")
        print("| what | images/s | loader / step |")
        print("|---|---|---|")
        for (dt, w), r in loader.items():
            print(f"| loader, {dt} crops 150-300 px, {w} workers, {n_cells} cells | {r:.1f} | {r / train_step:.1f}x |")
        print(f"| train step, EfficientNet-B2 fp32, batch 8, {steps} steps | {train_step:.2f} | 1.0x |")
        per_worker = loader[("uint16", 1)]
        print(f"\nGoal loader >= 3x step: {'met' if min(loader.values()) >= 3 * train_step else 'NOT met'} on this "
              f"machine. One worker process does {per_worker:.0f} img/s (uint16), so feeding a GPU that trains at "
              f"R img/s with 3x headroom needs about 3R/{per_worker:.0f} workers (0 workers: loading runs in the "
              "training process itself, between model steps).")

        print("\n### Train step with AMP + channels_last vs fp32 (GPU)\n")
        if cuda:
            fp32 = step_rate(260, 32, 10, "cuda")
            fast = step_rate(260, 32, 10, "cuda", amp=True, channels_last=True)
            amp_only = step_rate(260, 32, 10, "cuda", amp=True)
            print("| EfficientNet-B2, 260 px, batch 32 | images/s | vs fp32 |")
            print("|---|---|---|")
            for name, r in (("fp32", fp32), ("fp16 AMP", amp_only), ("fp16 AMP + channels_last", fast)):
                print(f"| {name} | {r:.0f} | {r / fp32:.2f}x |")
            print(f"\nloader (uint16, 2 workers) / AMP+channels_last step: {loader[('uint16', 2)] / fast:.2f}x")
        else:
            print("n/a: no CUDA device on this machine (the AMP and channels_last paths run only on CUDA).")

        print(f"\n### One training epoch vs number of cells (CPU, B2 from scratch, 64 px, batch 16)\n")
        df = epoch_cost(tmp, counts, 64)
        print("| training cells | train s | ms per cell | cost ratio | cells ratio |")
        print("|---|---|---|---|---|")
        for r in df.itertuples():
            print(f"| {r.cells} | {r.train_s:.2f} | {r.ms_per_cell:.1f} | {r.cost_vs_smallest:.2f} | {r.cells_vs_smallest:.0f} |")
        slope = np.polyfit(df["cells"], df["train_s"], 1)
        print(f"\nlinear fit: {slope[0] * 1000:.1f} ms per cell + {slope[1]:.2f} s fixed per epoch")
    print(f"\nbench wall time {time.perf_counter() - t_all:.0f} s; load average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

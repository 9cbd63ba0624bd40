"""The optimizer step: torch's per-tensor Python loop against its fused kernel (``cellloc.optim``'s default).

    PYTHONPATH=src python bench/bench_optimizer.py            # ~1 min on 2 CPU cores
    PYTHONPATH=src python bench/bench_optimizer.py --quick    # a smoke check

The demo's cell network (ResNet-18 from scratch, 4 channels, 19 classes) and batch (32 crops of 64 px), in the
precision ``train.py`` trains in by default on a CPU (``--cpu-bf16 off``: float32; ``--cpu-bf16 on`` to time bf16). For each optimizer with a fused kernel
(adamw is the default, sgd) it times, alternated in this one process, each keeping its fastest of
``--repeats``: the optimizer step alone, then a whole training step (forward, backward, step), with the loop
and with the fused kernel. Read the ratios, not the milliseconds (the load average is printed). It also
prints how far apart the two leave the weights after one step from the same start (the same update, rounded
differently; over many steps Adam's normalised steps let such roundings grow to about the learning rate).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time

import torch

from alternate import fastest_alternating
from cell_step import demo_batch, training_step
from cellloc.models import create_model
from cellloc.optim import make_optimizer
from cellloc.runs.train import TrainConfig, mixed_precision

TRAIN_DEFAULT_BF16 = {f.name: f.default for f in dataclasses.fields(TrainConfig)}["cpu_bf16"]


def setup(name: str, fused: bool, precision: str):
    """(one training step, one optimizer step, the network) for optimizer ``name``, fused or not."""
    torch.manual_seed(0)
    net = create_model("resnet18", in_chans=4, num_classes=19, pretrained="none")
    opt = make_optimizer(name, net, 1e-3, weight_decay=1e-4, momentum=0.9, fused=fused)
    x, y = demo_batch(seed=1)
    train_step = training_step(net, opt, x, y, precision == "bf16")
    return train_step, opt.step, net


def timed(job, n: int) -> dict[str, float]:
    job()  # warm up
    t0 = time.perf_counter()
    for _ in range(n):
        job()
    return {"ms": (time.perf_counter() - t0) / n * 1000}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpu-bf16", default=TRAIN_DEFAULT_BF16, choices=["off", "on", "auto"],
                    help="train.py's --cpu-bf16 (default: its default)")
    args = ap.parse_args()
    n_opt, n_train = (5, 2) if args.quick else (40, 10)
    precision = mixed_precision(False, False, args.cpu_bf16)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}, training precision {precision}; load average at start {os.getloadavg()[0]:.2f}")
    t_all = time.perf_counter()
    print("\n| optimizer | optimizer step: loop ms | fused ms | fused vs loop | training step: loop ms | fused ms | "
          "fused vs loop | weights apart after one step |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ("adamw", "sgd"):
        jobs = {fused: setup(name, fused, precision) for fused in (False, True)}
        for train_step, _, _ in jobs.values():  # gradients to step with
            train_step()
        opt_best = fastest_alternating({f: (lambda f=f: timed(jobs[f][1], n_opt)) for f in jobs}, args.repeats, "ms")
        fresh = {fused: setup(name, fused, precision) for fused in (False, True)}
        step_best = fastest_alternating({f: (lambda f=f: timed(fresh[f][0], n_train)) for f in fresh}, args.repeats,
                                        "ms")
        once = {fused: setup(name, fused, precision) for fused in (False, True)}
        for train_step, _, _ in once.values():
            train_step()
        apart = max((a - b).abs().max().item() for a, b in zip(once[False][2].parameters(), once[True][2].parameters()))
        o_loop, o_fused = opt_best[False]["ms"], opt_best[True]["ms"]
        s_loop, s_fused = step_best[False]["ms"], step_best[True]["ms"]
        print(f"| {name} | {o_loop:.1f} | {o_fused:.1f} | {o_loop / o_fused:.1f}x faster | {s_loop:.0f} | {s_fused:.0f} | "
              f"{s_loop / s_fused:.2f}x faster | {apart:.1e} |")
    print(f"\nbench wall time {time.perf_counter() - t_all:.0f} s; load average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

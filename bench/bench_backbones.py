"""Training speed of each registered backbone relative to EfficientNet-B0, side by side in one run.

    PYTHONPATH=src python bench/bench_backbones.py            # ~5 min on 2 shared CPU cores
    PYTHONPATH=src python bench/bench_backbones.py --quick    # 2 rounds, for a smoke check

One training step = forward + BCE-with-logits + backward + AdamW on a batch of random
``in_chans``-channel images (default 6, RxRx1's channels; 128 px, batch 16), from scratch, after
one warm-up step. All models are built first; then each round times one step of every model in
turn (EfficientNet-B0 first), and each model keeps its fastest step over the rounds, so a stall
caused by another process on a shared machine spoils one sample, not one model. Read the ratio
column: absolute rates on a shared CPU move with the load average printed beside them.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch
from torch import nn

from cellloc.models import create_model

BACKBONES = ("efficientnet-b0", "resnet18", "resnet50", "densenet121", "se-resnext50-32x4d", "se-resnext101-32x4d")


class Stepper:
    """A model, its optimiser and a fixed batch; ``seconds()`` times one training step."""

    def __init__(self, name: str, in_chans: int, image_size: int, batch: int, device: str) -> None:
        self.device = torch.device(device)
        self.net = create_model(name, in_chans, 31, "none", image_size=image_size).to(self.device).train()
        self.params = sum(p.numel() for p in self.net.parameters())
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=1e-4)
        self.x = torch.randn(batch, in_chans, image_size, image_size, device=self.device)
        self.y = (torch.rand(batch, 31, device=self.device) < 0.1).float()
        self.loss = nn.BCEWithLogitsLoss()
        self.step()  # warm-up: allocator, kernels

    def step(self) -> None:
        loss = self.loss(self.net(self.x), self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def seconds(self) -> float:
        """Wall time of one training step."""
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        t = time.perf_counter()
        self.step()
        sync()
        return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds instead of --rounds")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--in-chans", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=5, help="timed steps per model, interleaved; each keeps its best")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    rounds = 2 if args.quick else args.rounds
    torch.manual_seed(0)
    t_all = time.perf_counter()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, device {args.device}; load average at start {os.getloadavg()[0]:.2f}")
    print(f"\n### Training step, {args.in_chans} channels, {args.image_size} px, batch {args.batch}, "
          f"fp32, fastest of {rounds} interleaved steps\n")
    steppers = {name: Stepper(name, args.in_chans, args.image_size, args.batch, args.device) for name in BACKBONES}
    fastest = {name: float("inf") for name in BACKBONES}
    for _ in range(rounds):
        for name, stepper in steppers.items():
            fastest[name] = min(fastest[name], stepper.seconds())
    best = {name: args.batch / s for name, s in fastest.items()}
    params = {name: stepper.params for name, stepper in steppers.items()}
    ref = best[BACKBONES[0]]
    print("| backbone | parameters (M) | images/s | vs EfficientNet-B0 |")
    print("|---|---|---|---|")
    for name in BACKBONES:
        print(f"| {name} | {params[name] / 1e6:.1f} | {best[name]:.1f} | {best[name] / ref:.2f}x |")
    print(f"\nbench wall time {time.perf_counter() - t_all:.0f} s; load average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

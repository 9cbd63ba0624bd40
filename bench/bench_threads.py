"""How many intra-op threads: 1 vs 2 vs every core, PyTorch and OpenVINO, side by side in one run.

    PYTHONPATH=src python bench/bench_threads.py [--rounds 2] [--runs 3] [--dpn-side 256]

Each (work, runtime, threads) runs in a fresh process (thread pools are per process and are set
before the first op), the processes interleaved round by round so load from other sessions hits
every setting alike. Per process: one untimed call, then the median of ``--runs`` timed calls,
and the 1-minute load average when the process started (the load it met, its own excluded).

Work measured, all float32 on random weights (cost does not depend on the weights):

* ``dpn``: the HPA DPN-U-Net forward on one (1, 3, S, S) input (S = 256: a 1024 px field);
* ``b0``: EfficientNet-B0 forward, 4 channels, batch 32 of 64 px crops (predict's classifier);
* ``b0 train``: one training step of the same (forward, BCE, backward, AdamW), PyTorch only.

PyTorch runs also with ``OMP_WAIT_POLICY=PASSIVE`` (idle OpenMP threads sleep instead of
spinning) at more than one thread: the candidate fix for PyTorch's multi-thread collapse when
other processes hold the cores. OpenVINO graphs are converted once by this process, before the
timing, into a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKS = ("dpn", "b0", "b0 train")


def _input_shape(work: str, side: int) -> tuple[int, ...]:
    return (1, 3, side, side) if work == "dpn" else (32, 4, 64, 64)


def _module(work: str):
    import torch

    from cellloc.models import create_model
    from cellloc.segmentation.dpn_unet import DPNUnet

    torch.manual_seed(0)
    if work == "dpn":
        return DPNUnet().eval()
    return create_model("efficientnet-b0", 4, 19, "none", image_size=64)


def child(work: str, runtime: str, threads: int, runs: int, side: int, graph: str) -> None:
    """One setting in this fresh process: print {"load": ..., "times": [...]} as JSON."""
    load = os.getloadavg()[0]
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    shape = _input_shape(work, side)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    if runtime == "openvino":
        from cellloc.runtime import OpenVINORunner

        runner = OpenVINORunner(graph, threads)
        call = lambda: runner(x)  # noqa: E731
    elif work == "b0 train":
        net = _module(work).train()
        opt = torch.optim.AdamW(net.parameters(), 1e-3)
        xt, yt = torch.from_numpy(x), torch.zeros(shape[0], 19)

        def call():
            opt.zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(net(xt), yt).backward()
            opt.step()
    else:
        net = _module(work)
        xt = torch.from_numpy(x)

        def call():
            with torch.inference_mode():
                return net(xt)
    call()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    print(json.dumps({"load": load, "times": times}))


def settings(cpus: int) -> list[tuple[str, str, int, str]]:
    """(work, runtime, threads, OMP wait policy) for every compared setting."""
    counts = sorted({1, 2, cpus})
    out = []
    for work in WORKS:
        for n in counts:
            out.append((work, "torch", n, ""))
            if n > 1:
                out.append((work, "torch", n, "PASSIVE"))
            if work != "b0 train":
                out.append((work, "openvino", n, ""))
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        work, runtime, threads, runs, side, graph = argv[1:]
        return child(work, runtime, int(threads), int(runs), int(side), graph)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="times every setting runs (interleaved)")
    parser.add_argument("--runs", type=int, default=3, help="timed calls per process (median kept)")
    parser.add_argument("--dpn-side", type=int, default=256, help="DPN-U-Net input side (256: a 1024 px field)")
    parser.add_argument("--works", default=",".join(WORKS), help="comma-separated subset of " + ", ".join(WORKS))
    args = parser.parse_args(argv)
    works = [w.strip() for w in args.works.split(",")]

    import openvino
    import torch

    from cellloc.runtime import available_cpus, export_openvino

    cpus = available_cpus()
    start = time.time()
    print(f"machine: {platform.machine()}, {cpus} CPUs for this process, torch {torch.__version__}, "
          f"openvino {openvino.__version__}; load average at start {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="bench_threads_") as tmp:
        graphs = {}
        for work in works:
            if work != "b0 train":
                shape = _input_shape(work, args.dpn_side)
                graphs[work] = str(export_openvino(_module(work).eval(), shape[1:], Path(tmp) / f"{work}.xml"))
        todo = [s for s in settings(cpus) if s[0] in works]
        results: dict[tuple, list[dict]] = {s: [] for s in todo}
        for _ in range(args.rounds):
            for s in todo:
                work, runtime, n, policy = s
                env = {**os.environ, "OMP_NUM_THREADS": str(n), "MKL_NUM_THREADS": str(n)}
                env.pop("OMP_WAIT_POLICY", None)
                if policy:
                    env["OMP_WAIT_POLICY"] = policy
                out = subprocess.run([sys.executable, __file__, "--child", work, runtime, str(n), str(args.runs),
                                      str(args.dpn_side), graphs.get(work, "")], env=env, check=True,
                                     capture_output=True, text=True).stdout
                results[s].append(json.loads(out.strip().splitlines()[-1]))
    print()
    print("| work | runtime | threads | s per call (median of rounds) | per round | x the 1-thread time | load met (1 min) |")
    print("|---|---|---:|---:|---|---:|---|")
    one = {}
    for s in todo:
        work, runtime, n, policy = s
        per_round = [statistics.median(r["times"]) for r in results[s]]
        sec = statistics.median(per_round)
        if n == 1:
            one[work, runtime] = sec
        name = runtime + (f", OMP_WAIT_POLICY={policy}" if policy else "")
        loads = "/".join(f"{r['load']:.1f}" for r in results[s])
        print(f"| {work} | {name} | {n} | {sec:.3f} | {' '.join(f'{t:.3f}' for t in per_round)} | "
              f"{one[work, runtime] / sec:.2f} | {loads} |")
    print()
    print(f"x the 1-thread time: > 1 means more threads were faster. dpn input 1x3x{args.dpn_side}^2; b0 batch 32 x 4 x 64^2.")
    print(f"bench wall time {time.time() - start:.0f} s; load average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    sys.exit(main())

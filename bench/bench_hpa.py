"""Benchmark the hpa segmentation backend on this machine, as ratios within one run.

    PYTHONPATH=src python bench/bench_hpa.py [--fields 2] [--size 2048] [--threads N]

Writes ``--fields`` generated 4-channel fields as PNGs to a temporary folder, and weights of
the published layout (``shortcut_state_dict``: random deep path, so forward passes cost what
the real networks cost, rewired so that cells are found and post-processing has work) to a
temporary weights folder. Then, per field, it times:

(a) the two networks one field at a time against all fields in one batch,
(b) post-processing on the network-scale maps against the full-resolution maps,
(c) the whole default path against decoding the field's PNGs.

Network timings alternate single and batched runs and keep the best of ``--repeats`` each;
the load average is printed because other processes sharing the CPU distort absolute times.
Prints a markdown table. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from cellloc.fieldio import read_field, write_png
from cellloc.segmentation.base import SegmentConfig
from cellloc.segmentation.dpn_unet import shortcut_state_dict
from cellloc.segmentation.hpa import HPASegmenter
from cellloc.segmentation.weights import CELL_MODELS, NUCLEI_MODEL

CHANNELS = ("red", "green", "blue", "yellow")


def synthetic_field(rng: np.random.Generator, size: int) -> np.ndarray:
    """uint8 size x size x 4 (red, green, blue, yellow): ~25 cells at HPA scale (0.08 um/px at
    2048) with noise, so PNGs compress and decode like microscopy rather than flat fills."""
    img = rng.normal(12, 4, (size, size, 4)).clip(0, 255)
    yy, xx = np.ogrid[:size, :size]
    step = size // 5
    for gy in range(5):
        for gx in range(5):
            y = gy * step + step // 2 + rng.integers(-step // 8, step // 8)
            x = gx * step + step // 2 + rng.integers(-step // 8, step // 8)
            d2 = (yy - y) ** 2 + (xx - x) ** 2
            r_cell, r_nuc = step * rng.uniform(0.30, 0.42), step * rng.uniform(0.12, 0.18)
            img[..., 0][d2 <= r_cell**2] += 170
            img[..., 1][d2 <= r_cell**2] += rng.uniform(20, 120)
            img[..., 3][d2 <= r_cell**2] += 110
            img[..., 2][d2 <= r_nuc**2] += 200
    img += rng.normal(0, 6, img.shape)
    return img.clip(0, 255).astype(np.uint8)


def best_of(repeats: int, fn: Callable[[], object]) -> tuple[float, object]:
    """(fastest wall time in seconds, last result) over ``repeats`` calls."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def peak_rss(weights: str, folder: str, image_id: str, scale: str, threads: str) -> None:
    """Child process: segment one field with the default settings, print peak RSS in GB."""
    torch.set_num_threads(int(threads))
    seg = HPASegmenter(SegmentConfig(backend="hpa", weights_dir=weights, scale_factor=float(scale)))
    seg.segment(read_field(folder, image_id, CHANNELS))
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent through fork and exec.
    hwm_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(hwm_kb / 1024**2)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--peak-rss"]:
        return peak_rss(*argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields", type=int, default=2, help="fields, all in one batch for (a)")
    parser.add_argument("--size", type=int, default=2048, help="field side in pixels")
    parser.add_argument("--scale", type=float, default=0.25, help="scale_factor (0.25: 2048 -> 512 network input)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=2, help="runs of the network and full-size timings; the best is kept")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    n = args.fields

    with tempfile.TemporaryDirectory(prefix="bench_hpa_") as tmp:
        tmp = Path(tmp)
        weights = tmp / "weights"
        weights.mkdir()
        torch.save(shortcut_state_dict(), weights / NUCLEI_MODEL)
        for name in CELL_MODELS.values():
            (weights / name).symlink_to(NUCLEI_MODEL)
        fields_dir = tmp / "fields"
        ids = [f"field{i}" for i in range(n)]
        for i in ids:
            img = synthetic_field(rng, args.size)
            for c, ch in enumerate(CHANNELS):
                write_png(fields_dir / f"{i}_{ch}.png", img[..., c], compression=3)

        cfg = SegmentConfig(backend="hpa", weights_dir=str(weights), scale_factor=args.scale, batch_size=1)
        t_load, single = best_of(1, lambda: HPASegmenter(cfg))
        # A second segmenter for the other two settings (batched passes, full-resolution labelling).
        other = HPASegmenter(replace(cfg, batch_size=n, postprocess_at_network_scale=False))

        load_before = os.getloadavg()[0]
        t_decode, images = best_of(3, lambda: [read_field(fields_dir, i, CHANNELS) for i in ids])
        t_prep, _ = best_of(3, lambda: [single.network_inputs(im) for im in images])
        single.predict(images[:1])  # warm-up: the first pass at a new size sets up kernels
        # (a) interleaved, so that load from other processes hits both sides alike; best of each.
        t_one = t_batch = float("inf")
        for _ in range(args.repeats):
            t, maps = best_of(1, lambda: single.predict(images))
            t_one = min(t_one, t)
            t, maps_b = best_of(1, lambda: other.predict(images))
            t_batch = min(t_batch, t)
        diff = max(float(np.abs(a - b).max()) for pair, pair_b in zip(maps, maps_b) for a, b in zip(pair, pair_b))
        # (b) the same maps labelled both ways.
        t_post_net, labels = best_of(3, lambda: [single.labels_from_maps(nm, cm, im.shape) for (nm, cm), im in zip(maps, images)])
        t_post_full, labels_full = best_of(
            args.repeats, lambda: [other.labels_from_maps(nm, cm, im.shape) for (nm, cm), im in zip(maps, images)]
        )
        # (c) one field from its PNGs to labels, the default way.
        t_whole, _ = best_of(1, lambda: single.segment(read_field(fields_dir, ids[0], CHANNELS)))
        load_after = os.getloadavg()[0]
        del single, other
        # Peak memory of the default path alone, in a fresh process (this one holds two segmenters).
        peak_gb = float(
            subprocess.run(
                [sys.executable, __file__, "--peak-rss", str(weights), str(fields_dir), ids[0], str(args.scale), str(args.threads)],
                check=True, capture_output=True, text=True,
            ).stdout.split()[-1]
        )

    cells = [int(c.max()) for c, _ in labels]
    cells_full = [int(c.max()) for c, _ in labels_full]
    ious = []
    for (a, _), (b, _) in zip(labels, labels_full):
        for i in range(1, int(a.max()) + 1):
            m = a == i
            j = np.bincount(b[m]).argmax() if m.any() else 0
            if j:
                ious.append((m & (b == j)).sum() / (m | (b == j)).sum())
    net_side = round(args.size * args.scale)
    per = 1.0 / n
    rows = [
        ("decode the field's 4 PNGs (read_field)", t_decode * per, None),
        ("preprocess: rescale 3 planes, normalise", t_prep * per, None),
        ("networks, one field at a time (nuclei + cell)", t_one * per, None),
        (f"networks, {n} fields in one batch", t_batch * per, t_batch / t_one),
        ("post-process at network scale (default)", t_post_net * per, None),
        ("post-process at full resolution (reference)", t_post_full * per, t_post_full / t_post_net),
        ("whole field: decode + segment (default settings)", t_whole, None),
    ]
    print(f"hpa backend, {n} generated {args.size}^2 fields, scale {args.scale} -> {net_side}^2 network input, "
          f"torch {torch.__version__}, {args.threads} thread(s), {platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {load_before:.1f} before / {load_after:.1f} after")
    print()
    print("| step | s per field | x decode | ratio |")
    print("|---|---:|---:|---:|")
    for name, sec, ratio in rows:
        print(f"| {name} | {sec:.3f} | {sec / (t_decode * per):.1f} | {'' if ratio is None else f'{ratio:.2f}'} |")
    print()
    print("- ratio column: batched / one-at-a-time network time; full-resolution / network-scale post-processing.")
    print(f"- one forward pass at {net_side}^2 (one field, one network): {t_one * per / 2:.2f} s; "
          f"loading both networks: {t_load:.1f} s; peak RSS to segment one field (fresh process): {peak_gb:.2f} GB.")
    print(f"- batched and single maps differ by at most {diff:.1e} (probability).")
    print(f"- cells found: network scale {cells}, full resolution {cells_full}; per-cell IoU between the two "
          f"paths: median {np.median(ious):.3f}, min {np.min(ious):.3f}.")


if __name__ == "__main__":
    sys.exit(main())

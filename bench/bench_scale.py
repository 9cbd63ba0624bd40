"""What estimating the pixel size adds to the classical backend's time per field, side by side.

    PYTHONPATH=src python bench/bench_scale.py            # generated 512-3072 px fields, and the real images in ../shared
    PYTHONPATH=src python bench/bench_scale.py --quick    # 512 and 2048 px only, 1 field, 3 repeats

Per field, timed one after the other on the same decoded array (median of the repeats): the
estimate alone (``scale.resolve_pixel_size`` with no pixel size given: the nucleus measure,
then the snap to the HPA width rule) and ``segment(image, pixel_size_um=...)`` at the pixel size
it found. The default ``segment(image)`` costs their sum. Generated fields are drawn by the
project's generator (HPA-like, 8-bit); the real ones are the GOWT1 and HeLa frames of
``../shared/data/nuclei_gt`` and the HPA sample field, when present. Read the ratio, not the
seconds: the machine is shared, so the load average is printed too.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cellloc.fieldio import read_channel, read_field
from cellloc.segmentation import SegmentConfig, create_segmenter
from cellloc.segmentation.scale import resolve_pixel_size
from cellloc.synth import SynthConfig, generate_field

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def load_line() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def fields(sizes: list[int], n: int) -> list[tuple[str, np.ndarray]]:
    out = [(f"generated {s}^2 #{i}", generate_field(SynthConfig(size=s, seed=7), i).image) for s in sizes for i in range(n)]
    real = [("GOWT1 t01 (1024x1024)", SHARED / "nuclei_gt" / "gowt1_t01_image.png"),
            ("HeLa t13 (700x1100, 16-bit)", SHARED / "nuclei_gt" / "hela_t13_image.png")]
    out += [(name, read_channel(path)) for name, path in real if path.exists()]
    if (REPO / "input" / "sample" / "57_F11_1_blue.png").exists():
        out.append(("HPA sample 57_F11_1 (1728^2)", read_field(REPO / "input" / "sample", "57_F11_1")))
    return out


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="512 and 2048 px, 1 field each, 3 repeats")
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 3072])
    ap.add_argument("--fields", type=int, default=2, help="generated fields per size")
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    if a.quick:
        a.sizes, a.fields, a.repeat = [512, 2048], 1, 3
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, OpenCV {cv2.__version__} with {cv2.getNumThreads()} "
          f"threads; load average {load_line()}\n")
    cfg = SegmentConfig()
    seg = create_segmenter(cfg)
    print("| field | pixel size used | estimate ms | segment ms | estimate / segment |")
    print("|---|---|---:|---:|---:|")
    ratios = []
    for name, image in fields(a.sizes, a.fields):
        px = resolve_pixel_size(cfg, image)
        seg.segment(image, pixel_size_um=px.um)  # warm-up
        t_est = median_time(lambda: resolve_pixel_size(cfg, image), a.repeat)
        t_seg = median_time(lambda: seg.segment(image, pixel_size_um=px.um), a.repeat)
        ratios.append(t_est / t_seg)
        print(f"| {name} | {px.describe()} | {1000 * t_est:.1f} | {1000 * t_seg:.1f} | {t_est / t_seg:.2f} |")
    print(f"\nestimate / segment: median {statistics.median(ratios):.2f}, max {max(ratios):.2f}; "
          f"load average at end {load_line()}")


if __name__ == "__main__":
    main()

"""Classical segmentation against decoding the field it segments, 1 vs 2 workers, and peak memory.

    PYTHONPATH=src python bench/bench_segment.py            # 1024, 2048, 3072 px; 8- and 16-bit
    PYTHONPATH=src python bench/bench_segment.py --quick    # 512 and 1024 px, 8-bit, for a smoke check

Fields are drawn by the project's generator and written as PNGs with ``write_dataset`` (8-bit is
what ``make_data.py`` writes by default; 16-bit is what ``--bit-depth 16`` writes), then read back
with ``read_field``, as every run does. The backend is the default one,
``create_segmenter(SegmentConfig())`` = classical. Everything below is measured in this one run:

1. per field: decoding its 4 PNGs (``read_field``) and ``segment`` on the decoded array, timed
   one after the other on the same field (median of the repeats, mean over the fields). The
   issue's goal is segment <= 3x decode.
2. a batch: the real run path ``run_segmentation(SegmentRunConfig(workers=N))`` (read, segment,
   write masks, cells table and crops), fields/s with 1 and 2 worker processes, pool start-up
   included; and the same for read + segment alone (no outputs) to show what the writing costs
   the scaling. The generated truth is moved aside so the run does what it does on real data.
3. memory of a fresh process per size: RSS after imports, peak RSS (VmHWM) while reading one
   field, the RSS left holding it, then the peak while segmenting it (the peak is reset after
   reading through /proc/self/clear_refs, so reading's transient buffers do not hide it). The
   segment overhead is that peak over the RSS holding the field, and in field array sizes.

Read the ratios, not the seconds: the machine is shared, so the load average is printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cellloc.fieldio import list_fields, read_field
from cellloc.generators import write_dataset
from cellloc.runs.segment import SegmentRunConfig, run_segmentation
from cellloc.segmentation import SegmentConfig, create_segmenter
from cellloc.synth import SynthConfig


def machine_line() -> str:
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, python {platform.python_version()}, numpy {np.__version__}, "
            f"OpenCV {cv2.__version__} with {cv2.getNumThreads()} threads; load average {load}")


def make_fields(root: Path, size: int, bit_depth: int, n: int) -> Path:
    """Write ``n`` generated fields; return their folder (truth moved out of the run's reach)."""
    ds = root / f"{bit_depth}bit_{size}"
    write_dataset(SynthConfig(size=size, bit_depth=bit_depth, seed=7), ds, n, workers=min(2, n))
    (ds / "truth").rename(root / f"{ds.name}_truth")
    return ds / "train"


def time_decode_vs_segment(folder: Path, repeat: int) -> tuple[float, float, int]:
    """(mean decode s/field, mean segment s/field, mean cells/field), medians over ``repeat``."""
    seg = create_segmenter(SegmentConfig())
    seg.segment(read_field(folder, list_fields(folder).ids[0]))  # warm-up: imports, caches
    decode, segment, cells = [], [], []
    for image_id in list_fields(folder).ids:
        d, s = [], []
        for _ in range(repeat):
            t = time.perf_counter()
            image = read_field(folder, image_id)
            d.append(time.perf_counter() - t)
            t = time.perf_counter()
            labels, _ = seg.segment(image)
            s.append(time.perf_counter() - t)
        decode.append(statistics.median(d))
        segment.append(statistics.median(s))
        cells.append(int(labels.max()))
    return float(np.mean(decode)), float(np.mean(segment)), round(float(np.mean(cells)))


_SEGMENTER = None


def _read_and_segment(args: tuple[str, str]) -> int:
    global _SEGMENTER
    if _SEGMENTER is None:
        _SEGMENTER = create_segmenter(SegmentConfig())
    cells, _ = _SEGMENTER.segment(read_field(*args))
    return int(cells.max())


def segment_only_rate(folder: Path, workers: int) -> float:
    """Fields/s of read + segment (no outputs) with ``workers`` processes, start-up included."""
    jobs = [(str(folder), i) for i in list_fields(folder).ids]
    t = time.perf_counter()
    if workers == 1:
        list(map(_read_and_segment, jobs))
    else:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_read_and_segment, jobs))
    return len(jobs) / (time.perf_counter() - t)


def run_rate(folder: Path, out: Path, workers: int) -> float:
    """Fields/s of the real run (``run_segmentation``) into a fresh ``out``."""
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    summary = run_segmentation(SegmentRunConfig(input=str(folder), out=str(out), workers=workers))
    rate = summary.done / (time.perf_counter() - t)
    if summary.failed:
        raise RuntimeError(f"run failed on {summary.failed}")
    return rate


def vm_mb(key: str) -> float:
    """VmRSS (resident now) or VmHWM (peak resident since start or reset) of this process, MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def child_rss(folder: str, image_id: str) -> None:
    """Run in a fresh process: print RSS after imports, peak while reading, RSS holding the field,
    peak while segmenting (the peak reset after reading where the kernel allows it)."""
    seg = create_segmenter(SegmentConfig())
    base = vm_mb("VmRSS")
    image = read_field(folder, image_id)
    read_peak, holding = vm_mb("VmHWM"), vm_mb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    seg.segment(image)
    print(json.dumps({"base": base, "read_peak": read_peak, "holding": holding, "segment_peak": vm_mb("VmHWM"),
                      "reset": reset, "field_mb": image.nbytes / 2**20}))


def peak_rss(folder: Path) -> dict:
    image_id = list_fields(folder).ids[0]
    cmd = [sys.executable, __file__, "--child-rss", str(folder), image_id]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="512 and 1024 px, 8-bit only, 2 fields, 1 repeat")
    ap.add_argument("--fields", type=int, default=4, help="fields per size and bit depth")
    ap.add_argument("--repeat", type=int, default=3, help="timings per field (median taken)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 3072])
    ap.add_argument("--bit-depth", type=int, nargs="+", default=[8, 16], choices=[8, 16])
    ap.add_argument("--child-rss", nargs=2, metavar=("FOLDER", "ID"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child_rss:
        child_rss(*a.child_rss)
        return
    if a.quick:
        a.sizes, a.bit_depth, a.fields, a.repeat = [512, 1024], [8], 2, 1
    t_all = time.perf_counter()
    print(f"machine: {machine_line()}")
    print(f"classical backend, default SegmentConfig; {a.fields} generated fields per size and bit depth, "
          f"{a.repeat} repeats per field\n")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_segment_") as tmp:
        for bits in a.bit_depth:
            for size in a.sizes:
                folder = make_fields(Path(tmp), size, bits, a.fields)
                dec, seg, cells = time_decode_vs_segment(folder, a.repeat)
                load = os.getloadavg()[0]
                run = [run_rate(folder, Path(tmp) / "out", w) for w in (1, 2)]
                only = [segment_only_rate(folder, w) for w in (1, 2)]
                rss = peak_rss(folder)
                rows.append(dict(bits=bits, size=size, dec=dec, seg=seg, cells=cells, load=load, run=run, only=only, rss=rss))
                shutil.rmtree(folder.parent)

    print("### 1. Segment vs decode, per field (goal: segment <= 3x decode)\n")
    print("| field | cells | decode 4 PNGs s | segment s | segment / decode | goal |")
    print("|---|---:|---:|---:|---:|---|")
    for r in rows:
        ratio = r["seg"] / r["dec"]
        print(f"| {r['size']}^2 {r['bits']}-bit | {r['cells']} | {r['dec']:.3f} | {r['seg']:.3f} | {ratio:.2f}x | "
              f"{'met' if ratio <= 3 else 'NOT met'} |")

    print(f"\n### 2. Batch of {a.fields} fields, 1 vs 2 worker processes\n")
    print("| field | load (1 min) | run_segmentation fields/s, 1 worker | 2 workers | speed-up | read+segment only, 1 worker | 2 workers | speed-up | segment share of the 1-worker run |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        (r1, r2), (o1, o2) = r["run"], r["only"]
        share = r["seg"] * r1
        print(f"| {r['size']}^2 {r['bits']}-bit | {r['load']:.1f} | {r1:.2f} | {r2:.2f} | {r2 / r1:.2f}x | {o1:.2f} | {o2:.2f} | "
              f"{o2 / o1:.2f}x | {share:.0%} |")
    print("\nThe load column is the 1-minute load average just before the row's runs (this bench's own process "
          "included): with it near the core count, the second worker finds no idle core and the speed-up stays near 1x.")

    print("\n### 3. Memory of a fresh process, one field\n")
    print("| field | field array MB | RSS after imports MB | peak while reading MB | RSS holding the field MB | peak while segmenting MB | segment peak / holding | segment overhead, field sizes |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        m = r["rss"]
        print(f"| {r['size']}^2 {r['bits']}-bit | {m['field_mb']:.0f} | {m['base']:.0f} | {m['read_peak']:.0f} | {m['holding']:.0f} | "
              f"{m['segment_peak']:.0f} | {m['segment_peak'] / m['holding']:.2f}x | {(m['segment_peak'] - m['holding']) / m['field_mb']:.1f} |")
    if not all(r["rss"]["reset"] for r in rows):
        print("\n(the peak could not be reset after reading here, so 'while segmenting' is the peak of the whole process)")
    print(f"\nbench wall time {time.perf_counter() - t_all:.0f} s; load average at end "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()

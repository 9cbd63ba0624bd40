"""The whole ``segment.py`` job per field against decoding the field's PNGs: this tree beside a baseline commit.

    python bench/bench_segment_job.py                        # 3 generated 2048^2 8-bit fields + the real sample field
    python bench/bench_segment_job.py --quick                # 1024^2, 2 fields, 1 repeat: a smoke check
    python bench/bench_segment_job.py --baseline main --input /data/hpa/train --fields 5

The job is ``run_segmentation(SegmentRunConfig(input=..., out=<fresh>))`` with the defaults of
``python src/segment.py --input FOLDER`` and one worker: read the field, segment it (classical
backend, pixel size from the image), write both masks, the crops and the field's rows, then the
run's tables. The baseline is ``git archive <ref> src`` of this repository (default: the last
commit before the job was made faster), imported from a temporary folder. Each repeat runs a
fresh process per tree, one after the other, so all see the same load: the baseline, this tree,
and this tree again with each field read in place (without the serial executor's read-ahead,
which decodes the next field on a second thread: it saves wall time only where a core is free);
in each process:

1. decode: ``read_field`` of each field (median of 3 reads): the yardstick of the issue's goal,
   job <= 3x decode (the real sample field runs as ``--copies`` fields, so the job is a job of
   several fields, as a real run is: each field is read while the one before it is segmented);
2. job: one warm-up run of one field into a scratch folder (imports, caches), then the run of
   all fields, timed whole (wall and this process's CPU time, threads included) and divided by
   the field count;
3. stages, on the first field, each timed alone with that tree's functions: segmenting, the
   cell table, cutting the crops, writing the two PNG masks, writing the crops one file per cell
   and as one stacked file, the overlay (written only with ``--overlay``).

Outputs are compared after the runs: mask pixels, every crop (each tree's ``cells.csv`` names
them; ``data.load_crop`` reads both layouts) and every column the two cells tables share.
Read the ratios, not the seconds: the machine's load average is printed beside them.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASELINE = "8f95504"  # main before the segment job was made faster (per-cell crops, filtered PNG masks, whole-field table sums)
SRC = os.environ.get("BENCH_SEGMENT_SRC", str(REPO / "src"))  # which tree's cellloc a child process imports
sys.path.insert(0, SRC)


def load_line() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


# ----------------------------------------------------------------------------- child: one tree, one repeat


def timed(fn, *args, **kw) -> tuple[float, float]:
    """(wall s, CPU s of this process, every thread) of ``fn(*args, **kw)``."""
    t, c = time.perf_counter(), time.process_time()
    fn(*args, **kw)
    return time.perf_counter() - t, time.process_time() - c


def child(folder: str, out: str) -> dict:
    """Decode, job and stage timings of the tree on ``sys.path`` (see the module docstring)."""
    import numpy as np

    from cellloc.cells import cell_table, crop_cells
    from cellloc.fieldio import list_fields, read_field, write_mask, write_npy, write_png
    from cellloc.render import overlay
    from cellloc.runs.segment import SegmentRunConfig, run_segmentation
    from cellloc.segmentation import SegmentConfig, create_segmenter

    if os.environ.get("BENCH_READ_IN_PLACE"):  # this tree without its read-ahead (the serial executor's)
        from cellloc.runs import executor

        executor.SerialExecutor.in_order = False
    ids = list_fields(folder).ids
    shutil.rmtree(out, ignore_errors=True)
    run_segmentation(SegmentRunConfig(input=folder, out=out + "_warm", limit=1))  # imports, caches
    shutil.rmtree(out + "_warm")
    decode = [[timed(read_field, folder, i) for _ in range(3)] for i in ids]
    found: dict = {}
    wall, cpu = timed(lambda: found.setdefault("run", run_segmentation(SegmentRunConfig(input=folder, out=out))))
    summary = found["run"]
    if summary.failed:
        raise RuntimeError(f"failed fields: {summary.failed}")

    image = read_field(folder, ids[0])
    seg = create_segmenter(SegmentConfig())
    channels = ("red", "green", "blue", "yellow")
    stages = {"segment": timed(lambda: found.setdefault("labels", seg.segment(image)))[1]}
    cells, nuclei = found["labels"]
    stages["cell table"] = timed(lambda: found.setdefault("table", cell_table(image, cells, nuclei, channels)))[1]
    stages["cut crops"] = timed(lambda: found.setdefault("crops", crop_cells(image, cells, found["table"], 128, "cell")))[1]
    crops, scratch = found["crops"], Path(out + "_stages")
    stages["2 PNG masks"] = timed(lambda: [write_mask(scratch / f"m{k}.png", lab) for k, lab in enumerate((cells, nuclei))])[1]
    stages["crops, a file per cell"] = timed(lambda: [write_npy(scratch / "c" / f"{k}.npy", c) for k, c in crops.items()])[1]
    stages["crops, one stacked file"] = timed(lambda: write_npy(scratch / "stack.npy", np.stack(list(crops.values()))))[1]
    stages["overlay (--overlay)"] = timed(lambda: write_png(scratch / "o.png", overlay(image, cells, nuclei, channels)))[1]
    shutil.rmtree(scratch)
    return {"fields": len(ids), "cells": len(summary.cells),
            "decode_wall": float(np.mean([statistics.median(w for w, _ in d) for d in decode])),
            "decode_cpu": float(np.mean([statistics.median(c for _, c in d) for d in decode])),
            "job_wall": wall / len(ids), "job_cpu": cpu / len(ids), "stages": stages, "load": os.getloadavg()[0]}


# ----------------------------------------------------------------------------- parent


def extract_baseline(ref: str, dest: Path) -> Path:
    """``git archive ref src`` unpacked under ``dest``; returns its src folder."""
    data = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", ref, "src"], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest / "src"


def copies_of(folder: Path, dest: Path, n: int) -> Path:
    """``dest`` holding each field of ``folder`` ``n`` times, as ``{ID}_copy{k}_{channel}.png`` (file copies)."""
    from cellloc.fieldio import list_fields

    dest.mkdir(parents=True)
    for image_id in list_fields(folder).ids:
        for src in folder.glob(f"{image_id}_*.png"):
            for k in range(n):
                shutil.copyfile(src, dest / src.name.replace(image_id, f"{image_id}_copy{k}", 1))
    return dest


def run_child(src: Path, folder: Path, out: Path, extra_env: dict[str, str]) -> dict:
    env = {**os.environ, "BENCH_SEGMENT_SRC": str(src), "PYTHONPATH": str(src), **extra_env}
    res = subprocess.run([sys.executable, __file__, "--child", str(folder), str(out)], capture_output=True, text=True, env=env)
    if res.returncode:
        raise RuntimeError(f"child for {src} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def compare_outputs(base_out: Path, new_out: Path) -> str:
    """One line: are the masks, crops and shared table columns of the two runs the same?"""
    import numpy as np
    import pandas as pd

    from cellloc.data import load_crop
    from cellloc.fieldio import read_mask

    masks = sorted(p.name for p in (base_out / "masks").glob("*.png"))
    same_masks = all(np.array_equal(read_mask(base_out / "masks" / m), read_mask(new_out / "masks" / m)) for m in masks)
    size = [sum((o / "masks" / m).stat().st_size for m in masks) / 2**20 for o in (base_out, new_out)]
    a = pd.read_csv(base_out / "cells.csv", dtype=str, keep_default_na=False)
    b = pd.read_csv(new_out / "cells.csv", dtype=str, keep_default_na=False)
    shared = [c for c in a.columns if c in b.columns and c != "crop"]
    same_rows = len(a) == len(b) and a[shared].equals(b[shared])
    same_crops = same_rows and all(np.array_equal(load_crop(base_out / x), load_crop(new_out / y)) for x, y in zip(a["crop"], b["crop"]))
    files = [sum(1 for p in (o / "crops").rglob("*") if p.is_file()) for o in (base_out, new_out)]
    return (f"masks: {len(masks)} files, pixels {'identical' if same_masks else 'DIFFERENT'} ({size[0]:.1f} -> {size[1]:.1f} MiB); "
            f"crops: {len(a)}, arrays {'identical' if same_crops else 'DIFFERENT'} ({files[0]} -> {files[1]} files); "
            f"cells.csv: {len(shared)} shared columns {'identical' if same_rows else 'DIFFERENT'}, "
            f"new columns {', '.join(c for c in b.columns if c not in a.columns) or 'none'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", default=BASELINE, help=f"git ref of the tree to compare with (default {BASELINE})")
    ap.add_argument("--input", default="", help="a flat-layout folder of HPA fields instead of generated ones")
    ap.add_argument("--size", type=int, default=2048, help="side of the generated fields")
    ap.add_argument("--fields", type=int, default=3, help="generated fields")
    ap.add_argument("--repeat", type=int, default=3, help="processes per tree (median taken)")
    ap.add_argument("--copies", type=int, default=4, help="the real sample field as this many fields (a job of several "
                    "fields: each is read while the one before it is segmented)")
    ap.add_argument("--quick", action="store_true", help="1024^2, 2 fields, 1 repeat")
    ap.add_argument("--child", nargs=2, metavar=("FOLDER", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(*a.child)))
        return
    if a.quick:
        a.size, a.fields, a.repeat = 1024, 2, 1
    sys.path.insert(0, str(REPO / "bench"))
    from bench_segment import machine_line, make_fields

    t_all = time.perf_counter()
    print(f"machine: {machine_line()}")
    with tempfile.TemporaryDirectory(prefix="bench_segment_job_") as tmp:
        tmp = Path(tmp)
        # (src, environment): the baseline, this tree, and this tree reading each field in place
        trees = {f"baseline {a.baseline}": (extract_baseline(a.baseline, tmp / "baseline"), {}),
                 "this tree": (REPO / "src", {}), "this tree, fields read in place": (REPO / "src", {"BENCH_READ_IN_PLACE": "1"})}
        outs = {tree: tmp / "out" / f"tree{k}" for k, tree in enumerate(trees)}
        base, this = list(trees)[:2]
        sets = {}
        if a.input:
            sets[f"{Path(a.input).name} (given)"] = Path(a.input)
        else:
            sets[f"{a.fields} generated {a.size}^2 8-bit"] = make_fields(tmp, a.size, 8, a.fields)
            if (REPO / "input" / "sample").is_dir() and not a.quick:
                sets[f"real HPA sample 57_F11_1 x{a.copies}, 1728^2"] = copies_of(REPO / "input" / "sample", tmp / "real", a.copies)
        print(f"{load_line()}; baseline {a.baseline} vs this tree, {a.repeat} process(es) per tree and field set\n")
        results = {}
        for name, folder in sets.items():
            for r in range(a.repeat):
                for tree, (src, env) in trees.items():
                    results.setdefault((name, tree), []).append(run_child(src, folder, outs[tree], env))
            results[(name, "compare")] = compare_outputs(outs[base], outs[this])

    print("### The whole job per field against decoding the field's 4 PNGs (goal: job <= 3x decode)\n")
    print("| fields | tree | cells | load | decode wall s | job wall s | job / decode, wall | decode CPU s | job CPU s | job / decode, CPU |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    keys = ("decode_wall", "job_wall", "decode_cpu", "job_cpu", "load")
    for name in sets:
        for tree in trees:
            runs = results[(name, tree)]
            m = {k: statistics.median(x[k] for x in runs) for k in keys}
            print(f"| {name} | {tree} | {runs[0]['cells'] / runs[0]['fields']:.0f}/field | {m['load']:.1f} | {m['decode_wall']:.3f} | "
                  f"{m['job_wall']:.3f} | {m['job_wall'] / m['decode_wall']:.2f}x | {m['decode_cpu']:.3f} | {m['job_cpu']:.3f} | "
                  f"{m['job_cpu'] / m['decode_cpu']:.2f}x |")
        (bw, bc), (nw, nc) = [[statistics.median(x[k] for x in results[(name, t)]) for k in ("job_wall", "job_cpu")] for t in (base, this)]
        print(f"| {name} | **this tree's speed-up** | | | | **{bw / nw:.2f}x** | | | **{bc / nc:.2f}x** | |")
    print("\nCPU: this process's CPU seconds, every thread (OpenCV's, the mask writer); on a loaded machine wall time "
          "mostly measures waiting for a core, CPU time what the job costs.")
    print("\n### Where a field's CPU time goes (first field of each set, each stage alone, CPU s; median over the repeats)\n")
    print("| fields | tree | " + " | ".join(results[(next(iter(sets)), next(iter(trees)))][0]["stages"]) + " |")
    print("|---|---|" + "---:|" * len(results[(next(iter(sets)), next(iter(trees)))][0]["stages"]))
    for name in sets:
        for tree in trees:
            runs = results[(name, tree)]
            print(f"| {name} | {tree} | " + " | ".join(f"{statistics.median(x['stages'][k] for x in runs):.3f}" for k in runs[0]["stages"]) + " |")
    print("\n### Outputs\n")
    for name in sets:
        print(f"- {name}: {results[(name, 'compare')]}")
    print(f"\nbench wall time {time.perf_counter() - t_all:.0f} s; {load_line()} at end")


if __name__ == "__main__":
    main()

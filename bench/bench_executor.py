"""Fields/s of ``map_fields`` on each executor: serial, process pool, Dask with 1 and 2 local workers.

    python src/make_data.py --fields 16 --size 512 1024            # the 16 fields (input/synth/train)
    python bench/bench_executor.py                                  # needs pip install -e ".[distributed]"
    python bench/bench_executor.py --input DIR --noop 400

Every executor maps the same per-field function over the same fields: read the field's PNGs and
segment it with the classical backend, the segmenter built once per worker through ``init``.
Measured in this one run:

1. fields/s of the map (the executor already started; each worker's state build included), as
   a ratio to the serial map; the executor's start + stop time beside it;
2. the executor's overhead per field: a map of ``--noop`` no-op items (ms per item);
3. that every executor returned the same results, in input order;
4. the real run: ``run_segmentation`` (read, segment, write masks, crops and the field's rows on
   the workers; the tables on the driver) into a fresh folder per executor, fields/s including
   the executor's start and stop, as a ratio to serial, and whether the outputs are
   byte-identical to the serial run's.

Read the ratios, not the seconds: the machine is shared, so the load average is printed too.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
# Workers (spawned processes) import this module's functions by name, as they import cellloc's.
os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])
os.environ.setdefault("OMP_NUM_THREADS", "1")

from cellloc.fieldio import list_fields, read_field
from cellloc.runs.executor import open_executor
from cellloc.segmentation import SegmentConfig, create_segmenter


def segment_one(folder: str, segmenter, image_id: str) -> tuple[str, int]:
    """(field id, cells found): read + classical segmentation of one field."""
    cells, _ = segmenter.segment(read_field(folder, image_id))
    return image_id, int(cells.max())


def make_segmenter():
    return create_segmenter(SegmentConfig())


def noop(item: int) -> int:
    return item


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", default="input/synth/train")
    ap.add_argument("--noop", type=int, default=200, help="items of the no-op map")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    import bench_executor as mod  # by name, so worker processes can import the functions too

    ids = list_fields(args.input).ids
    if not ids:
        raise SystemExit(f"error: {args.input}: no fields; run python src/make_data.py --fields 16 --size 512 1024")
    print(f"{platform.machine()}, {os.cpu_count()} CPU cores, python {platform.python_version()}; "
          f"{len(ids)} fields from {args.input}")
    # the last run: Dask's default worker environment (MALLOC_TRIM_THRESHOLD_=65536), which the
    # executor's local cluster leaves out
    dask_default_env = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": 65536}
    runs = [("serial", 1, None), ("process", 2, None), ("dask", 1, None), ("dask", 2, None), ("dask", 2, dask_default_env)]
    base = None
    reference = None
    for name, workers, cluster_config in runs:
        t = time.perf_counter()
        try:
            ex = open_executor(name, workers)
            if cluster_config:
                ex.cluster_config.update(cluster_config)
            ex.__enter__()
        except Exception as exc:  # noqa: BLE001 - e.g. the distributed extra is missing
            print(f"{name:8s} {workers} worker(s): skipped ({exc})")
            continue
        started = time.perf_counter() - t
        try:
            t = time.perf_counter()
            res = list(ex.map(partial(mod.segment_one, args.input), ids, init=mod.make_segmenter))
            fps = len(ids) / (time.perf_counter() - t)
            t = time.perf_counter()
            list(ex.map(mod.noop, range(args.noop)))
            per_item = (time.perf_counter() - t) / args.noop
        finally:
            t = time.perf_counter()
            ex.__exit__(None, None, None)
            started += time.perf_counter() - t
        base = base or fps
        reference = reference or res
        note = " (Dask's default worker env)" if cluster_config else ""
        print(f"{name:8s} {workers} worker(s){note}: {fps:5.2f} fields/s = {fps / base:.2f}x serial; "
              f"no-op map {per_item * 1e3:6.2f} ms/item; start + stop {started:5.2f} s; "
              f"same results in order: {res == reference}")
    real_runs(args.input, runs[:4])
    print("load average " + " ".join(f"{v:.2f}" for v in os.getloadavg()))


def real_runs(folder: str, runs) -> None:
    """``run_segmentation`` per executor into a fresh folder; fields/s and byte-identity to serial."""
    import tempfile

    from cellloc.runs.segment import SegmentRunConfig, run_segmentation

    def files(out: Path) -> dict[str, bytes]:
        return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
                if p.is_file() and p.name != "segment_config.json"}

    base = reference = None
    with tempfile.TemporaryDirectory() as tmp:
        for name, workers, _ in runs:
            out = Path(tmp) / f"{name}{workers}"
            cfg = SegmentRunConfig(input=folder, out=str(out), executor=name, workers=workers)
            t = time.perf_counter()
            try:
                summary = run_segmentation(cfg)
            except Exception as exc:  # noqa: BLE001 - e.g. the distributed extra is missing
                print(f"segment run, {name} {workers}: skipped ({exc})")
                continue
            fps = summary.done / (time.perf_counter() - t)
            base = base or fps
            got = files(out)
            reference = reference or got
            print(f"segment run, {name:8s} {workers} worker(s): {fps:5.2f} fields/s = {fps / base:.2f}x serial "
                  f"(start + stop included; {summary.done} fields, {len(summary.cells)} cells); "
                  f"outputs byte-identical to serial: {got == reference}")


if __name__ == "__main__":
    main()

"""Image-level prediction (predict.py's run) on each executor: serial, process pool and Dask, side by side.

    python bench/bench_predict_executors.py                 # builds a tiny HPA-2018 run first (~3 min on 2 cores)
    python bench/bench_predict_executors.py --fields 64 --chunk 8 --image-size 256
    python bench/bench_predict_executors.py --models models/effb2_hpa-2018 --input input/hpa2018_test/test

Without --models, generates ``--fields`` HPA-2018 test images of 512 px (the competition's
size) and trains an EfficientNet-B0 for one epoch at ``--image-size`` on a few training images
in a temporary folder: the weights do not matter for speed. Then predicts the same fields with
``run_predict`` (the code of ``python src/predict.py``) once per executor, into a fresh folder
each: serial; a process pool of 1 and 2; a local Dask cluster of 1 and 2 workers. For each it
prints fields/s with the models' loading and the executor's start and stop included (what a
user waits for), as a ratio to serial; the steady rate, from the first finished chunk to the
last (workers started, models loaded: what a long run sees); and whether every output file
(scores, submission, part files; not ``predict_config.json``, which names the executor) is
byte-identical to the serial run's. Chunks of ``--chunk`` fields are the unit of
work. Read the ratios, not the seconds: the machine is shared, so the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "src"))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from cellloc.runs.predict import PredictConfig, load_predictor, run_predict  # noqa: E402

RUNS = [("serial", 1), ("process", 1), ("process", 2), ("dask", 1), ("dask", 2)]


def script(*args: str) -> None:
    """Run one of the project's scripts quietly; stop the bench if it fails."""
    r = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"error: {' '.join(args[:3])} failed:\n{r.stderr[-2000:]}")


def tiny_run(root: Path, fields: int, image_size: int) -> tuple[Path, Path]:
    """(run folder, test split folder): a one-epoch B0 on 12 generated images, ``fields`` test images."""
    script("src/make_data.py", "--task", "hpa-2018", "--root", str(root), "--fields", "12", "--size", "512")
    script("src/make_data.py", "--task", "hpa-2018", "--root", str(root), "--name", "hpa2018_test", "--split", "test",
           "--seed", "1", "--fields", str(fields), "--size", "512")
    train = root / "hpa2018"
    script("src/gen_folds.py", "--task", "hpa-2018", "--labels", str(train / "train.csv"), "--out", str(root / "folds.csv"),
           "--folds", "2")
    script("src/train.py", "--task", "hpa-2018", "--folds-csv", str(root / "folds.csv"), "--input", str(train / "train"),
           "--out-dir", str(root / "models"), "--run-name", "bench", "--model", "efficientnet-b0", "--pretrained", "none",
           "--image-size", str(image_size), "--epochs", "1", "--batch-size", "4", "--num-workers", "0",
           "--stats-samples", "4")
    return root / "models" / "bench", root / "hpa2018_test" / "test"


def files(out: Path) -> dict[str, bytes]:
    """Every output file's bytes, but the run's own config, which records its executor and workers."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "predict_config.json"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="", help="an image-level run folder (default: train a tiny HPA-2018 one)")
    ap.add_argument("--input", default="", help="its test fields (with --models)")
    ap.add_argument("--fields", type=int, default=64, help="test fields to generate (without --models)")
    ap.add_argument("--image-size", type=int, default=128, help="network input of the tiny run (without --models)")
    ap.add_argument("--chunk", type=int, default=8, help="fields per unit of work")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        if args.models:
            models, test = Path(args.models), Path(args.input)
            made = "given run"
        else:
            models, test = tiny_run(root / "data", args.fields, args.image_size)
            made = f"generated and trained in {time.perf_counter() - t:.0f} s"
        print(f"{platform.machine()}, {os.cpu_count()} CPU cores, python {platform.python_version()}, "
              f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}; run {models} ({made}), fields {test}, "
              f"chunk {args.chunk}, batch {args.batch_size}\n")
        print("| executor | workers | fields | seconds | fields/s | vs serial | steady fields/s | vs serial "
              "| outputs byte-identical to serial |")
        print("|---|---|---|---|---|---|---|---|---|")
        base = steady_base = reference = None
        for name, workers in RUNS:
            out = root / f"out_{name}{workers}"
            cfg = PredictConfig(models=str(models), input=str(test), out=str(out), executor=name, workers=workers,
                                chunk=args.chunk, batch_size=args.batch_size, sample_submission="none")
            ticks: list[tuple[float, int]] = []
            t = time.perf_counter()
            try:
                summary = run_predict(cfg, load_predictor(cfg), lambda n: ticks.append((time.perf_counter(), n)))
            except Exception as exc:  # noqa: BLE001 - e.g. the distributed extra is missing
                print(f"| {name} | {workers} | skipped: {exc} | | | | | | |")
                continue
            seconds = time.perf_counter() - t
            fps = summary.done / seconds
            # after the first finished chunk: every worker has started and loaded its models
            steady = sum(n for _, n in ticks[1:]) / (ticks[-1][0] - ticks[0][0]) if len(ticks) > 2 else float("nan")
            base = base or fps
            steady_base = steady_base or steady
            got = files(out)
            reference = reference or got
            print(f"| {name} | {workers} | {summary.done} | {seconds:.1f} | {fps:.2f} | {fps / base:.2f}x | {steady:.2f} "
                  f"| {steady / steady_base:.2f}x | {got == reference} |", flush=True)
    print("\nload average " + " ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()

"""segment.py and predict.py on the demo's fields with one worker process against two (``--workers``).

    PYTHONPATH=src python bench/bench_field_workers.py --train input/synth/train --test input/synth_test/test \
        --models models/effb2                       # after the demo; ~3 min on 2 CPU cores

Each script runs as a user runs it (a fresh process, ``--overwrite``), alternated in this one run, each setting
keeping its fastest of ``--repeats``; read the ratio, not the seconds (the load average is printed). The
outputs of the two must be the same files, byte for byte (the configs they save aside): the bench checks it.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from alternate import fastest_alternating

SKIP = {".cellloc.lock", "segment_config.json", "predict_config.json"}  # name the run's settings or hold a pid


def timed(cmd: list[str]) -> dict[str, float]:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *cmd], check=True, capture_output=True, text=True)
    return {"s": time.perf_counter() - t0}


def differing(a: Path, b: Path) -> list[str]:
    """Files under ``a`` and ``b`` (relative paths) that differ or exist in only one."""
    names = {p.relative_to(a) for p in a.rglob("*") if p.is_file()} | {p.relative_to(b) for p in b.rglob("*") if p.is_file()}
    return sorted(str(n) for n in names if n.name not in SKIP
                  and not ((a / n).is_file() and (b / n).is_file() and filecmp.cmp(a / n, b / n, shallow=False)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", default="input/synth/train", help="fields to segment (the demo's training fields)")
    ap.add_argument("--test", default="input/synth_test/test", help="fields to predict (the demo's test fields)")
    ap.add_argument("--models", default="models/effb2", help="the run to predict with (the demo's)")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    print(f"{os.cpu_count()} CPU cores; load average at start {os.getloadavg()[0]:.2f}\n")
    print("| script | fields | 1 worker s | 2 workers s | faster | same files |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        jobs = {
            "segment.py": lambda w: ["src/segment.py", "--input", args.train, "--out", str(out / f"seg{w}"),
                                     "--crop-size", "64", "--workers", str(w), "--overwrite"],
            "predict.py": lambda w: ["src/predict.py", "--input", args.test, "--models", args.models, "--out",
                                     str(out / f"pred{w}"), "--tta", "1", "--workers", str(w), "--overwrite"],
        }
        for script, cmd in jobs.items():
            best = fastest_alternating({w: (lambda w=w: timed(cmd(w))) for w in (1, 2)}, args.repeats, "s")
            name = "seg" if script == "segment.py" else "pred"
            diff = differing(out / f"{name}1", out / f"{name}2")
            fields = len(list(Path(args.train if script == "segment.py" else args.test).glob("*_blue.png")))
            print(f"| {script} | {fields} | {best[1]['s']:.1f} | {best[2]['s']:.1f} | {best[1]['s'] / best[2]['s']:.2f}x | "
                  f"{'yes' if not diff else 'NO: ' + ', '.join(diff[:5])} |")
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

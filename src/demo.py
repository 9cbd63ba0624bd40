"""Run the whole pipeline on the embedded default data, stage by stage, printing each score.

    python src/demo.py            # small sizes: a few minutes on 2 CPU cores
    python src/demo.py --fields 200 --size 1024   # a bigger run

Each stage is the same command a user would type; this script only chains them.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(title: str, args: list[str]) -> None:
    """Run one stage as a subprocess from the repository root; stop the demo if it fails."""
    print(f"\n=== {title}: python {' '.join(args)}", flush=True)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, *args], cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"demo: stage '{title}' failed (exit {done.returncode})")
    print(f"=== {title}: done in {time.perf_counter() - t0:.0f}s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fields", type=int, default=40, help="training fields to generate")
    ap.add_argument("--test-fields", type=int, default=12, help="held-out test fields to generate")
    ap.add_argument("--size", type=int, default=512, help="field size in pixels")
    ap.add_argument("--crop-size", type=int, default=64, help="cell crop size in pixels (the paper recipe: 260)")
    ap.add_argument("--epochs", type=int, default=3, help="training epochs of the fold-0 model")
    a = ap.parse_args()
    t0 = time.perf_counter()
    run("data", ["src/make_data.py", "--fields", str(a.fields), "--size", str(a.size)])
    run("test data", ["src/make_data.py", "--name", "synth_test", "--split", "test", "--seed", "1",
                      "--fields", str(a.test_fields), "--size", str(a.size)])
    run("segmentation score (generated fields with truth)", ["src/score_segmentation.py", "input/synth"])
    run("segment training fields", ["src/segment.py", "--input", "input/synth/train", "--crop-size", str(a.crop_size)])
    run("segment the real sample field", ["src/segment.py", "--input", "input/sample", "--overlay"])
    run("folds", ["src/gen_folds.py", "--folds", "5", "--seed", "42"])
    run("train fold 0 (CPU-sized: small crops, no ImageNet weights)",
        ["src/train.py", "--fold", "0", "--epochs", str(a.epochs), "--image-size", str(a.crop_size), "--pretrained", "none"])
    run("predict the held-out test fields", ["src/predict.py", "--input", "input/synth_test/test"])
    run("run report", ["src/report.py", "models/effb2"])
    run("check the submission", ["src/check_submission.py", "output/synth_test/submission.csv"])
    run("score the submission (competition metric, per-cell truth)",
        ["src/evaluate.py", "--truth", "input/synth_test/truth", "--submission", "output/synth_test/submission.csv"])
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()

"""Scored check: what blending each cell with an image-level model's field score changes (HPA single-cell).

Quality, not speed: for each seed, a cell model (as the demo trains it) and an image-level model
(whole fields, 19 classes, trained on the field labels, which are exact at that level; same
folds) are trained on fold 0 of the demo's data, then the held-out test fields are predicted four
ways and scored with the competition metric against the per-cell truth:

- ``none`` (``--blend none``): the cell model alone;
- ``mean_cell`` (``--blend product``, the default): ``cell^0.25 x field^0.75`` with the field's
  area-weighted mean cell score;
- ``image`` (``--blend image --image-models``): ``sqrt(cell x field)`` with the image model's score
  of the whole field (the winning solutions' cell x image);
- ``image_w075`` (``--blend image --field-weight 0.75``): ``cell^0.25 x field^0.75``, the
  image model's score given the share the mean cell score has by default;
- ``image_mean`` (``--blend image_mean``): ``0.7 cell + 0.3 field`` with the image model's score.

It also scores the two field scores themselves at field level (macro AP of each test field's
score against its true classes), which says why a blend helps or not. Run after the demo
(``python src/demo.py``: input/synth, input/synth_test, output/synth/folds.csv); trained runs
(models/blend_{cell,image}_s<seed>) and predictions (output/blend/s<seed>/<variant>) are reused
when present, so a rerun only scores.

    python bench/check_image_blend.py                        # seeds 42 43 44, the demo's scale
    python bench/check_image_blend.py --seeds 42 --image-epochs 6 --image-model efficientnet-b2 --image-size 256
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cellloc.classifier import load_ensemble  # noqa: E402
from cellloc.fieldio import multihot, read_field  # noqa: E402
from cellloc.labels import read_task_labels  # noqa: E402
from cellloc.metrics import nanmean, per_class_ap  # noqa: E402
from cellloc.pipeline import cell_weights, mean_cell_score  # noqa: E402
from cellloc.tasks import get_task  # noqa: E402

VARIANTS = {
    "none": ["--blend", "none"],
    "mean_cell": ["--blend", "product"],
    "image": ["--blend", "image", "--image-models", "{image}"],
    "image_w075": ["--blend", "image", "--field-weight", "0.75", "--image-models", "{image}"],
    "image_mean": ["--blend", "image_mean", "--field-weight", "0.3", "--image-models", "{image}"],
}


def sh(args: list[str], quiet: bool = True) -> str:
    """Run a script of this repository (python src/...) and return its stdout; stop on failure."""
    done = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(args)}: exit {done.returncode}\n{done.stderr[-2000:]}")
    if not quiet:
        print(done.stdout.strip().splitlines()[-1], flush=True)
    return done.stdout


def train(run: str, args: list[str]) -> None:
    if not (REPO / "models" / run / "fold0" / "summary.json").exists():
        sh(["src/train.py", "--fold", "0", "--pretrained", "none", "--run-name", run, *args])


def field_level_ap(out: Path, image_run: str, test: Path, truth: Path) -> tuple[float, float]:
    """(macro AP of the mean cell score, of the image model's score) per test field vs its true classes."""
    task = get_task("hpa-sc")
    labels = read_task_labels(truth / "labels.csv", task)
    y = multihot(list(labels["labels"]), task.num_classes)
    image = load_ensemble(REPO / "models" / image_run)
    mean_cell, image_score = [], []
    for image_id in labels["ID"]:
        cells = pd.read_csv(out / "cell_scores" / f"{image_id}.csv")
        probs = cells[[f"p{k}" for k in range(task.num_classes)]].to_numpy()
        mean_cell.append(mean_cell_score(probs, cell_weights(cells["area"].to_numpy(), cells["edge"].to_numpy())))
        image_score.append(image.predict([read_field(test, image_id, task.channels)])[0])
    return nanmean(per_class_ap(np.array(mean_cell), y)), nanmean(per_class_ap(np.array(image_score), y))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    ap.add_argument("--cell-epochs", type=int, default=6,
                    help="round 3's demo recipe, behind the README figures (the demo now trains 8, fold 0 of 10)")
    ap.add_argument("--cell-model", default="resnet18", help="the demo's cell model")
    ap.add_argument("--balance-power", type=float, default=0.5, help="the demo's class-balanced sampling")
    ap.add_argument("--crop-size", type=int, default=64, help="the demo's cell model input")
    ap.add_argument("--image-model", default="efficientnet-b0", help="image model backbone (B0: what 2 shared CPU cores train)")
    ap.add_argument("--image-size", type=int, default=128, help="image model input: the 512 px field resized")
    ap.add_argument("--image-epochs", type=int, default=12)
    a = ap.parse_args()
    test, truth = REPO / "input/synth_test/test", REPO / "input/synth_test/truth"
    print(f"load average {os.getloadavg()[0]:.1f}; seeds {a.seeds}", flush=True)
    rows = []
    for seed in a.seeds:
        cell, image = f"blend_cell_s{seed}", f"blend_image_s{seed}"
        train(cell, ["--epochs", str(a.cell_epochs), "--image-size", str(a.crop_size), "--seed", str(seed),
                     "--model", a.cell_model, "--monitor", "last", "--balance-power", str(a.balance_power)])
        # every epoch is kept until the last; the best by validation macro AP (8 fields) is the model
        train(image, ["--level", "image", "--model", a.image_model, "--image-size", str(a.image_size),
                      "--epochs", str(a.image_epochs), "--batch-size", "8", "--monitor", "macro_ap",
                      "--patience", str(a.image_epochs), "--seed", str(seed), "--num-workers", "0", "--cache-mb", "256"])
        summary = pd.read_json(REPO / "models" / image / "fold0" / "summary.json", typ="series")
        row = {"seed": seed, "image_val_ap": summary["metrics"]["macro_ap"]}
        for name, extra in VARIANTS.items():
            out = REPO / "output" / "blend" / f"s{seed}" / name
            if not (out / "submission.csv").exists():
                sh(["src/predict.py", "--models", f"models/{cell}", "--input", str(test), "--out", str(out),
                    *[e.format(image=f"models/{image}") for e in extra]])
            last = sh(["src/evaluate.py", "--truth", str(truth), "--submission", str(out / "submission.csv")]).strip()
            row[name] = float(last.splitlines()[-1].split("=")[1])
        row["field_ap_mean_cell"], row["field_ap_image"] = field_level_ap(
            REPO / "output" / "blend" / f"s{seed}" / "none", image, test, truth)
        rows.append(row)
        print(", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
    df = pd.DataFrame(rows)
    print("\n| | " + " | ".join(f"seed {s}" for s in df["seed"]) + " | mean | std |")
    print("|---|" + "---:|" * (len(df) + 2))
    for col in [c for c in df.columns if c != "seed"]:
        v = df[col].to_numpy(float)
        print(f"| {col} | " + " | ".join(f"{x:.4f}" for x in v) + f" | {v.mean():.4f} | {v.std(ddof=1) if len(v) > 1 else 0:.4f} |")
    print(f"\nload average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

"""Which threshold rule scores best on images it was not fitted on? (simulated out-of-fold scores)

    python bench/bench_thresholds.py [--oof 300 1000 5000] [--seeds 8]

Scores are drawn per class as ``sigmoid(offset_k + separation_k * y + N(0, 1))`` with the HPA
2018 class frequencies, offsets that put rare classes low (as BCE training does) and
separations from 1 to 4. Thresholds are fitted on ``--oof`` images and scored on 20,000 fresh
ones (macro F1 over the classes present there). Rows: 0.5, the global threshold, per-class F1
thresholds unguarded, and guarded toward the global or the share prior. Also the time of one
fit on 31,072 x 28 scores (the real training set's size).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cellloc.synth_hpa2018 import HPA_2018_IMAGES, HPA_2018_TRAIN_COUNTS  # noqa: E402
from cellloc.thresholds import apply_thresholds, f1_per_class, fit_thresholds, predict_labels  # noqa: E402

PREV = np.array(HPA_2018_TRAIN_COUNTS) / HPA_2018_IMAGES
RULES = {
    "per-class, unguarded": {"min_positives": 1, "shrink": 0.0, "fallback": "global"},
    "guard to global (min 10, shrink 10)": {"min_positives": 10, "shrink": 10.0, "fallback": "global"},
    "guard to global (min 5, shrink 30)": {"min_positives": 5, "shrink": 30.0, "fallback": "global"},
    "guard to share (min 5, shrink 30) [default]": {"min_positives": 5, "shrink": 30.0, "fallback": "share"},
    "guard to share (min 10, shrink 10)": {"min_positives": 10, "shrink": 10.0, "fallback": "share"},
}


def draw(rng: np.random.Generator, n: int, sep: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = rng.random((n, PREV.size)) < PREV
    z = offset[None] + sep[None] * y + rng.standard_normal((n, PREV.size))
    return 1 / (1 + np.exp(-z)), y


def held_out_f1(n_oof: int, seeds: int) -> dict[str, float]:
    scores: dict[str, list[float]] = {}
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        sep = rng.uniform(1.0, 4.0, PREV.size)
        offset = np.log(PREV / (1 - PREV)) * rng.uniform(0.3, 1.0, PREV.size) - 0.5
        p_oof, y_oof = draw(rng, n_oof, sep, offset)
        p_test, y_test = draw(rng, 20_000, sep, offset)
        present = y_test.any(0)

        def score(pred: np.ndarray) -> float:
            return float(f1_per_class(pred, y_test)[present].mean())

        for name, kw in RULES.items():
            th = fit_thresholds(p_oof, y_oof, keep_top=False, **kw)
            scores.setdefault(name, []).append(score(predict_labels(p_test, th)))
        scores.setdefault("at 0.5", []).append(score(apply_thresholds(p_test, 0.5)))
        scores.setdefault("global threshold", []).append(score(apply_thresholds(p_test, th.global_threshold)))
    return {k: float(np.mean(v)) for k, v in scores.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--oof", type=int, nargs="+", default=[300, 1000, 5000])
    ap.add_argument("--seeds", type=int, default=8)
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}; held-out macro F1, mean of {args.seeds} simulated datasets")
    results = {n: held_out_f1(n, args.seeds) for n in args.oof}
    names = list(results[args.oof[0]])
    width = max(len(n) for n in names)
    print(f"{'rule':<{width}}  " + "  ".join(f"{f'oof={n}':>9}" for n in args.oof))
    for name in names:
        print(f"{name:<{width}}  " + "  ".join(f"{results[n][name]:>9.4f}" for n in args.oof))
    rng = np.random.default_rng(0)
    p, y = draw(rng, HPA_2018_IMAGES, rng.uniform(1, 4, PREV.size), np.log(PREV / (1 - PREV)))
    t0 = time.perf_counter()
    fit_thresholds(p, y)
    print(f"one fit on {HPA_2018_IMAGES} x {PREV.size} scores: {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()

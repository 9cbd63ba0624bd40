"""Time and compare fold splitters on a generated table the size and shape of HPA single-cell.

    PYTHONPATH=src python bench/bench_folds.py [--fields 21806] [--folds 5] [--seed 42]

The label table is generated (no data needed): 21,806 fields, 1-4 labels each, drawn without
replacement with weights close to the class counts of the public HPA single-cell train.csv
(approximate, from memory of public summaries; the long tail is what matters: Mitotic spindle
and Negative have a few dozen fields). Each splitter makes 5 folds once; balance is the
per-class max relative deviation from 1/k of the class (mean and max over classes), divided by
plain random KFold's on the same table in the same run. A single-label RxRx1-like table
(1,108 classes) shows the StratifiedKFold path that ``method`` switches to automatically.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import sklearn

from cellloc.classes import HPA_SINGLE_CELL
from cellloc.folds import balance_report, split_folds

# Approximate fields per class in HPA single-cell train.csv (classes 0..17); Negative separately.
HPA_LIKE_COUNTS = np.array(
    [8800, 1100, 2500, 1450, 2150, 2350, 1300, 3250, 1450, 1080, 1150, 60, 2200, 3300, 2700, 320, 6200, 2200], float
)
HPA_LIKE_NEGATIVE = 34
LABELS_PER_FIELD = {1: 0.56, 2: 0.34, 3: 0.09, 4: 0.01}


def hpa_like_labels(n_fields: int, seed: int) -> np.ndarray:
    """(n_fields, 19) uint8 multi-hot with HPA-like class frequencies and label counts.

    Classes of a field are drawn without replacement in proportion to ``HPA_LIKE_COUNTS``
    (Gumbel top-m); ``HPA_LIKE_NEGATIVE`` fields are Negative only, as in HPA.
    """
    rng = np.random.default_rng(seed)
    y = np.zeros((n_fields, HPA_SINGLE_CELL.num_classes), np.uint8)
    n_neg = min(HPA_LIKE_NEGATIVE, n_fields // 2)
    y[:n_neg, HPA_SINGLE_CELL.negative] = 1
    n = n_fields - n_neg
    m = rng.choice(list(LABELS_PER_FIELD), size=n, p=list(LABELS_PER_FIELD.values()))
    keys = np.log(HPA_LIKE_COUNTS) + rng.gumbel(size=(n, len(HPA_LIKE_COUNTS)))
    rank = np.argsort(-keys, axis=1).argsort(axis=1)
    y[n_neg:, : len(HPA_LIKE_COUNTS)] = rank < m[:, None]
    return y[rng.permutation(n_fields)]


def grouped_hpa_like(n_fields: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """HPA-like labels where fields come in antibody-like groups (1 + Poisson(2) fields, one label set each)."""
    rng = np.random.default_rng(seed + 1)
    sizes = 1 + rng.poisson(2.0, size=n_fields)
    n_groups = int(np.searchsorted(np.cumsum(sizes), n_fields)) + 1
    group_of_field = np.repeat(np.arange(n_groups), sizes[:n_groups])[:n_fields]
    group_labels = hpa_like_labels(n_groups, seed)
    return group_labels[group_of_field], group_of_field


def small_long_tailed(n_fields: int, n_classes: int, seed: int) -> np.ndarray:
    """A small table whose rarest classes have a handful of fields (1-3 labels, weights 0.6**c)."""
    rng = np.random.default_rng(seed)
    keys = np.log(0.6 ** np.arange(n_classes)) + rng.gumbel(size=(n_fields, n_classes))
    m = rng.integers(1, 4, n_fields)
    return (np.argsort(-keys, axis=1).argsort(axis=1) < m[:, None]).astype(np.uint8)


def over_seeds(y: np.ndarray, k: int, seeds: range, method: str) -> tuple[float, float, float, float]:
    """(mean, worst) over seeds of the mean dev, then the same for the max dev."""
    reports = [balance_report(y, split_folds(y, k, s, method).folds, k) for s in seeds]
    means = np.array([r.mean_dev for r in reports])
    maxes = np.array([r.max_dev for r in reports])
    return means.mean(), means.max(), maxes.mean(), maxes.max()


def single_label_table(n_fields: int, n_classes: int, seed: int) -> np.ndarray:
    """(n_fields, n_classes) one-hot, roughly equal class sizes (RxRx1-like siRNAs)."""
    rng = np.random.default_rng(seed)
    y = np.zeros((n_fields, n_classes), np.uint8)
    y[np.arange(n_fields), rng.integers(0, n_classes, n_fields)] = 1
    return y


def measure(y: np.ndarray, k: int, seed: int, method: str, repeats: int, groups: np.ndarray | None = None) -> dict:
    """Split ``repeats`` times (same seed, same result); median wall time and balance numbers."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        split = split_folds(y, k, seed, method, groups)
        times.append(time.perf_counter() - start)
    report = balance_report(y, split.folds, k)
    return {
        "method": method,
        "used": split.method,
        "seconds": float(np.median(times)),
        "floor": (report.floor_mean, report.floor_max),
        "mean": report.mean_dev,
        "max": report.max_dev,
        "sizes": report.fold_fields,
        "combos": f"{report.n_combinations_ge_k_everywhere}/{report.n_combinations_ge_k}",
    }


def table(rows: list[dict], baseline: dict) -> list[str]:
    out = [
        "| method | splitter used | time (s) | mean dev | max dev | mean / random | max / random | fields per fold | combos (>=k fields) in every fold |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['method']} | {r['used']} | {r['seconds']:.2f} | {100 * r['mean']:.2f}% | {100 * r['max']:.2f}% | "
            f"{r['mean'] / baseline['mean']:.3f} | {r['max'] / baseline['max']:.3f} | "
            f"{r['sizes'].min()}-{r['sizes'].max()} | {r['combos']} |"
        )
    floor_mean, floor_max = baseline["floor"]
    out.append(
        f"| least possible | (whole fields) | | {100 * floor_mean:.2f}% | {100 * floor_max:.2f}% | "
        f"{floor_mean / baseline['mean']:.3f} | {floor_max / baseline['max']:.3f} | | |"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields", type=int, default=21806)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--rxrx1-fields", type=int, default=36515, help="0 skips the single-label table")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per splitter (median reported)")
    args = parser.parse_args()
    k = args.folds

    y = hpa_like_labels(args.fields, args.seed)
    counts = y.sum(axis=0)
    print(f"## Fold splitters, {k} folds, seed {args.seed}")
    print()
    print(f"Machine: {platform.machine()}, {platform.python_version()}, numpy {np.__version__}, scikit-learn {sklearn.__version__}")
    print(
        f"HPA-like table: {len(y)} fields, {HPA_SINGLE_CELL.num_classes} classes, {y.sum() / len(y):.2f} labels per field, "
        f"{len(np.unique(y, axis=0))} label combinations; fields per class: " + " ".join(map(str, counts.tolist()))
    )
    print()
    rows = [measure(y, k, args.seed, m, args.repeats) for m in ("random", "skmultilearn", "iterstrat")]
    for line in table(rows, rows[0]):
        print(line)
    print()
    print(f"dev = per-class max over folds of |count - class/k| / (class/k); mean and max over classes with >= {k} fields;")
    print("ratios < 1 are better balanced than random KFold on the same table; time = median of")
    print(f"{args.repeats} runs; 'least possible' = the deviation whole fields force (k does not divide a class).")

    yg, groups = grouped_hpa_like(args.fields, args.seed)
    print()
    print(
        f"Grouped HPA-like table: {len(yg)} fields in {groups.max() + 1} antibody-like groups (each group one label set, "
        f"kept in one fold; splitters see the group's labels; 'least possible' ignores groups, so no split reaches it)"
    )
    print()
    rows_g = [measure(yg, k, args.seed, m, args.repeats, groups) for m in ("random", "skmultilearn", "iterstrat")]
    for line in table(rows_g, rows_g[0]):
        print(line)

    ys = small_long_tailed(600, 10, args.seed)
    seeds = range(args.seed, args.seed + 10)
    print()
    print(
        f"Small long-tailed table: {len(ys)} fields, 10 classes, fields per class "
        + " ".join(map(str, ys.sum(axis=0).tolist()))
        + f"; balance over seeds {seeds.start}..{seeds.stop - 1} (mean and worst of the 10 splits)"
    )
    print()
    print("| method | mean dev (avg) | mean dev (worst seed) | max dev (avg) | max dev (worst seed) |")
    print("|---|---:|---:|---:|---:|")
    for method in ("random", "skmultilearn", "iterstrat"):
        a, b, c, d = over_seeds(ys, k, seeds, method)
        print(f"| {method} | {100 * a:.1f}% | {100 * b:.1f}% | {100 * c:.1f}% | {100 * d:.1f}% |")
    floor = balance_report(ys, split_folds(ys, k, args.seed, "random").folds, k)
    print(f"| least possible | {100 * floor.floor_mean:.1f}% | | {100 * floor.floor_max:.1f}% | |")

    if args.rxrx1_fields:
        y1 = single_label_table(args.rxrx1_fields, 1108, args.seed)
        print()
        print(f"RxRx1-like single-label table: {len(y1)} fields, 1108 classes (method=iterstrat asked for; single-label data goes to StratifiedKFold)")
        print()
        rows1 = [measure(y1, k, args.seed, m, args.repeats) for m in ("random", "iterstrat")]
        for line in table(rows1, rows1[0]):
            print(line)


if __name__ == "__main__":
    main()

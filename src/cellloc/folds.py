"""Leak-free, label-stratified cross-validation folds, and a report of how balanced they are.

Folds are assigned per *field*, never per cell: every cell of a field carries the field's weak
labels, so cells of one field in two folds would leak the answer into validation. An optional
group (antibody, plate, experiment) keeps all its fields in one fold; groups are stratified on
the union of their fields' labels, because both multilabel splitters only see presence.

HPA classes are long-tailed, so random K-fold leaves rare classes out of some folds. Iterative
stratification (Sechidis et al. 2011) hands out the rarest labels first; two implementations
are offered: ``iterstrat`` (the default: iterative-stratification's MultilabelStratifiedKFold,
faster and better balanced) and ``skmultilearn`` (scikit-multilearn's; it ignores
``random_state`` and draws from NumPy's global generator, which is seeded here and restored
afterwards). Single-label data (every field exactly one class, as RxRx1's
siRNAs) goes to scikit-learn's ``StratifiedKFold``, which is exact there and scales to 1,108
classes where the iterative splitters loop once per class.

Functions here take and return arrays; :mod:`cellloc.runs.folds` is the file-level edge used by
``src/gen_folds.py``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import InputError
from .fieldio import format_label

METHODS: tuple[str, ...] = ("iterstrat", "skmultilearn", "random")
MAX_SEED = 2**32 - 1  # NumPy's legacy global generator accepts seeds in [0, 2**32)


# --------------------------------------------------------------------------- splitters
# Each takes (unit_labels (U, C) uint8 multi-hot, k, seed) and returns (U,) fold ids in [0, k).


@contextmanager
def seeded_global_numpy(seed: int) -> Iterator[None]:
    """Seed NumPy's global generator for a block and restore its previous state afterwards.

    scikit-multilearn's splitter breaks ties with ``np.random`` and ignores ``random_state``;
    restoring the state keeps the caller's own random stream unchanged.
    """
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _split_skmultilearn(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """scikit-multilearn's IterativeStratification (order 1) on seed-shuffled rows.

    Its order of visiting rows is fixed by their position, so the rows are permuted with the
    seed too; otherwise two seeds would differ only in tie breaks.
    """
    from skmultilearn.model_selection import IterativeStratification

    perm = np.random.default_rng(seed).permutation(len(y))
    with seeded_global_numpy(seed):
        splits = IterativeStratification(n_splits=k, order=1).split(np.zeros((len(y), 1)), y[perm])
        folds_of_permuted = _test_folds(splits, len(y))
    folds = np.empty(len(y), np.int64)
    folds[perm] = folds_of_permuted
    return folds


def _split_iterstrat(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """iterative-stratification's MultilabelStratifiedKFold, seeded through ``random_state``."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    splitter = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return _test_folds(splitter.split(np.zeros((len(y), 1)), y), len(y))


def _split_random(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Plain shuffled KFold, ignoring labels: the baseline the stratified splitters must beat."""
    from sklearn.model_selection import KFold

    return _test_folds(KFold(n_splits=k, shuffle=True, random_state=seed).split(y), len(y))


def _split_stratified(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """scikit-learn's StratifiedKFold on the single class of each row (single-label data only)."""
    from sklearn.model_selection import StratifiedKFold

    with warnings.catch_warnings():
        # "least populated class has fewer than n_splits members": the balance report names them.
        warnings.simplefilter("ignore", UserWarning)
        splits = list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(y, y.argmax(axis=1)))
    return _test_folds(iter(splits), len(y))


def _test_folds(splits: Iterator[tuple[np.ndarray, np.ndarray]], n: int) -> np.ndarray:
    """(train, test) index pairs from a scikit-learn splitter -> one fold id per row."""
    folds = np.full(n, -1, np.int64)
    for fold, (_, test) in enumerate(splits):
        folds[test] = fold
    return folds


SPLITTERS: dict[str, Callable[[np.ndarray, int, int], np.ndarray]] = {
    "skmultilearn": _split_skmultilearn,
    "iterstrat": _split_iterstrat,
    "random": _split_random,
    "stratified": _split_stratified,
}


# --------------------------------------------------------------------------- fold assignment


@dataclass
class FoldSplit:
    """Fold per field, and what was split: ``method`` is the splitter actually used."""

    folds: np.ndarray  # (N,) int64 in [0, k)
    method: str
    n_units: int
    unit_name: str  # "fields", or "groups" when fields were grouped
    note: str = ""  # why the splitter differs from the requested one, and any empty-fold repair


def group_units(labels_multihot: np.ndarray, groups: Sequence | np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Collapse fields into the units that are split: (unit index per field (N,), unit labels (U, C)).

    Without groups each field is a unit. With groups a unit's labels are the union of its
    fields' labels. Groups are ordered by their sorted key, so the result does not depend on
    the row order of the input.
    """
    y = np.asarray(labels_multihot)
    if groups is None:
        return np.arange(len(y)), (y > 0).astype(np.uint8)
    groups = np.asarray(groups)
    if len(groups) != len(y):
        raise ValueError(f"groups has {len(groups)} entries for {len(y)} label rows")
    _, inverse = np.unique(groups, return_inverse=True)
    inverse = inverse.ravel()
    unit_y = np.zeros((int(inverse.max()) + 1, y.shape[1]), np.uint8)
    np.maximum.at(unit_y, inverse, (y > 0).astype(np.uint8))
    return inverse, unit_y


def choose_splitter(unit_labels: np.ndarray, method: str, k: int) -> tuple[str, str]:
    """(splitter name, reason) for these unit labels.

    Single-label data goes to StratifiedKFold unless ``random`` was asked for, or no class has
    ``k`` members (StratifiedKFold refuses that case; the requested splitter handles it).
    """
    if method == "random":
        return method, ""
    per_row = unit_labels.sum(axis=1)
    if len(unit_labels) and np.all(per_row == 1):
        if unit_labels.sum(axis=0).max() >= k:
            return "stratified", "single-label data (every unit has exactly one class): StratifiedKFold is exact there"
        return method, "single-label data, but no class has k members: StratifiedKFold cannot apply"
    return method, ""


def split_folds(
    labels_multihot: np.ndarray,
    k: int,
    seed: int,
    method: str = "iterstrat",
    groups: Sequence | np.ndarray | None = None,
) -> FoldSplit:
    """Assign each field (row of ``labels_multihot``, (N, C) 0/1) a fold in [0, k).

    Fields sharing a ``groups`` value land in one fold. Deterministic for a given seed and the
    same set of (field, group) rows in the same order. Raises :class:`InputError` for k < 2,
    k above the number of units, an unknown method or a seed outside [0, 2**32).
    """
    if method not in METHODS:
        raise InputError(f"unknown fold method {method!r}; choose one of {', '.join(METHODS)}")
    if not 0 <= int(seed) <= MAX_SEED:
        raise InputError(f"seed {seed} out of range (0..{MAX_SEED})")
    y = np.asarray(labels_multihot)
    if y.ndim != 2 or len(y) == 0:
        raise InputError(f"need a non-empty (fields, classes) label matrix, got shape {y.shape}")
    inverse, unit_y = group_units(y, groups)
    unit_name = "groups" if groups is not None else "fields"
    if k < 2:
        raise InputError(f"{k} fold(s) asked for: need at least 2 folds")
    if k > len(unit_y):
        raise InputError(f"{k} folds asked for: more folds than {unit_name} ({len(unit_y)})")
    name, note = choose_splitter(unit_y, method, k)
    unit_folds, moved = fill_empty_folds(SPLITTERS[name](unit_y, k, int(seed)), unit_y, k)
    if moved:
        filled = f"{name} left fold(s) {' '.join(map(str, sorted(moved)))} empty; one unit moved into each from the largest fold"
        note = f"{note}; {filled}" if note else filled
    return FoldSplit(unit_folds[inverse], name, len(unit_y), unit_name, note)


def fill_empty_folds(unit_folds: np.ndarray, unit_labels: np.ndarray, k: int) -> tuple[np.ndarray, list[int]]:
    """Give every empty fold one unit from the fold with the most units; return (folds, filled folds).

    scikit-multilearn places rows by label demand alone and can leave a fold empty when there
    are few units per fold (seen with fewer than ~3 units per fold). The unit moved is the one
    whose classes the donor fold holds most in excess of its ideal share, so the move repairs
    balance where it can. Needs ``k <= len(unit_folds)``.
    """
    folds = unit_folds.copy()
    y = unit_labels.astype(np.int64)
    ideal = y.sum(axis=0) / k
    filled = []
    for empty in range(k):
        if np.any(folds == empty):
            continue
        donor = int(np.argmax(np.bincount(folds, minlength=k)))
        members = np.flatnonzero(folds == donor)
        surplus = y[members].sum(axis=0) - ideal  # (C,) how far over its share the donor is
        folds[members[int(np.argmax(y[members] @ surplus))]] = empty
        filled.append(empty)
    return folds, filled


def assign_folds(
    labels_multihot: np.ndarray,
    k: int,
    seed: int,
    method: str = "iterstrat",
    groups: Sequence | np.ndarray | None = None,
) -> np.ndarray:
    """Fold id per field ((N,) int64); see :func:`split_folds` for the rules."""
    return split_folds(labels_multihot, k, seed, method, groups).folds


# --------------------------------------------------------------------------- balance report


@dataclass
class RareClass:
    """A class with fewer fields than folds: some folds cannot validate it."""

    class_id: int
    name: str
    fields: int
    folds_with: list[int]
    folds_without: list[int]


@dataclass
class FoldBalance:
    """Per-class counts per fold and summary deviations from the ideal share (1/k of each class).

    ``rel_dev[c]`` is max over folds of ``|count - ideal| / ideal`` (NaN for absent classes).
    ``mean_dev``/``max_dev`` summarise classes with at least k fields: rarer ones cannot be
    balanced by any splitter and are listed in ``rare`` instead. ``floor_mean``/``floor_max``
    are the same summaries for the best split integer counts allow (see :func:`deviation_floor`).
    """

    k: int
    class_names: list[str]
    counts: np.ndarray  # (C, k) fields of each class in each fold
    fold_fields: np.ndarray  # (k,)
    fold_cells: np.ndarray | None  # (k,) when cell counts were given
    class_fields: np.ndarray  # (C,)
    rel_dev: np.ndarray  # (C,) float
    mean_dev: float
    max_dev: float
    floor_mean: float
    floor_max: float
    worst_class: int | None
    rare: list[RareClass]
    absent: list[int]
    n_combinations: int
    n_combinations_ge_k: int  # combinations with at least k fields
    n_combinations_ge_k_everywhere: int  # ... of which present in every fold
    combination_field_coverage: float  # share of fields whose combination is present in every fold
    missing_combinations: list[tuple[str, int, list[int]]]  # (label, fields, folds lacking it), >= k fields


def label_combinations(labels_multihot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct label rows (M, C) uint8 and each row's index into them (N,).

    Rows are bit-packed before ``np.unique``: comparing 1,108-byte rows directly is ~200x
    slower (7.6 s vs 0.03 s for 36k RxRx1-like rows).
    """
    y = np.asarray(labels_multihot) > 0
    packed = np.ascontiguousarray(np.packbits(y, axis=1))
    keys = packed.view(np.dtype((np.void, packed.shape[1]))).ravel()
    distinct, inverse = np.unique(keys, return_inverse=True)
    combos = np.unpackbits(distinct.view(np.uint8).reshape(len(distinct), -1), axis=1, count=y.shape[1])
    return combos, inverse.ravel()


def deviation_floor(class_fields: np.ndarray, k: int) -> np.ndarray:
    """Least possible per-class max relative deviation from ``class_fields / k`` with whole fields.

    A class of N = q*k + r fields (0 < r < k) must have some folds with q and some with q+1
    fields, so the best split still deviates by max(r/k, 1 - r/k) fields; 0 when k divides N.
    Comparing a split's deviation with this floor separates splitter quality from rounding.
    """
    n = np.asarray(class_fields, dtype=float)
    r = np.mod(n, k) / k
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(r == 0, 0.0, np.maximum(r, 1 - r) / (n / k))


def balance_report(
    labels_multihot: np.ndarray,
    folds: np.ndarray,
    k: int,
    class_names: Sequence[str] | None = None,
    cells_per_field: np.ndarray | None = None,
) -> FoldBalance:
    """Measure how evenly classes and label combinations are spread over folds.

    ``labels_multihot``: (N, C) 0/1 per field; ``folds``: (N,) ints in [0, k);
    ``cells_per_field``: optional (N,) cell counts, to report fold sizes in cells too.
    """
    y = (np.asarray(labels_multihot) > 0).astype(np.int64)
    folds = np.asarray(folds, np.int64)
    n_classes = y.shape[1]
    names = list(class_names) if class_names is not None else [str(c) for c in range(n_classes)]
    onehot_fold = np.eye(k, dtype=np.int64)[folds]  # (N, k)
    counts = y.T @ onehot_fold  # (C, k)
    class_fields = counts.sum(axis=1)
    ideal = class_fields / k
    with np.errstate(divide="ignore", invalid="ignore"):
        rel_dev = np.where(class_fields > 0, np.abs(counts - ideal[:, None]).max(axis=1) / ideal, np.nan)
    balanceable = class_fields >= k
    if balanceable.any():
        mean_dev = float(rel_dev[balanceable].mean())
        worst = int(np.flatnonzero(balanceable)[np.argmax(rel_dev[balanceable])])
        max_dev = float(rel_dev[worst])
        floor = deviation_floor(class_fields[balanceable], k)
        floor_mean, floor_max = float(floor.mean()), float(floor.max())
    else:
        mean_dev, max_dev, worst = float("nan"), float("nan"), None
        floor_mean, floor_max = float("nan"), float("nan")
    rare = [
        RareClass(c, names[c], int(class_fields[c]), np.flatnonzero(counts[c]).tolist(), np.flatnonzero(counts[c] == 0).tolist())
        for c in np.flatnonzero((class_fields > 0) & (class_fields < k))
    ]
    absent = np.flatnonzero(class_fields == 0).tolist()

    combos, combo_of_field = label_combinations(y)
    combo_counts = np.bincount(combo_of_field, minlength=len(combos))
    combo_in_fold = np.zeros((len(combos), k), bool)
    combo_in_fold[combo_of_field, folds] = True
    everywhere = combo_in_fold.all(axis=1)
    frequent = combo_counts >= k
    lacking = np.flatnonzero(frequent & ~everywhere)
    lacking = lacking[np.argsort(-combo_counts[lacking], kind="stable")]  # most fields first
    missing = [
        (format_label(np.flatnonzero(combos[i])), int(combo_counts[i]), np.flatnonzero(~combo_in_fold[i]).tolist())
        for i in lacking
    ]
    fold_cells = None
    if cells_per_field is not None:
        fold_cells = np.bincount(folds, weights=np.asarray(cells_per_field), minlength=k).astype(np.int64)
    return FoldBalance(
        k=k,
        class_names=names,
        counts=counts,
        fold_fields=np.bincount(folds, minlength=k),
        fold_cells=fold_cells,
        class_fields=class_fields,
        rel_dev=rel_dev,
        mean_dev=mean_dev,
        max_dev=max_dev,
        floor_mean=floor_mean,
        floor_max=floor_max,
        worst_class=worst,
        rare=rare,
        absent=absent,
        n_combinations=len(combos),
        n_combinations_ge_k=int(frequent.sum()),
        n_combinations_ge_k_everywhere=int((frequent & everywhere).sum()),
        combination_field_coverage=float(everywhere[combo_of_field].mean()),
        missing_combinations=missing,
    )


def balance_table(report: FoldBalance) -> pd.DataFrame:
    """One row per class: fields, ideal per fold, count per fold, max relative deviation, note."""
    rare = {r.class_id: r for r in report.rare}
    notes = []
    for c in range(len(report.class_names)):
        if report.class_fields[c] == 0:
            notes.append("absent")
        elif c in rare:
            notes.append(f"fewer fields than folds; none in fold(s) {' '.join(map(str, rare[c].folds_without))}")
        else:
            notes.append("")
    table = pd.DataFrame(
        {
            "class_id": np.arange(len(report.class_names)),
            "class_name": report.class_names,
            "fields": report.class_fields,
            "ideal_per_fold": np.round(report.class_fields / report.k, 2),
        }
    )
    for f in range(report.k):
        table[f"fold_{f}"] = report.counts[:, f]
    table["max_rel_dev"] = np.round(report.rel_dev, 4)
    table["note"] = notes
    return table


def _pct(x: float) -> str:
    return "n/a" if np.isnan(x) else f"{100 * x:.1f}%"


def format_balance(report: FoldBalance, split: FoldSplit, seed: int, max_rows: int = 40) -> str:
    """The text report: fold sizes, per-class counts (worst ``max_rows`` if more classes), rare
    classes and what was done about them, and label-combination coverage."""
    k = report.k
    lines = [
        f"Folds: {k}, seed {seed}, splitter {split.method}",
    ]
    if split.note:
        lines.append(f"Note: {split.note}")
    lines.append(f"Split {split.n_units} {split.unit_name}" + (" (each group's fields in one fold)" if split.unit_name == "groups" else ""))
    lines.append("")
    lines.append("fold  fields" + ("   cells" if report.fold_cells is not None else ""))
    for f in range(k):
        row = f"{f:>4}  {report.fold_fields[f]:>6}"
        if report.fold_cells is not None:
            row += f"  {report.fold_cells[f]:>6}"
        lines.append(row)
    lines.append("")
    lines.append(
        f"Balance over classes with >= {k} fields (ideal: 1/{k} of each class per fold): "
        f"mean of per-class max relative deviation {_pct(report.mean_dev)}, max {_pct(report.max_dev)}"
        + (f" ({report.class_names[report.worst_class]})" if report.worst_class is not None else "")
    )
    lines.append(
        f"Least deviation whole fields allow for these classes: mean {_pct(report.floor_mean)}, max {_pct(report.floor_max)}"
    )
    order = np.arange(len(report.class_names))
    if len(order) > max_rows:
        order = np.argsort(-np.nan_to_num(report.rel_dev, nan=-1.0), kind="stable")[:max_rows]
        lines.append(f"Per-class counts for the {max_rows} least balanced of {len(report.class_names)} classes (all in the CSV):")
    else:
        lines.append("Per-class counts per fold:")
    width = max(len(report.class_names[c]) for c in order)
    lines.append(f"{'id':>4}  {'class':<{width}}  {'fields':>6}  " + "  ".join(f"{'f' + str(f):>5}" for f in range(k)) + "  max dev")
    for c in order:
        lines.append(
            f"{c:>4}  {report.class_names[c]:<{width}}  {report.class_fields[c]:>6}  "
            + "  ".join(f"{n:>5}" for n in report.counts[c])
            + f"  {_pct(report.rel_dev[c]):>7}"
        )
    lines.append("")
    if report.rare:
        lines.append(f"Classes with fewer fields than folds ({len(report.rare)}): no split can put them in every fold;")
        lines.append("their fields were spread over as many folds as the splitter managed (at best one per field),")
        lines.append("and validation on the folds without them cannot score these classes.")
        for r in report.rare:
            lines.append(
                f"  {r.class_id} {r.name}: {r.fields} field(s) in {len(r.folds_with)} fold(s) ({' '.join(map(str, r.folds_with))}); "
                f"none in fold(s) {' '.join(map(str, r.folds_without))}"
            )
    else:
        lines.append("Classes with fewer fields than folds: none")
    if report.absent:
        lines.append(f"Classes absent from the data ({len(report.absent)}): " + ", ".join(report.class_names[c] for c in report.absent[:20]) + (" ..." if len(report.absent) > 20 else ""))
    lines.append("")
    lines.append(
        f"Label combinations: {report.n_combinations} distinct; {report.n_combinations_ge_k} with >= {k} fields, "
        f"{report.n_combinations_ge_k_everywhere} of them present in every fold; "
        f"{_pct(report.combination_field_coverage)} of fields have a combination present in every fold"
    )
    for label, n, lacking in report.missing_combinations[:10]:
        lines.append(f"  {label!r}: {n} fields, none in fold(s) {' '.join(map(str, lacking))}")
    if len(report.missing_combinations) > 10:
        lines.append(f"  ... and {len(report.missing_combinations) - 10} more")
    return "\n".join(lines) + "\n"


def summary(report: FoldBalance, split: FoldSplit, n_cells: int | None) -> list[str]:
    """A few lines for the end of the command's output."""
    k = report.k
    size = f"{int(report.fold_fields.sum())} fields" + (f" ({n_cells} cells)" if n_cells is not None else "")
    lines = [
        f"{k} folds over {size}, split as {split.n_units} {split.unit_name}, splitter {split.method}",
        "fields per fold: " + " ".join(map(str, report.fold_fields.tolist())),
        f"class balance (classes with >= {k} fields): mean max-deviation {_pct(report.mean_dev)}, worst {_pct(report.max_dev)}"
        + (f" ({report.class_names[report.worst_class]})" if report.worst_class is not None else "")
        + f"; least possible {_pct(report.floor_mean)}, {_pct(report.floor_max)}",
    ]
    if report.rare:
        lines.append(
            "rare classes (< k fields, missing from some folds): "
            + ", ".join(f"{r.name} ({r.fields})" for r in report.rare[:10])
            + (" ..." if len(report.rare) > 10 else "")
        )
    lines.append(
        f"label combinations with >= {k} fields in every fold: {report.n_combinations_ge_k_everywhere}/{report.n_combinations_ge_k}"
    )
    return lines

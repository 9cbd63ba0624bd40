"""Folds for a table on disk: read the fields (cells CSV or a task's labels CSV), split, write the report.

``make_folds(FoldsConfig(...))`` is what ``src/gen_folds.py`` runs: it reads the fields, splits
them with :func:`cellloc.folds.split_folds`, and writes the folds CSV (input rows plus a ``fold``
column), ``<stem>_balance.txt/.csv/.png`` beside it (the config is saved by the script).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import opt
from ..errors import InputError
from ..fieldio import atomic_path, format_label, multihot, parse_label, read_csv, row_lines, sha256_file, write_csv
from ..folds import METHODS, FoldBalance, FoldSplit, balance_report, balance_table, format_balance, split_folds
from ..labels import read_task_labels
from ..run_state import ensure_same_settings
from ..tasks import DEFAULT_TASK, TASKS, Task, get_task


# --------------------------------------------------------------------------- files


@dataclass
class FoldsConfig:
    """Options of ``src/gen_folds.py``; saved beside the folds CSV."""

    task: str = opt(DEFAULT_TASK, "task of the labels (names its classes and its labels CSV reader)", choices=TASKS.names())
    cells: str = opt("", "cells CSV from segmentation (ID, cell_id, Label, ...) (default: output/<data_name>/cells.csv); "
                     "ignored with --labels")
    labels: str | None = opt(None, "split the task's labels CSV (one row per sample) instead of a cells CSV "
                             "(default for image-level tasks without --cells: input/<data_name>/train.csv)")
    out: str = opt("", "folds CSV to write (default: output/<data_name>/folds.csv); the balance report and config go beside it")
    folds: int = opt(5, "number of folds K (2 <= K <= number of fields, or groups)")
    seed: int = opt(42, "seed: the same seed and input give the same folds")
    method: str = opt("iterstrat", "splitter: iterstrat (iterative-stratification; fast, best balanced), "
                      "skmultilearn (scikit-multilearn) or random", choices=METHODS)
    group_col: str | None = opt(None, "column whose values stay in one fold (e.g. antibody, plate, experiment; "
                                "default with --labels: the task's, rxrx1: experiment; '' for none)")
    stratify_col: str | None = opt(None, "column whose values are spread evenly over the folds besides the labels "
                                   "(e.g. cell_type; default with --labels: the task's, rxrx1: cell_type; '' for none)")
    groups: str = opt("", "with --labels: a CSV giving each sample's --group-col (matched on its Id or ID column), for a "
                      "labels CSV without one (e.g. input/hpa2018/truth/images.csv --group-col protein)")
    more_labels: list[str] = opt([], "with --labels: more labels CSVs of the task whose samples join the split (rxrx1: "
                                 "train_controls.csv, so control wells get folds with their experiments)")
    overwrite: bool = opt(False, "replace a folds CSV made from other input or settings (the old files are moved to "
                          "<folder>.replaced-<time>); without it such a rerun stops, since models were trained on those folds",
                          saved=False)

    def __post_init__(self) -> None:
        task = get_task(self.task)
        data = Path("output") / task.data_name
        if self.labels is None and not self.cells and task.level == "image":
            self.labels = str(Path("input") / task.data_name / "train.csv")
        # the task's defaults name columns of its own labels CSV; a cells table may not have them
        defaults = (task.fold_group, task.fold_stratify) if self.labels else ("", "")
        self.group_col = (defaults[0] if self.group_col is None else self.group_col) or None
        self.stratify_col = (defaults[1] if self.stratify_col is None else self.stratify_col) or None
        self.cells = self.cells or str(data / "cells.csv")
        self.out = self.out or str(data / "folds.csv")
        if self.groups and not (self.labels and self.group_col):
            raise ValueError("--groups needs --labels (or an image-level task) and --group-col")
        if self.more_labels and not self.labels:
            raise ValueError("--more-labels needs --labels (or an image-level task)")


def run_settings(cfg: FoldsConfig) -> dict[str, object]:
    """What decides the folds: the options and the checksum of every input table.

    A rerun with the same settings rewrites the same folds; with others it would silently move
    fields between folds under models already trained on them, so it must be asked for.
    """
    settings = {k: v for k, v in asdict(cfg).items() if k != "overwrite"}
    inputs = [cfg.labels] if cfg.labels else [cfg.cells]
    inputs += [cfg.groups, *cfg.more_labels] if cfg.labels else []
    settings["input_sha256"] = {p: sha256_file(p) for p in inputs if p and Path(p).is_file()}
    return settings


def output_paths(out: str | Path) -> dict[str, Path]:
    """Where the folds CSV, its reports and the run's config go: beside ``out``, named after its stem."""
    out = Path(out)
    return {
        "folds": out,
        "txt": out.with_name(f"{out.stem}_balance.txt"),
        "csv": out.with_name(f"{out.stem}_balance.csv"),
        "png": out.with_name(f"{out.stem}_balance.png"),
        "config": out.with_name(f"{out.stem}_config.json"),
    }


@dataclass
class FieldTable:
    """Fields to split, read from a cells CSV or an ID,Label CSV."""

    table: pd.DataFrame  # the input rows, columns untouched
    field_of_row: np.ndarray  # (rows,) field index; fields are numbered in sorted ID order
    labels: np.ndarray  # (N, C) multi-hot
    groups: np.ndarray | None  # (N,) group value per field
    cells_per_field: np.ndarray | None  # (N,) when read from a cells CSV
    strata: np.ndarray | None = None  # (N,) value per field to spread evenly over the folds


def _first_rows(codes: np.ndarray) -> np.ndarray:
    """Row index of the first occurrence of each code 0..max(codes)."""
    return np.unique(codes, return_index=True)[1]


def _one_per_field(values: pd.Series, field_of_row: np.ndarray, path: Path, what: str, lines: Sequence[int]) -> np.ndarray:
    """The single value each field has in ``values``; a field with two values is an error
    naming both rows' ``lines`` (physical line numbers, see :func:`fieldio.row_lines`)."""
    codes, uniques = pd.factorize(values, sort=False)
    first = _first_rows(field_of_row)
    bad = np.flatnonzero(codes != codes[first][field_of_row])
    if len(bad):
        row = int(bad[0])
        first_row = int(first[field_of_row[row]])
        raise InputError(
            f"{path}: line {lines[row]}: field {what} {values.iloc[row]!r} differs from {values.iloc[first_row]!r} "
            f"on line {lines[first_row]}; a field's cells must share one {what}"
        )
    return np.asarray(uniques, dtype=object)[codes[first]]


def read_cells_fields(path: str | Path, num_classes: int, group_col: str | None = None,
                      stratify_col: str | None = None) -> FieldTable:
    """Fields of a segmentation cells CSV (ID, cell_id, Label, ...): one label set per field.

    Label strings are parsed once per distinct string (a field's cells repeat it); two cells
    of one field must carry the same labels ("16|13" and "13|16" count as the same).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found (run segmentation first, or pass --labels ID,Label.csv)")
    required = ["ID", "cell_id", "Label"] + [c for c in (group_col, stratify_col) if c]
    df = read_csv(path, required)
    lines = row_lines(df)
    ids_col = df["ID"].str.strip()
    if (ids_col == "").any():
        raise InputError(f"{path}: line {lines[int(np.flatnonzero(ids_col == '')[0])]}: empty ID")
    field_of_row, _ = pd.factorize(ids_col, sort=True)
    label_codes, label_strings = pd.factorize(df["Label"], sort=False)
    first = _first_rows(label_codes)
    parsed = [parse_label(s, num_classes, f"{path}: line {lines[first[i]]} (field {ids_col.iloc[first[i]]})")
              for i, s in enumerate(label_strings)]
    normalised = np.array([format_label(p) for p in parsed], dtype=object)
    field_label = _one_per_field(pd.Series(normalised[label_codes]), field_of_row, path, "Label", lines)
    ids_of = dict(zip(normalised, parsed))
    labels = multihot([ids_of[s] for s in field_label], num_classes)
    per_field = {c: _one_per_field(_group_values(df, c, path), field_of_row, path, c, lines)
                 for c in (group_col, stratify_col) if c}
    return FieldTable(df, field_of_row, labels, per_field.get(group_col), np.bincount(field_of_row), per_field.get(stratify_col))


def read_label_fields(path: str | Path, task: Task, group_col: str | None = None,
                      stratify_col: str | None = None, groups: str | Path = "",
                      more: Sequence[str | Path] = ()) -> FieldTable:
    """Samples of a task's labels CSV (read by its reader): one row per sample, IDs unique.

    ``groups`` names a second CSV that gives ``group_col`` for every sample (matched on its
    ``Id`` or ``ID`` column) when the labels CSV itself has no such column. ``more`` are further
    labels CSVs whose samples are appended (RxRx1's control wells); an ID in two files is an error.
    """
    path = Path(path)
    num_classes = task.num_classes
    df = read_task_labels(path, task)
    for extra in map(Path, more):
        other = read_task_labels(extra, task)
        both = sorted(set(df["ID"]) & set(other["ID"]))
        if both:
            raise InputError(f"{extra}: sample {both[0]!r} is already in {path}")
        df = pd.concat([df, other], ignore_index=True).fillna("")
    if groups:
        df[group_col] = group_of_samples(df["ID"], groups, group_col)
    for col in (group_col, stratify_col):
        if col and col not in df.columns:
            raise InputError(f"{path}: missing column(s) {col} (has: {', '.join(c for c in df.columns if c != 'labels')})")
    order = np.argsort(df["ID"].to_numpy(dtype=str), kind="stable")
    field_of_row = np.empty(len(df), np.int64)
    field_of_row[order] = np.arange(len(df))
    labels = multihot([df["labels"].iloc[i] for i in order], num_classes)
    per_field = {c: _group_values(df, c, path).to_numpy(dtype=object)[order] for c in (group_col, stratify_col) if c}
    return FieldTable(df.drop(columns="labels"), field_of_row, labels, per_field.get(group_col), None,
                      per_field.get(stratify_col))


def group_of_samples(ids: pd.Series, path: str | Path, group_col: str) -> list[str]:
    """``group_col`` of each sample id, from a CSV with an ``Id`` or ``ID`` column; every id must be there."""
    path = Path(path)
    table = read_csv(path, (group_col,))
    id_col = next((c for c in ("ID", "Id") if c in table.columns), None)
    if id_col is None:
        raise InputError(f"{path}: needs an ID or Id column to match samples (has: {', '.join(table.columns)})")
    lines = row_lines(table)
    keys = table[id_col].str.strip()
    dup = keys.duplicated()
    if dup.any():
        raise InputError(f"{path}: line {lines[int(np.flatnonzero(dup)[0])]}: duplicate {id_col} {keys[dup].iloc[0]!r}")
    group = dict(zip(keys, table[group_col]))
    missing = [i for i in ids if i not in group]
    if missing:
        raise InputError(f"{path}: no {group_col} for {len(missing)} of {len(ids)} samples (first {missing[0]!r})")
    return [group[i] for i in ids]


def _group_values(df: pd.DataFrame, group_col: str, path: Path) -> pd.Series:
    values = df[group_col].str.strip()
    if (values == "").any():
        raise InputError(f"{path}: line {row_lines(df)[int(np.flatnonzero(values == '')[0])]}: empty {group_col}")
    return values


def with_strata(labels: np.ndarray, strata: np.ndarray | None) -> np.ndarray:
    """The labels the splitter balances: (N, C) multi-hot, plus one column per stratum value when given.

    A stratum column (e.g. one per cell type) is balanced like a class, so with experiments as
    groups every fold gets experiments of every cell type, when there are enough of them.
    """
    if strata is None:
        return labels
    _, codes = np.unique(np.asarray(strata, dtype=str), return_inverse=True)
    return np.hstack([labels, multihot([[int(c)] for c in codes.ravel()], int(codes.max()) + 1)])


@dataclass
class FoldsResult:
    """What :func:`make_folds` did, for the command's summary."""

    split: FoldSplit
    balance: FoldBalance
    paths: dict[str, Path]
    n_rows: int
    n_cells: int | None


def make_folds(cfg: FoldsConfig) -> FoldsResult:
    """Read the fields, split them, write the folds CSV and the balance report (txt, csv, png)."""
    from ..plots import fold_balance_heatmap  # here, so array-only users of this module skip matplotlib

    task = get_task(cfg.task)
    label_set = task.label_set
    if cfg.labels:
        fields = read_label_fields(cfg.labels, task, cfg.group_col, cfg.stratify_col, cfg.groups, cfg.more_labels)
    else:
        fields = read_cells_fields(cfg.cells, label_set.num_classes, cfg.group_col, cfg.stratify_col)
    split = split_folds(with_strata(fields.labels, fields.strata), cfg.folds, cfg.seed, cfg.method, fields.groups)
    paths = output_paths(cfg.out)
    ensure_same_settings(paths["folds"].parent, run_settings(cfg), cfg.overwrite, tool=paths["folds"].stem,
                         outputs=[p.name for p in paths.values()])
    table = fields.table.copy()
    table["fold"] = split.folds[fields.field_of_row]
    balance = balance_report(fields.labels, split.folds, cfg.folds, label_set.names, fields.cells_per_field)
    write_csv(paths["folds"], table)
    text = format_balance(balance, split, cfg.seed)
    with_header = f"input: {cfg.labels or cfg.cells}\nfolds CSV: {paths['folds']}\n" + text
    with atomic_path(paths["txt"]) as tmp:
        tmp.write_text(with_header)
    write_csv(paths["csv"], balance_table(balance))
    fold_balance_heatmap(
        balance.counts,
        balance.class_names,
        paths["png"],
        title=f"Class share per fold ({cfg.folds} folds, {split.method}, seed {cfg.seed}); ideal {1 / cfg.folds:.2f}",
    )
    n_cells = len(table) if fields.cells_per_field is not None else None
    return FoldsResult(split, balance, paths, len(table), n_cells)

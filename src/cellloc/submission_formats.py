"""Submission formats: one writer, checker and evaluator per competition, behind one registry.

``FORMATS[name]`` (a task's ``submission`` names one) is a :class:`SubmissionFormat` with

    write(path, rows)                                   # every row at once, atomically
    check(path, task, expected_ids=None, **options) -> list[(line, reason)]   # line 0 = whole file
    evaluate(truth, submission_path, task, **options) -> (table, summary)
    read_expected(sample_submission_path) -> the ids a submission must hold (or {id: size})
    encode(sample_ids, probs, task, thresholds, **encode_options) -> rows  # image-level tasks: scores -> rows (else None)
    show(table) -> str                                  # the evaluation table as text (evaluate.py prints it)

``summary``'s last line is ``<metric>=0.xxxx``; lines before it say what was scored. Options a
format does not know are ignored, so one command line serves every format.

``hpa-sc-rle`` (HPA single-cell): ``ID,ImageWidth,ImageHeight,PredictionString`` with one
``class confidence mask`` triple per (cell, class), masks as compressed RLE
(:mod:`cellloc.submission`); scored by the competition's mAP at mask IoU 0.6 against a truth
folder of ``{ID}_cell_mask.png`` and ``cells.csv`` (:func:`read_truth`). The HPA-2018
(``Id,Predicted``, macro F1) and RxRx1 (``id_code,sirna``, accuracy) formats are provided by
:mod:`cellloc.hpa2018` and :mod:`cellloc.rxrx1` (imported on first use).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import InputError
from .fieldio import atomic_path, parse_label, read_csv, read_mask, row_lines
from .metrics import FieldTruth, competition_map
from .registry import Registry
from .submission import COLUMNS as RLE_COLUMNS
from .submission import check_submission, parse_submission, read_sample_submission
from .tasks import Task

Problems = list[tuple[int, str]]


@dataclass(frozen=True)
class SubmissionFormat:
    """A competition's submission file: its columns and the four things done with it."""

    name: str
    columns: tuple[str, ...]
    check: Callable[..., Problems]
    evaluate: Callable[..., tuple[pd.DataFrame, str]]
    read_expected: Callable[[Path], Collection[str]] = lambda path: first_column_ids(path)
    encode: Callable[[Sequence[str], np.ndarray, Task, dict | None], list[tuple]] | None = None
    show: Callable[[pd.DataFrame], str] = lambda table: format_table(table)  # the evaluation table as text
    encode_options: tuple[str, ...] = ()  # keyword options ``encode`` takes besides its defaults (rxrx1: plate_groups)

    def write(self, path: str | Path, rows: Iterable[Sequence[Any]]) -> None:
        """Write ``rows`` (one value per column, in :attr:`columns` order) as CSV, atomically."""
        write_rows(path, self.columns, rows)


FORMATS: Registry[SubmissionFormat] = Registry(
    "submission format", plugins={"hpa-2018": "cellloc.hpa2018", "rxrx1": "cellloc.rxrx1"}
)


def register_format(fmt: SubmissionFormat) -> SubmissionFormat:
    return FORMATS.register(fmt.name)(fmt)


def write_rows(path: str | Path, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A header and rows as CSV, atomically (the file appears complete or not at all)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(columns)
            for row in rows:
                if len(row) != len(columns):
                    raise ValueError(f"row {list(row)[:2]}...: {len(row)} values for {len(columns)} columns")
                writer.writerow(row)


def first_column_ids(path: Path) -> list[str]:
    """The ids of a sample submission: its first column (every format lists ids first)."""
    df = read_csv(path)
    return df[df.columns[0]].str.strip().tolist()


def encode_argmax(sample_ids: Sequence[str], probs: np.ndarray, task: Task, thresholds: dict | None = None) -> list[tuple[str, int]]:
    """``(id, class)`` rows: the most likely class of each sample (multiclass tasks)."""
    return [(i, int(k)) for i, k in zip(sample_ids, probs.argmax(axis=1))]


def format_table(table: pd.DataFrame) -> str:
    """A per-class score table as fixed-width text; an undefined score (NaN) shows as ``-``."""
    return table.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4f}")


# --------------------------------------------------------------------------- hpa-sc-rle


def read_truth(folder: str | Path, num_classes: int) -> dict[str, FieldTruth]:
    """Read an HPA single-cell truth folder: ``{ID}_cell_mask.png`` (instance labels) and ``cells.csv``.

    ``cells.csv`` has ``ID,cell_id,Label`` (the cell's classes, pipe-separated), as the data
    generator writes it. Every cell of every mask must have a row and every row a cell, so a
    mismatch fails loudly instead of silently shifting the score. Returns ``{ID: FieldTruth}``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: truth folder not found")
    suffix = "_cell_mask.png"
    masks = {p.name[: -len(suffix)]: p for p in sorted(folder.glob("*" + suffix))}
    if not masks:
        raise InputError(f"{folder}: no *{suffix} files")
    table_path = folder / "cells.csv"
    df = read_csv(table_path, ("ID", "cell_id", "Label"))
    cells: dict[str, dict[int, list[int]]] = {}
    for line, image_id, cell_id, label in zip(row_lines(df), df["ID"], df["cell_id"], df["Label"]):
        where = f"{table_path}: line {line}"
        if image_id not in masks:
            raise InputError(f"{where}: field {image_id!r} has no {image_id}{suffix}")
        if not re.fullmatch(r"\d+", cell_id.strip()) or int(cell_id) == 0:
            raise InputError(f"{where}: bad cell_id {cell_id!r} (expected a positive integer)")
        field_cells = cells.setdefault(image_id, {})
        if int(cell_id) in field_cells:
            raise InputError(f"{where}: cell {int(cell_id)} of field {image_id!r} is listed twice")
        field_cells[int(cell_id)] = parse_label(label, num_classes, where)
    out = {}
    for image_id, path in masks.items():
        labels = read_mask(path)
        listed = cells.get(image_id, {})
        present = np.flatnonzero(np.bincount(labels.ravel()))
        present = set(present[present > 0].tolist())
        if present - set(listed):
            raise InputError(f"{table_path}: cell {min(present - set(listed))} of {path.name} has no row")
        if set(listed) - present:
            raise InputError(f"{table_path}: cell {min(set(listed) - present)} of field {image_id} is not in {path.name}")
        out[image_id] = FieldTruth(labels, listed)
    return out


def check_rle(path: str | Path, task: Task, expected_ids: Collection[str] | Mapping[str, tuple[int, int]] | None = None,
              max_per_line: int = 5, **_: Any) -> Problems:
    """:func:`cellloc.submission.check_submission`; a mapping of ``{ID: (width, height)}`` also checks sizes."""
    sizes = expected_ids if isinstance(expected_ids, Mapping) else None
    return check_submission(path, expected_ids, sizes, num_classes=task.num_classes, max_per_line=max_per_line)


def evaluate_rle(truth: str | Path, submission_path: str | Path, task: Task, iou_threshold: float = 0.6,
                 **_: Any) -> tuple[pd.DataFrame, str]:
    """Competition mAP at mask IoU ``iou_threshold`` per class, against a truth folder (:func:`read_truth`).

    A truth field without a submission row counts as no detections (the summary says how many).
    """
    names = task.label_set.names
    fields = read_truth(truth, len(names))
    predictions = parse_submission(submission_path, len(names))
    try:
        result = competition_map(fields, predictions, len(names), iou_threshold)
    except ValueError as exc:
        raise InputError(f"{submission_path}: {exc}") from None
    table = pd.DataFrame({"class": range(len(names)), "name": names, "AP": result["ap"],
                          "truth": result["n_truth"], "pred": result["n_pred"]})
    lines = []
    missing = len(set(fields) - set(predictions))
    if missing:
        lines.append(f"warning: {missing} of {len(fields)} truth fields have no row in the submission (scored as no detections)")
    scored = int((result["n_truth"] > 0).sum())
    lines.append(f"{len(fields)} fields, {int(result['n_truth'].sum())} (cell, class) truths, "
                 f"mean over {scored} classes present in the truth")
    lines.append(f"mAP={result['map']:.4f}")
    return table, "\n".join(lines)


register_format(SubmissionFormat("hpa-sc-rle", RLE_COLUMNS, check_rle, evaluate_rle, read_sample_submission, encode=None))

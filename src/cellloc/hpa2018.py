"""HPA 2018 (Kaggle "Human Protein Atlas Image Classification"): its labels CSV and its submission.

Labels: ``train.csv`` with ``Id,Target``, Target = space-separated class ids 0-27 (``"16 0"``).
The reader returns the project's frame: ``ID``, the canonical ``Label`` (``"0|16"``) and
``labels`` (``list[int]``). Fields are the flat Kaggle layout ``{Id}_{red,green,blue,yellow}.png``
(512 px 8-bit in the competition; the full-size external HPAv18 fields, 2048/3072 px and 8- or
16-bit, read the same way through :func:`cellloc.fieldio.read_field`).

Submission: ``Id,Predicted``, Predicted = space-separated class ids, empty allowed, one row per
test Id. Scored by macro F1 over the 28 classes. The competition's scoring code is not public;
this scorer is scikit-learn's ``f1_score(truth, pred, average="macro")`` over all 28 labels with
its default ``zero_division`` (checked against scikit-learn 1.9.1 in the tests): a class with no
positive in the truth and none predicted has F1 0/0, which counts as 0 (scikit-learn warns
"F-score is ill-defined") and stays in the mean. On a small test set every class missing from
the truth therefore caps the score; the table's last line also gives the mean over the classes
present in the truth.

Problems name the file and the line (``file: line N: ...``); line numbers are the file's own,
blank lines included (they are skipped but counted).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .classes import HPA_2018, LabelSet
from .errors import InputError
from .fieldio import atomic_path, format_label, multihot
from .thresholds import Thresholds, f1_counts, f1_per_class, predict_labels

LABEL_COLUMNS = ("Id", "Target")
SUBMISSION_COLUMNS = ("Id", "Predicted")
MAX_MISSING_LISTED = 20
_ID_TOKEN = re.compile(r"\d+")


# --------------------------------------------------------------------------- CSV rows with their line numbers


def read_rows(path: str | Path, required: Sequence[str]) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """``(header, [(line, fields), ...])`` of a CSV, blank lines skipped but counted.

    ``line`` is the 1-based line where the row starts in the file (the header is line 1).
    Fails in one line when the file is missing, unreadable, empty or lacks a required column.
    Rows are returned as they are (a wrong field count is the caller's to report).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {'is a folder, not a CSV file' if path.is_dir() else 'file not found'}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    reader = csv.reader(text.splitlines(keepends=True))
    header: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    start = 1
    try:
        for fields in reader:
            if len(fields) > 1 or (fields and fields[0].strip()):  # a blank line: [] or one blank field
                if header is None:
                    header = [f.strip() for f in fields]
                else:
                    rows.append((start, fields))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise InputError(f"{path}: line {reader.line_num}: cannot parse CSV ({exc})") from None
    if header is None:
        raise InputError(f"{path}: CSV is empty")
    missing = [c for c in required if c not in header]
    if missing:
        raise InputError(f"{path}: line 1: missing column(s) {', '.join(missing)} (has: {', '.join(header)})")
    return header, rows


def _columns(header: list[str], rows: list[tuple[int, list[str]]], path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows as ``{column: value}``; a row with the wrong number of fields fails on its line."""
    for line, fields in rows:
        if len(fields) != len(header):
            raise InputError(f"{path}: line {line}: expected {len(header)} fields ({','.join(header)}), found {len(fields)}")
        yield line, dict(zip(header, fields))


# --------------------------------------------------------------------------- class-id lists


def target_problems(text: str, num_classes: int) -> tuple[list[int], list[str]]:
    """Parse space-separated class ids; ``(ids sorted, problems)``. Empty text is no ids.

    Problems: a token that is not a non-negative integer, an id outside ``0..num_classes-1``,
    an id given twice. Every problem is listed (the checker reports them all).
    """
    ids: list[int] = []
    problems: list[str] = []
    for tok in text.split():
        if not _ID_TOKEN.fullmatch(tok):
            problems.append(f"{tok!r} is not a class id (expected integers 0..{num_classes - 1} separated by spaces)")
            continue
        k = int(tok)
        if k >= num_classes:
            problems.append(f"unknown class id {k} (valid: 0..{num_classes - 1})")
        elif k in ids:
            problems.append(f"class id {k} given twice")
        else:
            ids.append(k)
    return sorted(ids), problems


def parse_target(text: str, num_classes: int, where: str) -> list[int]:
    """Class ids of one Target string; the first problem raises ``InputError(where: ...)``."""
    ids, problems = target_problems(text, num_classes)
    if problems:
        raise InputError(f"{where}: malformed Target {text!r}: {problems[0]}")
    if not ids:
        raise InputError(f"{where}: empty Target (every image has at least one class)")
    return ids


def format_target(ids: Iterable[int]) -> str:
    """Class ids -> the 2018 format: ascending, space-separated (``[16, 0]`` -> ``"0 16"``)."""
    return " ".join(str(k) for k in sorted({int(k) for k in ids}))


# --------------------------------------------------------------------------- labels


def read_labels(path: str | Path, label_set: LabelSet = HPA_2018) -> pd.DataFrame:
    """Read an HPA 2018 ``Id,Target`` CSV into ``ID``, ``Label`` (``"0|16"``), ``labels`` (list[int]).

    Other columns are kept as strings. One-line :class:`InputError` naming the file and line
    for a missing column, a row with the wrong number of fields, an empty or duplicate Id, and
    a malformed, empty or unknown Target.
    """
    path = Path(path)
    header, rows = read_rows(path, LABEL_COLUMNS)
    if not rows:
        raise InputError(f"{path}: CSV has a header but no rows")
    first: dict[str, int] = {}
    records = []
    for line, row in _columns(header, rows, path):
        image_id = row["Id"].strip()
        if not image_id:
            raise InputError(f"{path}: line {line}: empty Id")
        if image_id in first:
            raise InputError(f"{path}: line {line}: duplicate Id {image_id!r} (first on line {first[image_id]})")
        first[image_id] = line
        ids = parse_target(row["Target"], label_set.num_classes, f"{path}: line {line}")
        extra = {k: v for k, v in row.items() if k not in LABEL_COLUMNS}
        records.append({"ID": image_id, "Label": format_label(ids), "labels": ids, **extra})
    extra_cols = [c for c in header if c not in LABEL_COLUMNS]
    return pd.DataFrame(records, columns=["ID", "Label", "labels", *extra_cols])


def write_labels(path: str | Path, labels: Mapping[str, Sequence[int]]) -> None:
    """Write ``{Id: class ids}`` as an ``Id,Target`` CSV, atomically (the truth and train.csv format)."""
    _write_id_rows(path, LABEL_COLUMNS, labels.items())


# --------------------------------------------------------------------------- submission


def _write_id_rows(path: str | Path, columns: Sequence[str], rows: Iterable[tuple[str, Sequence[int]]]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(columns)
            for image_id, ids in rows:
                writer.writerow([image_id, format_target(ids)])


def write_submission(path: str | Path, rows: Iterable[tuple[str, Sequence[int]]] | Mapping[str, Sequence[int]]) -> None:
    """Write ``Id,Predicted`` rows (``(Id, class ids)`` pairs or a mapping), atomically; empty ids allowed."""
    items = rows.items() if isinstance(rows, Mapping) else rows
    _write_id_rows(path, SUBMISSION_COLUMNS, items)


def read_ids(path: str | Path) -> list[str]:
    """The ``Id`` column of a CSV (a sample submission or a labels file), in file order."""
    header, rows = read_rows(path, ("Id",))
    return [row["Id"].strip() for _, row in _columns(header, rows, Path(path))]


def check_submission(
    path: str | Path,
    label_set: LabelSet = HPA_2018,
    expected_ids: Iterable[str] | None = None,
    max_per_line: int = 5,
) -> list[tuple[int, str]]:
    """Every problem of an ``Id,Predicted`` submission as ``(line, reason)``; empty means valid.

    Line 1 is the header (missing or unexpected columns); data lines report a wrong field
    count, an empty, duplicate or (with ``expected_ids``) unexpected Id, and each bad token,
    unknown or repeated class id. Line 0 is the whole file: Ids of ``expected_ids`` with no
    row (the first few listed, then a count). At most ``max_per_line`` reasons per line.
    """
    path = Path(path)
    try:
        header, rows = read_rows(path, SUBMISSION_COLUMNS)
    except InputError as exc:
        if not path.is_file():
            raise
        return [(1, str(exc))]
    problems: list[tuple[int, str]] = []
    extra = [c for c in header if c not in SUBMISSION_COLUMNS]
    if extra or len(header) != len(set(header)):
        problems.append((1, f"unexpected column(s) {', '.join(extra) or 'repeated'}: expected exactly Id,Predicted"))
    if not rows:
        problems.append((0, "no rows after the header"))
    expected = None if expected_ids is None else set(expected_ids)
    first: dict[str, int] = {}
    for line, fields in rows:
        errors: list[str] = []
        if len(fields) != len(header):
            errors.append(f"expected {len(header)} fields ({','.join(header)}), found {len(fields)}")
        row = dict(zip(header, fields))
        image_id = row.get("Id", "").strip()
        if not image_id:
            errors.append("empty Id")
        elif image_id in first:
            errors.append(f"duplicate Id {image_id!r} (first on line {first[image_id]})")
        else:
            first[image_id] = line
        if image_id and expected is not None and image_id not in expected:
            errors.append(f"unexpected Id {image_id!r} (not in the sample submission)")
        errors += target_problems(row.get("Predicted", ""), label_set.num_classes)[1]
        if len(errors) > max_per_line:
            errors = errors[:max_per_line] + [f"... and {len(errors) - max_per_line} more problems on this line"]
        problems += [(line, e) for e in errors]
    if expected is not None:
        missing = sorted(expected - set(first))
        problems += [(0, f"missing Id {i!r}") for i in missing[:MAX_MISSING_LISTED]]
        if len(missing) > MAX_MISSING_LISTED:
            problems.append((0, f"... and {len(missing) - MAX_MISSING_LISTED} more missing Ids ({len(missing)} in all)"))
    return problems


def read_submission(path: str | Path, label_set: LabelSet = HPA_2018) -> dict[str, list[int]]:
    """``{Id: class ids}`` of a submission; the first problem raises (check_submission lists all)."""
    path = Path(path)
    header, rows = read_rows(path, SUBMISSION_COLUMNS)
    out: dict[str, list[int]] = {}
    lines: dict[str, int] = {}
    for line, row in _columns(header, rows, path):
        image_id = row["Id"].strip()
        ids, problems = target_problems(row["Predicted"], label_set.num_classes)
        if not image_id:
            problems.insert(0, "empty Id")
        elif image_id in out:
            problems.insert(0, f"duplicate Id {image_id!r} (first on line {lines[image_id]})")
        if problems:
            raise InputError(f"{path}: line {line}: {problems[0]} (run src/check_submission.py for every problem)")
        out[image_id], lines[image_id] = ids, line
    return out


def truth_labels_path(truth: str | Path) -> Path:
    """The truth CSV: ``truth`` itself, or ``labels.csv`` inside a truth folder."""
    truth = Path(truth)
    return truth / "labels.csv" if truth.is_dir() else truth


def score_table(pred: np.ndarray, truth: np.ndarray, names: Sequence[str]) -> pd.DataFrame:
    """Per-class F1, precision, recall and counts of boolean (N, C) predictions against truth.

    ``F1`` follows scikit-learn's ``f1_score(average=None)`` defaults: a class with no positive
    in the truth and none predicted gets 0 (noted in ``note``); precision/recall with a zero
    denominator are NaN (undefined, shown as ``-``).
    """
    tp, fp, fn = f1_counts(pred, truth)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), np.nan)
        recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), np.nan)
    note = np.where((tp + fp + fn) == 0, "no positive in truth or submission: counts 0", "")
    return pd.DataFrame({
        "class": np.arange(len(names)), "name": list(names), "F1": f1_per_class(pred, truth),
        "precision": precision, "recall": recall, "truth": tp + fn, "predicted": tp + fp, "TP": tp, "note": note,
    })


def evaluate_submission(
    truth: str | Path, submission_path: str | Path, label_set: LabelSet = HPA_2018
) -> tuple[pd.DataFrame, str]:
    """Score a submission against ``truth/labels.csv`` (``Id,Target``): ``(per-class table, "macro_F1=0.xxxx")``.

    Macro F1 is the mean of the table's F1 over all ``label_set`` classes. The submission's Ids
    must be exactly the truth's (a missing or extra Id is an :class:`InputError`, as the
    competition would refuse the file); its first malformed row raises too.
    """
    truth_path = truth_labels_path(truth)
    labels = read_labels(truth_path, label_set)
    predicted = read_submission(submission_path, label_set)
    missing = [i for i in labels["ID"] if i not in predicted]
    extra = [i for i in predicted if i not in set(labels["ID"])]
    if missing or extra:
        what = [f"{len(missing)} truth Id(s) missing (first {missing[0]!r})"] if missing else []
        what += [f"{len(extra)} Id(s) not in the truth (first {extra[0]!r})"] if extra else []
        raise InputError(f"{submission_path}: {'; '.join(what)} against {truth_path}")
    y = multihot(labels["labels"].tolist(), label_set.num_classes).astype(bool)
    p = multihot([predicted[i] for i in labels["ID"]], label_set.num_classes).astype(bool)
    table = score_table(p, y, label_set.names)
    return table, f"macro_F1={table['F1'].mean():.4f}"


def format_table(table: pd.DataFrame) -> str:
    """The per-class table as fixed-width text (undefined precision/recall as ``-``)."""
    width = max(len(n) for n in table["name"])

    def num(v: float) -> str:
        return "-" if not np.isfinite(v) else f"{v:.4f}"

    lines = [f"{'class':>5}  {'name':<{width}}  {'F1':>6}  {'prec':>6}  {'recall':>6}  {'truth':>6}  {'pred':>6}  {'TP':>6}"]
    for r in table.itertuples(index=False):
        lines.append(f"{r[0]:>5}  {r[1]:<{width}}  {num(r[2]):>6}  {num(r[3]):>6}  {num(r[4]):>6}  {r[5]:>6}  {r[6]:>6}  {r[7]:>6}"
                     + (f"  ({r[8]})" if r[8] else ""))
    present = table["truth"] > 0
    lines.append(f"{len(table)} classes, {int(present.sum())} with a positive in the truth; "
                 f"mean F1 over those {table.loc[present, 'F1'].mean() if present.any() else float('nan'):.4f}")
    return "\n".join(lines)


def encode_rows(sample_ids: Sequence[str], probs: np.ndarray, task: object = None,
                thresholds: Mapping | None = None) -> list[tuple[str, str]]:
    """``(Id, "0 16")`` submission rows from per-sample probabilities (N, 28) and a recipe's thresholds.

    ``thresholds`` is a model recipe's ``"thresholds"`` entry (:meth:`Thresholds.to_dict`):
    per-class or global thresholds, or the share rule, and whether each image keeps its top
    class. Without one: 0.5 for every class and the top class kept (every 2018 image has one).
    """
    th = Thresholds.from_dict(dict(thresholds)) if thresholds else Thresholds(0.5, np.zeros(0), keep_top=True)
    return [(i, format_target(np.flatnonzero(row))) for i, row in zip(sample_ids, predict_labels(probs, th))]


# --------------------------------------------------------------------------- the task registries' entries


def _register() -> None:
    """What the ``hpa-2018`` task finds in the registries: its labels reader and its submission format.

    Imported on first use (the registries' ``plugins`` name this module), so nothing here runs
    for a task that does not need it.
    """
    from .labels import LABEL_READERS
    from .submission_formats import SubmissionFormat, register_format

    def check(path: str | Path, task, expected_ids: Iterable[str] | None = None, max_per_line: int = 5,
              **_: object) -> list[tuple[int, str]]:
        return check_submission(path, task.label_set, expected_ids, max_per_line)

    def evaluate(truth: str | Path, submission_path: str | Path, task, **_: object) -> tuple[pd.DataFrame, str]:
        return evaluate_submission(truth, submission_path, task.label_set)

    LABEL_READERS.register("hpa-2018")(read_labels)
    register_format(SubmissionFormat("hpa-2018", SUBMISSION_COLUMNS, check, evaluate, read_ids,
                                     encode=encode_rows, show=format_table))


_register()

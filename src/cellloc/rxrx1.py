"""RxRx1 (Recursion, Kaggle 2019): the folder layout, its CSVs, the label set and the submission.

A split folder holds one 8-bit grey PNG per imaging site and channel::

    {split}/{experiment}/Plate{p}/{well}_s{site}_w{c}.png     c = 1..6, site = 1, 2

A *well* is a sample: ``id_code = {experiment}_{plate}_{well}`` (``HEPG2-01_1_B03``); a *field*
is one imaging site of a well, ``{id_code}_s{site}``. The experiment name starts with the cell
type (``HEPG2-01`` -> ``HEPG2``). Labels: 1,108 treatment siRNAs (ids 0-1107) and 31 control
siRNAs (1108-1137 positive controls, 1138 the negative control), 1,139 classes in all; the
controls are labelled even in the test split (``test_controls.csv``).

The readers return the project's label frame: ``ID`` (the id_code), ``Label`` (the canonical
label string, here one id: ``"513"``), ``labels`` (``[513]``) and the metadata columns
``experiment, plate, well, cell_type, well_type`` as strings. Every problem is one
:class:`InputError` naming the file and the line.

The submission is ``id_code,sirna``, every test well once; the metric is accuracy.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .classes import CHANNEL_SETS, RXRX1, LabelSet
from .errors import InputError
from .fieldio import IMAGE_EXTS, FieldListing, atomic_path, find_channel_file, format_label, read_csv, row_lines
from .fieldio import list_fields as list_flat_fields
from .fieldio import read_field as read_flat_field

CHANNELS: tuple[str, ...] = CHANNEL_SETS["rxrx1"]
STAINS: dict[str, str] = {
    "w1": "Hoechst (nuclei)",
    "w2": "ConA (endoplasmic reticulum)",
    "w3": "phalloidin (actin)",
    "w4": "SYTO14 (nucleoli, RNA)",
    "w5": "MitoTracker (mitochondria)",
    "w6": "WGA (Golgi, plasma membrane)",
}
SITES: tuple[int, ...] = (1, 2)
CELL_TYPES: tuple[str, ...] = ("HEPG2", "HUVEC", "RPE", "U2OS")

N_TREATMENTS = 1108
POSITIVE_CONTROLS: tuple[int, ...] = tuple(range(1108, 1138))
NEGATIVE_CONTROL = 1138
NUM_CLASSES = 1139
PLATE_GROUPS = 4  # each plate of an experiment holds one of 4 fixed groups of 277 siRNAs

# The 308 wells of a 384-well plate that RxRx1 uses (the outer ring is empty): rows B-O, columns 2-23.
PLATE_ROWS = "BCDEFGHIJKLMNO"
PLATE_COLUMNS: tuple[int, ...] = tuple(range(2, 24))
WELLS: tuple[str, ...] = tuple(f"{r}{c:02d}" for r in PLATE_ROWS for c in PLATE_COLUMNS)

LABELS = RXRX1  # the task's label set (cellloc.classes): sirna_0..1107, positive_control_1108..1137, negative_control

TREATMENT, NEGATIVE, POSITIVE = "treatment", "negative_control", "positive_control"
WELL_TYPES: tuple[str, ...] = (TREATMENT, NEGATIVE, POSITIVE)

TRAIN_COLUMNS: tuple[str, ...] = ("id_code", "experiment", "plate", "well", "sirna")
TEST_COLUMNS: tuple[str, ...] = ("id_code", "experiment", "plate", "well")
CONTROL_COLUMNS: tuple[str, ...] = TRAIN_COLUMNS + ("well_type",)
PIXEL_STATS_COLUMNS: tuple[str, ...] = (
    "id_code", "experiment", "plate", "well", "site", "channel", "mean", "std", "median", "min", "max",
)
SUBMISSION_COLUMNS: tuple[str, ...] = ("id_code", "sirna")
META_COLUMNS: tuple[str, ...] = ("experiment", "plate", "well", "cell_type", "well_type")

_FIELD_RE = re.compile(r"^(?P<experiment>.+)_(?P<plate>\d+)_(?P<well>[A-Za-z]+\d+)_s(?P<site>\d+)$")
_ID_CODE_RE = re.compile(r"^(?P<experiment>.+)_(?P<plate>\d+)_(?P<well>[A-Za-z]+\d+)$")
_SITE_FILE_RE = re.compile(r"^(?P<well>[A-Za-z]+\d+)_s(?P<site>\d+)$")
_PLATE_DIR_RE = re.compile(r"^Plate(?P<plate>\d+)$")
_WELL_RE = re.compile(r"^[A-P]\d{2}$")


# --------------------------------------------------------------------------- ids


@dataclass(frozen=True)
class FieldKey:
    """One imaging site: where its files are and which well (sample) it belongs to."""

    experiment: str
    plate: int
    well: str
    site: int

    @property
    def id_code(self) -> str:
        return f"{self.experiment}_{self.plate}_{self.well}"

    @property
    def field_id(self) -> str:
        return f"{self.id_code}_s{self.site}"

    def folder(self, split_folder: str | Path) -> Path:
        """The plate folder holding this site's channel files."""
        return Path(split_folder) / self.experiment / f"Plate{self.plate}"


def parse_field_id(field_id: str) -> FieldKey:
    """``HEPG2-01_1_B03_s2`` -> FieldKey("HEPG2-01", 1, "B03", 2); one-line InputError otherwise."""
    m = _FIELD_RE.match(field_id)
    if m is None:
        raise InputError(f"{field_id!r}: not an RxRx1 field id (expected {{experiment}}_{{plate}}_{{well}}_s{{site}})")
    return FieldKey(m["experiment"], int(m["plate"]), m["well"], int(m["site"]))


def parse_id_code(id_code: str) -> tuple[str, int, str]:
    """``HEPG2-01_1_B03`` -> ("HEPG2-01", 1, "B03")."""
    m = _ID_CODE_RE.match(id_code)
    if m is None:
        raise InputError(f"{id_code!r}: not an RxRx1 id_code (expected {{experiment}}_{{plate}}_{{well}})")
    return m["experiment"], int(m["plate"]), m["well"]


def field_id(id_code: str, site: int) -> str:
    return f"{id_code}_s{int(site)}"


def sample_of(field_id: str) -> str:
    """The id_code a field (site) belongs to: ``HEPG2-01_1_B03_s2`` -> ``HEPG2-01_1_B03``."""
    return parse_field_id(field_id).id_code


def cell_type_of(experiment: str) -> str:
    """The cell type an experiment name starts with: ``HEPG2-01`` -> ``HEPG2``, ``U2OS-05`` -> ``U2OS``."""
    return experiment.split("-", 1)[0]


# --------------------------------------------------------------------------- layout


def list_fields(folder: str | Path, channels: Sequence[str] = CHANNELS, exts: Sequence[str] = IMAGE_EXTS) -> FieldListing:
    """Find the sites under a split folder from the channel file names.

    Walks ``{experiment}/Plate{p}/``; a site is complete when all ``channels`` exist (a channel
    subset reads only its own files). Sites that lack channels go to ``incomplete``; any other
    file or folder (a stray file, ``Plate5x/``) to ``unmatched`` as a path relative to ``folder``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    ids: list[str] = []
    incomplete: dict[str, list[str]] = {}
    unmatched: list[str] = []
    for exp_dir in sorted(folder.iterdir()):
        if not exp_dir.is_dir():
            unmatched.append(exp_dir.name)
            continue
        for plate_dir in sorted(exp_dir.iterdir()):
            m = _PLATE_DIR_RE.match(plate_dir.name)
            if m is None or not plate_dir.is_dir():
                unmatched.append(f"{exp_dir.name}/{plate_dir.name}")
                continue
            plate = int(m["plate"])
            flat = list_flat_fields(plate_dir, channels, exts)
            rel = f"{exp_dir.name}/{plate_dir.name}/"
            unmatched += [rel + name for name in flat.unmatched]
            for stem in flat.ids + list(flat.incomplete):
                s = _SITE_FILE_RE.match(stem)
                if s is None:
                    unmatched.append(f"{rel}{stem}_*")
                    continue
                key = FieldKey(exp_dir.name, plate, s["well"], int(s["site"]))
                if stem in flat.incomplete:
                    incomplete[key.field_id] = flat.incomplete[stem]
                else:
                    ids.append(key.field_id)
    return FieldListing(sorted(ids), dict(sorted(incomplete.items())), unmatched)


def read_field(folder: str | Path, field_id: str, channels: Sequence[str] = CHANNELS,
               exts: Sequence[str] = IMAGE_EXTS) -> np.ndarray:
    """Read one site's channel files as HxWxC (uint8 or uint16 kept) in the order of ``channels``.

    A missing channel file, a corrupt one, or channels of different sizes or depths are one-line
    InputErrors naming the file.
    """
    key = parse_field_id(field_id)
    return read_flat_field(key.folder(folder), f"{key.well}_s{key.site}", channels, exts)


def channel_file(folder: str | Path, field_id: str, channel: str, exts: Sequence[str] = IMAGE_EXTS) -> Path:
    """The file of one channel of a site (``{experiment}/Plate{p}/{well}_s{site}_{channel}.png``)."""
    key = parse_field_id(field_id)
    return find_channel_file(key.folder(folder), f"{key.well}_s{key.site}", channel, exts)


def check_sites(listing: FieldListing, id_codes: Iterable[str], folder: str | Path,
                sites: Sequence[int] = SITES) -> None:
    """Every well of a labels CSV must have all its sites with all channels; else one InputError.

    The error names the first missing file (a site lacking some channels) or the first missing
    site, so a user sees what to fetch again.
    """
    have = set(listing.ids)
    for id_code in id_codes:
        for site in sites:
            fid = field_id(id_code, site)
            if fid in have:
                continue
            key = parse_field_id(fid)
            where = key.folder(folder) / f"{key.well}_s{key.site}"
            if fid in listing.incomplete:
                missing = ", ".join(listing.incomplete[fid])
                raise InputError(f"{where}_{listing.incomplete[fid][0]}.png: missing channel file(s) {missing} of well {id_code}")
            raise InputError(f"{where}_*.png: missing site {site} of well {id_code}")


# --------------------------------------------------------------------------- CSVs


def _csv_kind(path: Path, columns: Sequence[str]) -> str:
    """Which RxRx1 table a header is: ``train``, ``controls`` or ``test``; InputError for any other."""
    kinds = {"train": TRAIN_COLUMNS, "controls": CONTROL_COLUMNS, "test": TEST_COLUMNS}
    cols = list(columns)
    for kind, expected in kinds.items():
        if sorted(cols) == sorted(expected):
            return kind
    known = set(CONTROL_COLUMNS)
    unknown = [c for c in cols if c not in known]
    if unknown:
        raise InputError(f"{path}: unknown column(s) {', '.join(unknown)} (an RxRx1 table has {', '.join(CONTROL_COLUMNS)})")
    missing = [c for c in TEST_COLUMNS if c not in cols]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(cols)})")
    raise InputError(f"{path}: a well_type column needs a sirna column (has: {', '.join(cols)})")


def _sirna(value: str, where: str, num_classes: int) -> int:
    if not re.fullmatch(r"\s*\d+\s*", value):
        raise InputError(f"{where}: sirna {value!r} is not a class id (0..{num_classes - 1})")
    k = int(value)
    if k >= num_classes:
        raise InputError(f"{where}: sirna {k} outside 0..{num_classes - 1}")
    return k


def _expected_well_type(sirna: int) -> str:
    if sirna == NEGATIVE_CONTROL:
        return NEGATIVE
    return POSITIVE if sirna in POSITIVE_CONTROLS else TREATMENT


def read_table(path: str | Path, label_set: LabelSet = LABELS) -> pd.DataFrame:
    """Read ``train.csv``, ``test.csv``, ``train_controls.csv`` or ``test_controls.csv`` (by header).

    Returns ``ID, Label, labels, experiment, plate, well, cell_type, well_type``. ``test.csv``
    has no sirna: its rows get ``Label == ""`` and ``labels == []``. Rows of ``train.csv`` and
    ``test.csv`` are treatments. Checked, each a one-line InputError with the line: the id_code
    matches its experiment, plate and well; wells look like ``B03``; sirna is an id of
    ``label_set`` and, with the full 1,139-class set, agrees with its well_type; no well twice.
    """
    path = Path(path)
    df = read_csv(path)
    kind = _csv_kind(path, df.columns)
    full = label_set.num_classes == NUM_CLASSES
    rows = []
    first_line: dict[str, int] = {}
    for line, r in zip(row_lines(df), df.to_dict("records")):
        where = f"{path}: line {line}"
        id_code, exp, plate, well = (r[c].strip() for c in TEST_COLUMNS)
        if not id_code or not exp:
            raise InputError(f"{where}: empty id_code or experiment")
        if not re.fullmatch(r"\d+", plate) or int(plate) < 1:
            raise InputError(f"{where}: plate {plate!r} is not a plate number (1, 2, ...)")
        if not _WELL_RE.match(well):
            raise InputError(f"{where}: well {well!r} is not a plate well such as B03")
        if id_code != f"{exp}_{int(plate)}_{well}":
            raise InputError(f"{where}: id_code {id_code!r} does not match experiment, plate and well ({exp}_{int(plate)}_{well})")
        if id_code in first_line:
            raise InputError(f"{where}: well {id_code} listed twice (first on line {first_line[id_code]})")
        first_line[id_code] = line
        well_type = r.get("well_type", TREATMENT).strip()
        if well_type not in WELL_TYPES:
            raise InputError(f"{where}: unknown well_type {well_type!r} (known: {', '.join(WELL_TYPES)})")
        if kind == "test":
            labels: list[int] = []
        else:
            k = _sirna(r["sirna"], where, label_set.num_classes)
            if full and _expected_well_type(k) != well_type:
                raise InputError(f"{where}: sirna {k} is a {_expected_well_type(k)}, not a {well_type}")
            labels = [k]
        rows.append({
            "ID": id_code, "Label": format_label(labels), "labels": labels,
            "experiment": exp, "plate": str(int(plate)), "well": well,
            "cell_type": cell_type_of(exp), "well_type": well_type,
        })
    return pd.DataFrame(rows, columns=["ID", "Label", "labels", *META_COLUMNS])


def read_task_labels(path: str | Path, label_set: LabelSet = LABELS) -> pd.DataFrame:
    """The labels CSV reader of the ``rxrx1`` task: a table that has a sirna column (see :func:`read_table`)."""
    df = read_table(path, label_set)
    if (df["Label"] == "").any():
        raise InputError(f"{path}: has no sirna column; expected {', '.join(TRAIN_COLUMNS)}")
    return df


def read_split(root: str | Path, split: str, label_set: LabelSet = LABELS) -> pd.DataFrame:
    """Every well of a split: ``{split}.csv`` plus ``{split}_controls.csv`` when present.

    A well in both files is an InputError. Test treatment wells are unlabelled (``Label == ""``).
    """
    root = Path(root)
    parts = [read_table(root / f"{split}.csv", label_set)]
    controls = root / f"{split}_controls.csv"
    if controls.exists():
        parts.append(read_table(controls, label_set))
        both = set(parts[0]["ID"]) & set(parts[1]["ID"])
        if both:
            raise InputError(f"{controls}: well {sorted(both)[0]} is listed in {split}.csv too")
    return pd.concat(parts, ignore_index=True)


def read_pixel_stats(path: str | Path) -> pd.DataFrame:
    """``pixel_stats.csv``: one row per (well, site, channel) with mean, std, median, min, max.

    Returns the frame with ``plate``, ``site``, ``channel`` as int and the statistics as float;
    unknown or missing columns, non-numbers, a negative std and a repeated (well, site, channel)
    are one-line InputErrors.
    """
    path = Path(path)
    df = read_csv(path, PIXEL_STATS_COLUMNS)
    unknown = [c for c in df.columns if c not in PIXEL_STATS_COLUMNS]
    if unknown:
        raise InputError(f"{path}: unknown column(s) {', '.join(unknown)} (expected {', '.join(PIXEL_STATS_COLUMNS)})")
    lines = row_lines(df)
    out = df.copy()
    for col, kind in (("plate", int), ("site", int), ("channel", int), ("mean", float), ("std", float),
                      ("median", float), ("min", float), ("max", float)):
        values = pd.to_numeric(out[col].str.strip(), errors="coerce")
        bad = values.isna() | ((values % 1 != 0) if kind is int else False)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(f"{path}: line {lines[i]}: {col} {df[col].iloc[i]!r} is not {'an integer' if kind is int else 'a number'}")
        out[col] = values.astype(kind)
    if (out["std"] < 0).any():
        i = int(np.flatnonzero((out["std"] < 0).to_numpy())[0])
        raise InputError(f"{path}: line {lines[i]}: negative std")
    dup = out.duplicated(["id_code", "site", "channel"])
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise InputError(f"{path}: line {lines[i]}: well {out['id_code'].iloc[i]} site {out['site'].iloc[i]} "
                         f"channel {out['channel'].iloc[i]} listed twice")
    return out


# --------------------------------------------------------------------------- submission ("rxrx1" format)


def _num_classes(task: object | None) -> int:
    label_set = getattr(task, "label_set", None)
    return label_set.num_classes if label_set is not None else NUM_CLASSES


def write_submission(path: str | Path, rows: Iterable[tuple[str, int]] | Mapping[str, int]) -> None:
    """Write ``id_code,sirna`` atomically; ``rows`` is (id_code, sirna) pairs or a mapping. A repeated id is an error."""
    items = rows.items() if isinstance(rows, Mapping) else rows
    seen: set[str] = set()
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(SUBMISSION_COLUMNS)
        for id_code, sirna in items:
            if id_code in seen:
                raise ValueError(f"id_code {id_code!r} written twice")
            seen.add(id_code)
            w.writerow((id_code, int(sirna)))


def _submission_rows(path: Path) -> list[tuple[int, list[str]]]:
    if not path.is_file():
        raise InputError(f"{path}: {'is a folder, not a CSV file' if path.is_dir() else 'file not found'}")
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        return [(i + 1, r) for i, r in enumerate(csv.reader(fh))]


def check_submission(path: str | Path, task: object | None = None,
                     expected_ids: Iterable[str] | None = None) -> list[tuple[int, str]]:
    """Every problem of an ``id_code,sirna`` submission as (line, reason); line 0 is the whole file.

    Checks the header, each row's two fields, the sirna (an integer class id of the task's
    label set), repeated and unexpected ids, and (with ``expected_ids``) missing ones.
    """
    path = Path(path)
    num_classes = _num_classes(task)
    rows = _submission_rows(path)
    if not rows:
        return [(0, "empty file (expected header id_code,sirna)")]
    problems: list[tuple[int, str]] = []
    header = [c.strip() for c in rows[0][1]]
    if header != list(SUBMISSION_COLUMNS):
        problems.append((1, f"header {','.join(header)!r}; expected id_code,sirna"))
    expected = None if expected_ids is None else set(expected_ids)
    first: dict[str, int] = {}
    for line, r in rows[1:]:
        if not r:
            problems.append((line, "empty line"))
            continue
        if len(r) != 2:
            problems.append((line, f"{len(r)} fields; expected 2 (id_code,sirna)"))
            continue
        id_code, value = r[0].strip(), r[1].strip()
        if not id_code:
            problems.append((line, "empty id_code"))
        elif id_code in first:
            problems.append((line, f"id_code {id_code!r} repeated (first on line {first[id_code]})"))
        else:
            first[id_code] = line
            if expected is not None and id_code not in expected:
                problems.append((line, f"unexpected id_code {id_code!r}"))
        if not re.fullmatch(r"\d+", value):
            problems.append((line, f"sirna {value!r} is not a class id"))
        elif int(value) >= num_classes:
            problems.append((line, f"sirna {int(value)} outside 0..{num_classes - 1}"))
    if expected is not None:
        missing = sorted(expected - set(first))
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            problems.append((0, f"{len(missing)} id_code(s) missing: {', '.join(missing[:5])}{more}"))
    return problems


def read_submission(path: str | Path, task: object | None = None) -> dict[str, int]:
    """``{id_code: sirna}`` of a valid submission; the first problem :func:`check_submission` finds is an InputError."""
    problems = check_submission(path, task)
    if problems:
        line, reason = problems[0]
        raise InputError(f"{path}: line {line}: {reason}" if line else f"{path}: {reason}")
    return {r[0].strip(): int(r[1]) for _, r in _submission_rows(Path(path))[1:]}


def read_truth(truth: str | Path | pd.DataFrame, task: object | None = None) -> dict[str, int]:
    """``{id_code: sirna}`` from a truth folder (its ``labels.csv``), a ``labels.csv`` or a frame with those columns."""
    if isinstance(truth, pd.DataFrame):
        return {str(i): int(s) for i, s in zip(truth["id_code"], truth["sirna"])}
    path = Path(truth)
    if path.is_dir():
        path = path / "labels.csv"
    problems = check_submission(path, task)  # the same two-column format
    if problems:
        line, reason = problems[0]
        raise InputError(f"{path}: line {line}: {reason}" if line else f"{path}: {reason}")
    return {r[0].strip(): int(r[1]) for _, r in _submission_rows(path)[1:]}


def accuracy_table(truth: Mapping[str, int], predicted: Mapping[str, int]) -> pd.DataFrame:
    """Accuracy per cell type and overall (last row, ``cell_type == "all"``).

    Columns: cell_type, wells, correct, accuracy. The cell type comes from the experiment in
    each id_code. ``predicted`` must hold every id of ``truth``.
    """
    missing = [i for i in truth if i not in predicted]
    if missing:
        raise InputError(f"submission lacks {len(missing)} of the {len(truth)} truth wells (first: {missing[0]})")
    ids = list(truth)
    df = pd.DataFrame({
        "cell_type": [cell_type_of(parse_id_code(i)[0]) for i in ids],
        "correct": [int(predicted[i] == truth[i]) for i in ids],
    })
    per = df.groupby("cell_type", sort=True)["correct"].agg(["count", "sum"]).reset_index()
    per.columns = ["cell_type", "wells", "correct"]
    total = pd.DataFrame([{"cell_type": "all", "wells": len(df), "correct": int(df["correct"].sum())}])
    table = pd.concat([per, total], ignore_index=True)
    table["accuracy"] = table["correct"] / table["wells"].clip(lower=1)
    return table


def evaluate_submission(truth: str | Path | pd.DataFrame, submission_path: str | Path,
                        task: object | None = None) -> tuple[pd.DataFrame, str]:
    """Score a submission against ``truth/labels.csv`` (``id_code,sirna``): accuracy overall and per cell type.

    Ids in the submission that the truth lacks are an InputError (a submission for another
    split); ids the truth has and the submission lacks too. Returns the table of
    :func:`accuracy_table` and the summary line ``accuracy=0.xxxx``.
    """
    want = read_truth(truth, task)
    got = read_submission(submission_path, task)
    extra = [i for i in got if i not in want]
    if extra:
        raise InputError(f"{submission_path}: id_code {extra[0]!r} is not in the truth ({len(extra)} such ids)")
    table = accuracy_table(want, got)
    return table, f"accuracy={table['accuracy'].iloc[-1]:.4f}"


def plate_groups_of(path: str | Path) -> list[frozenset[int]]:
    """The siRNA groups of the plate design, from a labels table (``train.csv``): siRNAs that share a plate are one group."""
    from .plate_assignment import plate_groups

    table = read_table(path)
    treat = table[(table["well_type"] == TREATMENT) & (table["Label"] != "")]
    if treat.empty:
        raise InputError(f"{path}: no labelled treatment wells to find the plate groups in")
    return plate_groups([k[0] for k in g["labels"]] for _, g in treat.groupby(["experiment", "plate"]))


def encode_submission(sample_ids: Sequence[str], probs: np.ndarray, task: object | None = None,
                      thresholds: dict | None = None, plate_groups: str | Path | None = None) -> list[tuple[str, int]]:
    """``(id_code, sirna)`` rows from per-well probabilities (N, C): the test wells are treatments.

    Only the 1,108 treatment siRNAs are candidates (a control class is never the answer for a
    ``test.csv`` well). Without ``plate_groups`` each well gets its most likely siRNA. With it
    (a labels CSV, see :func:`plate_groups_of`), each plate of an experiment gets its most likely
    group and every siRNA of it at most one well (:func:`cellloc.plate_assignment.assign_by_plate`).
    """
    from .plate_assignment import assign_by_plate

    probs = np.asarray(probs, np.float64)[:, : min(N_TREATMENTS, np.shape(probs)[1])]
    log_probs = np.log(np.clip(probs, 1e-38, None))
    if plate_groups is None:
        pred = log_probs.argmax(axis=1)
    else:
        plates = [parse_id_code(i)[:2] for i in sample_ids]
        pred = assign_by_plate(log_probs, plates, plate_groups_of(plate_groups))
    return [(i, int(k)) for i, k in zip(sample_ids, pred)]


# --------------------------------------------------------------------------- pictures


def preview(folder: str | Path, field_ids: Sequence[str], tile: int = 256) -> np.ndarray:
    """A picture (uint8 RGB) of some sites: one row per site, its six stains as two composites.

    Left: w3 actin red, w2 ER green, w1 nuclei blue; right: w5 mitochondria red, w6
    Golgi/membrane green, w4 RNA blue; each channel stretched to its own 99.8th percentile,
    with the field id written above the row.
    """
    import cv2

    from .render import RXRX1_COMPOSITES, composite_rgb

    rows = []
    for fid in field_ids:
        img = read_field(folder, fid)
        pics = []
        for colours in RXRX1_COMPOSITES:
            names = list(colours)
            idx = [CHANNELS.index(n) for n in names]
            rgb = composite_rgb(img[..., idx], names, colours=colours)
            pics.append(cv2.resize(rgb, (tile, tile), interpolation=cv2.INTER_AREA))
        bar = np.zeros((18, 2 * tile, 3), np.uint8)
        cv2.putText(bar, fid, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
        rows.append(np.vstack([bar, np.hstack(pics)]))
    return np.vstack(rows)


# --------------------------------------------------------------------------- the task registries' entries


def _register() -> None:
    """What the ``rxrx1`` task finds in the registries: this module as its layout, its labels reader, its format.

    Imported on first use (the registries' ``plugins`` name this module), so nothing here runs
    for a task that does not need it.
    """
    import sys

    from .labels import LABEL_READERS
    from .layouts import LAYOUTS
    from .submission_formats import SubmissionFormat, register_format

    def check(path: str | Path, task, expected_ids: Iterable[str] | None = None, **_: object) -> list[tuple[int, str]]:
        return check_submission(path, task, expected_ids)

    def evaluate(truth: str | Path, submission_path: str | Path, task, **_: object) -> tuple[pd.DataFrame, str]:
        return evaluate_submission(truth, submission_path, task)

    LAYOUTS["rxrx1"] = sys.modules[__name__]  # list_fields, read_field, sample_of, channel_file
    LABEL_READERS.register("rxrx1")(read_task_labels)
    register_format(SubmissionFormat("rxrx1", SUBMISSION_COLUMNS, check, evaluate, encode=encode_submission,
                                     encode_options=("plate_groups",)))


_register()

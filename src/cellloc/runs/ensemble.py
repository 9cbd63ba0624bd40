"""Folder-level runs on saved test scores: ensembles of prediction folders, and pseudo-labels.

``run_ensemble``: several image-level prediction folders (``field_scores/`` of ``predict.py``:
e.g. one per RxRx1 channel-subset model, or one per cell-type model) combined field by field
(:mod:`cellloc.ensembling`), then averaged per sample and written as the task's submission, with
``--plate-assignment`` as ``predict.py`` does. The output folder has the same files as a
prediction folder, so it can be scored, ensembled again or pseudo-labelled.

``run_pseudo_labels``: the confident predictions of a prediction folder as a training table
(``ID, Label, ..., fold=-1``) that ``train.py --extra-train`` adds to training. It reads the
folder's scores and submission and the test split's own CSVs (``test.csv`` and the labelled
``test_controls.csv`` the competition gives), never ``truth/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import opt
from ..ensembling import AVERAGES, average_scores, confident, pick_rows
from ..errors import InputError
from ..fieldio import dataset_root, format_label, read_csv, write_csv
from ..layouts import LAYOUTS
from ..plate_assignment import plate_confidence
from ..rxrx1 import parse_id_code, plate_groups_of
from ..submission_formats import FORMATS
from ..tasks import TASKS, Task, get_task
from .predict import per_sample, plate_options, read_field_scores, save_field_scores, score_frame

# What ranks a well for pseudo-labelling (see PseudoConfig.confidence).
CONFIDENCES = ("plate", "probability")


def split_table(task: Task, input_dir: str | Path) -> pd.DataFrame:
    """The test split's wells with their metadata (RxRx1: ``test.csv`` and ``test_controls.csv``)."""
    if task.name != "rxrx1":
        raise InputError(f"task {task.name}: only rxrx1 has a test table with per-sample metadata here")
    from ..rxrx1 import read_split

    return read_split(dataset_root(input_dir), Path(input_dir).name, task.label_set)


@dataclass
class EnsembleConfig:
    """Options of ``python src/ensemble.py``."""

    predictions: list[str] = opt([], "prediction folders of one test folder (their field_scores/); with --by, "
                                 "KEY=FOLDER: each sample takes the scores of the folder of its KEY")
    task: str = opt("rxrx1", "task of the predictions", choices=TASKS.names())
    input: str = opt("", "the test folder that was predicted (its dataset folder gives train.csv for --plate-assignment "
                     "and the test CSVs for --by)")
    average: str = opt("logits", "how folders are combined: logits (softmax of the mean log-probability) or probs "
                       "(mean probability)", choices=list(AVERAGES))
    by: str = opt("", "a column of the test split's table (e.g. cell_type): each sample is scored by the folder given "
                  "for its value, KEY=FOLDER (one model per cell type, merged into one submission)")
    plate_assignment: bool = opt(False, "rxrx1: each plate gets one siRNA group and each of its siRNAs one well")
    plate_groups: str = opt("", "--plate-assignment: labels CSV whose plates define the groups (default: train.csv "
                            "beside --input)")
    out: str = opt("", "output folder: field_scores/, scores.csv, submission.csv")

    def __post_init__(self) -> None:
        if not self.predictions:
            raise ValueError("--predictions: give at least one prediction folder")
        if not self.input or not self.out:
            raise ValueError("--input and --out are required")
        keyed = ["=" in p for p in self.predictions]
        if self.by and not all(keyed):
            raise ValueError("--by: every --predictions entry is KEY=FOLDER")
        if not self.by and any(keyed):
            raise ValueError("--predictions KEY=FOLDER needs --by COLUMN")

    def folders(self) -> dict[str, Path]:
        """Prediction folders by key (their position without ``--by``)."""
        if self.by:
            return {k.strip(): Path(v) for k, _, v in (p.partition("=") for p in self.predictions)}
        return {str(i): Path(p) for i, p in enumerate(self.predictions)}


def aligned_scores(folders: dict[str, Path]) -> tuple[list[str], dict[str, np.ndarray]]:
    """(field ids of the first folder, each folder's (N, C) scores in that order); every folder must hold the same fields."""
    ids: list[str] | None = None
    out: dict[str, np.ndarray] = {}
    for key, folder in folders.items():
        got, probs = read_field_scores(folder)
        if ids is None:
            ids = got
        elif set(got) != set(ids) or len(got) != len(ids):
            extra = sorted(set(got) ^ set(ids))
            raise InputError(f"{folder}: scores other fields than {next(iter(folders.values()))} "
                             f"({len(extra)} differ, e.g. {extra[0] if extra else 'a repeated field'})")
        else:
            probs = probs[pd.Index(got).get_indexer(ids)]
        out[key] = probs
    assert ids is not None
    return ids, out


@dataclass
class EnsembleSummary:
    fields: int
    samples: int
    members: int
    submission: Path


def run_ensemble(cfg: EnsembleConfig) -> EnsembleSummary:
    """Combine the folders' field scores, write ``field_scores/``, ``scores.csv`` and ``submission.csv`` to ``cfg.out``."""
    task = get_task(cfg.task)
    fmt = FORMATS[task.submission]
    if fmt.encode is None:
        raise InputError(f"submission format {fmt.name} is written per cell, not from image scores")
    options = plate_options(cfg.plate_assignment, cfg.plate_groups, dataset_root(cfg.input), fmt.name, fmt.encode_options)
    folders = cfg.folders()
    ids, scores = aligned_scores(folders)
    if cfg.by:
        table = split_table(task, cfg.input)
        if cfg.by not in table.columns:
            raise InputError(f"--by {cfg.by}: the test table has no such column (has: "
                             f"{', '.join(c for c in table.columns if c != 'labels')})")
        value = dict(zip(table["ID"], table[cfg.by].astype(str)))
        layout = LAYOUTS[task.layout]
        keys = [value.get(layout.sample_of(i), "") for i in ids]
        missing = sorted({k for k in keys if k not in scores})
        if missing:
            raise InputError(f"--by {cfg.by}: no --predictions entry for {', '.join(repr(m) for m in missing)}")
        probs = pick_rows(scores, keys)
    else:
        probs = average_scores(list(scores.values()), cfg.average)
    out = Path(cfg.out)
    save_field_scores(out, ids, probs)
    samples, sample_probs = per_sample(ids, probs, task)
    write_csv(out / "scores.csv", score_frame(samples, sample_probs, task))
    fmt.write(out / "submission.csv", fmt.encode(samples, sample_probs, task, None, **options))
    return EnsembleSummary(len(ids), len(samples), len(folders), out / "submission.csv")


@dataclass
class PseudoConfig:
    """Options of ``python src/pseudo_labels.py``."""

    predictions: str = opt("", "a prediction folder of the test split (field_scores/ and submission.csv)")
    input: str = opt("", "the test folder that was predicted (its test CSVs give each well's metadata)")
    task: str = opt("rxrx1", "task of the predictions", choices=["rxrx1"])
    confidence: str = opt("plate", "what ranks a well: plate (P(its plate's siRNA group) * P(its siRNA | group), "
                          "from the plate design; right about as often as it says when the model is calibrated) or "
                          "probability (the submitted siRNA's probability among all classes)",
                          choices=list(CONFIDENCES))
    plate_groups: str = opt("", "--confidence plate: labels CSV whose plates define the siRNA groups (default: "
                            "train.csv beside --input)")
    threshold: float = opt(0.5, "keep a well when its confidence is at least this (plate: 0.5 = more likely right "
                           "than wrong)")
    top_share: float = opt(1.0, "then keep only this share of the wells, the most confident (per cell type)")
    controls: bool = opt(True, "add the test split's control wells with the labels its controls CSV gives")
    out: str = opt("", "the table to write (default: pseudo_labels.csv in --predictions)")

    def __post_init__(self) -> None:
        if not self.predictions or not self.input:
            raise ValueError("--predictions and --input are required")
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"--threshold must be in [0, 1], got {self.threshold}")
        if not 0 < self.top_share <= 1:
            raise ValueError(f"--top-share must be in (0, 1], got {self.top_share}")
        self.out = self.out or str(Path(self.predictions) / "pseudo_labels.csv")


def pseudo_label_table(wells: pd.DataFrame, samples: list[str], probs: np.ndarray, submitted: dict[str, int],
                       threshold: float, top_share: float, controls: bool,
                       groups: Sequence[frozenset[int]] | None = None) -> pd.DataFrame:
    """The training table of the confident wells (and the given controls); see :class:`PseudoConfig`.

    ``wells``: the split's table (``ID``, ``Label`` given or empty, metadata); ``samples``/``probs``:
    per-sample probabilities; ``submitted``: each well's predicted label; ``groups``: the plate
    design's siRNA groups for the plate confidence (None: the submitted label's probability).
    Columns: the table's (less ``labels``), ``fold`` = -1, ``confidence`` and ``source``
    (predicted or given).
    """
    missing = [s for s in samples if s not in submitted]
    if missing:
        raise InputError(f"the submission has no row for {missing[0]!r} ({len(missing)} scored wells lack one)")
    labels = np.array([submitted[s] for s in samples])
    if groups is None:
        keep, conf = confident(probs, labels, threshold)
    else:
        plates = [parse_id_code(s)[:2] for s in samples]
        conf = plate_confidence(np.log(np.clip(probs, 1e-38, None)), plates, groups, labels)
        keep = conf >= threshold
    meta = wells.drop(columns="labels").set_index("ID")
    unknown = [s for s in samples if s not in meta.index]
    if unknown:
        raise InputError(f"well {unknown[0]!r} is scored but not in the test CSVs")
    rows = meta.loc[samples].reset_index()
    rows = rows.assign(Label=[format_label([int(k)]) for k in labels], confidence=np.round(conf, 5), source="predicted")
    rows = rows[keep & (rows["well_type"] == "treatment").to_numpy()]
    if top_share < 1 and len(rows):
        rank = rows.groupby("cell_type")["confidence"].rank(ascending=False, method="first")
        size = rows.groupby("cell_type")["confidence"].transform("size")
        rows = rows[rank <= np.ceil(top_share * size)]
    if controls:
        given = wells[(wells["well_type"] != "treatment") & (wells["Label"] != "")].drop(columns="labels")
        rows = pd.concat([rows, given.assign(confidence=1.0, source="given")], ignore_index=True)
    return rows.assign(fold=-1).reset_index(drop=True)


def run_pseudo_labels(cfg: PseudoConfig) -> tuple[pd.DataFrame, int]:
    """Write the pseudo-label table; returns it and how many treatment wells were scored."""
    task = get_task(cfg.task)
    field_ids, probs = read_field_scores(cfg.predictions)
    samples, sample_probs = per_sample(field_ids, probs, task)
    sub_path = Path(cfg.predictions) / "submission.csv"
    sub = read_csv(sub_path, ("id_code", "sirna"))
    try:
        submitted = {i: int(v) for i, v in zip(sub["id_code"], sub["sirna"])}
    except ValueError:
        raise InputError(f"{sub_path}: a sirna that is not an integer") from None
    wells = split_table(task, cfg.input)
    scored = [s for s in samples if s in submitted]  # the submitted (treatment) wells
    pick = pd.Index(samples).get_indexer(scored)
    groups = None
    if cfg.confidence == "plate":
        groups_csv = plate_options(True, cfg.plate_groups, dataset_root(cfg.input), "rxrx1", ("plate_groups",))
        groups = plate_groups_of(groups_csv["plate_groups"])
    table = pseudo_label_table(wells, scored, sample_probs[pick], submitted, cfg.threshold, cfg.top_share, cfg.controls,
                               groups)
    write_csv(cfg.out, table)
    return table, len(scored)


__all__ = ["EnsembleConfig", "PseudoConfig", "pseudo_label_table", "run_ensemble", "run_pseudo_labels"]

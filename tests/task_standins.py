"""Test stand-ins for the HPA-2018 and RxRx1 plug-ins, and tiny fixture datasets in their real layouts.

The real layout, labels readers, submission formats and generators of these tasks are provided
by ``cellloc.hpa2018`` and ``cellloc.rxrx1`` (see the registries' ``plugins``). Where those
modules are not installed yet, :func:`provide_missing_plugins` registers the minimal versions
below for the duration of a test, so the end-to-end tests exercise every task through the same
registries; once a module exists, its own entries are used instead.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from cellloc.classes import LabelSet
from cellloc.errors import InputError
from cellloc.fieldio import FieldListing, format_label, read_channel, read_csv, write_png
from cellloc.labels import LABEL_READERS
from cellloc.layouts import LAYOUTS
from cellloc.metrics import top_k_accuracy
from cellloc.submission_formats import FORMATS, SubmissionFormat, encode_argmax, encode_multilabel, first_column_ids
from cellloc.tasks import Task, get_task

RX_FIELD = re.compile(r"^(?P<well>[A-P]\d{2})_s(?P<site>\d+)_(?P<ch>w\d)$")


class RxRx1StandIn:
    """``{folder}/{experiment}/Plate{p}/{well}_s{site}_w{c}.png``; field id ``{experiment}_{p}_{well}_s{site}``."""

    def list_fields(self, folder: str | Path, channels: Sequence[str]) -> FieldListing:
        seen: dict[str, set[str]] = {}
        for path in sorted(Path(folder).glob("*/Plate*/*.png")):
            m = RX_FIELD.match(path.stem)
            if m:
                fid = f"{path.parent.parent.name}_{path.parent.name[5:]}_{m['well']}_s{m['site']}"
                seen.setdefault(fid, set()).add(m["ch"])
        ids = [i for i in sorted(seen) if set(channels) <= seen[i]]
        return FieldListing(ids, {i: sorted(set(channels) - seen[i]) for i in seen if i not in ids})

    def read_field(self, folder: str | Path, field_id: str, channels: Sequence[str]) -> np.ndarray:
        experiment, plate, well, site = field_id.rsplit("_", 3)
        base = Path(folder) / experiment / f"Plate{plate}"
        return np.stack([read_channel(base / f"{well}_{site}_{c}.png") for c in channels], axis=-1)

    def sample_of(self, field_id: str) -> str:
        return field_id.rsplit("_", 1)[0]


def read_hpa2018_labels(path: Path, label_set: LabelSet) -> pd.DataFrame:
    df = read_csv(path, ("Id", "Target"))
    labels = []
    for line, text in enumerate(df["Target"], 2):
        ids = [int(t) for t in str(text).split()]
        if not ids or max(ids) >= label_set.num_classes:
            raise InputError(f"{path}: line {line}: bad Target {text!r}")
        labels.append(sorted(set(ids)))
    return pd.DataFrame({"ID": df["Id"], "Label": [format_label(x) for x in labels], "labels": labels})


def read_rxrx1_labels(path: Path, label_set: LabelSet) -> pd.DataFrame:
    df = read_csv(path, ("id_code", "experiment", "plate", "well", "sirna"))
    labels = [[int(v)] for v in df["sirna"]]
    out = df.drop(columns=["id_code", "sirna"]).assign(ID=df["id_code"], Label=[str(x[0]) for x in labels], labels=labels)
    return out[["ID", "Label", "labels", "experiment", "plate", "well"]]


def _check(columns: tuple[str, ...]):
    def check(path, task: Task, expected_ids=None, **_) -> list[tuple[int, str]]:
        df = read_csv(path)
        if tuple(df.columns) != columns:
            return [(1, f"header {tuple(df.columns)} is not {columns}")]
        problems = [(0, f"missing ID {i!r}") for i in sorted(set(expected_ids or ()) - set(df[columns[0]]))]
        for line, value in enumerate(df[columns[1]], 2):
            ids = [int(t) for t in str(value).split()] if str(value).strip() else []
            if any(k >= task.num_classes for k in ids):
                problems.append((line, f"unknown class in {value!r}"))
        return problems
    return check


def _evaluate(truth: Path, submission: Path, task: Task, **_) -> tuple[pd.DataFrame, str]:
    true = read_csv(Path(truth) / "labels.csv")
    sub = read_csv(submission)
    key, value = true.columns[0], true.columns[1]
    pred = dict(zip(sub[sub.columns[0]], sub[sub.columns[1]]))
    y = np.zeros((len(true), task.num_classes))
    p = np.zeros_like(y)
    for r, (i, t) in enumerate(zip(true[key], true[value])):
        y[r, [int(k) for k in str(t).split()]] = 1
        p[r, [int(k) for k in str(pred.get(i, "")).split()]] = 1
    if task.kind == "multiclass":
        acc = top_k_accuracy(p, y, 1) if len(y) else float("nan")
        return pd.DataFrame({"metric": ["accuracy"], "value": [acc]}), f"accuracy={acc:.4f}"
    tp, fp, fn = (y * p).sum(0), ((1 - y) * p).sum(0), (y * (1 - p)).sum(0)
    f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
    return pd.DataFrame({"class": range(task.num_classes), "F1": f1}), f"macro_F1={f1.mean():.4f}"


STANDINS = {
    "cellloc.rxrx1": [(LAYOUTS, "rxrx1", RxRx1StandIn()), (LABEL_READERS, "rxrx1", read_rxrx1_labels),
                      (FORMATS, "rxrx1", SubmissionFormat("rxrx1", ("id_code", "sirna"), _check(("id_code", "sirna")),
                                                          _evaluate, first_column_ids, encode_argmax))],
    "cellloc.hpa2018": [(LABEL_READERS, "hpa-2018", read_hpa2018_labels),
                        (FORMATS, "hpa-2018", SubmissionFormat("hpa-2018", ("Id", "Predicted"), _check(("Id", "Predicted")),
                                                               _evaluate, first_column_ids, encode_multilabel))],
}


@contextmanager
def provide_missing_plugins() -> Iterator[None]:
    """Register the stand-ins of every plug-in module that is not installed; remove them afterwards."""
    added = []
    for module, entries in STANDINS.items():
        if importlib.util.find_spec(module) is not None:
            continue
        for registry, name, obj in entries:
            registry[name] = obj
            added.append((registry, name))
    try:
        yield
    finally:
        for registry, name in added:
            del registry[name]


# --------------------------------------------------------------------------- tiny datasets


def pattern_field(rng: np.random.Generator, cls: int, size: int, n_channels: int) -> np.ndarray:
    """An HxWxC uint8 field whose channel ``cls % C`` is bright: a class a tiny model can see."""
    img = rng.integers(0, 40, (size, size, n_channels)).astype(np.uint8)
    img[..., cls % n_channels] += 150
    return img


def write_hpa2018(root: Path, n_train: int = 12, n_test: int = 4, size: int = 48, seed: int = 0) -> Path:
    """``train/``, ``test/`` (flat ``{Id}_{channel}.png``), ``train.csv`` (Id,Target), ``sample_submission.csv``, ``truth/labels.csv``."""
    rng = np.random.default_rng(seed)
    task = get_task("hpa-2018")
    rows = {"train": [], "test": []}
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            classes = sorted({int(c) for c in rng.choice([0, 1, 2, 3], size=int(rng.integers(1, 3)), replace=False)})
            image = np.maximum.reduce([pattern_field(rng, c, size, 4) for c in classes])
            fid = f"{split}{i:03d}-{'ab'[i % 2]}"
            for c, ch in enumerate(task.channels):
                write_png(root / split / f"{fid}_{ch}.png", image[..., c])
            rows[split].append((fid, " ".join(map(str, classes[::-1]))))
    pd.DataFrame(rows["train"], columns=["Id", "Target"]).to_csv(root / "train.csv", index=False)
    pd.DataFrame([(i, "") for i, _ in rows["test"]], columns=["Id", "Predicted"]).to_csv(root / "sample_submission.csv", index=False)
    (root / "truth").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows["test"], columns=["Id", "Target"]).to_csv(root / "truth" / "labels.csv", index=False)
    return root


def write_rxrx1(root: Path, wells_per_plate: int = 6, size: int = 40, seed: int = 0) -> Path:
    """Two experiments (train) and one (test) of one plate each, 2 sites per well, 3 siRNAs, 6 channels."""
    rng = np.random.default_rng(seed)
    task = get_task("rxrx1")
    sirnas = [5, 513, 1108]  # two treatments and a control
    rows = {"train": [], "test": []}
    for split, experiments in (("train", ["HEPG2-01", "U2OS-02"]), ("test", ["RPE-03"])):
        for experiment in experiments:
            for w in range(wells_per_plate):
                well = f"B{w + 2:02d}"
                sirna = sirnas[w % len(sirnas)]
                for site in (1, 2):
                    image = pattern_field(rng, sirnas.index(sirna), size, 6)
                    for c, ch in enumerate(task.channels):
                        write_png(root / split / experiment / "Plate1" / f"{well}_s{site}_{ch}.png", image[..., c])
                rows[split].append((f"{experiment}_1_{well}", experiment, 1, well, sirna))
    columns = ["id_code", "experiment", "plate", "well", "sirna"]
    pd.DataFrame(rows["train"], columns=columns).to_csv(root / "train.csv", index=False)
    test = pd.DataFrame(rows["test"], columns=columns)
    pd.DataFrame({"id_code": test["id_code"], "sirna": 0}).to_csv(root / "sample_submission.csv", index=False)
    (root / "truth").mkdir(parents=True, exist_ok=True)
    test[["id_code", "sirna"]].to_csv(root / "truth" / "labels.csv", index=False)
    return root

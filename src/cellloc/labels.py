"""Readers of each dataset's labels CSV, behind one registry (a task's ``labels_csv`` names one).

Every reader has the signature ``read(path: Path, label_set: LabelSet) -> pd.DataFrame`` and
returns one row per sample with columns ``ID`` (the sample id), ``Label`` (the canonical
``"a|b"`` string, ids sorted) and ``labels`` (``list[int]``), plus any metadata columns the
file has, kept as strings. Bad files fail in one line naming the file (and line): malformed
labels, unknown class ids, duplicate ids, missing columns.

``hpa-sc``: ``ID,Label`` with pipe-separated ids (``"13|16"``). The HPA-2018 (``Id,Target``,
space-separated) and RxRx1 (``id_code,...,sirna``) readers are provided by
:mod:`cellloc.hpa2018` and :mod:`cellloc.rxrx1` (imported on first use).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from .classes import LabelSet
from .fieldio import read_labels
from .registry import Registry
from .tasks import Task

LabelReader = Callable[[Path, LabelSet], pd.DataFrame]

LABEL_READERS: Registry[LabelReader] = Registry(
    "labels reader", plugins={"hpa-2018": "cellloc.hpa2018", "rxrx1": "cellloc.rxrx1"}
)


@LABEL_READERS.register("hpa-sc")
def read_hpa_sc_labels(path: Path, label_set: LabelSet) -> pd.DataFrame:
    """``ID,Label`` with pipe-separated class ids (the HPA single-cell ``train.csv``)."""
    return read_labels(path, label_set.num_classes)


def read_task_labels(path: str | Path, task: Task) -> pd.DataFrame:
    """A labels CSV of ``task``'s dataset, read by its reader (see the module docstring)."""
    return LABEL_READERS[task.labels_csv](Path(path), task.label_set)

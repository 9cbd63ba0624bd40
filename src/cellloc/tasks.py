"""Tasks: one record per dataset, so the same scripts run HPA single-cell, HPA-2018 and RxRx1.

A :class:`Task` says everything that differs between datasets: how its fields are stored (a
layout in :data:`cellloc.layouts.LAYOUTS`), which channel files make a field and which of them
segmentation uses, how its labels CSV is read (:data:`cellloc.labels.LABEL_READERS`), its
classes, whether it is classified per cell or per whole field, whether a sample has several
classes (multilabel: sigmoid outputs) or exactly one (multiclass: softmax), the default loss,
the metrics (the first is the headline one), and the submission format. Every script takes
``--task NAME``; a trained model folder records its task, so nothing is ever guessed from a
number of classes.

Label strings inside the project (cells.csv, folds.csv, training tables) are always the
canonical pipe-separated sorted ids (``"0|16"``); each dataset's label reader converts from its
own CSV.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .classes import CHANNEL_SETS, HPA_2018, HPA_SINGLE_CELL, RXRX1, LabelSet
from .registry import Registry

LEVELS = ("cell", "image")
KINDS = ("multilabel", "multiclass")


@dataclass(frozen=True)
class Task:
    """What one dataset is; see the module docstring."""

    name: str  # "hpa-sc" | "hpa-2018" | "rxrx1"
    layout: str  # dataset reader name in cellloc.layouts.LAYOUTS
    channels: tuple[str, ...]  # file channel names, in the order stacked to HxWxC
    nucleus_channel: str  # what segmentation finds nuclei in
    cell_channels: tuple[str, ...]  # what it finds cell bodies in
    label_set: LabelSet  # classes; .negative for HPA single-cell
    labels_csv: str  # reader name in cellloc.labels.LABEL_READERS
    level: str  # "cell": segment, crop, classify cells; "image": classify whole fields
    kind: str  # "multilabel" (sigmoid per class) | "multiclass" (one class, softmax)
    loss: str  # default loss name in cellloc.losses.LOSSES
    metrics: tuple[str, ...]  # names in cellloc.metrics.METRICS; the first is the headline
    submission: str  # name in cellloc.submission_formats.FORMATS
    data_name: str  # default dataset folder under input/
    test_data: str = ""  # dataset folder of the test split (default <data_name>_test; rxrx1: the same design's folder)
    fold_group: str = ""  # labels-CSV column whose values stay in one fold by default (rxrx1: experiment)
    fold_stratify: str = ""  # labels-CSV column spread evenly over the folds by default (rxrx1: cell_type)
    protein_channel: str = ""  # the stain whose localisation is classified (HPA: green); "" if none
    normalise: str = "none"  # image models' default per-field normalisation (cellloc.plate_norm; rxrx1: plate)

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"task {self.name}: level must be one of {LEVELS}, got {self.level!r}")
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name}: kind must be one of {KINDS}, got {self.kind!r}")
        missing = [c for c in (self.nucleus_channel, *self.cell_channels) if c not in self.channels]
        if missing:
            raise ValueError(f"task {self.name}: segmentation channel(s) {missing} are not among {self.channels}")
        if self.protein_channel and self.protein_channel not in self.channels:
            raise ValueError(f"task {self.name}: protein channel {self.protein_channel!r} is not among {self.channels}")
        if not self.metrics:
            raise ValueError(f"task {self.name}: needs at least one metric")

    @property
    def num_classes(self) -> int:
        return self.label_set.num_classes

    @property
    def test_data_name(self) -> str:
        """The dataset folder of generated test data: ``test_data``, else ``<data_name>_test``."""
        return self.test_data or self.data_name + "_test"

    def data_dir(self, split: str = "train", test: bool = False) -> Path:
        """``input/<data_name>/<split>`` (``test``: the test dataset's): where ``make_data.py`` writes fields."""
        return Path("input") / (self.test_data_name if test else self.data_name) / split

    def truth_dir(self) -> Path:
        """``input/<test data>/truth``: the generated test split's answers, what ``evaluate.py`` scores against."""
        return Path("input") / self.test_data_name / "truth"

    def submission_path(self) -> Path:
        """``output/<test data>/submission.csv``: where ``predict.py`` writes the test split's submission by default."""
        return Path("output") / self.test_data_name / "submission.csv"

    def segment_channels(self) -> dict[str, object]:
        """The channel fields of a :class:`cellloc.segmentation.SegmentConfig` for this task's files."""
        return {"channels": self.channels, "nucleus_channel": self.nucleus_channel, "cell_channels": self.cell_channels}


TASKS: Registry[Task] = Registry("task")
DEFAULT_TASK = "hpa-sc"


def register_task(task: Task) -> Task:
    """Add ``task`` to :data:`TASKS` under its name."""
    return TASKS.register(task.name)(task)


def get_task(name: str) -> Task:
    """The task called ``name``; an :class:`~cellloc.errors.InputError` listing the known ones otherwise."""
    return TASKS[name]


register_task(Task(
    name="hpa-sc",
    layout="flat",
    channels=CHANNEL_SETS["hpa"],
    nucleus_channel="blue",
    cell_channels=("red", "yellow"),
    label_set=HPA_SINGLE_CELL,
    labels_csv="hpa-sc",
    level="cell",
    kind="multilabel",
    loss="bce",
    metrics=("macro_ap", "macro_f1"),
    submission="hpa-sc-rle",
    data_name="synth",
    protein_channel="green",
))

register_task(Task(
    name="hpa-2018",
    layout="flat",
    channels=CHANNEL_SETS["hpa"],
    nucleus_channel="blue",
    cell_channels=("red", "yellow"),
    label_set=HPA_2018,
    labels_csv="hpa-2018",
    level="image",
    kind="multilabel",
    loss="bce",
    metrics=("macro_f1", "macro_ap"),
    submission="hpa-2018",
    data_name="hpa2018",
    protein_channel="green",
))

register_task(Task(
    name="rxrx1",
    layout="rxrx1",
    channels=CHANNEL_SETS["rxrx1"],
    nucleus_channel="w1",  # Hoechst
    cell_channels=("w3", "w6"),  # phalloidin (actin) and WGA (membrane) outline the cell bodies
    label_set=RXRX1,
    labels_csv="rxrx1",
    level="image",
    kind="multiclass",
    loss="ce",
    metrics=("accuracy", "top3_accuracy", "top5_accuracy"),
    submission="rxrx1",
    data_name="rxrx1",
    test_data="rxrx1",  # one generated design holds both splits (the test plates share the training siRNAs' effects)
    # test experiments are other imaging batches: validate on whole experiments, every cell type in every fold
    fold_group="experiment",
    fold_stratify="cell_type",
    normalise="plate",  # each field standardised by its plate's pixel statistics: the batch effect is the problem
))

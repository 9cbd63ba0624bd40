"""The web service's one door into the per-field pipeline: load a model run once, predict a field.

Everything the service needs of segmentation, crops and classifiers goes through
:class:`ServiceModel` (``load_service_model(...)`` once, then ``predict(image)`` per request),
so the service itself never imports the pipeline or opens a run folder. Today it calls
``predict_run.load_ensemble``/``field_scores`` and ``create_segmenter``; when the per-field
core (``pipeline.py``, ``classifier.load_classifier`` reading a run's ``recipe.json``) and the
task registry (``tasks.get_task``) land, this module is the only one that changes.

``predict`` is a pure function of the field array (the models are read-only after loading),
so several threads may call it at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .cells import cell_table
from .classes import CHANNEL_SETS, HPA_2018, HPA_SINGLE_CELL, RXRX1, LabelSet
from .errors import InputError
from .inference import cell_weights


@dataclass(frozen=True)
class TaskView:
    """What the service needs to know of a task: its channel files, segmentation channels, classes, level."""

    name: str
    channels: tuple[str, ...]
    nucleus_channel: str
    cell_channels: tuple[str, ...]
    label_set: LabelSet
    level: str  # "cell" | "image"


# The three tasks as the service sees them, until cellloc.tasks (issue 12) replaces this table.
TASK_VIEWS: dict[str, TaskView] = {
    "hpa-sc": TaskView("hpa-sc", CHANNEL_SETS["hpa"], "blue", ("red", "yellow"), HPA_SINGLE_CELL, "cell"),
    "hpa-2018": TaskView("hpa-2018", CHANNEL_SETS["hpa"], "blue", ("red", "yellow"), HPA_2018, "image"),
    "rxrx1": TaskView("rxrx1", CHANNEL_SETS["rxrx1"], "w1", ("w3", "w6"), RXRX1, "image"),
}


def get_task_view(name: str) -> TaskView:
    try:
        return TASK_VIEWS[name]
    except KeyError:
        raise InputError(f"unknown task {name!r}; known: {', '.join(TASK_VIEWS)}") from None


@dataclass
class FieldPrediction:
    """One field's answer, arrays only.

    ``cells`` and ``nuclei``: HxW uint16 instance labels (0 = background; a nucleus carries its
    cell's id). ``table``: one row per cell (``cells.cell_table``: cell_id, x0, y0, x1, y1 end-
    exclusive pixels, area px, centroid, nucleus_area, edge, mean intensity per channel).
    ``cell_scores``: (n_cells, n_classes) float32 in [0, 1] in ``table`` order, or None without a
    cell classifier. ``field_scores``: (n_classes,) float32, the field's scores (an image-level
    classifier's answer, or the area-weighted mean of the cells'), or None. ``seconds``: time per step.
    """

    cells: np.ndarray
    nuclei: np.ndarray
    table: pd.DataFrame
    cell_scores: np.ndarray | None
    field_scores: np.ndarray | None
    seconds: dict[str, float]


class ServiceModel:
    """A loaded model run (or none: segmentation only) for one task; see :func:`load_service_model`."""

    def __init__(self, task: TaskView, segmenter, classifier=None, spec=None, predict_cfg=None,
                 run: str | None = None, folds: tuple[str, ...] = ()) -> None:
        self.task = task
        self._segmenter = segmenter
        self._classifier = classifier  # today: the fold models' predict functions
        self._spec = spec
        self._predict_cfg = predict_cfg
        self.run = run
        self.folds = folds

    @property
    def channels(self) -> tuple[str, ...]:
        return self.task.channels

    @property
    def class_names(self) -> tuple[str, ...]:
        """The classifier's classes; empty without one (cells come back without scores)."""
        return self.task.label_set.names if self._classifier is not None else ()

    @property
    def level(self) -> str:
        return self.task.level

    def info(self) -> dict:
        """What is loaded, for ``/health`` and the page."""
        return {"task": self.task.name, "level": self.level, "channels": list(self.channels),
                "classes": list(self.class_names), "run": self.run, "folds": list(self.folds),
                "classifier": self._classifier is not None}

    def predict(self, image: np.ndarray) -> FieldPrediction:
        """Segment an HxWxC uint8/uint16 field (channels in :attr:`channels` order) and score its cells."""
        if image.ndim != 3 or image.shape[2] != len(self.channels):
            raise InputError(f"field: shape {image.shape}; expected HxWx{len(self.channels)} ({', '.join(self.channels)})")
        t0 = time.perf_counter()
        cells, nuclei = self._segmenter.segment(image)
        t1 = time.perf_counter()
        if self._classifier is None:
            table = cell_table(image, cells, nuclei, self.channels)
            return FieldPrediction(cells, nuclei, table, None, None, {"segment": t1 - t0, "classify": 0.0})
        from .predict_run import field_scores

        table, scores = field_scores(image, cells, nuclei, self._spec, self._classifier, self._predict_cfg)
        field = None
        if len(table):
            w = cell_weights(table["area"].to_numpy(), table["edge"].to_numpy())
            field = ((scores * w[:, None]).sum(0) / max(float(w.sum()), 1e-9)).astype(np.float32)
        return FieldPrediction(cells, nuclei, table, scores, field,
                               {"segment": t1 - t0, "classify": time.perf_counter() - t1})


def check_run(models: str | Path | None) -> None:
    """Fail fast, in one line, when ``models`` is given but holds no trained fold (cheap: no loading)."""
    if models:
        from .predict_run import fold_dirs

        fold_dirs(models)


def load_service_model(models: str | Path | None = None, task: str = "hpa-sc", device: str = "cpu",
                       tta: int = 1, blend: str = "product") -> ServiceModel:
    """Load a training run's fold ensemble (or nothing: segmentation only) for ``task``.

    The run's own segmentation and crop settings are used, so a field is segmented and cropped
    as the model's training crops were. A run whose classes or channels are not the task's is
    an :class:`InputError`.
    """
    from .segmentation import SegmentConfig, create_segmenter

    view = get_task_view(task)
    if not models:
        seg = SegmentConfig(channels=view.channels, nucleus_channel=view.nucleus_channel,
                            cell_channels=view.cell_channels, device=device)
        return ServiceModel(view, create_segmenter(seg))
    from .predict_run import PredictConfig, load_ensemble

    cfg = PredictConfig(models=str(models), device=device, tta=tta, blend=blend)
    fns, spec, names = load_ensemble(cfg)
    if spec.num_classes != view.label_set.num_classes:
        raise InputError(f"{models}: its model has {spec.num_classes} classes, but task {task} has "
                         f"{view.label_set.num_classes} ({view.label_set.name}); pass the run's --task")
    if tuple(spec.channels) != view.channels:
        raise InputError(f"{models}: trained on channels {', '.join(spec.channels)}, task {task} has {', '.join(view.channels)}")
    if view.level != "cell":
        raise InputError(f"{models}: a cell classifier, but task {task} is classified per image; "
                         "image-level runs load once the tasks work gives their recipe")
    return ServiceModel(view, create_segmenter(spec.segment), fns, spec, cfg, run=Path(models).name, folds=tuple(names))

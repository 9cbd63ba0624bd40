"""The web service's one door into the per-field pipeline: load a model run once, predict a field.

Everything the service needs of segmentation, crops and classifiers goes through
:class:`ServiceModel` (``load_service_model(...)`` once, then ``predict(image)`` per request),
so the service itself never imports the pipeline or opens a run folder. The task comes from
:func:`cellloc.tasks.get_task`, the models from :func:`cellloc.classifier.load_ensemble` (each
fold folder carries its own ``recipe.json``), and a field goes through
:func:`cellloc.pipeline.field_scores` (cell models) or :func:`cellloc.pipeline.score_image`
(image models), exactly as ``predict.py`` does it.

``predict`` is a pure function of the field array (the models are read-only after loading),
so several threads may call it at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from .cells import cell_table
from .errors import InputError
from .tasks import Task, get_task


@dataclass
class FieldPrediction:
    """One field's answer, arrays only.

    ``cells`` and ``nuclei``: HxW uint16 instance labels (0 = background; a nucleus carries its
    cell's id). ``table``: one row per cell (``cells.cell_table``: cell_id, x0, y0, x1, y1 end-
    exclusive pixels, area px, centroid, nucleus_area, edge, mean intensity per channel).
    ``cell_scores``: (n_cells, n_classes) float32 in [0, 1] in ``table`` order, or None without a
    cell classifier. ``field_scores``: (n_classes,) float32, the field's scores (an image-level
    classifier's answer, or what the cells were blended with: the cells' own scores pooled as the blend
    pools them, :attr:`cellloc.pipeline.FieldScores.field_score`), or None. ``seconds``: time per step.
    """

    cells: np.ndarray
    nuclei: np.ndarray
    table: pd.DataFrame
    cell_scores: np.ndarray | None
    field_scores: np.ndarray | None
    seconds: dict[str, float]


class ServiceModel:
    """A loaded model run (or none: segmentation only) for one task; see :func:`load_service_model`.

    ``classifier`` is a cell- or image-level :class:`~cellloc.classifier.Ensemble`;
    ``image_classifier`` (cell models only) an image-level one whose field score the cells are
    blended with; ``options`` the :class:`~cellloc.pipeline.FieldOptions` (blend, TTA).
    """

    def __init__(self, task: Task, segmenter, classifier=None, image_classifier=None, options=None,
                 run: str | None = None, folds: tuple[str, ...] = ()) -> None:
        self.task = task
        self._segmenter = segmenter
        self._classifier = classifier
        self._image_classifier = image_classifier
        self._options = options
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
        """What the loaded model classifies (``cell`` or ``image``); the task's level without a model."""
        return self._classifier.recipe.level if self._classifier is not None else self.task.level

    def info(self) -> dict:
        """What is loaded, for ``/health`` and the page."""
        return {"task": self.task.name, "level": self.level, "channels": list(self.channels),
                "classes": list(self.class_names), "run": self.run, "folds": list(self.folds),
                "classifier": self._classifier is not None, "image_classifier": self._image_classifier is not None}

    def predict(self, image: np.ndarray) -> FieldPrediction:
        """Segment an HxWxC uint8/uint16 field (channels in :attr:`channels` order) and score it.

        Cell models score every cell (blended with the field score, Negative by its rule: the
        submission's scores); image models score the whole field, and its cells come back
        outlined but without scores.
        """
        from .pipeline import field_scores, score_image

        if image.ndim != 3 or image.shape[2] != len(self.channels):
            raise InputError(f"field: shape {image.shape}; expected HxWx{len(self.channels)} ({', '.join(self.channels)})")
        t0 = time.perf_counter()
        cells, nuclei = self._segmenter.segment(image)
        t1 = time.perf_counter()
        if self._classifier is None or self.level == "image":
            table = cell_table(image, cells, nuclei, self.channels)
            field = None if self._classifier is None else score_image(image, self._classifier, self._options.tta)
            return FieldPrediction(cells, nuclei, table, None, field, {"segment": t1 - t0, "classify": time.perf_counter() - t1})
        res = field_scores(image, cells, nuclei, self._classifier, self._image_classifier, self._options)
        # the field's score each cell was blended with: a better answer to which classes the field shows than a
        # mean of the blended cells (seed 0's demo model, 200 test fields: field-level AP 0.651 against 0.635 over
        # the 18 classes, 0.937 against 0.887 for Negative)
        field = res.field_score if self._image_classifier is not None or len(res.table) else None
        return FieldPrediction(cells, nuclei, res.table, res.scores, field,
                               {"segment": t1 - t0, "classify": time.perf_counter() - t1})


def check_run(models: str | Path | None) -> None:
    """Fail fast, in one line, when ``models`` is given but holds no trained fold (cheap: no loading)."""
    if models:
        from .classifier import fold_dirs

        fold_dirs(models)


def load_service_model(models: str | Path | None = None, task: str = "hpa-sc", device: str = "cpu",
                       tta: int = 1, blend: str = "", image_models: str | Path | None = None,
                       runtime: str = "torch") -> ServiceModel:
    """Load a training run's fold ensemble (or nothing: segmentation only) for ``task``.

    A cell model's own segmentation and crop settings (its recipe) are used, so a field is
    segmented and cropped as the training crops were; an image model's fields are segmented
    with the task's defaults, only to outline the cells. ``image_models`` (cell models) is an
    image-level run of the same task whose field score the cells are blended with (``blend``: a
    mode of :data:`cellloc.pipeline.BLENDS`; default ``image`` with one, else ``product``). A run of
    another task is an :class:`InputError`. ``runtime`` (a name of :func:`cellloc.runtime.runtime_choices`)
    runs the classifier and the hpa networks.
    """
    from .classifier import load_ensemble, load_image_partner
    from .pipeline import FieldOptions, check_image_blend, default_blend
    from .segmentation import SegmentConfig, create_segmenter

    spec = get_task(task)
    default_seg = SegmentConfig(**spec.segment_channels(), device=device, runtime=runtime)
    if not models:
        if image_models:
            raise InputError("--image-models blends with a cell model's scores; pass --models too")
        return ServiceModel(spec, create_segmenter(default_seg))
    model = load_ensemble(models, device=device, runtime=runtime)
    if model.task.name != spec.name:
        raise InputError(f"{models}: trained for task {model.task.name}, not {spec.name}; pass --task {model.task.name}")
    blend = blend or default_blend(bool(image_models))
    image_model = None
    if model.recipe.level == "cell":
        check_image_blend(blend, bool(image_models))
    if image_models:
        image_model = load_image_partner(image_models, model, models, device, runtime)
    seg = default_seg
    if model.recipe.level == "cell":
        recorded = model.recipe.segment_config()
        if recorded is None:
            raise InputError(f"{models}: the recipe records no segmentation (its cells table had no segment_config.json)")
        seg = replace(recorded, device=device, threads=0, runtime=runtime)  # this machine's rules, not the training machine's
    options = FieldOptions(blend=blend, tta=tta)
    return ServiceModel(spec, create_segmenter(seg), model, image_model, options, run=Path(models).name,
                        folds=tuple(Path(n).name for n in model.names))

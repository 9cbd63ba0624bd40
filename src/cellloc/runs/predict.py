"""Predict a folder of test fields with a trained run and write the task's submission, resumably.

Cell models (HPA single-cell): one field at a time (never all masks in memory), segmented and
cropped exactly as the training crops were (the segmentation recorded in the model's recipe),
scored by every fold (:func:`cellloc.pipeline.field_scores`), blended with the field's mean cell
score or, with ``--blend image --image-models RUN``, an image-level model's score of the whole field,
Negative raised.
Per-cell scores go to ``cell_scores/{ID}.csv`` and the field's row is appended by the resumable
:class:`~cellloc.submission.SubmissionWriter`, so a killed run continues where it stopped and the
submission file appears, complete, only at the end.

Image models (HPA-2018, RxRx1): fields are scored in chunks, the unit of work of the executor
(``field_scores/part*.npz``, each written atomically by its worker, so a rerun skips finished
chunks), averaged per labelled sample (RxRx1's two sites), written to ``scores.csv`` and turned
into submission rows by the task's format.

A rerun resumes only when the finished rows were made with the same settings: the models (each
fold's ``best.pt`` checksum and recipe), the segmentation, ``--tta``, ``--blend`` and the rest are
recorded in ``predict_manifest.json`` (:mod:`cellloc.run_state`), and other settings stop the run
with one line saying what changed; ``--overwrite`` moves the old outputs aside and starts over.
The output folder is locked while a run writes to it, so two runs cannot interleave rows.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..cells import MASK_MODES
from ..classifier import Ensemble, load_ensemble, load_image_partner
from ..config import load_config, opt, save_config
from ..data import FieldFiles
from ..errors import InputError
from ..fieldio import atomic_path, dataset_root, find_mask, read_mask, sha256_file, write_csv
from ..layouts import LAYOUTS
from ..pipeline import (BLENDS, CONFIDENCE_MODES, NEGATIVE_RULES, FieldOptions, check_image_blend, default_blend,
                        encode_prediction, field_scores)
from ..plate_assignment import sample_probabilities
from ..plate_norm import FieldNormaliser, field_normaliser
from ..registry import Registry
from ..run_state import RunStart, ensure_same_settings, folder_lock
from ..runtime import AUTO, RUNTIME_HELP, runtime_choices, threads_for
from ..segmentation import SegmentConfig, create_segmenter
from ..segmentation.scale import segment_with_scale
from ..submission import SubmissionWriter
from ..submission_formats import FORMATS
from ..tasks import DEFAULT_TASK, TASKS, Task, get_task
from .executor import ExecutorOptions, Failure
from .segment import SegmentRunConfig, file_pixel_size, stops_the_run
from .train import default_run_name

Progress = Callable[[int], None]


@dataclass
class PredictConfig(ExecutorOptions):
    """Options of ``python src/predict.py``."""

    models: str = opt("", "training run folder; every fold*/ in it with a best.pt is used (default: models/effb2, "
                      "or the default run name of --task)")
    task: str = opt("", "task (default: the one the models were trained for; given, it must match)",
                    choices=["", *TASKS.names()])
    input: str = opt("", "folder of test fields (default: input/<data_name>_test/test of the task)")
    folds: list[int] = opt([], "use only these folds (default: all found)")
    sample_submission: str = opt("", "only the samples this sample submission lists are predicted (default: "
                                 "sample_submission.csv beside the input folder, when there is one; 'none': every field)")
    out: str = opt("", "output folder (default: output/<dataset name>)")
    image_models: str = opt("", "cell models: an image-level run of the same task whose score of the whole field is "
                            "blended with each cell's (--blend image or image_mean)")
    masks: str = opt("", "reuse {ID}_cell_mask.png/.npz from this folder (e.g. output/<name>/masks); else segment")
    segment_config: str = opt("", "a segment_config.json to segment with (default: the segmentation in the model's recipe)")
    backend: str = opt("", "segmentation backend (default: the one that made the training crops)")
    weights_dir: str = opt("", "HPA weight files (hpa backend)")
    blend: str = opt("", "mix cell scores with the field score: " + "; ".join(f"{n}: {b.help}" for n, b in BLENDS.items())
                     + " (default: image with --image-models, else centred)", choices=["", *BLENDS])
    field_weight: float | None = opt(None, "w, the field score's share in --blend (default: the blend's own: "
                                     + ", ".join(f"{n} {b.weight}" for n, b in BLENDS.items() if b.rule != "none") + ")")
    field_power: float | None = opt(None, "r of the power mean of the field's cell scores that the cells blends take as "
                                    "the field's score (1: the mean; larger leans towards its highest cells; default: the "
                                    "blend's own: " + ", ".join(f"{n} {b.field_power:g}" for n, b in BLENDS.items()
                                                                if b.field == "cells") + ")")
    field_max: float | None = opt(None, "m, the share of the field's highest cell in the field's score of the cells "
                                  "blends: (power mean)^(1 - m) * (highest cell)^m (0: the power mean alone; default: "
                                  "the blend's own: " + ", ".join(f"{n} {b.field_max:g}" for n, b in BLENDS.items()
                                                                 if b.field == "cells") + ")")
    shown_power: float = opt(0.0, "k: each cell weighs (1 - its Negative score)^k in the field's score of the cells "
                             "blends, so that cells the model sees showing nothing count less (0: as much as any)")
    cell_confidence: str = opt("none", "none, or weight: a cell's scores times min(1, area / the field's median), halved "
                               "for edge-cut cells, 0 without a nucleus (less trusted cells rank lower)",
                               choices=list(CONFIDENCE_MODES))
    negative: str = opt("absent", "cell models of a task with a Negative class: how a cell's Negative score is made; "
                        + "; ".join(f"{n}: {r.help}" for n, r in NEGATIVE_RULES.items()), choices=list(NEGATIVE_RULES))
    negative_field_weight: float | None = opt(None, "the field score's share in the blended scores --negative reads "
                                              "(default: the blend's own: " + ", ".join(
                                                  f"{n} {b.negative_share(b.weight)}" for n, b in BLENDS.items() if b.rule != "none")
                                              + "): less than --field-weight keeps a negative cell of a positive field apart")
    tta: int = opt(1, "dihedral views averaged per sample (1, 2, 4 or 8 flips/transposes)", choices=[1, 2, 4, 8])
    plate_assignment: bool = opt(False, "rxrx1: within each plate choose its siRNA group and give each of its siRNAs "
                                 "to one well (linear assignment on the scores) instead of each well's own argmax")
    plate_groups: str = opt("", "--plate-assignment: the labels CSV whose plates define the siRNA groups "
                            "(default: train.csv beside the input folder)")
    min_confidence: float = opt(0.0, "leave out (cell, class) pairs below this score")
    top_k: int = opt(0, "keep at most K classes per cell (0: all)")
    batch_size: int = opt(64, "samples per forward pass")
    num_workers: int = opt(0, "image models: DataLoader worker processes reading fields")
    device: str = opt("cpu", "torch device for the classifier (and the hpa backend)")
    runtime: str = opt(AUTO, RUNTIME_HELP, choices=runtime_choices())
    limit: int = opt(0, "predict only the first N fields (0: all)")
    chunk: int = opt(64, "image models: fields per saved chunk of scores (field_scores/part*.npz), the unit of work "
                     "of --executor and of resume")
    overwrite: bool = opt(False, "start over: move this folder's prediction outputs to <out>.replaced-<time> first", saved=False)

    def __post_init__(self) -> None:
        if not 0 <= self.min_confidence <= 1:
            raise ValueError(f"--min-confidence must be in [0, 1], got {self.min_confidence}")
        for flag, w in (("--field-weight", self.field_weight), ("--negative-field-weight", self.negative_field_weight)):
            if w is not None and not 0 <= w <= 1:
                raise ValueError(f"{flag} must be in [0, 1], got {w}")
        if self.top_k < 0 or self.limit < 0 or self.batch_size < 1 or self.num_workers < 0 or self.chunk < 1:
            raise ValueError("--top-k, --limit and --num-workers must be >= 0, --batch-size >= 1 and --chunk >= 1")
        if self.backend not in ("", "classical", "hpa"):
            raise ValueError(f"--backend must be classical or hpa, got {self.backend!r}")
        self.check_executor()
        if not self.blend:
            self.blend = default_blend(bool(self.image_models))
        if self.field_weight is None and self.blend in BLENDS:
            self.field_weight = BLENDS[self.blend].weight  # saved as a number: a saved config re-runs the same blend
        if self.negative_field_weight is None and self.blend in BLENDS:
            self.negative_field_weight = BLENDS[self.blend].negative_share(self.field_weight)
        if self.field_power is not None and not 0 < self.field_power <= 64:
            raise ValueError(f"--field-power must be in (0, 64], got {self.field_power}")
        if self.field_power is None and self.blend in BLENDS:
            self.field_power = BLENDS[self.blend].field_power  # saved as a number, as the field weight
        if self.field_max is not None and not 0 <= self.field_max <= 1:
            raise ValueError(f"--field-max must be in [0, 1], got {self.field_max}")
        if self.field_max is None and self.blend in BLENDS:
            self.field_max = BLENDS[self.blend].field_max  # saved as a number, as the field weight
        if not 0 <= self.shown_power <= 64:
            raise ValueError(f"--shown-power must be in [0, 64], got {self.shown_power}")
        if self.num_workers and self.executor != "serial":
            raise ValueError(f"--num-workers reads fields in this process's DataLoader; with --executor {self.executor} "
                             "each worker reads its own chunk: drop --num-workers")
        if not self.models:
            task = get_task(self.task or DEFAULT_TASK)
            self.models = str(Path("models") / default_run_name(task, task.level))

    def resolved(self, task: Task) -> PredictConfig:
        """This config with the task and its default input folder filled in (what the run saves)."""
        if self.task and self.task != task.name:
            raise InputError(f"{self.models}: trained for task {task.name}, not {self.task}; drop --task or pass --task {task.name}")
        cfg = replace(self, task=task.name, input=self.input or str(task.data_dir("test", test=True)))
        if not cfg.sample_submission:
            beside = cfg.dataset_dir() / "sample_submission.csv"
            cfg.sample_submission = str(beside) if beside.is_file() else "none"
        return cfg

    def dataset_dir(self) -> Path:
        return dataset_root(self.input)

    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("output") / self.dataset_dir().name

    def field_options(self) -> FieldOptions:
        return FieldOptions(blend=self.blend, field_weight=self.field_weight, field_power=self.field_power,
                            field_max=self.field_max, shown_power=self.shown_power, tta=self.tta,
                            batch_size=self.batch_size, cell_confidence=self.cell_confidence, negative=self.negative,
                            negative_field_weight=self.negative_field_weight)


@dataclass
class Predictor:
    """The loaded models of a prediction run and, for cell models, the segmentation to cut cells with."""

    model: Ensemble
    image_model: Ensemble | None = None
    segment: SegmentConfig | None = None

    @property
    def task(self) -> Task:
        return self.model.task

    @property
    def names(self) -> list[str]:
        """The fold folders' names, for the progress bar."""
        return [Path(n).name for n in self.model.names]


def load_predictor(cfg: PredictConfig) -> Predictor:
    """Every fold of ``cfg.models`` (and ``cfg.image_models``), and the segmentation a cell model needs."""
    threads = threads_for(cfg.workers, cfg.threads)
    model = load_ensemble(cfg.models, cfg.folds, cfg.device, cfg.runtime, threads)
    cfg.resolved(model.task)  # a --task that differs is an error before anything runs
    image_model = None
    if model.recipe.level == "cell":
        check_image_blend(cfg.blend, bool(cfg.image_models))
    if cfg.image_models:
        image_model = load_image_partner(cfg.image_models, model, cfg.models, cfg.device, cfg.runtime, threads)
    segment = None
    if model.recipe.level == "cell":
        segment = replace(_segmentation(cfg, model), threads=threads)
    return Predictor(model, image_model, segment)


def _segmentation(cfg: PredictConfig, model: Ensemble) -> SegmentConfig:
    """The training crops' segmentation (recipe or ``--segment-config``), with this run's device and overrides."""
    if cfg.segment_config:
        seg_run = load_config(SegmentRunConfig, cfg.segment_config)
        if seg_run.crop_mask not in MASK_MODES:
            raise InputError(f"{cfg.segment_config}: crop mask {seg_run.crop_mask!r} unknown")
        seg = seg_run.segment_config()
        for member in model.members:  # the crops must still be cut as in training
            member.recipe.input.update(crop_size=seg_run.crop_size, crop_mask=seg_run.crop_mask, crop_fit=seg_run.crop_fit)
    else:
        seg = model.recipe.segment_config()
        if seg is None:
            raise InputError(f"{cfg.models}: the recipe records no segmentation (its cells table had no segment_config.json); "
                             "pass --segment-config (the segment_config.json of the training crops)")
    return replace(seg, device=cfg.device, weights_dir=cfg.weights_dir or seg.weights_dir, backend=cfg.backend or seg.backend,
                   runtime=cfg.runtime)


def _masks_for(cfg: PredictConfig, image_id: str, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Masks saved by ``segment.py`` for a field (nuclei optional)."""
    cell_path = find_mask(cfg.masks, f"{image_id}_cell_mask")
    if cell_path is None:
        raise InputError(f"{Path(cfg.masks) / (image_id + '_cell_mask.png')}: not found (segment the field first or drop --masks)")
    cells = read_mask(cell_path)
    if cells.shape != shape:
        raise InputError(f"{cell_path}: size {cells.shape} differs from the field {shape}")
    nuc_path = find_mask(cfg.masks, f"{image_id}_nucleus_mask")
    nuclei = read_mask(nuc_path) if nuc_path is not None else np.zeros_like(cells)
    return cells, nuclei


@dataclass
class PredictSummary:
    """What a prediction run did."""

    fields: int
    done: int
    skipped: int
    failed: list[tuple[str, str]]
    cells: int
    seconds: float
    submission: Path
    start: RunStart | None = None  # resumed, or started over (and where the old outputs went)


def field_ids(cfg: PredictConfig, task: Task) -> tuple[list[str], list[tuple[str, str]]]:
    """(fields to predict, fields that cannot be: missing channel files) of ``cfg.input``.

    With a sample submission only the fields of its samples are kept: a test folder may hold
    more (RxRx1's control wells are imaged but not submitted).
    """
    layout = LAYOUTS[task.layout]
    listing = layout.list_fields(cfg.input, task.channels)
    ids, failed = listing.ids, listing.failures()
    if cfg.sample_submission not in ("", "none"):
        expected = set(FORMATS[task.submission].read_expected(Path(cfg.sample_submission)))
        ids = [i for i in ids if layout.sample_of(i) in expected]
        failed = [(i, why) for i, why in failed if layout.sample_of(i) in expected]
    ids = ids[: cfg.limit] if cfg.limit else ids
    if not ids:
        which = f" of the samples in {cfg.sample_submission}" if cfg.sample_submission not in ("", "none") else ""
        raise InputError(f"{cfg.input}: no complete fields{which} found for channels {', '.join(task.channels)}")
    return ids, failed


# Everything a prediction run writes in its output folder (what --overwrite moves aside).
PREDICT_OUTPUTS = ("submission.csv", "submission.csv.partial", "cell_scores", "field_scores", "scores.csv",
                   "predict_failures.csv", "predict_config.json")


def _members(model: Ensemble | None) -> list[dict] | None:
    if model is None:
        return None
    return [{"fold": Path(name).name, "best_sha256": sha256_file(Path(name) / "best.pt"), "recipe": m.recipe.to_dict()}
            for name, m in zip(model.names, model.members)]


def run_settings(cfg: PredictConfig, predictor: Predictor) -> dict:
    """What a prediction run's rows depend on: compared with the manifest of the finished rows.

    The models count by content (each fold's ``best.pt`` SHA-256 and recipe), not by folder
    name. Not in it: batch size, ``--chunk``, executor and workers, device, runtime and ``--limit``.
    """
    seg = None
    if predictor.segment is not None:
        seg = dataclasses.asdict(predictor.segment)
        for key in ("device", "batch_size", "weights_dir", "runtime", "threads"):
            seg.pop(key)
    # the blend as one record (mode and weight): before the product rule took a weight, this was two keys; r of
    # the field's power mean only when it is not the plain mean, m of its highest cell and k of the cells' weights
    # in it only when they are not 0, which every record made before them meant (an older folder resumes)
    blend: dict[str, Any] = {"mode": cfg.blend, "field_weight": cfg.field_weight}
    if cfg.field_power not in (None, 1.0):
        blend["field_power"] = cfg.field_power
    if cfg.field_max not in (None, 0.0):
        blend["field_max"] = cfg.field_max
    if cfg.shown_power != 0:
        blend["shown_power"] = cfg.shown_power
    return {
        "task": predictor.task.name, "input": os.path.normpath(cfg.input), "sample_submission": cfg.sample_submission,
        "models": _members(predictor.model), "image_models": _members(predictor.image_model),
        "masks": os.path.normpath(cfg.masks) if cfg.masks else "", "segment": seg,
        "blend": blend, "tta": cfg.tta, "cell_confidence": cfg.cell_confidence,
        "negative": cfg.negative, "negative_field_weight": cfg.negative_field_weight, "min_confidence": cfg.min_confidence, "top_k": cfg.top_k,
    }


def run_predict(cfg: PredictConfig, predictor: Predictor, progress: Progress | None = None) -> PredictSummary:
    """Predict every field of ``cfg.input`` and write the submission (see the module docstring).

    Holds the output folder's lock throughout; stops before any work (:class:`InputError`) when
    the folder's finished rows were made with other settings and ``cfg.overwrite`` is not set.
    The resolved config is saved as ``predict_config.json`` once the settings are known to match.
    """
    cfg = cfg.resolved(predictor.task)
    out = cfg.out_dir()
    with folder_lock(out):
        start = ensure_same_settings(out, run_settings(cfg, predictor), cfg.overwrite, tool="predict", outputs=PREDICT_OUTPUTS)
        save_config(cfg, out / "predict_config.json")
        summary = PREDICT_RUNS[predictor.model.recipe.level](cfg, predictor, progress)
    summary.start = start
    return summary


@dataclass
class FieldPrediction:
    """What a worker sends back for one field: its submission row's parts (its cell scores are on disk)."""

    image_id: str
    width: int = 0
    height: int = 0
    prediction: str = ""
    cells: int = 0
    error: str = ""
    stop: tuple[int, str, str | None] | None = None  # an OS error about the output: stops the run (see segment)


class PredictWorker:
    """A worker's loaded models and segmenter, built once per worker process (``init`` of the map)."""

    def __init__(self, cfg: PredictConfig, predictor: Predictor | None = None) -> None:
        self.cfg = cfg
        self.predictor = predictor or load_predictor(cfg)
        self.task = self.predictor.task
        self.layout = LAYOUTS[self.task.layout]
        self.segmenter = None if cfg.masks else create_segmenter(self.predictor.segment)
        self.options = cfg.field_options()
        self.out = cfg.out_dir()

    def run_one(self, image_id: str) -> FieldPrediction:
        """Segment (or read the masks of), score and encode one field; write its ``cell_scores/{ID}.csv``."""
        cfg, task, predictor = self.cfg, self.task, self.predictor
        try:
            image = self.layout.read_field(cfg.input, image_id, task.channels)
            if self.segmenter is None:
                cells, nuclei = _masks_for(cfg, image_id, image.shape[:2])
            else:
                file_um = file_pixel_size(self.layout, cfg.input, image_id, self.predictor.segment)
                cells, nuclei, _ = segment_with_scale(self.segmenter, self.predictor.segment, image, file_um)  # as segment.py
            result = field_scores(image, cells, nuclei, predictor.model, predictor.image_model, self.options)
        except InputError as exc:
            return FieldPrediction(image_id, error=str(exc))
        table, scores = result.table, result.scores
        score_cols = pd.DataFrame(np.round(scores, 5), columns=[f"p{k}" for k in range(task.num_classes)])
        rows = pd.concat([table[["cell_id", "area", "edge"]].reset_index(drop=True), score_cols], axis=1)
        rows.insert(0, "ID", image_id)
        try:
            write_csv(self.out / "cell_scores" / f"{image_id}.csv", rows)
        except OSError as exc:  # a full disk or an unwritable output: returned, since an executor would make a raise one failed field
            if not stops_the_run(exc, self.out):
                raise
            return FieldPrediction(image_id, error=str(exc), stop=(exc.errno, exc.strerror or str(exc), exc.filename))
        h, w = image.shape[:2]
        return FieldPrediction(image_id, w, h, encode_prediction(cells, table, scores, cfg.min_confidence, cfg.top_k or None),
                               len(table))


def predict_one(worker: PredictWorker, image_id: str) -> FieldPrediction:
    return worker.run_one(image_id)


def _absolute(cfg: PredictConfig) -> PredictConfig:
    """The config with every path absolute, for workers that may run elsewhere (a cluster)."""
    def full(path: str) -> str:
        return str(Path(path).expanduser().resolve()) if path and path != "none" else path

    return replace(cfg, input=full(cfg.input), out=str(cfg.out_dir().resolve()), models=full(cfg.models),
                   image_models=full(cfg.image_models), masks=full(cfg.masks), segment_config=full(cfg.segment_config),
                   weights_dir=full(cfg.weights_dir), sample_submission=full(cfg.sample_submission))


def predict_cells(cfg: PredictConfig, predictor: Predictor, progress: Progress | None = None) -> PredictSummary:
    """Cell models: ``submission.csv`` (RLE rows) and ``cell_scores/{ID}.csv`` for every field.

    Fields run on ``cfg.executor``; each worker loads the models once and writes the field's cell
    scores; this process appends the submission rows, in field order, so the file is the same
    whatever ran the fields.
    """
    t0 = time.perf_counter()
    task = predictor.task
    ids, failed = field_ids(cfg, task)
    out = cfg.out_dir()
    n_cells = n_done = 0
    writer = SubmissionWriter(out / "submission.csv")
    if writer.path.exists() and not writer.partial.exists():
        # a finished earlier run (perhaps with failed fields): resume from its rows, keep it until done
        shutil.copyfile(writer.path, writer.partial)
    # the driver's loaded models serve a serial run; other executors load them in each worker
    init = partial(PredictWorker, _absolute(cfg), predictor if cfg.executor == "serial" else None)
    with writer:
        skipped = sum(i in writer.done for i in ids)
        if progress and skipped:
            progress(skipped)
        todo = [i for i in ids if i not in writer.done]
        with cfg.open_executor() as ex:
            for image_id, res in zip(todo, ex.map(predict_one, todo, init=init) if todo else ()):
                if isinstance(res, Failure):
                    res = FieldPrediction(image_id, error=res.error)
                if res.stop is not None:
                    raise OSError(*res.stop)
                if res.error:
                    failed.append((image_id, res.error))
                else:
                    writer.write(image_id, res.width, res.height, res.prediction)
                    n_cells += res.cells
                    n_done += 1
                if progress:
                    progress(1)
    write_csv(out / "predict_failures.csv", pd.DataFrame(failed, columns=["ID", "reason"]))
    return PredictSummary(len(ids), n_done, skipped, failed, n_cells, time.perf_counter() - t0, out / "submission.csv")


def _score_chunk(cfg: PredictConfig, model: Ensemble, ids: list[str],
                 normaliser: FieldNormaliser | None = None) -> tuple[list[str], np.ndarray, list[tuple[str, str]]]:
    """(fields scored, their probabilities, failed fields) of one chunk; a bad field fails alone."""
    task = model.task

    def score(chunk: list[str]) -> np.ndarray:
        return model.predict(FieldFiles(task.layout, cfg.input, chunk, model.recipe.channels, normaliser), tta=cfg.tta,
                             batch_size=cfg.batch_size, num_workers=cfg.num_workers)

    try:
        return ids, score(ids), []
    except InputError:
        good, probs, failed = [], [], []
        for i in ids:  # find which field it was
            try:
                probs.append(score([i])[0])
                good.append(i)
            except InputError as exc:
                failed.append((i, str(exc)))
        return good, np.array(probs, np.float32).reshape(len(good), task.num_classes), failed


def model_normaliser(cfg: PredictConfig, model: Ensemble) -> FieldNormaliser:
    """The per-field normalisation ``model`` was trained with (its recipe), with this dataset's statistics."""
    recipe = model.recipe
    return field_normaliser(cfg.dataset_dir(), recipe.input.get("normalise", "none"), recipe.channels)


class ImageWorker:
    """A worker's loaded image-level ensemble, built once per worker process (``init`` of the map)."""

    def __init__(self, cfg: PredictConfig, model: Ensemble | None = None, normaliser: FieldNormaliser | None = None) -> None:
        self.cfg = cfg
        self.model = model or load_ensemble(cfg.models, cfg.folds, cfg.device, cfg.runtime, threads_for(cfg.workers, cfg.threads))
        # the model's own normalisation (its recipe), with this dataset's statistics
        self.normaliser = normaliser or model_normaliser(cfg, self.model)


def score_part(worker: ImageWorker, job: tuple[str, list[str]]) -> tuple[list[str], np.ndarray, list[tuple[str, str]]]:
    """Score one chunk of fields and write its ``field_scores/part*.npz`` (atomically); return what it holds."""
    path, chunk = job
    got, probs, bad = _score_chunk(worker.cfg, worker.model, chunk, worker.normaliser)
    with atomic_path(Path(path)) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, ids=np.array(chunk), got=np.array(got, dtype=str), probs=probs,
                     failed=np.array(bad, dtype=str).reshape(-1, 2))
    return got, probs, bad


def predict_images(cfg: PredictConfig, predictor: Predictor, progress: Progress | None = None) -> PredictSummary:
    """Image models: every field scored (in resumable chunks), averaged per sample, the task's submission written.

    Chunks of ``cfg.chunk`` fields are the unit of work on ``cfg.executor``: a worker loads the
    models once, scores a chunk in batches and writes its part file; this process reads finished
    parts of an earlier run, gathers the chunks in order and alone writes ``scores.csv``, the
    submission and the failures, so the files are the same whatever scored the chunks.
    """
    t0 = time.perf_counter()
    task = predictor.task
    fmt = FORMATS[task.submission]
    if fmt.encode is None:
        raise InputError(f"submission format {fmt.name} is written per cell, not from image scores")
    options = encode_options(cfg, fmt.name, fmt.encode_options)
    ids, failed = field_ids(cfg, task)
    normaliser = model_normaliser(cfg, predictor.model)  # here too: a missing pixel_stats.csv stops the run before any work
    out = cfg.out_dir()
    parts = out / "field_scores"
    chunks = [ids[k:k + cfg.chunk] for k in range(0, len(ids), cfg.chunk)]
    paths = [parts / f"part{n:05d}.npz" for n in range(len(chunks))]
    results: list[tuple[list[str], np.ndarray, list[tuple[str, str]]] | None] = [_read_part(p, c) for p, c in zip(paths, chunks)]
    skipped = sum(len(c) for c, r in zip(chunks, results) if r is not None)
    if progress and skipped:
        progress(skipped)
    todo = [n for n, r in enumerate(results) if r is None]
    done = 0
    if todo:
        work = _absolute(cfg)
        # the driver's loaded models serve a serial run; other executors load them in each worker
        serial = cfg.executor == "serial"
        init = partial(ImageWorker, work, predictor.model if serial else None, normaliser if serial else None)
        jobs = [(str(Path(work.out) / "field_scores" / paths[n].name), chunks[n]) for n in todo]
        with cfg.open_executor() as ex:
            for n, res in zip(todo, ex.map(score_part, jobs, init=init)):
                if isinstance(res, Failure):  # the worker died or raised: every field of the chunk failed
                    res = ([], np.zeros((0, task.num_classes), np.float32), [(i, res.error) for i in chunks[n]])
                results[n] = res
                done += len(chunks[n])
                if progress:
                    progress(len(chunks[n]))
    scored_ids = [i for r in results for i in r[0]]
    failed += [f for r in results for f in r[2]]
    probs = np.concatenate([r[1] for r in results]) if results else np.zeros((0, task.num_classes), np.float32)
    samples, sample_probs = per_sample(scored_ids, probs, task)
    write_csv(out / "scores.csv", score_frame(samples, sample_probs, task))
    fmt.write(out / "submission.csv", fmt.encode(samples, sample_probs, task, predictor.model.recipe.thresholds, **options))
    write_csv(out / "predict_failures.csv", pd.DataFrame(failed, columns=["ID", "reason"]))
    return PredictSummary(len(ids), done, skipped, failed, 0, time.perf_counter() - t0, out / "submission.csv")


def encode_options(cfg: PredictConfig, format_name: str, known: tuple[str, ...]) -> dict[str, str]:
    """What the submission format's ``encode`` is asked to do besides its default (``--plate-assignment``)."""
    return plate_options(cfg.plate_assignment, cfg.plate_groups, cfg.dataset_dir(), format_name, known)


def plate_options(plate_assignment: bool, plate_groups: str, dataset_dir: Path, format_name: str,
                  known: tuple[str, ...]) -> dict[str, str]:
    """``encode`` options for ``--plate-assignment`` (groups from ``plate_groups`` or ``train.csv`` of the dataset)."""
    if not plate_assignment:
        return {}
    if "plate_groups" not in known:
        raise InputError(f"--plate-assignment: the {format_name} submission has no plate design (it is for rxrx1)")
    groups = Path(plate_groups) if plate_groups else dataset_dir / "train.csv"
    if not groups.is_file():
        raise InputError(f"{groups}: not found; --plate-assignment reads the siRNA groups from the training labels "
                         "(pass --plate-groups)")
    return {"plate_groups": str(groups)}


def _read_part(path: Path, chunk: list[str]) -> tuple[list[str], np.ndarray, list[tuple[str, str]]] | None:
    """A finished chunk's saved scores, if the file exists and holds exactly these fields."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if data["ids"].tolist() != chunk:
                return None
            return data["got"].tolist(), data["probs"], [tuple(r) for r in data["failed"].tolist()]
    except (OSError, ValueError, KeyError):
        return None  # a damaged chunk is scored again


def read_field_scores(out: str | Path) -> tuple[list[str], np.ndarray]:
    """(field ids, (N, C) float32 probabilities) an image-level prediction folder saved in ``field_scores/``.

    What ``predict.py`` (or ``ensemble.py``) wrote: every chunk's scored fields, in order. The
    log of a multiclass model's probabilities is its logits less one constant per field, so
    these are the saved logits an ensemble averages.
    """
    parts = sorted((Path(out) / "field_scores").glob("part*.npz"))
    if not parts:
        raise InputError(f"{Path(out) / 'field_scores'}: no part*.npz (is {out} an image-level prediction folder?)")
    ids: list[str] = []
    probs: list[np.ndarray] = []
    for path in parts:
        try:
            with np.load(path, allow_pickle=False) as data:
                ids += data["got"].tolist()
                probs.append(np.asarray(data["probs"], np.float32))
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"{path}: cannot read field scores ({' '.join(str(exc).split())})") from None
    return ids, np.concatenate(probs)


def save_field_scores(out: str | Path, field_ids: list[str], probs: np.ndarray, chunk: int = 64) -> None:
    """Write field scores as ``predict.py`` does (``field_scores/part*.npz`` of ``chunk`` fields, its
    ``--chunk`` default), old parts removed."""
    parts = Path(out) / "field_scores"
    for old in parts.glob("part*.npz"):
        old.unlink()
    for k in range(0, len(field_ids), chunk):
        ids = field_ids[k:k + chunk]
        with atomic_path(parts / f"part{k // chunk:05d}.npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, ids=np.array(ids), got=np.array(ids, dtype=str), probs=probs[k:k + chunk],
                         failed=np.zeros((0, 2), dtype=str))


def per_sample(field_ids: list[str], probs: np.ndarray, task: Task) -> tuple[list[str], np.ndarray]:
    """(sample ids in first-seen order, (n_samples, C) probabilities of each sample: its fields averaged).

    Multiclass: the softmax of the fields' mean logits; multilabel: the mean probability
    (:func:`cellloc.plate_assignment.sample_probabilities`).
    """
    layout = LAYOUTS[task.layout]
    return sample_probabilities(probs, [layout.sample_of(i) for i in field_ids], task.kind)


def score_frame(samples: list[str], probs: np.ndarray, task: Task, top: int = 5) -> pd.DataFrame:
    """Per-sample scores as a table: every class for multilabel tasks, the ``top`` classes for multiclass ones."""
    if task.kind == "multilabel":
        df = pd.DataFrame(np.round(probs, 5), columns=[f"p{k}" for k in range(task.num_classes)])
    else:
        order = np.argsort(-probs, axis=1)[:, :top]
        df = pd.DataFrame({f"top{k + 1}": order[:, k] for k in range(order.shape[1])})
        for k in range(order.shape[1]):
            df[f"p_top{k + 1}"] = np.round(probs[np.arange(len(probs)), order[:, k]], 5)
    df.insert(0, "ID", samples)
    return df


PREDICT_RUNS: Registry[Callable[[PredictConfig, Predictor, Progress | None], PredictSummary]] = Registry("model level")
PREDICT_RUNS["cell"] = predict_cells
PREDICT_RUNS["image"] = predict_images

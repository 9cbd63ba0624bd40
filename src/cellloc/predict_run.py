"""Stream test fields to a submission: masks -> crops -> fold models -> blended scores -> RLE rows.

One field at a time (never all masks in memory). For each field the per-cell scores are written
to ``cell_scores/{ID}.csv`` and then its submission row is appended by the resumable
:class:`~cellloc.submission.SubmissionWriter`, so a killed run continues where it stopped and
the submission file appears, complete, only at the end.

Cells are segmented and cropped exactly as the training crops were: the segmentation settings
(backend, pixel size, crop size, crop mask, channels) come from the ``segment_config.json``
beside the training run's folds CSV, so train and test inputs cannot drift apart.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from .cells import MASK_MODES, cell_table, crop_cells
from .config import load_config, opt
from .errors import InputError
from .fieldio import dataset_root, find_mask, read_mask, write_csv
from .inference import BLEND_MODES, blend_with_field, cell_weights, ensemble, with_negative
from .layouts import LAYOUTS
from .segment_run import SegmentRunConfig
from .segmentation import SegmentConfig, create_segmenter
from .submission import SubmissionWriter, encode_field, prediction_string
from .tasks import TASKS, Task, get_task

PredictFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class PredictConfig:
    """Options of ``python src/predict.py``."""

    models: str = opt("models/effb2", "training run folder; every fold*/ in it with a best.pt is used")
    task: str = opt("", "task (default: the one the models were trained for; given, it must match)",
                    choices=["", *TASKS.names()])
    input: str = opt("", "folder of test fields (default: input/<data_name>_test/test of the task)")
    folds: list[int] = opt([], "use only these folds (default: all found)")
    out: str = opt("", "output folder (default: output/<dataset name>)")
    masks: str = opt("", "reuse {ID}_cell_mask.png/.npz from this folder (e.g. output/<name>/masks); else segment")
    segment_config: str = opt("", "segment_config.json of the training crops (default: beside the run's folds CSV)")
    backend: str = opt("", "segmentation backend (default: the one that made the training crops)")
    weights_dir: str = opt("", "HPA weight files (hpa backend)")
    blend: str = opt("product", "mix cell scores with the field's mean cell score", choices=list(BLEND_MODES))
    field_weight: float = opt(0.3, "weight of the field score for --blend mean")
    tta: int = opt(1, "dihedral views averaged per crop (1, 2, 4 or 8 flips/transposes)", choices=[1, 2, 4, 8])
    min_confidence: float = opt(0.0, "leave out (cell, class) pairs below this score")
    top_k: int = opt(0, "keep at most K classes per cell (0: all)")
    batch_size: int = opt(64, "crops per forward pass")
    device: str = opt("cpu", "torch device for the classifier (and the hpa backend)")
    limit: int = opt(0, "predict only the first N fields (0: all)")

    def __post_init__(self) -> None:
        if not 0 <= self.min_confidence <= 1:
            raise ValueError(f"--min-confidence must be in [0, 1], got {self.min_confidence}")
        if not 0 <= self.field_weight <= 1:
            raise ValueError(f"--field-weight must be in [0, 1], got {self.field_weight}")
        if self.top_k < 0 or self.limit < 0 or self.batch_size < 1:
            raise ValueError("--top-k and --limit must be >= 0, --batch-size >= 1")
        if self.backend not in ("", "classical", "hpa"):
            raise ValueError(f"--backend must be classical or hpa, got {self.backend!r}")

    def resolved(self, task: Task) -> PredictConfig:
        """This config with the task and its default input folder filled in (what the run saves)."""
        if self.task and self.task != task.name:
            raise InputError(f"{self.models}: trained for task {task.name}, not {self.task}; drop --task or pass --task {task.name}")
        return replace(self, task=task.name, input=self.input or str(task.data_dir("test", test=True)))

    def dataset_dir(self) -> Path:
        return dataset_root(self.input)

    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("output") / self.dataset_dir().name


@dataclass
class ModelSpec:
    """What inference must reproduce from training: segmentation, crop size and masking, classes."""

    segment: SegmentConfig
    crop_size: int
    crop_mask: str
    task: Task

    @property
    def channels(self) -> tuple[str, ...]:
        return self.segment.channels

    @property
    def num_classes(self) -> int:
        return self.task.num_classes

    @property
    def negative(self) -> int | None:
        return self.task.label_set.negative


def fold_dirs(models: str | Path, folds: Sequence[int] = ()) -> list[Path]:
    """The trained fold folders (``fold*/best.pt``) under a run folder, optionally only some folds."""
    root = Path(models)
    dirs = sorted(d for d in root.glob("fold*") if (d / "best.pt").exists() and d.name[4:].isdigit())
    if folds:
        dirs = [d for d in dirs if int(d.name[4:]) in set(folds)]
    if not dirs:
        which = f" among folds {list(folds)}" if folds else ""
        raise InputError(f"{root}: no trained fold (fold*/best.pt){which}; run src/train.py first")
    return dirs


def model_spec(run_dir: Path, cfg: PredictConfig) -> ModelSpec:
    """Rebuild the training crops' recipe from a fold's ``config.json`` and its ``segment_config.json``."""
    run_cfg = json.loads((run_dir / "config.json").read_text())
    seg_path = Path(cfg.segment_config) if cfg.segment_config else Path(run_cfg.get("folds_csv", "")).parent / "segment_config.json"
    if not seg_path.is_file():
        raise InputError(f"{seg_path}: not found; pass --segment-config (the segment_config.json of the training crops)")
    seg_run = load_config(SegmentRunConfig, seg_path)
    seg = seg_run.segment_config()
    seg = replace(seg, device=cfg.device, weights_dir=cfg.weights_dir or seg.weights_dir,
                  backend=cfg.backend or seg.backend)
    if seg_run.crop_mask not in MASK_MODES:
        raise InputError(f"{seg_path}: crop mask {seg_run.crop_mask!r} unknown")
    return ModelSpec(segment=seg, crop_size=seg_run.crop_size, crop_mask=seg_run.crop_mask,
                     task=get_task(run_cfg.get("task", "")))


def load_ensemble(cfg: PredictConfig) -> tuple[list[PredictFn], ModelSpec, list[str]]:
    """(one predict function per fold model, the crops' recipe, fold names) for ``cfg.models``."""
    from .inference_model import load_model, predict_crops

    dirs = fold_dirs(cfg.models, cfg.folds)
    spec = model_spec(dirs[0], cfg)
    fns: list[PredictFn] = []
    for d in dirs:
        model = load_model(d, cfg.device)
        if model.num_classes != spec.num_classes:
            raise InputError(f"{d}: {model.num_classes} classes, but {dirs[0]} has {spec.num_classes}")
        fns.append(lambda crops, m=model: predict_crops(m, list(crops), tta=cfg.tta, batch_size=cfg.batch_size))
    return fns, spec, [d.name for d in dirs]


def field_scores(image: np.ndarray, cells: np.ndarray, nuclei: np.ndarray, spec: ModelSpec,
                 predict_fns: Sequence[PredictFn], cfg: PredictConfig) -> tuple[pd.DataFrame, np.ndarray]:
    """(cells table, final per-cell scores (n_cells, n_classes)) of one field."""
    table = cell_table(image, cells, nuclei, spec.channels)
    if len(table) == 0:
        return table, np.zeros((0, spec.num_classes), np.float32)
    crops = crop_cells(image, cells, table, spec.crop_size, spec.crop_mask)
    stack = np.stack([crops[int(c)] for c in table["cell_id"]])
    probs = ensemble(predict_fns, stack)
    weights = cell_weights(table["area"].to_numpy(), table["edge"].to_numpy())
    probs = blend_with_field(probs, cfg.blend, cfg.field_weight, weights)
    return table, with_negative(probs, spec.negative)


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


def run_predict(cfg: PredictConfig, spec: ModelSpec, predict_fns: Sequence[PredictFn],
                progress: Callable[[int], None] | None = None) -> dict:
    """Write ``submission.csv`` (and per-cell scores) for every field of ``cfg.input``."""
    t0 = time.perf_counter()
    cfg = cfg.resolved(spec.task)
    layout = LAYOUTS[spec.task.layout]
    listing = layout.list_fields(cfg.input, spec.channels)
    ids = listing.ids[: cfg.limit] if cfg.limit else listing.ids
    if not ids:
        raise InputError(f"{cfg.input}: no complete fields found for channels {', '.join(spec.channels)}")
    out = cfg.out_dir()
    segmenter = None if cfg.masks else create_segmenter(spec.segment)
    failed = listing.failures()
    n_cells = n_done = 0
    writer = SubmissionWriter(out / "submission.csv")
    if writer.path.exists() and not writer.partial.exists():
        # a finished earlier run (perhaps with failed fields): resume from its rows, keep it until done
        shutil.copyfile(writer.path, writer.partial)
    with writer:
        skipped = sum(i in writer.done for i in ids)
        if progress and skipped:
            progress(skipped)
        for image_id in ids:
            if image_id in writer.done:
                continue
            try:
                image = layout.read_field(cfg.input, image_id, spec.channels)
                if segmenter is None:
                    cells, nuclei = _masks_for(cfg, image_id, image.shape[:2])
                else:
                    cells, nuclei = segmenter.segment(image)
                table, scores = field_scores(image, cells, nuclei, spec, predict_fns, cfg)
            except InputError as exc:
                failed.append((image_id, str(exc)))
                if progress:
                    progress(1)
                continue
            score_cols = pd.DataFrame(np.round(scores, 5), columns=[f"p{k}" for k in range(spec.num_classes)])
            rows = pd.concat([table[["cell_id", "area", "edge"]].reset_index(drop=True), score_cols], axis=1)
            rows.insert(0, "ID", image_id)
            write_csv(out / "cell_scores" / f"{image_id}.csv", rows)
            ids_in_table = [int(c) for c in table["cell_id"]]
            masks = encode_field(cells, ids_in_table) if ids_in_table else {}
            pred = prediction_string([masks[c] for c in ids_in_table], scores, cfg.min_confidence, cfg.top_k or None)
            h, w = image.shape[:2]
            writer.write(image_id, w, h, pred)
            n_cells += len(table)
            n_done += 1
            if progress:
                progress(1)
    write_csv(out / "predict_failures.csv", pd.DataFrame(failed, columns=["ID", "reason"]))
    return {"fields": len(ids), "done": n_done, "skipped": skipped, "failed": failed, "cells": n_cells,
            "seconds": time.perf_counter() - t0, "submission": out / "submission.csv"}

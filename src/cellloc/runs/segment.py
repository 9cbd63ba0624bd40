"""Segment every field of a folder: masks, overlays, crops and the cells table, resumable.

Outputs under ``out``:

    masks/{ID}_cell_mask.png, masks/{ID}_nucleus_mask.png   uint16 instance labels (--mask-format png|npz|tif|roi, or several: png,roi)
    overlays/{ID}.png                                        with --overlay
    crops/{ID}.npy                                           (n_cells, S, S, C) crops of the field's cells in row order, field dtype kept;
                                                             a row's ``crop`` names its own: crops/{ID}.npy#k (cells.split_crop_reference)
    cells/{ID}.csv                                           the field's rows (with the pixel size used and its source); marks it done
    cells.csv                                                all rows (rebuilt at the end)
    failures.csv                                             ID,reason for fields that failed
    segment_config.json

A field is done when its ``cells/{ID}.csv`` exists (written last, atomically), so a killed run
loses nothing and a rerun skips finished fields. ``segment_manifest.json`` records the settings
the finished fields were made with (:mod:`cellloc.run_state`): a rerun with other settings
(another ``--crop-size``, backend, labels file, ...) stops with one line saying what changed,
instead of keeping crops that no longer match; ``--overwrite`` moves the old outputs aside and
starts over. The folder is locked while a run writes to it.

Each field is segmented at its own pixel size (``segmentation.scale.segment_with_scale``):
``--pixel-size-um`` when given, else the one its nucleus channel file records in its tags, else
``--scale-from``'s estimate. The per-field work after segmenting is kept small: masks are
encoded while the table and crops are computed (a second thread; OpenCV's encoder releases the
GIL), PNG masks encoded for labels (``fieldio.encode_png``), and a field's crops go to one file.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from ..cells import CROP_FITS, MASK_MODES, cell_table, crop_cells, crop_reference
from ..config import opt, save_config
from ..errors import InputError
from ..fieldio import MASK_FORMATS, dataset_root, mask_file, read_csv, read_mask, sha256_file, write_csv, write_mask, write_npy, write_png
from ..imagemeta import pixel_size_of_file
from ..labels import read_task_labels
from ..layouts import LAYOUTS, Layout
from ..run_state import RunStart, ensure_same_settings, folder_lock
from ..runtime import AUTO, RUNTIME_HELP, require_runtime, runtime_choices, threads_for
from ..segmentation import SegmentConfig, create_segmenter
from ..segmentation.base import SCALE_AWARE_BACKENDS
from ..segmentation.scale import PixelSize, resolve_pixel_size, segment_with_scale
from ..tasks import DEFAULT_TASK, TASKS, Task, get_task
from .executor import ExecutorOptions, Failure

CELL_COLUMNS_FRONT = ["ID", "cell_id", "Label"]


@dataclass
class SegmentRunConfig(ExecutorOptions):
    """Options of ``python src/segment.py``."""

    task: str = opt(DEFAULT_TASK, "task of the fields (names their layout, channels and labels CSV)", choices=TASKS.names())
    input: str = opt("", "folder of the task's fields (default: input/<data_name>/train; hpa-sc: {ID}_{channel}.png)")
    out: str = opt("", "output folder (default: output/<dataset name>)")
    labels: str = opt("", "the task's labels CSV with image labels (default: train.csv beside or above --input, if any)")
    truth: str = opt("", "truth folder with {ID}_cell_mask.png and cells.csv (default: ../truth if present)")
    backend: str = opt("classical", "segmentation backend", choices=["classical", "hpa"])
    pixel_size_um: float = opt(0.0, "micrometres per pixel (0: see --scale-from)")
    scale_from: str = opt("image", "no pixel size given: estimate it per field from the nucleus size (image), or assume the field spans the HPA field of view, 163.84 um (width)", choices=["image", "width"])
    snap_to_width: float = opt(0.25, "an estimate within this fraction of the HPA field-of-view value takes that value (0: never)")
    crop_size: int = opt(128, "side of the saved square cell crops, pixels")
    crop_mask: str = opt("cell", "zero pixels outside the cell (cell), of other cells (others), or none", choices=list(MASK_MODES))
    crop_fit: str = opt("pad", "pad: a square around the cell (aspect ratio kept); stretch: its bounding box resized to "
                        "the square (the cell fills the crop)", choices=list(CROP_FITS))
    remove_edge_cells: bool = opt(False, "drop cells that touch the field border")
    mask_format: str = opt("png", "masks as uint16 PNG, compressed npz, uint16 TIFF (tif) or an ImageJ ROI set (roi, .zip); several joined by commas, e.g. png,roi")
    overlay: bool = opt(False, "write an overlay PNG per field (outlines on a colour composite)")
    batch_size: int = opt(1, "fields per network batch (hpa backend)")
    device: str = opt("cpu", "torch device for the hpa backend (cpu, cuda)")
    half: bool = opt(False, "fp16 inference on CUDA (hpa backend)")
    runtime: str = opt(AUTO, RUNTIME_HELP, choices=runtime_choices())
    weights_dir: str = opt("", "folder with the HPA weight files (hpa backend)")
    cell_model: str = opt("3ch", "hpa cell network: 3ch (microtubules + ER + nuclei) or v2 (the published v2 model)", choices=["3ch", "v2"])
    limit: int = opt(0, "segment only the first N fields (0: all)")
    resume: bool = opt(True, "skip fields already done")
    overwrite: bool = opt(False, "start over: move this folder's segmentation outputs to <out>.replaced-<time> first", saved=False)

    def __post_init__(self) -> None:
        if self.crop_size < 8:
            raise ValueError(f"--crop-size must be >= 8, got {self.crop_size}")
        if self.batch_size < 1 or self.limit < 0:
            raise ValueError("--batch-size must be >= 1 and --limit >= 0")
        if self.snap_to_width < 0:
            raise ValueError(f"--snap-to-width must be >= 0, got {self.snap_to_width}")
        if self.pixel_size_um < 0:
            raise ValueError(f"--pixel-size-um must be >= 0, got {self.pixel_size_um}")
        unknown = [f for f in self.mask_formats if f not in MASK_FORMATS]
        if unknown or not self.mask_formats:
            raise ValueError(f"--mask-format: unknown {', '.join(unknown) or 'empty'}; known: {', '.join(MASK_FORMATS)}")
        self.input = self.input or str(get_task(self.task).data_dir("train"))
        self.check_executor()

    @property
    def mask_formats(self) -> list[str]:
        return [f.strip() for f in self.mask_format.split(",") if f.strip()]

    @property
    def task_record(self) -> Task:
        return get_task(self.task)

    @property
    def layout(self) -> Layout:
        return LAYOUTS[self.task_record.layout]

    @property
    def channel_names(self) -> tuple[str, ...]:
        return self.task_record.channels

    def dataset_dir(self) -> Path:
        """The dataset folder: the parent of a train/ or test/ folder, else the folder itself."""
        return dataset_root(self.input)

    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("output") / self.dataset_dir().name

    def labels_path(self) -> Path | None:
        if self.labels:
            return Path(self.labels)
        for cand in (Path(self.input) / "train.csv", self.dataset_dir() / "train.csv"):
            if cand.exists():
                return cand
        return None

    def truth_dir(self) -> Path | None:
        if self.truth:
            return Path(self.truth)
        cand = self.dataset_dir() / "truth"
        return cand if (cand / "cells.csv").exists() else None

    def segment_config(self) -> SegmentConfig:
        return SegmentConfig(
            backend=self.backend, **self.task_record.segment_channels(),
            pixel_size_um=self.pixel_size_um or None, scale_from=self.scale_from, snap_to_width=self.snap_to_width,
            remove_edge_cells=self.remove_edge_cells,
            weights_dir=self.weights_dir or None, device=self.device, batch_size=self.batch_size, half=self.half,
            runtime=self.runtime, threads=threads_for(self.workers, self.threads),
            cell_model=self.cell_model,
        )

    def recipe_input(self) -> dict:
        """The ``input`` entry of a cell model's recipe trained on these crops (how to cut them again)."""
        # threads and runtime: how fast this machine ran it, not what it made; the predicting machine chooses
        return {"kind": "cell_crop", "crop_size": self.crop_size, "crop_mask": self.crop_mask, "crop_fit": self.crop_fit,
                "segment": {**dataclasses.asdict(self.segment_config()), "threads": 0, "runtime": AUTO}}


@dataclass
class FieldResult:
    image_id: str
    n_cells: int = 0
    error: str = ""
    seconds: float = 0.0
    pixel_size_um: float = 0.0  # what the field was segmented at
    pixel_size_source: str = ""  # where that came from: given, file, image, width (PixelSize.source)
    # an OS error about the output (errno, message, path): the driver stops the run with it. A
    # worker returns it rather than raising, since an executor turns a raise into one failed field.
    stop: tuple[int, str, str | None] | None = None


@dataclass
class RunSummary:
    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    cells: pd.DataFrame | None = None
    seconds: float = 0.0
    pixel_sizes: list[tuple[str, float]] = field(default_factory=list)  # (source, um) of each field segmented now
    start: RunStart | None = None  # resumed, or started over (and where the old outputs went)
    unlabelled: list[str] = field(default_factory=list)  # fields the labels CSV has no row for


# Everything a segmentation run writes in its output folder (what --overwrite moves aside).
SEGMENT_OUTPUTS = ("masks", "overlays", "crops", "cells", "cells.csv", "failures.csv", "segment_config.json")


def _file_identity(path: Path | None) -> str:
    """A file's SHA-256 ("" for none): what the run's rows were made from."""
    return sha256_file(path) if path is not None and path.is_file() else ""


def run_settings(cfg: SegmentRunConfig) -> dict:
    """What the results of a segmentation run depend on: compared with the manifest of finished work.

    Not in it: how fast or where the work runs (workers, batch size, device, runtime), ``--limit``,
    ``--resume``, and which extra files a field gets (``--overlay``, ``--mask-format``): fields
    with and without them can live side by side. The labels and truth files count by content,
    the HPA weight files by name and size.
    """
    seg = dataclasses.asdict(cfg.segment_config())
    for key in ("device", "batch_size", "weights_dir", "runtime", "threads"):
        seg.pop(key)
    truth = cfg.truth_dir()
    settings = {
        "task": cfg.task, "input": os.path.normpath(cfg.input), "segment": seg,
        "crop_size": cfg.crop_size, "crop_mask": cfg.crop_mask, "crop_fit": cfg.crop_fit,
        "labels_sha256": _file_identity(cfg.labels_path()), "truth_sha256": _file_identity(truth / "cells.csv" if truth else None),
    }
    if cfg.backend == "hpa":
        from ..segmentation.weights import CELL_MODELS, NUCLEI_MODEL, weights_folder

        folder = weights_folder(cfg.weights_dir or None)
        settings["hpa_weights"] = {name: (folder / name).stat().st_size if (folder / name).is_file() else None
                                   for name in (NUCLEI_MODEL, CELL_MODELS[cfg.cell_model])}
    return settings


def stops_the_run(exc: BaseException, out: Path) -> bool:
    """An OS error about the output (a full disk, a folder that cannot be written), not about one field."""
    if not isinstance(exc, OSError) or exc.errno is None:
        return False
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return True
    named = exc.filename
    return named is not None and Path(os.path.abspath(named)).is_relative_to(os.path.abspath(out))


# ----------------------------------------------------------------------------- per field


def attach_truth(table: pd.DataFrame, cells: np.ndarray, truth_mask: np.ndarray, truth_cells: pd.DataFrame) -> pd.DataFrame:
    """Give each segmented cell the true labels of the truth cell it overlaps at IoU >= 0.5."""
    from ..metrics import match_cells

    match = match_cells(cells, truth_mask, 0.5)
    labels = dict(zip(truth_cells["cell_id"].astype(int), truth_cells["Label"]))
    table = table.copy()
    table["true_cell_id"] = [match.get(int(c), (0, 0.0))[0] for c in table["cell_id"]]
    table["match_iou"] = [round(match.get(int(c), (0, 0.0))[1], 3) for c in table["cell_id"]]
    table["TrueLabel"] = [labels.get(int(t), "") if t else "" for t in table["true_cell_id"]]
    return table


def file_pixel_size(layout: Layout, folder: str | Path, field_id: str, cfg: SegmentConfig) -> float | None:
    """The pixel size a field's nucleus channel file records in its tags, for
    ``segment_with_scale`` (None: none recorded, one was given, or ``cfg``'s backend segments
    at its own fixed scale, so the file is not opened)."""
    if cfg.pixel_size_um or cfg.backend not in SCALE_AWARE_BACKENDS:
        return None
    return pixel_size_of_file(layout.channel_file(folder, field_id, cfg.nucleus_channel))


class FieldWorker:
    """Everything needed to finish one field; built once per process (the segmenter is costly)."""

    def __init__(self, cfg: SegmentRunConfig, image_labels: dict[str, str], truth_cells: pd.DataFrame | None) -> None:
        self.cfg = cfg
        self.out = cfg.out_dir()
        self.image_labels = image_labels
        self.truth_cells = truth_cells
        self.layout = cfg.layout
        self.seg_cfg = cfg.segment_config()
        self.segmenter = create_segmenter(self.seg_cfg)
        self._reader: ThreadPoolExecutor | None = None  # reads the next field while this one is segmented
        self._ahead: tuple[str, Future] | None = None

    def read(self, image_id: str) -> np.ndarray:
        return self.layout.read_field(self.cfg.input, image_id, self.cfg.channel_names)

    def take(self, image_id: str, next_id: str | None = None) -> np.ndarray:
        """Field ``image_id`` (read ahead if it was ``next_id`` last time, else read now), and start
        reading ``next_id`` on a second thread: its PNG decoding (OpenCV, outside the GIL) then
        overlaps this field's segmentation and writing. A read error is raised here either way."""
        ahead, self._ahead = self._ahead, None
        try:
            if ahead is not None and ahead[0] == image_id:
                return ahead[1].result()
            return self.read(image_id)
        finally:
            if next_id is not None:
                if self._reader is None:
                    self._reader = ThreadPoolExecutor(1, thread_name_prefix="read-ahead")
                self._ahead = (next_id, self._reader.submit(self.read, next_id))
            elif self._reader is not None:  # the last field: no idle thread left behind in a long-lived process
                self._reader.shutdown(wait=False)
                self._reader = None

    def write_masks(self, image_id: str, cells: np.ndarray, nuclei: np.ndarray, pixel_size_um: float) -> None:
        """The field's masks in every ``--mask-format`` (TIFFs carry the pixel size)."""
        for fmt in self.cfg.mask_formats:
            for stem, labels in ((f"{image_id}_cell_mask", cells), (f"{image_id}_nucleus_mask", nuclei)):
                write_mask(mask_file(self.out / "masks", stem, fmt), labels, pixel_size_um=pixel_size_um)

    def finish(self, image_id: str, image: np.ndarray, cells: np.ndarray, nuclei: np.ndarray, px: PixelSize) -> int:
        """Write masks, overlay, crops, then the field's CSV (last: it marks the field done).

        The masks are encoded and written on a second thread while this one measures the cells
        and cuts their crops; both finish before the CSV is written.
        """
        from ..render import overlay

        cfg, out = self.cfg, self.out
        with ThreadPoolExecutor(1, thread_name_prefix="masks") as writer:
            masks = writer.submit(self.write_masks, image_id, cells, nuclei, px.um)
            table = cell_table(image, cells, nuclei, cfg.channel_names)
            crops = crop_cells(image, cells, table, cfg.crop_size, cfg.crop_mask, cfg.crop_fit)
            rel = f"crops/{image_id}.npy"
            if crops:
                write_npy(out / rel, np.stack([crops[int(c)] for c in table["cell_id"]]))
            if cfg.overlay:
                write_png(out / "overlays" / f"{image_id}.png", overlay(image, cells, nuclei, cfg.channel_names))
            masks.result()
        table.insert(0, "ID", image_id)
        table.insert(2, "Label", self.image_labels.get(self.layout.sample_of(image_id), ""))
        table["crop"] = [crop_reference(rel, k) for k in range(len(table))]
        table["height"], table["width"] = cells.shape
        table["pixel_size_um"], table["pixel_size_source"] = float(f"{px.um:.6g}"), px.source
        if self.truth_cells is not None:
            truth_dir = self.cfg.truth_dir()
            mask_path = truth_dir / f"{image_id}_cell_mask.png"
            if mask_path.exists():
                tc = self.truth_cells[self.truth_cells["ID"] == image_id]
                table = attach_truth(table, cells, read_mask(mask_path), tc)
        write_csv(out / "cells" / f"{image_id}.csv", table)
        return len(table)

    def run_one(self, image_id: str, next_id: str | None = None) -> FieldResult:
        """Segment and write one field; ``next_id``: the field this worker gets next (read ahead)."""
        t0 = time.perf_counter()
        try:
            image = self.take(image_id, next_id)
            cells, nuclei, px = segment_with_scale(self.segmenter, self.seg_cfg, image,
                                                      file_pixel_size(self.layout, self.cfg.input, image_id, self.seg_cfg))
            n = self.finish(image_id, image, cells, nuclei, px)
            return FieldResult(image_id, n, seconds=time.perf_counter() - t0, pixel_size_um=px.um, pixel_size_source=px.source)
        except InputError as exc:
            return FieldResult(image_id, error=str(exc))
        except Exception as exc:  # one bad field must not stop a 20k-field run; a full disk must
            return _failed(image_id, exc, self.out)

    def run_batch(self, ids: list[str]) -> list[FieldResult]:
        """Read several fields and push them through the segmenter together (network backends).

        A backend that takes a pixel size per field (classical) gains nothing from batches: its
        fields go one at a time, each at its own scale.
        """
        if self.seg_cfg.backend in SCALE_AWARE_BACKENDS:
            return [self.run_one(i) for i in ids]
        images, results = {}, {}
        for i in ids:
            try:
                images[i] = self.read(i)
            except InputError as exc:
                results[i] = FieldResult(i, error=str(exc))
        if images:
            t0 = time.perf_counter()
            try:
                outs = self.segmenter.segment_batch(list(images.values()))
            except Exception:  # a batch of mixed sizes or one bad field: fall back to one at a time
                outs = None
            for k, i in enumerate(images):
                if outs is None:
                    results[i] = self.run_one(i)
                    continue
                try:
                    px = resolve_pixel_size(self.seg_cfg, images[i])  # the config's or the width rule: the networks' own scale
                    results[i] = FieldResult(i, self.finish(i, images[i], *outs[k], px), seconds=time.perf_counter() - t0,
                                             pixel_size_um=px.um, pixel_size_source=px.source)
                except Exception as exc:
                    results[i] = _failed(i, exc, self.out)
        return [results[i] for i in ids]


def _failed(image_id: str, exc: Exception, out: Path) -> FieldResult:
    """A field's failure; one that is about the output (a full disk) carries what stops the run."""
    stop = (exc.errno, exc.strerror or str(exc), exc.filename) if stops_the_run(exc, out) else None
    return FieldResult(image_id, error=f"{type(exc).__name__}: {' '.join(str(exc).split())}", stop=stop)


def segment_one(worker: FieldWorker, image_id: str) -> FieldResult:
    """One field on a worker that holds a :class:`FieldWorker` (built once per worker process)."""
    return worker.run_one(image_id)


def segment_ahead(worker: FieldWorker, item: tuple[str, str | None]) -> FieldResult:
    """One field ``item[0]``, reading the worker's next field ``item[1]`` meanwhile (in-order executors)."""
    return worker.run_one(*item)


def segment_batch(worker: FieldWorker, ids: list[str]) -> list[FieldResult]:
    """Several fields through the network together (``--batch-size``, hpa backend)."""
    return worker.run_batch(ids)


# ----------------------------------------------------------------------------- the run


def plan(cfg: SegmentRunConfig) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    """(fields to segment, fields that cannot be (id, reason), stray file names)."""
    listing = cfg.layout.list_fields(cfg.input, cfg.channel_names)
    bad = listing.failures()
    ids = listing.ids[: cfg.limit] if cfg.limit else listing.ids
    if not ids and not bad:
        raise InputError(f"{cfg.input}: no fields found (task {cfg.task}: {cfg.task_record.layout} layout, "
                         f"channels {', '.join(cfg.channel_names)})")
    return ids, bad, listing.unmatched


def run_segmentation(cfg: SegmentRunConfig, progress: Callable[[int], None] | None = None) -> RunSummary:
    """Segment the fields of ``cfg.input``; return what was done, skipped and failed.

    Holds the output folder's lock throughout; stops before any work (:class:`InputError`) when
    the folder's finished fields were made with other settings and ``cfg.overwrite`` is not set,
    or when ``cfg.runtime``'s package is missing.
    """
    require_runtime(cfg.runtime, cfg.device)
    out = cfg.out_dir()
    with folder_lock(out):
        return _run_segmentation(cfg, out, progress)


def _run_segmentation(cfg: SegmentRunConfig, out: Path, progress: Callable[[int], None] | None) -> RunSummary:
    t0 = time.perf_counter()
    ids, failed, _ = plan(cfg)
    labels_path = cfg.labels_path()
    image_labels = {}
    unlabelled: list[str] = []
    if labels_path is not None:
        df = read_task_labels(labels_path, cfg.task_record)
        image_labels = dict(zip(df["ID"], df["Label"]))
        unlabelled = [i for i in ids if cfg.layout.sample_of(i) not in image_labels]
    truth_dir = cfg.truth_dir()
    truth_cells = read_csv(truth_dir / "cells.csv", ("ID", "cell_id", "Label")) if truth_dir else None
    start = ensure_same_settings(out, run_settings(cfg), cfg.overwrite, tool="segment", outputs=SEGMENT_OUTPUTS)
    todo = [i for i in ids if not (cfg.resume and (out / "cells" / f"{i}.csv").exists())]
    summary = RunSummary(skipped=len(ids) - len(todo), start=start, unlabelled=unlabelled)
    if progress and summary.skipped:
        progress(summary.skipped)
    save_config(cfg, out / "segment_config.json")
    for res in _results(cfg, todo, image_labels, truth_cells):
        if res.error:
            failed.append((res.image_id, res.error))
        else:
            summary.done += 1
            summary.pixel_sizes.append((res.pixel_size_source, res.pixel_size_um))
        if progress:
            progress(1)
    summary.failed = failed
    parts = [read_field_rows(out / "cells" / f"{i}.csv") for i in ids if (out / "cells" / f"{i}.csv").exists()]
    parts = [p for p in parts if len(p)]
    summary.cells = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=CELL_COLUMNS_FRONT)
    write_csv(out / "cells.csv", summary.cells)
    write_csv(out / "failures.csv", pd.DataFrame(failed, columns=["ID", "reason"]))
    summary.seconds = time.perf_counter() - t0
    return summary


def _results(cfg: SegmentRunConfig, todo: list[str], image_labels, truth_cells) -> Iterator[FieldResult]:
    """Each field's result, in the order of ``todo``, whichever executor ran it.

    Workers write the per-field files (masks, crops, ``cells/{ID}.csv``) themselves; only small
    :class:`FieldResult` records come back. A field whose worker died is a failed result.
    """
    if not todo:
        return
    # workers may run elsewhere (a cluster): give them absolute paths on the shared filesystem
    here = replace(cfg, input=str(Path(cfg.input).resolve()), out=str(cfg.out_dir().resolve()),
                   truth=str(Path(cfg.truth).resolve()) if cfg.truth else "",
                   weights_dir=str(Path(cfg.weights_dir).expanduser().resolve()) if cfg.weights_dir else "")
    init = partial(FieldWorker, here, image_labels, truth_cells)
    batch = cfg.batch_size
    with cfg.open_executor() as ex:
        if batch > 1:
            fn, items, ids_of = segment_batch, [todo[k:k + batch] for k in range(0, len(todo), batch)], list
        elif ex.in_order:  # one worker takes the fields in this order: it reads each next one ahead
            fn, items, ids_of = segment_ahead, list(zip(todo, [*todo[1:], None])), lambda item: [item[0]]
        else:
            fn, items, ids_of = segment_one, todo, lambda item: [item]
        for item, res in zip(items, ex.map(fn, items, init=init)):
            if isinstance(res, Failure):
                yield from (FieldResult(i, error=res.error) for i in ids_of(item))
                continue
            for one in res if batch > 1 else [res]:
                if one.stop is not None:  # a full disk or an unwritable output: every later field would fail too
                    raise OSError(*one.stop)
                yield one


def read_field_rows(path: Path) -> pd.DataFrame:
    """A field's rows (possibly none: a field with no cells) with labels kept as text."""
    return pd.read_csv(path, dtype={"ID": str, "Label": str, "TrueLabel": str}, keep_default_na=False)

"""Score a segmentation backend on images with instance ground truth.

Two layouts are understood:

* a generated dataset: ``DIR/{train,test}/`` in its task's layout (HPA: ``{ID}_{channel}.png``)
  with ``DIR/truth/{ID}_cell_mask.png`` and ``{ID}_nucleus_mask.png`` (cells and nuclei are scored);
* nucleus-only pairs ``DIR/{name}_image.png`` + ``DIR/{name}_mask.png`` (e.g. Cell Tracking
  Challenge frames): the single-channel image is the nucleus channel; nuclei are scored.

Scores follow the 2018 Data Science Bowl / cellpose convention: per image and IoU threshold,
AP = TP / (TP + FP + FN) with one-to-one matching, averaged over images; F1@0.5 pools TP, FP and
FN over all images.

Each image is segmented at the pixel size ``segmentation.scale.resolve_pixel_size`` finds (the
config's, else the nucleus file's resolution tags, else estimated from the nuclei), recorded per
image. ``rescale`` scores the images resized by a factor (a check that segmentation does not
depend on the scale): predictions are resized back to the truth's size, nearest neighbour.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import cv2

import numpy as np
import pandas as pd

from ..errors import InputError
from ..fieldio import find_mask, read_channel, read_mask
from ..imagemeta import pixel_size_of_file
from ..layouts import LAYOUTS
from ..metrics import segmentation_scores
from ..segmentation import SegmentConfig, create_segmenter
from ..segmentation.scale import describe_pixel_sizes, segment_with_scale
from ..tasks import Task

THRESHOLDS = np.round(np.arange(0.5, 1.0, 0.05), 2)


@dataclass
class ScoreItem:
    name: str
    load_image: Callable[[], np.ndarray]
    cell_truth: Path | None
    nucleus_truth: Path
    nucleus_file: Path | None = None  # the nucleus channel's file: its resolution tags may give the pixel size


def find_items(folder: Path, task: Task, pattern: str = "*") -> list[ScoreItem]:
    """What can be scored in ``folder`` (see the module docstring for the two layouts)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    pairs = sorted(folder.glob(f"{pattern}_image.png"))
    if pairs:
        items = []
        for img in pairs:
            name = img.name[: -len("_image.png")]
            mask = folder / f"{name}_mask.png"
            if not mask.exists():
                raise InputError(f"{mask}: missing mask for {img.name}")
            items.append(ScoreItem(name, lambda p=img: read_channel(p), None, mask, img))
        return items
    for split in ("train", "test"):
        images, truth = folder / split, folder / "truth"
        if images.is_dir() and truth.is_dir():
            layout = LAYOUTS[task.layout]
            ids = [i for i in layout.list_fields(images, task.channels).ids if Path(i).match(pattern)]
            return [ScoreItem(i, lambda i=i: layout.read_field(images, i, task.channels), truth / f"{i}_cell_mask.png",
                              truth / f"{i}_nucleus_mask.png", layout.channel_file(images, i, task.nucleus_channel))
                    for i in ids]
    raise InputError(f"{folder}: found neither {{name}}_image.png/{{name}}_mask.png pairs nor train/ or test/ with truth/")


def rescale_image(image: np.ndarray, factor: float) -> np.ndarray:
    """HxW or HxWxC resized by ``factor`` (area average down, linear up), dtype and channels kept."""
    if factor == 1:
        return image
    h, w = image.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    out = cv2.resize(image, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)
    return out.reshape(size[1], size[0], *image.shape[2:])


# What is scored against an item's truth: its cell and nucleus labels, the pixel size (um) and where it came from.
Predict = Callable[[ScoreItem], tuple[np.ndarray, np.ndarray, float, str]]


def segmenting(cfg: SegmentConfig, rescale: float = 1.0) -> Predict:
    """Segment each item's image with ``cfg``, resized by ``rescale`` (a given pixel size is divided by it)."""
    if rescale <= 0:
        raise InputError(f"rescale must be positive, got {rescale}")
    if cfg.pixel_size_um and rescale != 1:
        cfg = replace(cfg, pixel_size_um=cfg.pixel_size_um / rescale)
    seg = create_segmenter(cfg)

    def predict(it: ScoreItem) -> tuple[np.ndarray, np.ndarray, float, str]:
        original = it.load_image()
        image = rescale_image(original, rescale)
        file_um = pixel_size_of_file(it.nucleus_file) if it.nucleus_file is not None else None
        cells, nuclei, px = segment_with_scale(seg, cfg, image, file_um / rescale if file_um else None)
        if rescale != 1:
            size = (original.shape[1], original.shape[0])
            cells = cv2.resize(cells, size, interpolation=cv2.INTER_NEAREST)
            nuclei = cv2.resize(nuclei, size, interpolation=cv2.INTER_NEAREST)
        return cells, nuclei, px.um, px.source

    return predict


def saved_masks(folder: str | Path) -> Predict:
    """Read each item's ``{name}_cell_mask`` and ``{name}_nucleus_mask`` from ``folder`` (any mask format
    segment.py or another tool writes) instead of segmenting: a finished segmentation is scored as it is."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder of masks")

    def read(name: str) -> np.ndarray:
        path = find_mask(folder, name)
        if path is None:
            raise InputError(f"{folder / (name + '.png')}: not found (segment the field first, or score without --masks)")
        return read_mask(path)

    def predict(it: ScoreItem) -> tuple[np.ndarray, np.ndarray, float, str]:
        nuclei = read(f"{it.name}_nucleus_mask")
        cells = read(f"{it.name}_cell_mask") if it.cell_truth is not None else np.zeros_like(nuclei)
        return cells, nuclei, float("nan"), "masks"

    return predict


def score_items(items: list[ScoreItem], cfg: SegmentConfig | Predict, progress: Callable[[int], None] | None = None,
                rescale: float = 1.0) -> pd.DataFrame:
    """One row per image and target (cells, nuclei): AP per threshold, TP/FP/FN at 0.5, and the
    pixel size used (``pixel_size_um``, with its ``scale`` source).

    ``cfg``: a segmentation config (each image segmented, resized by ``rescale``; see :func:`segmenting`)
    or what predicts an item's masks (e.g. :func:`saved_masks`).
    """
    predict = segmenting(cfg, rescale) if isinstance(cfg, SegmentConfig) else cfg
    rows = []
    for it in items:
        cells, nuclei, um, source = predict(it)
        targets = [("nuclei", nuclei, it.nucleus_truth)]
        if it.cell_truth is not None:
            targets.insert(0, ("cells", cells, it.cell_truth))
        for target, pred, truth_path in targets:
            truth = read_mask(truth_path)
            if truth.shape != pred.shape:
                raise InputError(f"{truth_path}: size {truth.shape} differs from its image {pred.shape}")
            s = segmentation_scores(truth, pred, THRESHOLDS)
            row = {"image": it.name, "target": target, "n_true": s["n_true"], "n_pred": s["n_pred"],
                   "tp50": int(s["tp"][0]), "fp50": int(s["fp"][0]), "fn50": int(s["fn"][0]),
                   "pixel_size_um": round(um, 5), "scale": source}
            row.update({f"AP{int(t * 100)}": float(a) for t, a in zip(THRESHOLDS, s["ap"])})
            rows.append(row)
        if progress:
            progress(1)
    return pd.DataFrame(rows)


def summarise(per_image: pd.DataFrame) -> pd.DataFrame:
    """Per target: mean AP at 0.5, 0.75, mean over 0.5:0.95, and pooled F1 at 0.5."""
    out = []
    ap_cols = [c for c in per_image.columns if c.startswith("AP")]
    for target, g in per_image.groupby("target", sort=False):
        tp, fp, fn = g["tp50"].sum(), g["fp50"].sum(), g["fn50"].sum()
        out.append({"target": target, "images": len(g), "true": int(g["n_true"].sum()), "pred": int(g["n_pred"].sum()),
                    "AP50": g["AP50"].mean(), "AP75": g["AP75"].mean(), "AP50:95": g[ap_cols].mean(axis=1).mean(),
                    "F1_50": 2 * tp / max(1, 2 * tp + fp + fn)})
    return pd.DataFrame(out)


def describe_scales(per_image: pd.DataFrame) -> str:
    """One line: how many images took their pixel size from where, with the range, e.g.
    ``pixel size: estimated from the nuclei for 5 images (0.2015-0.6104 um/px)``."""
    first = per_image.drop_duplicates("image")
    if (first["scale"] == "masks").all():
        return f"masks: {len(first)} images scored as saved (no segmentation)"
    return describe_pixel_sizes(zip(first["scale"], first["pixel_size_um"]))

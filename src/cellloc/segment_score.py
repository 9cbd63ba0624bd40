"""Score a segmentation backend on images with instance ground truth.

Two layouts are understood:

* a generated dataset: ``DIR/{train,test}/`` in its task's layout (HPA: ``{ID}_{channel}.png``)
  with ``DIR/truth/{ID}_cell_mask.png`` and ``{ID}_nucleus_mask.png`` (cells and nuclei are scored);
* nucleus-only pairs ``DIR/{name}_image.png`` + ``DIR/{name}_mask.png`` (e.g. Cell Tracking
  Challenge frames): the single-channel image is the nucleus channel; nuclei are scored.

Scores follow the 2018 Data Science Bowl / cellpose convention: per image and IoU threshold,
AP = TP / (TP + FP + FN) with one-to-one matching, averaged over images; F1@0.5 pools TP, FP and
FN over all images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InputError
from .fieldio import read_channel, read_mask
from .layouts import LAYOUTS
from .metrics import segmentation_scores
from .segmentation import SegmentConfig, create_segmenter
from .tasks import Task

THRESHOLDS = np.round(np.arange(0.5, 1.0, 0.05), 2)


@dataclass
class ScoreItem:
    name: str
    load_image: Callable[[], np.ndarray]
    cell_truth: Path | None
    nucleus_truth: Path


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
            items.append(ScoreItem(name, lambda p=img: read_channel(p), None, mask))
        return items
    for split in ("train", "test"):
        images, truth = folder / split, folder / "truth"
        if images.is_dir() and truth.is_dir():
            layout = LAYOUTS[task.layout]
            ids = [i for i in layout.list_fields(images, task.channels).ids if Path(i).match(pattern)]
            return [ScoreItem(i, lambda i=i: layout.read_field(images, i, task.channels), truth / f"{i}_cell_mask.png",
                              truth / f"{i}_nucleus_mask.png") for i in ids]
    raise InputError(f"{folder}: found neither {{name}}_image.png/{{name}}_mask.png pairs nor train/ or test/ with truth/")


def score_items(items: list[ScoreItem], cfg: SegmentConfig, progress: Callable[[int], None] | None = None) -> pd.DataFrame:
    """One row per image and target (cells, nuclei): AP per threshold and TP/FP/FN at 0.5."""
    seg = create_segmenter(cfg)
    rows = []
    for it in items:
        image = it.load_image()
        cells, nuclei = seg.segment(image)
        targets = [("nuclei", nuclei, it.nucleus_truth)]
        if it.cell_truth is not None:
            targets.insert(0, ("cells", cells, it.cell_truth))
        for target, pred, truth_path in targets:
            truth = read_mask(truth_path)
            if truth.shape != pred.shape:
                raise InputError(f"{truth_path}: size {truth.shape} differs from its image {pred.shape}")
            s = segmentation_scores(truth, pred, THRESHOLDS)
            row = {"image": it.name, "target": target, "n_true": s["n_true"], "n_pred": s["n_pred"],
                   "tp50": int(s["tp"][0]), "fp50": int(s["fp"][0]), "fn50": int(s["fn"][0])}
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

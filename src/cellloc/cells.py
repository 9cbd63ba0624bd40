"""Per-cell measurements and crops, from a field and its instance labels (pure array functions).

A crop is a square around the cell's bounding box (side = its longer edge plus a margin), padded
with zeros where it leaves the field, then resized to a fixed size (``fit="pad"``: the cell keeps
its aspect ratio). ``fit="stretch"`` cuts the bounding box itself (plus the margin on each side)
and resizes it to the square, stretching the cell along its shorter side: the original HPA
single-cell recipe's choice, which fills the network input with the cell. Pixels outside the
cell are zeroed by default (``mask="cell"``), or only those of other cells (``"others"``), or
none. The dtype is kept: a uint16 field gives uint16 crops.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import pandas as pd
from scipy import ndimage as ndi

MASK_MODES = ("cell", "others", "none")
CROP_FITS = ("pad", "stretch")


def cell_table(image: np.ndarray, cells: np.ndarray, nuclei: np.ndarray, channels: Sequence[str]) -> pd.DataFrame:
    """One row per cell: id, bbox (x0, y0, x1, y1; end-exclusive), area, centroid, nucleus area,
    whether it touches the field edge, and the mean intensity of each channel in the cell."""
    n = int(cells.max())
    cols = ["cell_id", "x0", "y0", "x1", "y1", "area", "centroid_y", "centroid_x", "nucleus_area", "edge"]
    cols += [f"mean_{c}" for c in channels]
    if n == 0:
        return pd.DataFrame(columns=cols)
    flat = cells.ravel().astype(np.int64)
    area = np.bincount(flat, minlength=n + 1)
    ids = np.flatnonzero(area[1:]) + 1
    h, w = cells.shape
    yy, xx = np.indices(cells.shape)
    cy = np.bincount(flat, yy.ravel(), n + 1) / np.maximum(area, 1)
    cx = np.bincount(flat, xx.ravel(), n + 1) / np.maximum(area, 1)
    nuc_area = np.bincount(flat, (nuclei.ravel() > 0), n + 1)
    edge_ids = np.unique(np.concatenate([cells[0], cells[-1], cells[:, 0], cells[:, -1]]))
    boxes = ndi.find_objects(cells)
    rows = {
        "cell_id": ids,
        "x0": [boxes[i - 1][1].start for i in ids], "y0": [boxes[i - 1][0].start for i in ids],
        "x1": [boxes[i - 1][1].stop for i in ids], "y1": [boxes[i - 1][0].stop for i in ids],
        "area": area[ids], "centroid_y": np.round(cy[ids], 1), "centroid_x": np.round(cx[ids], 1),
        "nucleus_area": nuc_area[ids].astype(np.int64), "edge": np.isin(ids, edge_ids),
    }
    for c, name in enumerate(channels):
        sums = np.bincount(flat, image[..., c].ravel().astype(np.float64), n + 1)
        rows[f"mean_{name}"] = np.round(sums[ids] / area[ids], 2)
    return pd.DataFrame(rows, columns=cols)


def square_box(x0: int, y0: int, x1: int, y1: int, margin: float = 0.05) -> tuple[int, int, int]:
    """(top, left, side) of the square centred on a bbox, side = longer edge * (1 + 2*margin)."""
    side = int(np.ceil(max(x1 - x0, y1 - y0) * (1 + 2 * margin))) + 1
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    return int(round(cy - side / 2)), int(round(cx - side / 2)), side


def stretch_box(x0: int, y0: int, x1: int, y1: int, margin: float = 0.05) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a bbox grown by ``margin`` of its own size on each side."""
    h, w = y1 - y0, x1 - x0
    my, mx = int(np.ceil(h * margin)), int(np.ceil(w * margin))
    return y0 - my, x0 - mx, h + 2 * my, w + 2 * mx


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
    """Resize an HxWxC array to ``size`` x ``size`` (area when shrinking, linear when growing).

    Shared by the crop writer and the training/inference preprocessing, so both resize alike. A
    non-square input is stretched (what ``fit="stretch"`` crops want); pad it first to keep its shape.
    """
    if img.shape[0] == size and img.shape[1] == size:
        return img
    interp = cv2.INTER_AREA if max(img.shape[:2]) > size else cv2.INTER_LINEAR
    c = img.shape[2]
    if c <= 4:
        out = cv2.resize(img, (size, size), interpolation=interp)
    else:  # OpenCV resizes at most 4 channels at once
        out = np.concatenate(
            [cv2.resize(img[..., i : i + 4], (size, size), interpolation=interp).reshape(size, size, -1) for i in range(0, c, 4)],
            axis=2,
        )
    return out.reshape(size, size, c)


def crop_cell(image: np.ndarray, cells: np.ndarray, cell_id: int, bbox: tuple[int, int, int, int], size: int,
              mask: str = "cell", margin: float = 0.05, fit: str = "pad") -> np.ndarray:
    """``size`` x ``size`` x C crop of one cell, dtype kept (see module docstring)."""
    if mask not in MASK_MODES:
        raise ValueError(f"mask must be one of {MASK_MODES}, not {mask!r}")
    if fit not in CROP_FITS:
        raise ValueError(f"fit must be one of {CROP_FITS}, not {fit!r}")
    if fit == "pad":
        top, left, side = square_box(*bbox, margin=margin)
        box_h = box_w = side
    else:
        top, left, box_h, box_w = stretch_box(*bbox, margin=margin)
    h, w = cells.shape
    out = np.zeros((box_h, box_w, image.shape[2]), image.dtype)
    ys, ye = max(0, top), min(h, top + box_h)
    xs, xe = max(0, left), min(w, left + box_w)
    patch = image[ys:ye, xs:xe]
    lab = cells[ys:ye, xs:xe]
    if mask == "cell":
        patch = np.where((lab == cell_id)[..., None], patch, 0)
    elif mask == "others":
        patch = np.where(((lab == 0) | (lab == cell_id))[..., None], patch, 0)
    out[ys - top:ye - top, xs - left:xe - left] = patch
    return resize_square(out, size)


def crop_cells(image: np.ndarray, cells: np.ndarray, table: pd.DataFrame, size: int, mask: str = "cell",
               fit: str = "pad") -> dict[int, np.ndarray]:
    """Crops of every cell in ``table`` (as made by :func:`cell_table`), keyed by cell id."""
    return {
        int(r.cell_id): crop_cell(image, cells, int(r.cell_id), (int(r.x0), int(r.y0), int(r.x1), int(r.y1)), size, mask,
                                  fit=fit)
        for r in table.itertuples()
    }

"""From the networks' probability maps to instance labels, at any image scale.

Pure functions on arrays. Maps are uint8 HxWx3 = [0, border*255, body*255], as the HPA Cell
Segmentator's networks give them after softmax and quantisation; labels are uint16 HxW, 0 = background. Every size cut-off is a number of
PIXELS at the resolution of the arrays passed in, computed by the caller from physical areas
(``SegmentConfig.area_px``): the reference's fixed 2500/5500-pixel cut-offs delete every cell
once a field is resized, and that cannot happen if no pixel count is built in here.

``label_cell`` and ``label_nuclei`` follow the HPA Cell Segmentator's procedures step by step.
Size tests keep the reference's meaning "area strictly below N is removed" (scikit-image 0.26
re-maps the same number to "area <= N", so sizes are counted here rather than delegated).
Reference quirks, and what is done with each:

* kept: the cell mask's "exclude border pixels" step is a no-op in the reference (a bitwise NOT
  of a 0/1 int array is never zero), so the mask is just body > threshold; the thresholds were
  tuned with that behaviour, so it stays.
* fixed: the seed test sums the two border channels in uint8, which wraps at 256 and turns the
  strongest border pixels into seeds; the sum is taken in int32 here.
* fixed: labels are cast to uint8 before the grey closing, so ids above 255 wrap onto others;
  here the closing runs on the int32 labels (identical for fields with at most 255 cells).
* fixed: ``label_nuclei`` compares uint8 values with probability thresholds (0.05, 0.15 and 0.4
  all act as ">= 1"); here the maps are divided by 255 first, as ``label_cell`` does.
* not reproduced: the reference's transposed resize for non-square fields (the backend's job).
* added, off by default: ``label_cell(regrow_px=...)`` grows back the rim that the hole filling
  trims, which matters only on maps coarser than the reference's (see its docstring).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage as ndi
from skimage import filters, measure, morphology, segmentation

CROSS = ndi.generate_binary_structure(2, 1)  # 4-connectivity
SQUARE = ndi.generate_binary_structure(2, 2)  # 8-connectivity

REFERENCE_PIXEL_UM = 0.08  # the resolution the reference's pixel cut-offs were tuned at


@dataclass(frozen=True)
class Cutoffs:
    """Size cut-offs for :func:`label_cell` / :func:`label_nuclei`, in pixels of the maps given.

    Areas may be fractional (a component is removed when its pixel count is below the value).
    """

    min_seed_px: float  # nucleus seed components (reference 500)
    max_hole_px: float  # holes filled in the nucleus mask (reference 1000)
    min_fragment_px: float  # specks dropped from the nucleus mask (reference 8)
    min_nucleus_px: float  # reference 2500
    min_cell_px: float  # reference 5500
    closing_radius_px: float  # disk smoothing cell outlines, rounded when used (reference 6)

    def scaled(self, area_ratio: float) -> Cutoffs:
        """The same physical cut-offs on maps with ``area_ratio`` times as many pixels."""
        return replace(
            self,
            min_seed_px=self.min_seed_px * area_ratio,
            max_hole_px=self.max_hole_px * area_ratio,
            min_fragment_px=self.min_fragment_px * area_ratio,
            min_nucleus_px=self.min_nucleus_px * area_ratio,
            min_cell_px=self.min_cell_px * area_ratio,
            closing_radius_px=self.closing_radius_px * area_ratio**0.5,
        )


# The reference's cut-offs, in pixels of a full-resolution HPA field (REFERENCE_PIXEL_UM).
REFERENCE_CUTOFFS = Cutoffs(500, 1000, 8, 2500, 5500, 6)


# --------------------------------------------------------------------------- shared helpers


def keep_large_components(mask: np.ndarray, min_px: float, connectivity: int = 1) -> np.ndarray:
    """Bool HxW: ``mask`` without its connected components of fewer than ``min_px`` pixels.

    ``connectivity`` 1 = 4-connected, 2 = 8-connected.
    """
    mask = np.asarray(mask, bool)
    comps, n = ndi.label(mask, CROSS if connectivity == 1 else SQUARE)
    if n == 0:
        return mask.copy()
    sizes = np.bincount(comps.ravel())
    keep = sizes >= min_px
    keep[0] = False
    return keep[comps]


def fill_small_holes(mask: np.ndarray, max_hole_px: float, connectivity: int = 1) -> np.ndarray:
    """Bool HxW: background components of fewer than ``max_hole_px`` pixels set to foreground.

    As in scikit-image's ``remove_small_holes`` (which the reference used), a small background
    region touching the image edge counts as a hole too.
    """
    mask = np.asarray(mask, bool)
    return mask | ~keep_large_components(~mask, max_hole_px, connectivity)


def remove_small_labels(labels: np.ndarray, min_px: float) -> np.ndarray:
    """Labels HxW (any int dtype) with every id of fewer than ``min_px`` pixels set to 0.

    Counts pixels per id, not per connected piece; ids are kept (not renumbered).
    """
    labels = np.asarray(labels)
    if labels.size == 0 or labels.max() <= 0:
        return labels.copy()
    sizes = np.bincount(labels.ravel())
    small = sizes < min_px
    small[0] = False
    return np.where(small[labels], 0, labels).astype(labels.dtype, copy=False)


def remove_edge_labels(labels: np.ndarray) -> np.ndarray:
    """Labels HxW with every id that touches the image border set to 0 (cells cut by the field edge)."""
    labels = np.asarray(labels)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    edge = edge[edge != 0]
    return np.where(np.isin(labels, edge), 0, labels).astype(labels.dtype, copy=False)


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """uint16 HxW with the ids renumbered 1..n in ascending order of the old ids (0 stays 0)."""
    labels = np.asarray(labels)
    if labels.dtype.kind in "iu" and labels.dtype != np.uint64 and labels.size:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0:
            raise ValueError("labels must be non-negative")
        if hi <= max(2 * labels.size, 1 << 20):  # a lookup table by id: no sort of every pixel
            present = np.bincount(labels.ravel(), minlength=hi + 1) > 0
            n = int(present.sum()) - int(present[0])
            if n > np.iinfo(np.uint16).max:
                raise ValueError(f"{n} labels do not fit in uint16")
            lut = np.cumsum(present, dtype=np.int64) - int(present[0])  # the smallest id -> 1 when 0 is absent
            return lut.astype(np.uint16)[labels]
    ids, inverse = np.unique(labels, return_inverse=True)
    if ids.size and ids[0] < 0:
        raise ValueError("labels must be non-negative")
    has_bg = ids.size > 0 and ids[0] == 0
    n = ids.size - int(has_bg)
    if n > np.iinfo(np.uint16).max:
        raise ValueError(f"{n} labels do not fit in uint16")
    new = np.arange(ids.size, dtype=np.uint16) + (0 if has_bg else 1)
    return new[inverse].reshape(labels.shape)


def fill_holes_per_label(labels: np.ndarray) -> np.ndarray:
    """Labels HxW with background enclosed by a single label given that label's id.

    Only background pixels change: another label inside a hole is left as it is. A region
    enclosed by two touching labels together is not a hole of either, so it stays background.
    """
    labels = np.asarray(labels)
    out = labels.copy()
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        own = labels[sl] == i
        holes = ndi.binary_fill_holes(own) & (labels[sl] == 0)
        out[sl][holes] = i
    return out


def fill_small_holes_per_label(labels: np.ndarray, max_hole_px: float) -> np.ndarray:
    """Fill background holes smaller than ``max_hole_px`` enclosed by one instance with its id.

    A hole is a background component that does not touch the image border; it takes the id of the
    instance around it (the most common id on its rim).
    """
    bg = labels == 0
    holes, n = ndi.label(bg)
    if n == 0:
        return labels
    sizes = np.bincount(holes.ravel())
    border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
    small = (sizes < max_hole_px) & (np.arange(n + 1) > 0)
    small[border] = False
    if not small.any():
        return labels
    out = labels.copy()
    objects = ndi.find_objects(holes)
    for h in np.flatnonzero(small):
        sl = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in objects[h - 1])
        hole = holes[sl] == h
        rim = ndi.binary_dilation(hole) & ~hole
        ids = labels[sl][rim]
        ids = ids[ids > 0]
        if ids.size:
            out[sl][hole] = np.bincount(ids).argmax()
    return out


def match_nuclei_to_cells(cells: np.ndarray, nuclei: np.ndarray) -> np.ndarray:
    """uint16 HxW: every nucleus pixel inside a cell takes that cell's id; pixels outside cells drop.

    So nucleus and cell ids agree (the reference's final step); a cell holding two nuclei has
    both under its id, and a cell with none has no nucleus pixels.
    """
    cells, nuclei = np.asarray(cells), np.asarray(nuclei)
    if cells.shape != nuclei.shape:
        raise ValueError(f"cells {cells.shape} and nuclei {nuclei.shape} differ in shape")
    return np.where(nuclei > 0, cells, 0).astype(np.uint16)


# --------------------------------------------------------------------------- reference procedures


def _check_map(name: str, pred: np.ndarray) -> np.ndarray:
    pred = np.asarray(pred)
    if pred.ndim != 3 or pred.shape[2] != 3 or pred.dtype != np.uint8:
        raise ValueError(f"{name} must be a uint8 HxWx3 map, got {pred.dtype} {pred.shape}")
    return pred


def split_and_fill(labels: np.ndarray) -> np.ndarray:
    """The reference's hole filling: cut every label along its thick boundary (which also trims
    its outer rim by one pixel and opens a 2-px gap between touching labels), fill the holes of
    the foreground, and relabel 4-connected. Returns int32 labels."""
    fg = (labels > 0) & ~segmentation.find_boundaries(labels, mode="thick")
    return ndi.label(ndi.binary_fill_holes(fg), CROSS)[0]


def _nuclei_for_cells(nuclei_pred: np.ndarray, cell_pred: np.ndarray, cut: Cutoffs) -> np.ndarray:
    """Steps 1-4 of ``label_cell``: nucleus instances that seed the cells (int32 labels)."""
    n1 = nuclei_pred[..., 1].astype(np.int32)
    c1 = cell_pred[..., 1].astype(np.int32)
    n2 = nuclei_pred[..., 2] / 255.0
    not_border = 1 - (n1 + c1) / 255.0 > 0.05  # summed in int32: no uint8 wrap-around
    seeds = keep_large_components(n2 * not_border > 0.4 - 0.25, cut.min_seed_px, connectivity=1)
    markers = ndi.label(seeds, CROSS)[0]

    mask = fill_small_holes(n2 > 0.4, cut.max_hole_px)
    mask = keep_large_components(mask, cut.min_fragment_px)
    # A flat elevation: the seeds flood the mask at equal speed, leaving a 1-px line where they meet.
    nuclei = segmentation.watershed(mask, markers, mask=mask, watershed_line=True)
    nuclei = remove_small_labels(nuclei, cut.min_nucleus_px)
    return measure.label(nuclei, connectivity=2)


def label_cell(
    nuclei_pred: np.ndarray, cell_pred: np.ndarray, cutoffs: Cutoffs, regrow_px: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Cell and nucleus instances from the nuclei and cell networks' maps.

    Args:
        nuclei_pred, cell_pred: uint8 HxWx3 maps [0, border*255, body*255] of the same size.
        cutoffs: sizes in pixels of these maps.
        regrow_px: the reference's hole filling, run twice, trims a 1-px rim off every cell
            each time and leaves 2-px gaps between touching cells: nothing at full resolution,
            but 8 field pixels on maps at 1/4 scale. ``regrow_px`` > 0 grows the cells back by
            that many pixels (never into each other, only where the cell map says body or
            border) before the size filter. 0 (default) is the reference.
    Returns:
        (cells, nuclei), both uint16 HxW. Cells grow from nuclei, so a cell without a nucleus
        never appears; each nucleus carries the id of the cell holding it. (The reference
        returns the pair in the other order.)
    """
    nuclei_pred = _check_map("nuclei_pred", nuclei_pred)
    cell_pred = _check_map("cell_pred", cell_pred)
    if nuclei_pred.shape != cell_pred.shape:
        raise ValueError(f"nuclei_pred {nuclei_pred.shape} and cell_pred {cell_pred.shape} differ in shape")
    nuclei = _nuclei_for_cells(nuclei_pred, cell_pred, cutoffs)

    body = cell_pred[..., 2] / 255.0
    threshold = max(0.22, 0.5 * filters.threshold_otsu(body, nbins=256))
    elevation = -body  # cells flood downhill from their nuclei through bright body
    cells = segmentation.watershed(elevation, nuclei, mask=body > threshold)
    cells = remove_small_labels(cells, cutoffs.min_cell_px)
    radius = max(1, round(cutoffs.closing_radius_px))
    cells = morphology.closing(cells, morphology.disk(radius))  # on int32: ids never wrap
    cells = split_and_fill(cells)

    # Grow into pixels the cell network calls border, then tidy again.
    grow = (cells > 0) | (cell_pred[..., 1] / 255.0 > 0.05)
    cells = split_and_fill(segmentation.watershed(elevation, cells, mask=grow))
    cells = measure.label(cells > 0, connectivity=2)
    if regrow_px > 0:
        allowed = (body > threshold) | (cell_pred[..., 1] / 255.0 > 0.05)
        cells = np.where(allowed, segmentation.expand_labels(cells, regrow_px), 0)
    cells = relabel_sequential(remove_small_labels(cells, cutoffs.min_cell_px))

    inside = measure.label((cells > 0) & (nuclei > 0), connectivity=2)
    inside = remove_small_labels(inside, cutoffs.min_nucleus_px)
    return cells, match_nuclei_to_cells(cells, inside)


def label_nuclei(nuclei_pred: np.ndarray, cutoffs: Cutoffs) -> np.ndarray:
    """Nucleus instances from the nuclei network's map alone (no cell channels needed).

    Args:
        nuclei_pred: uint8 HxWx3 map [0, border*255, body*255].
        cutoffs: uses ``max_hole_px`` and ``min_nucleus_px``, in pixels of this map.
    Returns:
        uint16 HxW labels, numbered 1..n.
    """
    nuclei_pred = _check_map("nuclei_pred", nuclei_pred)
    border = nuclei_pred[..., 1] / 255.0 > 0.05
    body = nuclei_pred[..., 2] / 255.0
    seeds = np.where(border, 0.0, body) > 0.15
    # Erosion parts seeds that touch; outside the image counts as seed so edge nuclei keep theirs.
    seeds = ndi.binary_erosion(seeds, CROSS, border_value=1)
    markers = measure.label(seeds, connectivity=2)
    mask = fill_small_holes(body > 0.4, cutoffs.max_hole_px)
    nuclei = segmentation.watershed(mask, markers, mask=mask, watershed_line=True)
    nuclei = remove_small_labels(nuclei, cutoffs.min_nucleus_px)
    return relabel_sequential(measure.label(nuclei, connectivity=2))

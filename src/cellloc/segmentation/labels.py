"""Small pure functions on instance-label images (int HxW, 0 = background)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def remove_small_labels(labels: np.ndarray, min_px: float) -> np.ndarray:
    """Zero every instance whose area is strictly below ``min_px`` pixels."""
    if labels.max() == 0:
        return labels
    areas = np.bincount(labels.ravel())
    keep = areas >= min_px
    keep[0] = False
    return np.where(keep[labels], labels, 0).astype(labels.dtype)


def fill_holes_per_label(labels: np.ndarray, max_hole_px: float) -> np.ndarray:
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


def remove_edge_labels(labels: np.ndarray) -> np.ndarray:
    """Zero every instance touching the image border (edge-cut cells)."""
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return np.where(np.isin(labels, edge[edge > 0]), 0, labels).astype(labels.dtype)


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Renumber ids to 1..n in order of first appearance by id value; uint16 when it fits."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    lut = np.zeros(int(labels.max()) + 1, np.uint32)
    lut[ids] = np.arange(1, len(ids) + 1)
    out = lut[labels]
    return out.astype(np.uint16) if len(ids) < 65536 else out

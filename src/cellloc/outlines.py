"""Instance labels <-> polygon outlines along pixel edges (what ImageJ's wand traces).

A pixel ``(row y, column x)`` is the unit square with corners ``(x, y)`` and ``(x + 1, y + 1)``,
ImageJ's convention. An outline here runs along the edges between a label's pixels and the
rest, so filling it (pixels whose centre is inside, even-odd rule) gives back exactly the
label's pixels: nothing is lost at the rim, as it is with outlines through boundary pixel
centres (half a pixel all round; 8% of a 40-px nucleus). Pure functions on arrays.
"""

from __future__ import annotations

import numpy as np

# edge directions on screen (y down): +x, +y, -x, -y; a right turn is d + 1 (mod 4)
_STEP = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], np.int64)


def _edges(labels: np.ndarray) -> tuple[np.ndarray, ...]:
    """Every edge between a labelled pixel and a pixel of another id (or the border), directed so
    the label lies on its right: (label, start x, start y, direction), int64 arrays."""
    padded = np.pad(labels, 1)
    c = padded[1:-1, 1:-1]
    parts = []
    # neighbour across the edge, offset of the edge's start corner from the pixel's top-left, direction
    for nb, (ox, oy), d in ((padded[:-2, 1:-1], (0, 0), 0), (padded[1:-1, 2:], (1, 0), 1),
                            (padded[2:, 1:-1], (1, 1), 2), (padded[1:-1, :-2], (0, 1), 3)):
        ys, xs = np.nonzero((c > 0) & (c != nb))
        parts.append((c[ys, xs].astype(np.int64), xs + ox, ys + oy, np.full(xs.size, d)))
    return tuple(np.concatenate(a).astype(np.int64) for a in zip(*parts))


def label_outlines(labels: np.ndarray) -> dict[int, list[np.ndarray]]:
    """Per label id, its outer outlines: (N, 2) int32 arrays of (x, y) pixel corners, clockwise
    on screen, one vertex per corner (straight runs merged).

    ``labels``: int HxW, 0 = background. A label in several pieces has several outlines,
    largest first. Holes inside a label are not outlined (an ImageJ polygon has none): filling
    the outline fills them. Pixels of one label that touch only at a corner count as separate
    (4-connected), so a shape that closes on itself diagonally keeps its inside open.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
    lab, x, y, d = _edges(labels)
    if lab.size == 0:
        return {}
    width, height = labels.shape[1] + 1, labels.shape[0] + 1
    start = (lab * height + y) * width + x
    ex, ey = x + _STEP[d, 0], y + _STEP[d, 1]
    end = (lab * height + ey) * width + ex
    order = np.lexsort((d, start))
    sorted_start = start[order]
    first = np.searchsorted(sorted_start, end)
    nxt = order[first]
    # a corner where one label touches itself diagonally has two edges leaving it: take the
    # right turn, which keeps to the pixel just walked along (4-connectivity)
    two = (first + 1 < order.size) & (sorted_start[np.minimum(first + 1, order.size - 1)] == end)
    if two.any():
        other = order[np.minimum(first + 1, order.size - 1)]
        right = (d + 1) % 4
        pick_other = two & (d[nxt] != right) & (d[other] == right)
        nxt = np.where(pick_other, other, nxt)
    # walk the cycles of the successor map: edges in outline order, and each edge's outline
    succ = nxt.tolist()
    seen = bytearray(lab.size)
    walk: list[int] = []
    starts: list[int] = []
    for i in range(lab.size):
        if seen[i]:
            continue
        starts.append(len(walk))
        j = i
        while not seen[j]:
            seen[j] = 1
            walk.append(j)
            j = succ[j]
    walk_idx = np.asarray(walk)
    first_edge = np.asarray(starts, np.int64)
    last_edge = np.append(first_edge[1:], len(walk)) - 1
    cycle = np.repeat(np.arange(first_edge.size), last_edge - first_edge + 1)
    # shoelace per outline: clockwise on screen (positive) is an outer outline, holes run the other way
    area = np.bincount(cycle, weights=(x * ey - ex * y)[walk_idx].astype(np.float64)) / 2
    dw = d[walk_idx]
    prev = np.roll(dw, 1)
    prev[first_edge] = dw[last_edge]  # an outline's first edge follows its last
    corner = (dw != prev) & (area[cycle] > 0)  # a vertex where the direction changes
    out: dict[int, list[tuple[float, np.ndarray]]] = {}
    keep = walk_idx[corner]
    pts = np.stack([x[keep], y[keep]], axis=1).astype(np.int32)
    kept_cycle = cycle[corner]
    bounds = np.flatnonzero(np.diff(kept_cycle)) + 1
    for part, c in zip(np.split(pts, bounds), kept_cycle[np.append(0, bounds)] if len(keep) else []):
        out.setdefault(int(lab[walk_idx[first_edge[c]]]), []).append((float(area[c]), part))
    return {k: [p for _, p in sorted(v, key=lambda t: -t[0])] for k, v in sorted(out.items())}


def fill_outline(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bool HxW: the pixels whose centre lies inside the polygon ``points`` ((N, 2) x, y in
    pixel-corner coordinates, any float), even-odd rule, as ImageJ fills a polygon ROI."""
    from skimage.draw import polygon

    pts = np.asarray(points, np.float64)
    mask = np.zeros(shape, bool)
    if len(pts) >= 3:
        rr, cc = polygon(pts[:, 1] - 0.5, pts[:, 0] - 0.5, shape)  # skimage samples at integer (centre) positions
        mask[rr, cc] = True
    return mask

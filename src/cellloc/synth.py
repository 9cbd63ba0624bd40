"""Generated HPA-like fields with per-cell ground truth.

The real HPA data is 20k+ fields and gives labels only per image; this module draws fields in
the same 4-channel layout (red microtubules, green protein, blue nucleus, yellow ER) together
with what the competition never gave: every cell's mask, its nucleus and its own classes.

Geometry: nuclei centres are spread by dart throwing; each cell is a star-shaped region whose
radius varies with angle (a few random Fourier terms), and a pixel belongs to the cell whose
shape-normalised distance is smallest, so neighbouring cells touch along irregular borders.
Fields of any size show the same physical field of view (163.84 um), so everything scales with
``size / 2048``.

Labels: a field's protein has 1-3 localisation classes drawn from long-tailed frequencies;
each cell shows each of them with some probability (single-cell variability), and a cell that
shows none is Negative (18). The field's weak label is the union of its cells' labels.
By default the classes are drawn stratified (``class_draw``): field ``i`` takes the ``i``-th
point of a low-discrepancy sequence instead of an independent random number, so any first N
fields hold each class about N times its share. With independent draws a rare class (2-4 of 120
fields) is often missing or doubled, and the demo's score then moves with the class mix rather
than with the method. ``class_draw="balanced"`` stratifies every class, not only the first.

Everything is a pure function of ``(config, field index)``: fields can be drawn in parallel
and in any order and come out identical.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy import ndimage

from .classes import HPA_SINGLE_CELL

NEGATIVE = 18
SPINDLE = 11

# Relative frequency of each class as a field's protein location; long-tailed like HPA's
# single-cell training labels (nucleoplasm and cytosol common, spindle and aggresome rare).
HPA_LIKE_CLASS_WEIGHTS: tuple[float, ...] = (
    0.26, 0.03, 0.07, 0.04, 0.05, 0.06, 0.04, 0.07, 0.04, 0.03,
    0.035, 0.012, 0.05, 0.09, 0.07, 0.012, 0.18, 0.07, 0.03,
)


@dataclass
class SynthConfig:
    """How fields are drawn. Defaults give small, fast fields for the demo and tests."""

    size: int = 512
    bit_depth: int = 8
    seed: int = 0
    cells_per_field: tuple[int, int] = (10, 22)
    mean_cell_radius: float = 0.085  # fraction of the field width
    class_weights: tuple[float, ...] = HPA_LIKE_CLASS_WEIGHTS
    second_class_p: float = 0.45
    third_class_p: float = 0.12
    keep_class_p: tuple[float, float] = (0.55, 0.95)  # per field: chance a cell shows each class
    mitotic_p: float = 0.04
    class_draw: str = "stratified"  # or "balanced" (every class slot), "random" (independent draws)
    noise: float = 1.0  # multiplies shot and read noise
    blur: float = 1.0  # multiplies optical blur
    illumination: float = 0.3  # amplitude of uneven illumination
    background: float = 0.03

    def __post_init__(self) -> None:
        if self.size < 128:
            raise ValueError(f"size {self.size} is too small (>= 128)")
        if self.bit_depth not in (8, 16):
            raise ValueError(f"bit_depth must be 8 or 16, not {self.bit_depth}")
        if len(self.class_weights) != HPA_SINGLE_CELL.num_classes:
            raise ValueError(f"class_weights needs {HPA_SINGLE_CELL.num_classes} values, got {len(self.class_weights)}")
        if min(self.class_weights) < 0 or sum(self.class_weights) <= 0:
            raise ValueError("class_weights must be non-negative with a positive sum")
        if self.class_draw not in CLASS_DRAWS:
            raise ValueError(f"class_draw must be one of {', '.join(CLASS_DRAWS)}, not {self.class_draw!r}")
        lo, hi = self.cells_per_field
        if not 1 <= lo <= hi:
            raise ValueError(f"cells_per_field must be 1 <= min <= max, got {self.cells_per_field}")


@dataclass
class SynthField:
    """One generated field: image HxWx4 (uint8/uint16; red, green, blue, yellow), truth labels."""

    image: np.ndarray
    cell_labels: np.ndarray  # uint16 HxW, 0 = background
    nucleus_labels: np.ndarray  # uint16 HxW, nucleus id == its cell's id
    cell_classes: dict[int, list[int]] = field(default_factory=dict)

    @property
    def image_classes(self) -> list[int]:
        return sorted(set(c for cls in self.cell_classes.values() for c in cls))


# --------------------------------------------------------------------------- primitives


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean, unit-variance noise with features about ``scale`` pixels wide (float32 HxW)."""
    h, w = shape
    sh, sw = max(2, int(np.ceil(h / max(scale, 1.0))) + 2), max(2, int(np.ceil(w / max(scale, 1.0))) + 2)
    small = rng.standard_normal((sh, sw)).astype(np.float32)
    big = cv2.resize(small, (int(sw * scale), int(sh * scale)), interpolation=cv2.INTER_CUBIC)[:h, :w]
    if big.shape != (h, w):
        big = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    big -= big.mean()
    return big / (big.std() + 1e-6)


def radial_profile(rng: np.random.Generator, roughness: float, n_terms: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Random Fourier amplitudes and phases for a star-shaped outline r(theta)."""
    k = np.arange(2, 2 + n_terms)
    amp = rng.uniform(0, roughness, n_terms) / k**0.8
    phase = rng.uniform(0, 2 * np.pi, n_terms)
    return amp, phase


def shape_radius(theta: np.ndarray, base: float, elong: float, angle: float, amp: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Outline radius at angles ``theta`` for an elongated, Fourier-perturbed ellipse."""
    t = theta - angle
    ellipse = base / np.sqrt((np.cos(t) / elong) ** 2 + (np.sin(t) * elong) ** 2)
    wobble = 1.0 + sum(a * np.cos((i + 2) * theta + p) for i, (a, p) in enumerate(zip(amp, phase)))
    return ellipse * np.maximum(wobble, 0.35)


def outline_distance(dy: np.ndarray, dx: np.ndarray, base: float, elong: float, angle: float, amp: np.ndarray,
                     phase: np.ndarray) -> np.ndarray:
    """Distance from the centre over the outline's radius (:func:`shape_radius`) at offsets ``dy, dx`` (< 1: inside).

    The outline is only evaluated where a point could lie inside it: no farther than the ellipse's long
    radius times the largest wobble; everywhere else the ratio is inf. That is most of a cell's bounding
    square, and the five cosines per pixel were a third of generating a field.
    """
    dist = np.sqrt(dy**2 + dx**2)
    reach = base * max(elong, 1.0 / elong) * (1.0 + float(np.abs(amp).sum()))
    near = dist < reach
    out = np.full(dist.shape, np.inf)
    out[near] = dist[near] / shape_radius(np.arctan2(dy[near], dx[near]), base, elong, angle, amp, phase)
    return out


def disk(img: np.ndarray, cy: float, cx: float, r: float, value: float, sigma: float = 0.0) -> None:
    """Add a soft disk in place (float image); used for spots, blobs and dots."""
    r = max(r, 0.6)
    pad = int(np.ceil(r + 3 * sigma + 2))
    y0, y1 = max(0, int(cy) - pad), min(img.shape[0], int(cy) + pad + 1)
    x0, x1 = max(0, int(cx) - pad), min(img.shape[1], int(cx) + pad + 1)
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    img[y0:y1, x0:x1] += value * np.clip(r + 0.5 - d, 0, 1)


def draw_curve(canvas: np.ndarray, pts: np.ndarray, value: float, thickness: int) -> None:
    """Anti-aliased polyline into a float canvas (in place)."""
    tmp = np.zeros(canvas.shape, np.uint8)
    cv2.polylines(tmp, [np.round(pts * 4).astype(np.int32)], False, 255, max(1, thickness), cv2.LINE_AA, shift=2)
    canvas += tmp.astype(np.float32) * (value / 255.0)


def random_walk(rng: np.random.Generator, start: np.ndarray, direction: float, steps: int, step: float, turn: float) -> np.ndarray:
    """A smooth random walk (steps x 2, as x, y) used for filaments and mitochondria."""
    ang = direction + np.cumsum(rng.normal(0, turn, steps))
    d = np.stack([np.cos(ang), np.sin(ang)], 1) * step
    return start[None, :] + np.cumsum(d, 0)


# --------------------------------------------------------------------------- geometry


@dataclass
class CellGeom:
    cy: float
    cx: float
    radius: float
    elong: float
    angle: float
    amp: np.ndarray
    phase: np.ndarray
    ny: float
    nx: float
    n_radius: float
    n_elong: float
    n_angle: float
    n_amp: np.ndarray
    n_phase: np.ndarray
    mitotic: bool = False


def place_cells(rng: np.random.Generator, cfg: SynthConfig, size: int) -> list[CellGeom]:
    """Dart-throw cell centres (some near the border, so cells get cut) and draw their shapes."""
    target = int(rng.integers(cfg.cells_per_field[0], cfg.cells_per_field[1] + 1))
    r0 = cfg.mean_cell_radius * size
    min_dist = 1.05 * r0
    centres: list[tuple[float, float]] = []
    tries = 0
    while len(centres) < target and tries < target * 60:
        tries += 1
        c = rng.uniform(0.03 * size, 0.97 * size, 2)
        if all((c[0] - y) ** 2 + (c[1] - x) ** 2 >= min_dist**2 for y, x in centres):
            centres.append((float(c[0]), float(c[1])))
    cells = []
    for cy, cx in centres:
        mitotic = bool(rng.random() < cfg.mitotic_p)
        radius = r0 * rng.uniform(0.85, 1.45)
        elong = rng.uniform(1.0, 1.6)
        amp, phase = radial_profile(rng, 0.35)
        n_radius = radius * rng.uniform(0.36, 0.5)
        n_elong = rng.uniform(1.0, 1.35)
        n_amp, n_phase = radial_profile(rng, 0.08)
        off = rng.normal(0, 0.08 * radius, 2)
        cells.append(
            CellGeom(cy, cx, radius, elong, rng.uniform(0, np.pi), amp, phase, cy + off[0], cx + off[1],
                     n_radius, n_elong, rng.uniform(0, np.pi), n_amp, n_phase, mitotic)
        )
    return cells


def make_round(c: CellGeom, rng: np.random.Generator) -> None:
    """Turn a cell into a rounded mitotic cell with condensed chromatin (in place)."""
    c.mitotic = True
    c.radius *= 0.62
    c.elong = rng.uniform(1.0, 1.1)
    c.amp = c.amp * 0.15
    c.ny, c.nx = c.cy, c.cx
    c.n_radius = c.radius * 0.42
    c.n_elong = rng.uniform(1.8, 2.4)  # metaphase plate seen edge-on
    c.n_amp = c.n_amp * 0.5


def round_mitotic(rng: np.random.Generator, cells: list[CellGeom], spindle: bool) -> None:
    """Round up the dividing cells (in place). A spindle protein needs them: then ~30% divide, at least one."""
    if spindle:
        for c in cells:
            if rng.random() < 0.3:
                make_round(c, rng)
        if not any(c.mitotic for c in cells) and cells:
            make_round(cells[int(rng.integers(len(cells)))], rng)
    else:
        for c in cells:
            if c.mitotic:
                make_round(c, rng)


def rasterise(cells: list[CellGeom], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Instance labels (uint16) for cells and nuclei; a pixel goes to the cell nearest in its own metric."""
    best = np.full((size, size), np.inf, np.float32)
    owner = np.zeros((size, size), np.uint16)
    nd_all = np.full((size, size), np.inf, np.float32)
    for i, c in enumerate(cells, start=1):
        rmax = c.radius * c.elong * 1.6 + 2
        y0, y1 = max(0, int(c.cy - rmax)), min(size, int(c.cy + rmax) + 1)
        x0, x1 = max(0, int(c.cx - rmax)), min(size, int(c.cx + rmax) + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        d = outline_distance(yy - c.cy, xx - c.cx, c.radius, c.elong, c.angle, c.amp, c.phase)
        win_best = best[y0:y1, x0:x1]
        take = (d < 1.0) & (d < win_best)
        win_best[take] = d[take]
        owner[y0:y1, x0:x1][take] = i
        nd = outline_distance(yy - c.ny, xx - c.nx, c.n_radius, c.n_elong, c.n_angle, c.n_amp, c.n_phase)
        win_nd = nd_all[y0:y1, x0:x1]
        ntake = (nd < 1.0) & (nd < win_nd)
        win_nd[ntake] = nd[ntake]
    nuclei = np.where((nd_all < 1.0), owner, 0).astype(np.uint16)
    # A nucleus keeps only the part inside its own cell (owner id == nucleus's cell id by construction).
    return owner, nuclei


def drop_fragments(cells: np.ndarray, nuclei: np.ndarray, min_frac: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Remove border-cut slivers and cells whose nucleus is gone; relabel 1..n in place order."""
    ids, areas = np.unique(cells[cells > 0], return_counts=True)
    if len(ids) == 0:
        return cells, nuclei
    n_ids, n_areas = np.unique(nuclei[nuclei > 0], return_counts=True)
    n_area = dict(zip(n_ids.tolist(), n_areas.tolist()))
    med = np.median(areas)
    lut = np.zeros(int(cells.max()) + 1, np.uint16)
    k = 0
    for i, a in zip(ids.tolist(), areas.tolist()):
        if a >= min_frac * med and n_area.get(i, 0) >= 0.02 * a:
            k += 1
            lut[i] = k
    return lut[cells], lut[nuclei]


def label_cells(cells: list[CellGeom], size: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Rasterise ``cells`` and drop border fragments.

    Returns uint16 cell and nucleus labels (ids 1..n) and, for each kept id ``k``, the index in
    ``cells`` of its geometry at ``kept[k - 1]``, so per-cell draws made before rasterising stay
    aligned with the renumbered ids.
    """
    labels, nuclei = rasterise(cells, size)
    labels2, nuclei2 = drop_fragments(labels, nuclei)
    mapping = {}
    for old in range(1, len(cells) + 1):
        hit = labels2[labels == old]
        if hit.size and hit[0] > 0:  # 0: the cell was dropped as a fragment
            mapping[int(hit[0])] = old - 1
    kept = [mapping[k] for k in sorted(mapping)]
    return labels2.astype(np.uint16), nuclei2.astype(np.uint16), kept


# --------------------------------------------------------------------------- labels


# Steps of the additive recurrences behind the stratified draw: x_i = frac(offset + i * step)
# with irrational steps (the golden ratio's fraction first) spreads any run of consecutive i
# evenly over [0, 1); one sequence each for the first class, whether a second class follows,
# and which.
_STRATA_STEPS = (0.6180339887498949, 0.4142135623730951, 0.7320508075688772)


def _pick(weights: np.ndarray, u: float) -> int:
    """The class whose slice of the cumulative weights holds ``u`` in [0, 1)."""
    cdf = np.cumsum(weights)
    k = int(np.searchsorted(cdf, u * cdf[-1], side="right"))
    return min(k, int(np.flatnonzero(weights)[-1]))  # u * total rounded up to total: the last class with weight


def stratified_numbers(cfg: SynthConfig, index: int) -> np.ndarray:
    """Three numbers in [0, 1) behind field ``index``'s classes with ``class_draw="stratified"``:
    the ``index``-th points of three sequences whose offsets depend on the seed only (so fields
    stay a pure function of config and index)."""
    offsets = np.random.default_rng([cfg.seed, 0x5EED]).random(3)
    return (offsets + index * np.asarray(_STRATA_STEPS)) % 1.0


def _others(weights: np.ndarray, chosen: list[int]) -> np.ndarray:
    """Weights of a further class: not one already chosen, never Negative."""
    w = weights.copy()
    w[chosen] = 0
    w[NEGATIVE] = 0
    return w


def _random_classes(rng: np.random.Generator, cfg: SynthConfig, index: int) -> list[int]:
    """Every choice the field's own random draw, in the order of the versions before stratified
    draws, so their fields come out bit-identical."""
    w = np.asarray(cfg.class_weights, float)
    first = int(rng.choice(len(w), p=w / w.sum()))
    if first == NEGATIVE:
        return [NEGATIVE]
    chosen = [first]
    for p in (cfg.second_class_p, cfg.third_class_p):
        if rng.random() < p:
            w2 = _others(w, chosen)
            chosen.append(int(rng.choice(len(w2), p=w2 / w2.sum())))
    return sorted(chosen)


def _stratified_classes(rng: np.random.Generator, cfg: SynthConfig, index: int) -> list[int]:
    """The first class, whether a second follows and which from :func:`stratified_numbers`; the
    third (whether, then which) from the field's own random numbers."""
    w = np.asarray(cfg.class_weights, float)
    u_first, u_second, u_which = stratified_numbers(cfg, index)
    first = _pick(w, u_first)
    if first == NEGATIVE:
        return [NEGATIVE]
    chosen = [first]
    if u_second < cfg.second_class_p:
        chosen.append(_pick(_others(w, chosen), u_which))
    has_third, which = rng.random(), rng.random()
    if has_third < cfg.third_class_p:
        chosen.append(_pick(_others(w, chosen), which))
    return sorted(chosen)


# Steps of the "balanced" draw's sequences: per field, whether it is Negative, has a second class,
# has a third; and one sequence over the class slots of all fields (the golden ratio's fraction,
# the most even in one dimension). Chosen so that no step is a rational combination of another.
_SLOT_FIELD_STEPS = (0.4142135623730951, 0.7320508075688772, 0.6457513110645907)
_SLOT_CLASS_STEP = 0.6180339887498949


def _slot_offsets(cfg: SynthConfig) -> np.ndarray:
    """The four offsets of the "balanced" draw's sequences (the three per-field ones, then the slots'),
    set by the seed only."""
    return np.random.default_rng([cfg.seed, 0x5107]).random(4)


def slot_counts(cfg: SynthConfig, fields: int) -> np.ndarray:
    """How many class slots each of the first ``fields`` fields has in the "balanced" draw: 0 for
    a Negative field, else 1 plus a second and a third with their probabilities, each decided by
    the field's point of its own sequence (a pure function of the seed and the index)."""
    offsets = _slot_offsets(cfg)
    i = np.arange(fields)
    u_neg, u_second, u_third = (offsets[:3, None] + np.multiply.outer(np.asarray(_SLOT_FIELD_STEPS), i)) % 1.0
    w = np.asarray(cfg.class_weights, float)
    negative = u_neg < w[NEGATIVE] / w.sum()
    return np.where(negative, 0, 1 + (u_second < cfg.second_class_p) + (u_third < cfg.third_class_p))


def _balanced_classes(rng: np.random.Generator, cfg: SynthConfig, index: int) -> list[int]:
    """Every class slot of every field from one low-discrepancy sequence, numbered across fields.

    The stratified draw spreads only the first class evenly: the second is picked among the
    classes the first left, so how many fields hold a mid-frequency class still varies by a
    third between seeds. Here slot ``j`` (counted over all fields before this one) takes the
    ``j``-th point of one sequence, so any first N fields hold each class within about one of
    its share of their slots. A slot that repeats a class of its field takes the same point among
    the classes the field lacks, so a field keeps its number of classes.
    Fields stay a pure function of (config, index): the slots before field ``index`` are counted,
    not drawn (``rng`` is not used)."""
    n = slot_counts(cfg, index + 1)
    if n[index] == 0:
        return [NEGATIVE]
    w = np.asarray(cfg.class_weights, float).copy()
    w[NEGATIVE] = 0
    offset = _slot_offsets(cfg)[3]
    first = int(n[:index].sum())
    chosen: list[int] = []
    for j in range(first, first + int(n[index])):
        u = (offset + j * _SLOT_CLASS_STEP) % 1.0
        k = _pick(w, u)
        if k in chosen:  # the same point among the classes the field lacks
            others = _others(w, chosen)
            if not others.any():
                break
            k = _pick(others, u)
        chosen.append(k)
    return sorted(chosen)


# SynthConfig.class_draw -> how a field's classes are drawn
CLASS_DRAWS: dict[str, Callable[[np.random.Generator, SynthConfig, int], list[int]]] = {
    "balanced": _balanced_classes,
    "stratified": _stratified_classes,
    "random": _random_classes,
}


def draw_field_classes(rng: np.random.Generator, cfg: SynthConfig, index: int = 0) -> list[int]:
    """The field protein's classes: 1-3 distinct ids (Negative alone if drawn first), drawn the
    way ``cfg.class_draw`` names (:data:`CLASS_DRAWS`)."""
    return CLASS_DRAWS[cfg.class_draw](rng, cfg, index)


def assign_cell_classes(rng: np.random.Generator, cfg: SynthConfig, field_classes: list[int], cells: list[CellGeom]) -> list[list[int]]:
    """Each cell shows each field class with a per-field probability; none shown -> Negative."""
    if field_classes == [NEGATIVE]:
        return [[NEGATIVE] for _ in cells]
    keep = rng.uniform(*cfg.keep_class_p)
    out = []
    for c in cells:
        cls = [k for k in field_classes if k != SPINDLE and rng.random() < keep]
        if SPINDLE in field_classes and c.mitotic:
            cls.append(SPINDLE)
        out.append(sorted(cls) if cls else [NEGATIVE])
    if all(x == [NEGATIVE] for x in out) and cells:  # the protein shows in at least one cell
        j = int(rng.integers(len(cells)))
        out[j] = sorted(k for k in field_classes if k != SPINDLE or cells[j].mitotic) or [NEGATIVE]
    return out


# --------------------------------------------------------------------------- channels


@dataclass
class CellPatch:
    """A cell's window in the field with its masks, for drawing its stains."""

    y0: int
    x0: int
    cell: np.ndarray  # bool hxw
    nucleus: np.ndarray  # bool hxw
    cyto: np.ndarray
    dist_edge: np.ndarray  # float, px to the cell's border (inside)
    nuc_dist: np.ndarray  # float, px to the nucleus border (inside)
    geom: CellGeom
    others: np.ndarray | None = None  # bool hxw: pixels of neighbouring cells (for junctions)

    def local(self, y: float, x: float) -> tuple[float, float]:
        return y - self.y0, x - self.x0

    def sample_in(self, rng: np.random.Generator, mask: np.ndarray, n: int) -> np.ndarray:
        ys, xs = np.nonzero(mask)
        if len(ys) == 0:
            return np.zeros((0, 2))
        idx = rng.integers(0, len(ys), n)
        return np.stack([ys[idx], xs[idx]], 1).astype(np.float32) + rng.uniform(-0.5, 0.5, (n, 2))


def cell_patches(cells: list[CellGeom], labels: np.ndarray, nuclei: np.ndarray) -> dict[int, CellPatch]:
    """Windows around each surviving cell with the masks and distance maps the stains need."""
    out = {}
    objs = ndimage.find_objects(labels)
    for i, sl in enumerate(objs, start=1):
        if sl is None:
            continue
        ys, xs = sl
        y0, y1 = max(0, ys.start - 2), min(labels.shape[0], ys.stop + 2)
        x0, x1 = max(0, xs.start - 2), min(labels.shape[1], xs.stop + 2)
        cell = labels[y0:y1, x0:x1] == i
        nuc = nuclei[y0:y1, x0:x1] == i
        dist_edge = cv2.distanceTransform(cell.astype(np.uint8), cv2.DIST_L2, 3)
        nuc_dist = cv2.distanceTransform(nuc.astype(np.uint8), cv2.DIST_L2, 3)
        others = (labels[y0:y1, x0:x1] > 0) & ~cell
        out[i] = CellPatch(y0, x0, cell, nuc, cell & ~nuc, dist_edge, nuc_dist, cells[i - 1], others)
    return out


def nucleoli_centres(rng: np.random.Generator, p: CellPatch) -> list[tuple[float, float, float]]:
    """2-4 nucleoli (y, x, radius) inside the nucleus, away from its rim; fixed per cell."""
    r_n = p.geom.n_radius
    inner = p.nuc_dist > 0.3 * r_n
    pts = p.sample_in(rng, inner, int(rng.integers(2, 5)))
    return [(float(y), float(x), float(r_n * rng.uniform(0.12, 0.2))) for y, x in pts]


def draw_filaments(rng, p: CellPatch, n: int, step: float, turn: float, radial: bool, thickness: int) -> np.ndarray:
    """Filaments in the cell window: radial from the nucleus (microtubules) or wavy (intermediate)."""
    canvas = np.zeros(p.cell.shape, np.float32)
    cy, cx = p.local(p.geom.ny, p.geom.nx)
    r = p.geom.radius
    for _ in range(n):
        if radial:
            a = rng.uniform(0, 2 * np.pi)
            start = np.array([cx + np.cos(a) * p.geom.n_radius * 0.8, cy + np.sin(a) * p.geom.n_radius * 0.8])
            pts = random_walk(rng, start, a, 24, r / 16, turn)
        else:
            s = p.sample_in(rng, p.cyto, 1)
            if len(s) == 0:
                continue
            start = s[0, ::-1].copy()
            a = np.arctan2(start[1] - cy, start[0] - cx) + np.pi / 2 + rng.normal(0, 0.5)
            pts = random_walk(rng, start, a, 30, step, turn)
        draw_curve(canvas, pts, rng.uniform(0.5, 1.0), thickness)
    return canvas * p.cyto


def reticulum(rng, p: CellPatch, scale: float) -> np.ndarray:
    """ER-like network: the zero crossings of smooth noise, denser near the nucleus."""
    nz = smooth_noise(rng, p.cell.shape, scale)
    net = np.clip(1.0 - np.abs(nz) / 0.45, 0, 1) ** 1.5
    dist_from_nuc = cv2.distanceTransform((~p.nucleus).astype(np.uint8), cv2.DIST_L2, 3)
    near = np.exp(-dist_from_nuc / (0.6 * p.geom.radius))
    return net * (0.35 + 0.65 * near) * p.cyto


PatternFn = Callable[..., np.ndarray]

# Protein patterns by name: ``fn(rng, patch, nucleoli, er, mt, px) -> float hxw`` (about 0..1) in the
# cell's window. A task maps its class ids to these names (SINGLE_CELL_PATTERNS, the HPA-2018
# generator's table), so one drawing serves every label set.
PATTERNS: dict[str, PatternFn] = {}


def pattern(name: str) -> Callable[[PatternFn], PatternFn]:
    """Register a protein pattern under ``name``."""

    def register(fn: PatternFn) -> PatternFn:
        PATTERNS[name] = fn
        return fn

    return register


@pattern("nucleoplasm")
def _nucleoplasm(rng, p: CellPatch, nucleoli, er, mt, px):
    h, w = p.cell.shape
    g = p.nucleus.astype(np.float32) * (0.75 + 0.25 * smooth_noise(rng, (h, w), 4 * px))
    for y, x, rr in nucleoli:
        disk(g, y, x, rr, -0.7)
    return g


@pattern("nuclear_membrane")
def _nuclear_membrane(rng, p: CellPatch, nucleoli, er, mt, px):
    return ((p.nuc_dist > 0) & (p.nuc_dist < max(1.5, 0.08 * p.geom.n_radius))).astype(np.float32)


@pattern("nucleoli")
def _nucleoli(rng, p: CellPatch, nucleoli, er, mt, px):
    g = np.zeros(p.cell.shape, np.float32)
    for y, x, rr in nucleoli:
        disk(g, y, x, rr, 1.0, 0)
    return g


@pattern("fibrillar_center")
def _fibrillar_center(rng, p: CellPatch, nucleoli, er, mt, px):
    """Small dots inside the nucleoli."""
    g = np.zeros(p.cell.shape, np.float32)
    for y, x, rr in nucleoli:
        for _ in range(int(rng.integers(2, 6))):
            oy, ox = rng.normal(0, rr * 0.45, 2)
            disk(g, y + oy, x + ox, max(0.8, rr * 0.22), 1.0)
    return g


@pattern("speckles")
def _speckles(rng, p: CellPatch, nucleoli, er, mt, px):
    """Many irregular spots over a faint nucleoplasm."""
    g = np.zeros(p.cell.shape, np.float32)
    r_n = p.geom.n_radius
    for y, x in p.sample_in(rng, p.nuc_dist > 0.1 * r_n, int(rng.integers(15, 30))):
        disk(g, y, x, r_n * rng.uniform(0.05, 0.1), rng.uniform(0.6, 1.0))
    g += 0.15 * p.nucleus.astype(np.float32)
    return g


@pattern("nuclear_bodies")
def _nuclear_bodies(rng, p: CellPatch, nucleoli, er, mt, px):
    """A few bright round dots in the nucleus."""
    g = np.zeros(p.cell.shape, np.float32)
    r_n = p.geom.n_radius
    for y, x in p.sample_in(rng, p.nuc_dist > 0.15 * r_n, int(rng.integers(2, 7))):
        disk(g, y, x, max(1.0, r_n * 0.07), 1.0)
    return g


@pattern("er")
def _er(rng, p: CellPatch, nucleoli, er, mt, px):
    return er / (er.max() + 1e-6)


@pattern("golgi")
def _golgi(rng, p: CellPatch, nucleoli, er, mt, px):
    """A perinuclear cluster on one side of the nucleus."""
    g = np.zeros(p.cell.shape, np.float32)
    r_n = p.geom.n_radius
    ncy, ncx = p.local(p.geom.ny, p.geom.nx)
    a = rng.uniform(0, 2 * np.pi)
    gy, gx = ncy + np.sin(a) * r_n * 1.25, ncx + np.cos(a) * r_n * 1.25
    for _ in range(int(rng.integers(4, 9))):
        oy, ox = rng.normal(0, r_n * 0.22, 2)
        disk(g, gy + oy, gx + ox, r_n * rng.uniform(0.08, 0.18), rng.uniform(0.6, 1.0))
    g *= p.cyto.astype(np.float32)
    return g


@pattern("intermediate_filaments")
def _intermediate_filaments(rng, p: CellPatch, nucleoli, er, mt, px):
    """Long wavy fibres, a cage around the nucleus."""
    return draw_filaments(rng, p, int(rng.integers(10, 18)), p.geom.radius / 14, 0.18, False, max(1, int(round(1.2 * px))))


@pattern("actin")
def _actin(rng, p: CellPatch, nucleoli, er, mt, px):
    """Cortex plus parallel stress fibres."""
    r = p.geom.radius
    ncy, ncx = p.local(p.geom.ny, p.geom.nx)
    g = ((p.dist_edge > 0) & (p.dist_edge < max(2.0, 0.07 * r))).astype(np.float32)
    a = rng.uniform(0, np.pi)
    for _ in range(int(rng.integers(3, 7))):
        off = rng.uniform(-0.7, 0.7) * r
        cy, cx = ncy + np.cos(a) * off, ncx - np.sin(a) * off
        d = np.array([np.cos(a), np.sin(a)]) * 1.5 * r
        pts = np.array([[cx - d[0], cy - d[1]], [cx + d[0], cy + d[1]]])
        draw_curve(g, pts, 0.7, max(1, int(round(1.5 * px))))
    g *= p.cell
    return g


@pattern("microtubules")
def _microtubules(rng, p: CellPatch, nucleoli, er, mt, px):
    return mt / (mt.max() + 1e-6)


@pattern("spindle")
def _spindle(rng, p: CellPatch, nucleoli, er, mt, px):
    """Two poles with fibres to the metaphase plate."""
    g = np.zeros(p.cell.shape, np.float32)
    r_n = p.geom.n_radius
    ncy, ncx = p.local(p.geom.ny, p.geom.nx)
    ang = p.geom.n_angle + np.pi / 2
    pole = np.array([np.cos(ang), np.sin(ang)]) * r_n * 1.3
    for s in (-1, 1):
        py, px_ = ncy + s * pole[1], ncx + s * pole[0]
        for t in np.linspace(-1, 1, 9):
            ey = ncy + np.sin(ang - np.pi / 2) * t * r_n * 0.9
            ex = ncx + np.cos(ang - np.pi / 2) * t * r_n * 0.9
            draw_curve(g, np.array([[px_, py], [ex, ey]]), 0.8, max(1, int(round(px))))
        disk(g, py, px_, max(1.0, 0.08 * r_n), 1.0)
    g *= p.cell
    return g


@pattern("centrosome")
def _centrosome(rng, p: CellPatch, nucleoli, er, mt, px):
    """1-2 small dots beside the nucleus."""
    g = np.zeros(p.cell.shape, np.float32)
    r_n = p.geom.n_radius
    ncy, ncx = p.local(p.geom.ny, p.geom.nx)
    a = rng.uniform(0, 2 * np.pi)
    for j in range(int(rng.integers(1, 3))):
        disk(g, ncy + np.sin(a) * r_n * 1.15 + j * 2 * px, ncx + np.cos(a) * r_n * 1.15, max(1.0, 0.06 * r_n), 1.0)
    g *= p.cell
    return g


@pattern("plasma_membrane")
def _plasma_membrane(rng, p: CellPatch, nucleoli, er, mt, px):
    return ((p.dist_edge > 0) & (p.dist_edge < max(1.5, 0.045 * p.geom.radius))).astype(np.float32)


@pattern("mitochondria")
def _mitochondria(rng, p: CellPatch, nucleoli, er, mt, px):
    """Short worms in the cytoplasm."""
    g = np.zeros(p.cell.shape, np.float32)
    r = p.geom.radius
    for y, x in p.sample_in(rng, p.cyto, int(rng.integers(40, 80))):
        pts = random_walk(rng, np.array([x, y]), rng.uniform(0, 2 * np.pi), 6, r / 40, 0.5)
        draw_curve(g, pts, rng.uniform(0.5, 1.0), max(1, int(round(1.3 * px))))
    g *= p.cyto.astype(np.float32)
    return g


@pattern("aggresome")
def _aggresome(rng, p: CellPatch, nucleoli, er, mt, px):
    """One bright juxtanuclear blob."""
    g = np.zeros(p.cell.shape, np.float32)
    r_n = p.geom.n_radius
    ncy, ncx = p.local(p.geom.ny, p.geom.nx)
    a = rng.uniform(0, 2 * np.pi)
    disk(g, ncy + np.sin(a) * r_n * 1.3, ncx + np.cos(a) * r_n * 1.3, r_n * rng.uniform(0.22, 0.32), 1.0)
    g *= p.cell
    return g


@pattern("cytosol")
def _cytosol(rng, p: CellPatch, nucleoli, er, mt, px):
    """Diffuse fill of the cytoplasm."""
    return p.cyto.astype(np.float32) * (0.65 + 0.15 * smooth_noise(rng, p.cell.shape, 6 * px))


@pattern("vesicles")
def _vesicles(rng, p: CellPatch, nucleoli, er, mt, px):
    """Many small puncta over the cytoplasm."""
    g = np.zeros(p.cell.shape, np.float32)
    r = p.geom.radius
    for y, x in p.sample_in(rng, p.cyto, int(rng.integers(25, 60))):
        disk(g, y, x, max(0.8, r * rng.uniform(0.015, 0.03)), rng.uniform(0.5, 1.0))
    g *= p.cyto.astype(np.float32)
    return g


# The single-cell label set's class ids -> pattern names (None: Negative, no specific stain).
SINGLE_CELL_PATTERNS: tuple[str | None, ...] = (
    "nucleoplasm", "nuclear_membrane", "nucleoli", "fibrillar_center", "speckles", "nuclear_bodies",
    "er", "golgi", "intermediate_filaments", "actin", "microtubules", "spindle", "centrosome",
    "plasma_membrane", "mitochondria", "aggresome", "cytosol", "vesicles", None,
)


def green_pattern(rng: np.random.Generator, name: str, p: CellPatch, nucleoli, er: np.ndarray, mt: np.ndarray, px: float) -> np.ndarray:
    """Intensity of the protein pattern ``name`` (a key of :data:`PATTERNS`) in the cell window (float, >= 0)."""
    return np.clip(PATTERNS[name](rng, p, nucleoli, er, mt, px), 0, None)


def render_channels(rng: np.random.Generator, cfg: SynthConfig, size: int, patches: dict[int, CellPatch],
                    classes: dict[int, list[int]], patterns: Sequence[str | None] = SINGLE_CELL_PATTERNS) -> np.ndarray:
    """Float HxWx4 (red, green, blue, yellow) intensities before optics and noise.

    ``patterns[k]`` names the protein pattern drawn for class id ``k`` (None: no stain).
    """
    px = size / 2048 * 4  # "pixels per nominal unit": 1 at 512 px, 4 at 2048 px
    img = np.zeros((size, size, 4), np.float32)
    for i, p in patches.items():
        h, w = p.cell.shape
        win = img[p.y0:p.y0 + h, p.x0:p.x0 + w]
        nucleoli = nucleoli_centres(rng, p)
        # blue: DAPI with chromatin texture, dimmer nucleoli, bright condensed mitotic chromatin
        blue = p.nucleus * (0.75 + 0.2 * smooth_noise(rng, (h, w), 3 * px)) * rng.uniform(0.5, 1.0)
        for y, x, rr in nucleoli:
            disk(blue, y, x, rr, -0.3)
        if p.geom.mitotic:
            blue *= 1.6
        mt = draw_filaments(rng, p, int(rng.integers(30, 50)), 0, 0.15, True, max(1, int(round(px))))
        er = reticulum(rng, p, 5.0 * px)
        red = (0.25 * p.cyto + 0.75 * mt) * rng.uniform(0.5, 1.0)
        yellow = (0.1 * p.cyto + 0.9 * er) * rng.uniform(0.5, 1.0)
        green = np.zeros((h, w), np.float32)
        level = rng.uniform(0.35, 1.0)
        for k in classes[i]:
            if patterns[k] is None:
                continue
            green += green_pattern(rng, patterns[k], p, nucleoli, er, mt, px) * level * rng.uniform(0.7, 1.0)
        green += 0.06 * p.cell * (1 + 0.5 * smooth_noise(rng, (h, w), 8 * px))  # nonspecific stain
        cellm = p.cell[..., None]
        win += np.where(cellm, np.stack([red, green, np.clip(blue, 0, None), yellow], -1), 0)
    return img


def apply_optics(rng: np.random.Generator, cfg: SynthConfig, img: np.ndarray) -> np.ndarray:
    """Blur, uneven illumination, background, shot and read noise; then quantise to the bit depth."""
    size = img.shape[0]
    px = size / 512
    out = np.empty(img.shape, np.uint16 if cfg.bit_depth == 16 else np.uint8)
    top = 255 if cfg.bit_depth == 8 else int(rng.uniform(0.3, 0.95) * 65535)
    for c in range(img.shape[2]):
        ch = img[..., c]
        sigma = cfg.blur * px * rng.uniform(0.6, 1.4)
        if sigma > 0.2:
            ch = cv2.GaussianBlur(ch, (0, 0), sigma)
        illum = 1.0 + cfg.illumination * 0.5 * smooth_noise(rng, ch.shape, size / 2.5)
        ch = ch * np.clip(illum, 0.3, None) * rng.uniform(0.6, 1.0) + cfg.background * rng.uniform(0.5, 1.5)
        shot = np.sqrt(np.clip(ch, 0, None) / 200.0) * rng.standard_normal(ch.shape, dtype=np.float32)
        read = 0.012 * rng.standard_normal(ch.shape, dtype=np.float32)
        ch = ch + cfg.noise * (shot + read)
        out[..., c] = np.clip(np.rint(ch * top), 0, 65535 if cfg.bit_depth == 16 else 255)
    return out


def generate_field(cfg: SynthConfig, index: int, size: int | None = None) -> SynthField:
    """Draw field number ``index`` of the dataset that ``cfg`` (and its seed) defines."""
    size = int(size or cfg.size)
    rng = np.random.default_rng([cfg.seed, index, size])
    cells = place_cells(rng, cfg, size)
    field_classes = draw_field_classes(rng, cfg, index)
    round_mitotic(rng, cells, SPINDLE in field_classes)
    cell_cls = assign_cell_classes(rng, cfg, field_classes, cells)
    labels, nuclei, kept = label_cells(cells, size)
    classes = {k: cell_cls[old] for k, old in enumerate(kept, start=1)}
    patches = cell_patches([cells[old] for old in kept], labels, nuclei)
    img = render_channels(rng, cfg, size, patches, classes)
    image = apply_optics(rng, cfg, img)
    return SynthField(image, labels, nuclei, classes)


def class_example(cls: int, size: int = 512, seed: int = 0) -> SynthField:
    """A field whose protein shows only class ``cls`` in every cell it can (for galleries)."""
    w = [0.0] * HPA_SINGLE_CELL.num_classes
    w[cls] = 1.0
    cfg = SynthConfig(size=size, seed=seed, class_weights=tuple(w), second_class_p=0, third_class_p=0,
                      keep_class_p=(1.0, 1.0), cells_per_field=(6, 8))
    return generate_field(cfg, cls)


def class_gallery(tile: int = 128, size: int = 512, seed: int = 0, columns: int = 5,
                  names: Sequence[str] = HPA_SINGLE_CELL.names,
                  example: Callable[[int, int, int], SynthField] | None = None) -> np.ndarray:
    """RGB grid (uint8) with one generated cell per class, titled, so a person can judge realism.

    ``example(k, size, seed)`` draws a field showing class ``k`` (default :func:`class_example`,
    the single-cell classes ``names``); the tile is its largest cell that shows ``k``.
    Red (microtubules) and blue (nuclei) are stretched per tile; green (the protein) uses one
    fixed scale for every tile, so a Negative cell looks as dark as it is.
    """
    from .render import stretch

    example = example or class_example
    tiles = []
    for k, name in enumerate(names):
        f = example(k, size, seed)
        ids = [c for c, v in f.cell_classes.items() if k in v] or list(f.cell_classes)
        areas = [(f.cell_labels == c).sum() for c in ids]
        cid = ids[int(np.argmax(areas))]
        ys, xs = np.nonzero(f.cell_labels == cid)
        cy, cx = int(ys.mean()), int(xs.mean())
        half = max(ys.max() - ys.min(), xs.max() - xs.min()) // 2 + 8
        y0, x0 = max(0, cy - half), max(0, cx - half)
        crop = f.image[y0:cy + half, x0:cx + half].astype(np.float32)
        top = 255.0 if f.image.dtype == np.uint8 else 65535.0
        rgb = np.stack([0.6 * stretch(crop[..., 0]), np.clip(crop[..., 1] / (0.45 * top), 0, 1), stretch(crop[..., 2])], -1)
        rgb = cv2.resize((rgb * 255).astype(np.uint8), (tile, tile), interpolation=cv2.INTER_AREA)
        bar = np.zeros((20, tile, 3), np.uint8)
        cv2.putText(bar, f"{k} {name}"[:21], (3, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.36, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(np.vstack([bar, rgb]))
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[i:i + columns]) for i in range(0, len(tiles), columns)]
    return np.vstack(rows)

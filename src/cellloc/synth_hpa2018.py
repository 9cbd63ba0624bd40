"""Generated HPA 2018-like images: whole fields with 28-class image labels and known truth.

The 2018 competition gave 31,072 training images of 512 px (4 channels: red microtubules,
green protein, blue nucleus, yellow ER) labelled per image with 1-5 of 28 localisation classes,
long-tailed: Nucleoplasm in 41% of the images, Rods & rings in 11 (0.04%). This module draws
images in that layout from the single-cell generator's cells, stains and optics
(:mod:`cellloc.synth`), with the 2018 classes mapped onto its protein patterns and eleven
2018-only patterns added (peroxisomes, endosomes, lysosomes, focal adhesion sites, microtubule
ends, cytokinetic bridge, MTOC, lipid droplets, cell junctions, cytoplasmic bodies, rods & rings).

Labels: images come in small groups that image one protein (1-4 sites or cell lines, like the
real set's several images per antibody), and a group shares its classes. The number of classes
per image follows the real distribution (1: 49%, 2: 40%, 3: 10%, 4: 1%, 5: rare); the classes
are drawn without replacement with weights calibrated so each class's share of images matches
its share in the real training set. Every cell that can show a class shows it with a per-image
probability (at least one cell does); the mitotic spindle shows only in dividing cells, cell
junctions only on borders shared with another cell, and a cytokinetic bridge in 1-3 cells.

Everything is a pure function of ``(config, split, index)``: images can be drawn in any order,
in parallel, and a larger dataset with the same seed starts with the same images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from .classes import HPA_2018
from .fieldio import HPA_CHANNELS, atomic_path, write_csv, write_png
from .hpa2018 import format_target, write_labels
from .synth import (
    CellPatch,
    SynthConfig,
    SynthField,
    apply_optics,
    cell_patches,
    disk,
    draw_curve,
    label_cells,
    pattern,
    place_cells,
    random_walk,
    render_channels,
    round_mitotic,
)

# Images per class among the 31,072 images of the competition's train.csv (public facts).
HPA_2018_TRAIN_COUNTS: tuple[int, ...] = (
    12885, 1254, 3621, 1561, 1858, 2513, 1008, 2822, 53, 45, 28, 1093, 688, 537,
    1066, 21, 530, 210, 902, 1482, 172, 3777, 802, 2965, 322, 8228, 328, 11,
)
# Images with 1, 2, 3, 4, 5 classes in the same train.csv (sums to 31,072; 50,782 labels).
HPA_2018_LABELS_PER_IMAGE: tuple[int, ...] = (15126, 12485, 3160, 299, 2)
HPA_2018_IMAGES = 31072

SPINDLE_2018 = 17
BRIDGE_2018 = 16
JUNCTIONS_2018 = 22

# The 2018 class ids -> protein patterns (cellloc.synth.PATTERNS; the 2018-only ones are below).
HPA_2018_PATTERNS: tuple[str, ...] = (
    "nucleoplasm", "nuclear_membrane", "nucleoli", "fibrillar_center", "speckles", "nuclear_bodies",
    "er", "golgi", "peroxisomes", "endosomes", "lysosomes", "intermediate_filaments", "actin",
    "focal_adhesions", "microtubules", "microtubule_ends", "cytokinetic_bridge", "spindle", "mtoc",
    "centrosome", "lipid_droplets", "plasma_membrane", "cell_junctions", "mitochondria", "aggresome",
    "cytosol", "cytoplasmic_bodies", "rods_rings",
)

# Morphologies an image's cells take (the real set mixes ~27 cell lines of different size and density).
CELL_LINES: dict[str, dict] = {
    "large_sparse": {"mean_cell_radius": 0.1, "cells_per_field": (7, 14)},
    "medium": {"mean_cell_radius": 0.085, "cells_per_field": (10, 22)},
    "small_dense": {"mean_cell_radius": 0.068, "cells_per_field": (16, 30)},
}
SPLIT_CODES = {"train": 0, "test": 1}


@dataclass(frozen=True)
class Hpa2018Config:
    """How HPA 2018-like images are drawn. Defaults: the competition's 512 px 8-bit images."""

    size: int = 512
    bit_depth: int = 8
    seed: int = 0
    noise: float = 1.0
    class_counts: tuple[int, ...] = HPA_2018_TRAIN_COUNTS
    labels_per_image: tuple[int, ...] = HPA_2018_LABELS_PER_IMAGE
    images_per_protein: tuple[int, int] = (1, 4)
    keep_class_p: tuple[float, float] = (0.7, 1.0)  # per image: chance a cell shows each class
    mitotic_p: float = 0.03
    # Protein groups per class drawn first, each holding that class (0: none, every group drawn
    # with the real shares). A small held-out split drawn with the real shares misses the rare
    # classes (120 images hold ~18 of 28), and macro F1 counts an absent class 0 whatever is predicted.
    cover_groups: int = 0

    def __post_init__(self) -> None:
        if self.size < 128:
            raise ValueError(f"size {self.size} is too small (>= 128)")
        if self.bit_depth not in (8, 16):
            raise ValueError(f"bit_depth must be 8 or 16, not {self.bit_depth}")
        if len(self.class_counts) != HPA_2018.num_classes or min(self.class_counts) < 0 or sum(self.class_counts) <= 0:
            raise ValueError(f"class_counts needs {HPA_2018.num_classes} non-negative values with a positive sum")
        n_usable = sum(c > 0 for c in self.class_counts)
        if not self.labels_per_image or min(self.labels_per_image) < 0 or sum(self.labels_per_image[:n_usable]) <= 0:
            raise ValueError("labels_per_image needs non-negative counts for 1, 2, ... classes, with a positive sum")
        lo, hi = self.images_per_protein
        if not 1 <= lo <= hi:
            raise ValueError(f"images_per_protein must be 1 <= min <= max, got {self.images_per_protein}")
        if self.cover_groups < 0:
            raise ValueError(f"cover_groups must be >= 0, got {self.cover_groups}")

    def cells(self, cell_line: str) -> SynthConfig:
        """The single-cell generator's settings for one image of ``cell_line``."""
        return SynthConfig(size=self.size, bit_depth=self.bit_depth, seed=self.seed, noise=self.noise,
                           mitotic_p=self.mitotic_p, **CELL_LINES[cell_line])


# --------------------------------------------------------------------------- labels


def _top_k_without_replacement(log_w: np.ndarray, k: np.ndarray, gumbel: np.ndarray) -> np.ndarray:
    """Boolean (N, C): for row i the ``k[i]`` classes with the largest ``log_w + gumbel[i]``.

    Taking the top k of log-weights plus Gumbel noise is drawing k classes one after another
    without replacement, each with probability proportional to its weight among those left.
    """
    order = np.argsort(-(log_w[None, :] + gumbel), axis=1)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(log_w.size)[None, :], axis=1)
    return ranks < k[:, None]


@lru_cache(maxsize=8)
def calibrated_weights(class_counts: tuple[int, ...], labels_per_image: tuple[int, ...], draws: int = 100_000) -> np.ndarray:
    """Class weights (C,) such that drawing ``k`` classes without replacement gives each class its share.

    Drawing without replacement saturates common classes (a class cannot be drawn twice), so
    weights proportional to the counts under-represent Nucleoplasm and over-represent the rest.
    A few multiplicative fixed-point steps on a fixed set of simulated draws correct that.
    """
    counts = np.asarray(class_counts, np.float64)
    n_images = sum(labels_per_image)
    target = counts / max(n_images, 1)
    usable = counts > 0
    rng = np.random.default_rng(2018)
    k_p = np.asarray(labels_per_image, np.float64)[: usable.sum()]
    k = rng.choice(np.arange(1, len(k_p) + 1), size=draws, p=k_p / k_p.sum())
    gumbel = rng.gumbel(size=(draws, counts.size))
    w = np.where(usable, counts, 0.0)
    for _ in range(8):
        with np.errstate(divide="ignore"):
            share = _top_k_without_replacement(np.log(w), k, gumbel).mean(0)
        w = np.where(usable, w * (target / np.maximum(share, 1e-9)) ** 0.8, 0.0)
        w /= w.sum()
    return w


def draw_classes(rng: np.random.Generator, cfg: Hpa2018Config, forced: int | None = None) -> list[int]:
    """One protein's classes: 1-5 distinct ids, counts and classes as in the real train.csv.

    With ``forced`` that class is one of them and the others are drawn as usual from the rest.
    """
    w = calibrated_weights(cfg.class_counts, cfg.labels_per_image)
    usable = int((w > 0).sum())
    k_p = np.asarray(cfg.labels_per_image[:usable], np.float64)
    k = int(rng.choice(np.arange(1, len(k_p) + 1), p=k_p / k_p.sum()))
    gumbel = rng.gumbel(size=(1, w.size))
    if forced is not None:
        gumbel[0, forced] = np.inf  # ranks first: drawn before any other class
    with np.errstate(divide="ignore"):
        chosen = _top_k_without_replacement(np.log(w), np.array([k]), gumbel)[0]
    return np.flatnonzero(chosen).tolist()


def forced_class(cfg: Hpa2018Config, group: int) -> int | None:
    """The class protein group ``group`` must hold: with ``cover_groups`` = m, groups 0 .. m*C-1
    take the C classes that occur (count > 0) in turn, rarest first (so a split too small to
    cover every class still holds the rare ones); ``None`` for the others."""
    usable = sorted((k for k, c in enumerate(cfg.class_counts) if c > 0), key=lambda k: (cfg.class_counts[k], k))
    return usable[group % len(usable)] if group < cfg.cover_groups * len(usable) else None


def protein_groups(cfg: Hpa2018Config, split: str, n: int) -> np.ndarray:
    """Protein group of each of the first ``n`` images (n,) int: runs of 1-4 images share a protein.

    Group sizes are drawn one after another from the seed, so the first images' groups do not
    depend on ``n``.
    """
    rng = np.random.default_rng([cfg.seed, SPLIT_CODES[split], 2018])
    lo, hi = cfg.images_per_protein
    groups = np.empty(n, np.int64)
    i = g = 0
    while i < n:
        size = int(rng.integers(lo, hi + 1))
        groups[i:i + size] = g
        i += size
        g += 1
    return groups


def image_id(cfg: Hpa2018Config, split: str, index: int) -> str:
    """A UUID-shaped Id (as the competition's, e.g. ``00070df0-bbc3-11e8-b2bc-ac1f6b6435d0``), fixed by seed, split and index."""
    h = hashlib.sha256(f"hpa2018/{cfg.seed}/{split}/{index}".encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


@dataclass(frozen=True)
class ImageRecord:
    """What an image is before it is drawn: its Id, protein group, classes and cell line."""

    split: str
    index: int
    image_id: str
    protein: int
    classes: tuple[int, ...]
    cell_line: str


def image_records(cfg: Hpa2018Config, split: str, n: int) -> list[ImageRecord]:
    """The first ``n`` images of a split (cheap: no pixels are drawn)."""
    if split not in SPLIT_CODES:
        raise ValueError(f"split must be one of {', '.join(SPLIT_CODES)}, not {split!r}")
    groups = protein_groups(cfg, split, n)
    lines = list(CELL_LINES)
    out = []
    for i, g in enumerate(groups.tolist()):
        rng = np.random.default_rng([cfg.seed, SPLIT_CODES[split], 2018, g])
        classes = tuple(draw_classes(rng, cfg, forced_class(cfg, g)))
        line = lines[int(np.random.default_rng([cfg.seed, SPLIT_CODES[split], i, 1]).integers(len(lines)))]
        out.append(ImageRecord(split, i, image_id(cfg, split, i), g, classes, line))
    return out


# --------------------------------------------------------------------------- the 2018-only patterns


def _points(rng: np.random.Generator, p: CellPatch, mask: np.ndarray, n: int) -> np.ndarray:
    return p.sample_in(rng, mask & p.cyto, n) if (mask & p.cyto).any() else p.sample_in(rng, p.cyto, n)


def _ring(g: np.ndarray, y: float, x: float, radius: float, width: float, value: float) -> None:
    disk(g, y, x, radius, value)
    disk(g, y, x, max(radius - width, 0.0), -value)


def _nucleus_distance(p: CellPatch) -> np.ndarray:
    return cv2.distanceTransform((~p.nucleus).astype(np.uint8), cv2.DIST_L2, 3)


def _toward_nucleus(p: CellPatch, y: float, x: float) -> float:
    ncy, ncx = p.local(p.geom.ny, p.geom.nx)
    return float(np.arctan2(ncy - y, ncx - x))


@pattern("peroxisomes")
def _peroxisomes(rng, p: CellPatch, nucleoli, er, mt, px):
    """Many tiny dots of even size and brightness spread evenly over the cytoplasm."""
    g = np.zeros(p.cell.shape, np.float32)
    n = int(np.clip(p.cyto.sum() / (70 * px * px), 25, 160))
    for y, x in p.sample_in(rng, p.cyto, n):
        disk(g, y, x, 0.75 * px, rng.uniform(0.8, 1.0))
    return g * p.cyto


@pattern("endosomes")
def _endosomes(rng, p: CellPatch, nucleoli, er, mt, px):
    """Medium, irregular puncta (often two fused) through the cytoplasm, denser near the nucleus."""
    g = np.zeros(p.cell.shape, np.float32)
    r = p.geom.radius
    near = _nucleus_distance(p) < 0.45 * r
    for j, (y, x) in enumerate(_points(rng, p, near, int(rng.integers(10, 22)))):
        rad = max(1.0, r * rng.uniform(0.025, 0.04))
        disk(g, y, x, rad, rng.uniform(0.6, 1.0))
        if rng.random() < 0.6:
            a = rng.uniform(0, 2 * np.pi)
            disk(g, y + np.sin(a) * rad, x + np.cos(a) * rad, 0.8 * rad, rng.uniform(0.5, 0.9))
    for y, x in p.sample_in(rng, p.cyto, int(rng.integers(5, 12))):
        disk(g, y, x, max(1.0, r * 0.025), rng.uniform(0.5, 0.8))
    return np.clip(g, 0, 1) * p.cyto


@pattern("lysosomes")
def _lysosomes(rng, p: CellPatch, nucleoli, er, mt, px):
    """Round vesicles with a dimmer lumen, clustered around the nucleus."""
    g = np.zeros(p.cell.shape, np.float32)
    r = p.geom.radius
    near = _nucleus_distance(p) < 0.3 * r
    for y, x in _points(rng, p, near, int(rng.integers(8, 18))):
        rad = max(1.5, r * rng.uniform(0.035, 0.055))
        disk(g, y, x, rad, 1.0)
        disk(g, y, x, 0.5 * rad, -0.55)
    return np.clip(g, 0, 1) * p.cyto


@pattern("focal_adhesions")
def _focal_adhesions(rng, p: CellPatch, nucleoli, er, mt, px):
    """Bright elongated plaques at the cell's edge, pointing at the nucleus (ends of stress fibres)."""
    g = np.zeros(p.cell.shape, np.float32)
    r = p.geom.radius
    rim = (p.dist_edge > 1) & (p.dist_edge < 0.12 * r)
    for y, x in _points(rng, p, rim, int(rng.integers(8, 18))):
        a = _toward_nucleus(p, y, x) + rng.normal(0, 0.15)
        length = r * rng.uniform(0.1, 0.18)
        pts = np.array([[x, y], [x + np.cos(a) * length, y + np.sin(a) * length]])
        draw_curve(g, pts, rng.uniform(0.7, 1.0), max(1, int(round(1.6 * px))))
    g += 0.12 * p.cyto  # a faint cytoplasmic pool
    return g * p.cell


@pattern("microtubule_ends")
def _microtubule_ends(rng, p: CellPatch, nucleoli, er, mt, px):
    """Many short thin comets (plus-end tips) pointing outward, most toward the cell's periphery."""
    g = np.zeros(p.cell.shape, np.float32)
    r = p.geom.radius
    outer = _nucleus_distance(p) > 0.2 * r
    for y, x in _points(rng, p, outer, int(rng.integers(35, 70))):
        a = _toward_nucleus(p, y, x) + np.pi + rng.normal(0, 0.3)
        length = r * rng.uniform(0.04, 0.07)
        pts = np.array([[x - np.cos(a) * length, y - np.sin(a) * length], [x, y]])
        draw_curve(g, pts, rng.uniform(0.5, 0.9), 1)
        disk(g, y, x, 0.7 * px, 0.4)  # the bright head
    return np.clip(g, 0, 1) * p.cyto


@pattern("cytokinetic_bridge")
def _cytokinetic_bridge(rng, p: CellPatch, nucleoli, er, mt, px):
    """A thin bright bundle from the nucleus to the border with a neighbour, with a midbody dot there."""
    g = np.zeros(p.cell.shape, np.float32)
    r = p.geom.radius
    border = p.cell & (p.dist_edge <= 2.0)
    if p.others is not None and p.others.any():
        touching = border & (cv2.dilate(p.others.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0)
        border = touching if touching.any() else border
    ys, xs = np.nonzero(border)
    if len(ys) == 0:
        return g
    j = int(rng.integers(len(ys)))
    y, x = float(ys[j]), float(xs[j])
    a = _toward_nucleus(p, y, x)
    length = r * rng.uniform(0.35, 0.55)
    pts = np.array([[x, y], [x + np.cos(a) * length, y + np.sin(a) * length]])
    draw_curve(g, pts, 0.75, max(1, int(round(1.3 * px))))
    disk(g, y, x, max(1.5, 0.035 * r), 1.0)
    return np.clip(g, 0, 1) * p.cell


@pattern("mtoc")
def _mtoc(rng, p: CellPatch, nucleoli, er, mt, px):
    """One large bright focus beside the nucleus with a faint aster of short fibres around it."""
    g = np.zeros(p.cell.shape, np.float32)
    r, r_n = p.geom.radius, p.geom.n_radius
    ncy, ncx = p.local(p.geom.ny, p.geom.nx)
    a = rng.uniform(0, 2 * np.pi)
    cy, cx = ncy + np.sin(a) * r_n * 1.25, ncx + np.cos(a) * r_n * 1.25
    for b in rng.uniform(0, 2 * np.pi, int(rng.integers(10, 18))):
        length = r * rng.uniform(0.15, 0.35)
        draw_curve(g, np.array([[cx, cy], [cx + np.cos(b) * length, cy + np.sin(b) * length]]), 0.3, 1)
    disk(g, cy, cx, max(1.8, 0.12 * r_n), 1.0)
    return np.clip(g, 0, 1) * p.cell


@pattern("lipid_droplets")
def _lipid_droplets(rng, p: CellPatch, nucleoli, er, mt, px):
    """A few hollow rings of different sizes (protein on the droplet surface) in the cytoplasm."""
    g = np.zeros(p.cell.shape, np.float32)
    r = p.geom.radius
    for y, x in _points(rng, p, p.dist_edge > 0.12 * r, int(rng.integers(3, 10))):
        rad = max(2.5, r * rng.uniform(0.05, 0.1))
        _ring(g, y, x, rad, max(1.0, 0.3 * rad), rng.uniform(0.7, 1.0))
    return np.clip(g, 0, 1) * p.cyto


@pattern("cell_junctions")
def _cell_junctions(rng, p: CellPatch, nucleoli, er, mt, px):
    """The membrane only where the cell touches a neighbour (a free edge stays dark)."""
    if p.others is None or not p.others.any():
        return np.zeros(p.cell.shape, np.float32)
    width = max(2, int(round(0.05 * p.geom.radius)))
    near = cv2.dilate(p.others.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1,) * 2)) > 0
    band = (near & p.cell).astype(np.float32)
    return band * rng.uniform(0.8, 1.0)


@pattern("cytoplasmic_bodies")
def _cytoplasmic_bodies(rng, p: CellPatch, nucleoli, er, mt, px):
    """One to four distinct, bright, round bodies in the cytoplasm away from the nucleus."""
    g = np.zeros(p.cell.shape, np.float32)
    r = p.geom.radius
    away = (_nucleus_distance(p) > 0.2 * r) & (p.dist_edge > 0.1 * r)
    for y, x in _points(rng, p, away, int(rng.integers(1, 5))):
        disk(g, y, x, max(1.5, r * rng.uniform(0.04, 0.065)), 1.0)
    return np.clip(g, 0, 1) * p.cyto


@pattern("rods_rings")
def _rods_rings(rng, p: CellPatch, nucleoli, er, mt, px):
    """A few straight rods and small thin rings in the cytoplasm."""
    g = np.zeros(p.cell.shape, np.float32)
    r = p.geom.radius
    inner = p.dist_edge > 0.2 * r
    for y, x in _points(rng, p, inner, int(rng.integers(1, 4))):
        a = rng.uniform(0, np.pi)
        half = r * rng.uniform(0.1, 0.18)
        pts = np.array([[x - np.cos(a) * half, y - np.sin(a) * half], [x + np.cos(a) * half, y + np.sin(a) * half]])
        draw_curve(g, pts, 1.0, max(1, int(round(1.6 * px))))
    for y, x in _points(rng, p, inner, int(rng.integers(1, 3))):
        rad = max(2.0, r * rng.uniform(0.04, 0.06))
        _ring(g, y, x, rad, max(1.0, 0.35 * rad), 1.0)
    return np.clip(g, 0, 1) * p.cyto


# --------------------------------------------------------------------------- images


def _assign(rng: np.random.Generator, cfg: Hpa2018Config, classes: Sequence[int], patches: dict[int, CellPatch]) -> dict[int, list[int]]:
    """Which cells show which of the image's classes; every class shows in at least one cell it can."""
    ids = sorted(patches)
    keep = rng.uniform(*cfg.keep_class_p)
    out: dict[int, list[int]] = {i: [] for i in ids}
    for k in classes:
        if k == SPINDLE_2018:
            able = [i for i in ids if patches[i].geom.mitotic] or ids
        elif k == JUNCTIONS_2018:
            able = [i for i in ids if patches[i].others is not None and _touches(patches[i])] or ids
        elif k == BRIDGE_2018:
            able = [i for i in ids if not patches[i].geom.mitotic] or ids
            able = [able[j] for j in rng.choice(len(able), min(len(able), int(rng.integers(1, 4))), replace=False)]
        else:
            able = ids
        shown = [i for i in able if rng.random() < keep]
        if not shown and able:
            shown = [able[int(rng.integers(len(able)))]]
        for i in shown:
            out[i].append(k)
    return {i: sorted(v) for i, v in out.items()}


def _touches(p: CellPatch) -> bool:
    near = cv2.dilate(p.others.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    return bool((near & p.cell).any())


def generate_image(cfg: Hpa2018Config, record: ImageRecord, size: int | None = None) -> SynthField:
    """Draw one image: HxWx4 (red, green, blue, yellow), its cells, and which classes each shows.

    ``SynthField.image_classes`` equals ``record.classes`` whenever the image keeps a cell.
    """
    size = int(size or cfg.size)
    cells_cfg = cfg.cells(record.cell_line)
    rng = np.random.default_rng([cfg.seed, SPLIT_CODES[record.split], record.index, size])
    cells = place_cells(rng, cells_cfg, size)
    round_mitotic(rng, cells, SPINDLE_2018 in record.classes)
    labels, nuclei, kept = label_cells(cells, size)
    patches = cell_patches([cells[i] for i in kept], labels, nuclei)
    by_cell = _assign(rng, cfg, record.classes, patches)
    img = render_channels(rng, cells_cfg, size, patches, by_cell, HPA_2018_PATTERNS)
    return SynthField(apply_optics(rng, cells_cfg, img), labels, nuclei, by_cell)


def class_example(cls: int, size: int = 512, seed: int = 0) -> SynthField:
    """An image whose protein shows only 2018 class ``cls``, in every cell that can (for galleries)."""
    cfg = Hpa2018Config(size=size, seed=seed, keep_class_p=(1.0, 1.0))
    record = ImageRecord("train", 10_000 + cls, f"example{cls}", -1, (cls,), "large_sparse")
    return generate_image(cfg, record)


def class_gallery(tile: int = 128, size: int = 512, seed: int = 0, columns: int = 7) -> np.ndarray:
    """RGB grid (uint8): one generated cell per 2018 class, titled."""
    from .synth import class_gallery as gallery

    return gallery(tile, size, seed, columns, HPA_2018.names, class_example)


# --------------------------------------------------------------------------- writing a dataset


@dataclass(frozen=True)
class _Job:
    cfg: Hpa2018Config
    record: ImageRecord
    image_dir: Path


_IMAGE_FILE = re.compile(r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})_(red|green|blue|yellow)\.png")


def _remove_stale(image_dir: Path, marker: Path, cfg: Hpa2018Config, keep: set[str]) -> int:
    """Delete generated images that this run would not draw; returns how many images went.

    An image whose Id is not among ``keep`` (another seed, fewer images) goes; so does every
    generated image when the settings recorded in ``marker`` differ from ``cfg`` (another size,
    bit depth or class table would otherwise be kept as if complete). Files not named as this
    generator names them are left alone. The new settings are recorded before drawing, so a
    killed run resumes with its own images.
    """
    settings = json.dumps(dataclasses.asdict(cfg), sort_keys=True)
    changed = marker.exists() and marker.read_text() != settings
    gone: set[str] = set()
    for path in image_dir.iterdir():
        m = _IMAGE_FILE.fullmatch(path.name)
        if m and (changed or m.group(1) not in keep):
            path.unlink()
            gone.add(m.group(1))
    with atomic_path(marker) as tmp:
        tmp.write_text(settings)
    return len(gone)


def _files(job: _Job) -> list[Path]:
    return [job.image_dir / f"{job.record.image_id}_{c}.png" for c in HPA_CHANNELS]


def _write_image(job: _Job) -> int:
    """Draw and write one image's four channel PNGs (atomically, each); skip a complete one. Returns its cell count."""
    if all(p.exists() for p in _files(job)):
        return -1
    f = generate_image(job.cfg, job.record)
    for c, path in enumerate(_files(job)):
        write_png(path, f.image[..., c])
    return len(f.cell_classes)


@dataclass
class DatasetSummary:
    """What :func:`write_dataset` wrote."""

    out_dir: Path
    split: str
    images: int
    written: int
    label_shares: np.ndarray = field(default_factory=lambda: np.zeros(0))
    removed: int = 0  # stale images deleted first (another seed, count or setting)


def write_dataset(
    out_dir: str | Path,
    cfg: Hpa2018Config,
    n_fields: int,
    split: str = "train",
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> DatasetSummary:
    """Write ``n_fields`` images in the HPA 2018 layout under ``out_dir``; resumable.

        out_dir/train/{Id}_{red,green,blue,yellow}.png   (test/ for split="test")
        out_dir/train.csv                                Id,Target   (train)
        out_dir/sample_submission.csv                    Id,Predicted (test; every Predicted "0", as Kaggle's)
        out_dir/truth/labels.csv                         Id,Target    (both splits: the answers)
        out_dir/truth/images.csv                         Id,protein,cell_line,Target (how each image was drawn)

    Each channel file is written atomically and a complete image is not drawn again, so a
    killed run resumes; images of another seed, count or setting are deleted first (the
    settings are kept in ``truth/{split}_generator.json``). The CSVs are rebuilt from the (pure)
    image records. Rows are sorted by Id, as in the competition's files.
    """
    if n_fields < 1:
        raise ValueError(f"n_fields must be >= 1, got {n_fields}")
    out = Path(out_dir)
    records = image_records(cfg, split, n_fields)
    image_dir = out / split
    image_dir.mkdir(parents=True, exist_ok=True)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    removed = _remove_stale(image_dir, out / "truth" / f"{split}_generator.json", cfg, {r.image_id for r in records})
    jobs = [_Job(cfg, r, image_dir) for r in records]
    written = 0
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for n in pool.map(_write_image, jobs, chunksize=4):
                written += n >= 0
                if progress:
                    progress(1)
    else:
        for job in jobs:
            written += _write_image(job) >= 0
            if progress:
                progress(1)
    records = sorted(records, key=lambda r: r.image_id)
    labels = {r.image_id: r.classes for r in records}
    write_labels(out / "truth" / "labels.csv", labels)
    write_csv(out / "truth" / "images.csv", pd.DataFrame({
        "Id": [r.image_id for r in records], "protein": [r.protein for r in records],
        "cell_line": [r.cell_line for r in records], "Target": [format_target(r.classes) for r in records],
    }))
    if split == "train":
        write_labels(out / "train.csv", labels)
    else:
        write_csv(out / "sample_submission.csv", pd.DataFrame({"Id": list(labels), "Predicted": "0"}))
    shares = np.zeros(HPA_2018.num_classes)
    for r in records:
        shares[list(r.classes)] += 1
    return DatasetSummary(out, split, len(records), written, shares / len(records), removed)


# --------------------------------------------------------------------------- make_data.py --task hpa-2018


def _settings(cfg) -> Hpa2018Config:
    """The Hpa2018Config of a ``make_data.py`` config: --size, --bit-depth, --seed, --noise, then --options."""
    from .generators import generator_config, single_size

    return generator_config(Hpa2018Config, cfg, size=single_size(cfg), bit_depth=cfg.bit_depth, seed=cfg.seed,
                            noise=cfg.noise)


def _generate(out_dir: Path, synth: Hpa2018Config, cfg, split: str = "train", workers: int = 1,
              progress: Callable[[int], None] | None = None) -> str:
    """``--fields`` images of one split."""
    info = write_dataset(out_dir, synth, cfg.fields, split, workers, progress)
    present = int((info.label_shares > 0).sum())
    stale = f", {info.removed} stale images removed" if info.removed else ""
    return (f"{out_dir}: {info.images} {split} images ({info.written} drawn now{stale}), {present} of "
            f"{HPA_2018.num_classes} classes present, truth in {Path(out_dir) / 'truth'}")


def _gallery(synth: Hpa2018Config) -> np.ndarray:
    """``--gallery``: one cell per 2018 class (:func:`class_gallery`), drawn with the run's seed."""
    return class_gallery(seed=synth.seed)


def _register() -> None:
    from .generators import GENERATORS, DatasetGenerator

    GENERATORS["hpa-2018"] = DatasetGenerator(_settings, _generate, gallery=_gallery)


_register()

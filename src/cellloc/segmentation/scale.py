"""The pixel size of a field when nobody gave one: estimated from how large its nuclei are.

Every size in the classical backend is physical (micrometres), so it needs micrometres per
pixel. Given (``--pixel-size-um``) or in the file's metadata, that is a fact; otherwise it is
inferred here, from the image itself. Nuclei of cultured cells are 10-20 um across in every
line this project has seen (generated HPA-like fields 13 um, GOWT1 15 um, HeLa 16 um, HPA
fields 15-18 um), and the classical backend's constants are relative to a nucleus, so "a
typical nucleus is ``nucleus_diameter_um`` across" sets the scale well enough to segment with.
The old rule, "the field spans the HPA field of view", is kept as the ``width`` source: right
for HPA fields of any size, wrong for everything else (HeLa nuclei drawn 4x too small). When an
estimate lands within ``snap_to_width`` (25%) of that rule, the field is taken for an HPA field
and the rule's exact value is used: over generated HPA-like fields (10-22 nuclei of varied
sizes each) the estimate lands within 10-15% of the truth, 25% at worst, and on the two real
HPA fields at 0.81x and 1.16x of the rule, so without the snap each HPA field would be
segmented at a slightly different scale than today for no gain.

How the nuclei are measured (:func:`nucleus_size`): a first pass of the classical nucleus
detector on the nucleus channel shrunk to at most ``max_side`` pixels (a triangle threshold on
the smoothed plane, holes filled, faint blobs dropped, each region cut back to its half-height
edge), then each region's largest inscribed radius (the maximum of the distance transform),
and the area-weighted median of those. The inscribed radius is that of one nucleus even where
several touch (their union is no wider than its widest member), and weighting by area lets a
few specks of debris count for little. When the nuclei come out under ``min_diameter_px``
pixels at that size, the measure is repeated at a finer one, so small nuclei are not measured
through the blur of the shrinking. A pass costs a few milliseconds (6-13% of the classical
segmentation of the field; see ``bench/bench_scale.py``).

The sources are a registry (``SCALE_SOURCES``): a function ``(cfg, nucleus plane, field shape)
-> PixelSize | None``, None meaning "cannot tell" (then the width rule is used and says why).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from skimage.filters import threshold_triangle

from ..errors import InputError
from .base import HPA_FIELD_OF_VIEW_UM, SCALE_AWARE_BACKENDS, SegmentConfig, Segmenter
from .classical import ClassicalParams, drop_faint_labels, fine_levels, noise_level, smoothing_gain, tighten_to_edge, unit_range

MIN_PLAUSIBLE_UM, MAX_PLAUSIBLE_UM = 0.01, 5.0  # a microscope pixel, whatever the objective


@dataclass(frozen=True)
class PixelSize:
    """Micrometres per pixel of one field, and where the number came from.

    ``source``: ``given`` (the config), ``file`` (the image file's resolution tags), ``image``
    (estimated from the nuclei), ``width`` (the field spans the HPA field of view).
    """

    um: float
    source: str
    nucleus_diameter_px: float | None = None
    nuclei: int = 0
    note: str = ""

    def describe(self) -> str:
        """One line for a log, e.g. ``0.214 um/px (estimated: nuclei 59 px across, 23 measured)``."""
        text = f"{self.um:.4g} um/px"
        if self.source == "image":
            return f"{text} (estimated: nuclei {self.nucleus_diameter_px:.0f} px across, {self.nuclei} measured)"
        if self.source == "width":
            return f"{text} (the field spans the HPA field of view{'; ' + self.note if self.note else ''})"
        return f"{text} ({'given' if self.source == 'given' else 'from the file metadata'})"


@dataclass(frozen=True)
class NucleusSize:
    """The typical nucleus diameter in pixels of the full field (nan when none was found)."""

    diameter_px: float
    count: int


def fill_enclosed_holes(labels: np.ndarray, max_fraction: float) -> np.ndarray:
    """Int HxW labels with each hole filled by the label around it, when the hole is smaller than
    ``max_fraction`` of that label's area.

    A hole is a 4-connected background region not touching the border (so exactly one
    8-connected label surrounds it). Relative, because the scale is what is not known yet:
    nucleoli and dim spots inside a nucleus are a few percent of it, while the background that a
    ring of touching nuclei encloses is as large as one of them and stays background.
    """
    n, holes, stats, _ = cv2.connectedComponentsWithStats((labels == 0).astype(np.uint8), connectivity=4)
    x, y, w, h, area = stats.T
    inner = (x > 0) & (y > 0) & (x + w < labels.shape[1]) & (y + h < labels.shape[0])
    inner[0] = False  # component 0 is the foreground
    if not inner.any():
        return labels
    edge = (holes[:, 1:] > 0) & (labels[:, :-1] > 0)  # hole pixels whose left neighbour is a label
    hole_ids, first = np.unique(holes[:, 1:][edge], return_index=True)
    around = np.zeros(n, np.int64)
    around[hole_ids] = labels[:, :-1][edge][first]
    sizes = np.bincount(labels.ravel(), minlength=int(labels.max()) + 1)
    fill = inner & (around > 0) & (area < max_fraction * sizes[around])
    if not fill.any():
        return labels
    return np.where(fill[holes], around[holes], labels).astype(labels.dtype)


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The value at which half of the total weight lies below (1-D arrays of equal length, non-empty)."""
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, cum[-1] / 2)])


def _measure(nucleus: np.ndarray, scale: float, min_contrast: float) -> NucleusSize:
    """One pass of :func:`nucleus_size` with the plane shrunk by ``scale`` (<= 1)."""
    if scale < 1:
        h, w = nucleus.shape
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        nucleus = cv2.resize(fine_levels(nucleus), size, interpolation=cv2.INTER_AREA)
        scale = float(np.sqrt(size[0] * size[1] / (w * h)))  # as rounded
    unit = unit_range(nucleus, step=2)
    img = cv2.GaussianBlur(unit, (0, 0), 1.0)
    if img.max() <= img.min():
        return NucleusSize(float("nan"), 0)
    fg = img > threshold_triangle(img[::2, ::2])  # a histogram of every 4th pixel is as good, and 4x cheaper
    n, territories = cv2.connectedComponents(fg.astype(np.uint8), connectivity=8)
    if n <= 1:
        return NucleusSize(float("nan"), 0)
    territories = drop_faint_labels(img, territories, fg, min_contrast * noise_level(unit) * smoothing_gain(1.0))
    nuclei = fill_enclosed_holes(tighten_to_edge(img, territories, fg, 0.5), 0.1)
    dist = cv2.distanceTransform((nuclei > 0).astype(np.uint8), cv2.DIST_L2, 5)
    n = int(nuclei.max()) + 1
    area = np.bincount(nuclei.ravel(), minlength=n)
    radius = np.zeros(n, np.float32)
    np.maximum.at(radius, nuclei.ravel(), dist.ravel())
    keep = area >= 4  # specks of a pixel or two say nothing about size
    keep[0] = False
    cut = np.zeros(n, bool)  # nuclei the field's edge cuts through measure smaller than they are
    cut[np.concatenate([nuclei[0], nuclei[-1], nuclei[:, 0], nuclei[:, -1]])] = True
    if (keep & ~cut).sum() >= 3:
        keep &= ~cut
    if not keep.any():
        return NucleusSize(float("nan"), 0)
    return NucleusSize(2 * weighted_median(radius[keep], area[keep]) / scale, int(keep.sum()))


def nucleus_size(nucleus: np.ndarray, max_side: int = 256, min_diameter_px: float = 12.0,
                 min_contrast: float = ClassicalParams.nucleus_min_contrast) -> NucleusSize:
    """Typical nucleus diameter, in pixels of ``nucleus`` (HxW, any dtype): see the module docstring.

    ``max_side``: the first pass runs on the plane shrunk to at most this many pixels a side.
    ``min_diameter_px``: nuclei smaller than this at the first pass's size are measured again
    at the size that makes them 1.5x this (at most the full one): a pass at the full size
    costs as much as the segmentation, and 18 px are measured within a few percent.
    ``min_contrast``: the contrast floor, in noise levels (``classical.drop_faint_labels``), so
    that a field of pure noise has no nuclei (count 0) rather than a size for its noise.
    """
    if nucleus.ndim != 2:
        raise ValueError(f"expected one HxW plane, got shape {nucleus.shape}")
    scale = min(1.0, max_side / max(nucleus.shape))
    size = _measure(nucleus, scale, min_contrast)
    if size.count and scale < 1 and size.diameter_px * scale < min_diameter_px:
        finer = min(1.0, 1.5 * min_diameter_px / size.diameter_px)
        size = _measure(nucleus, finer, min_contrast)
    return size


# --------------------------------------------------------------------------- sources


ScaleSource = Callable[[SegmentConfig, np.ndarray, Sequence[int]], "PixelSize | None"]
SCALE_SOURCES: dict[str, ScaleSource] = {}


def register_scale_source(name: str) -> Callable[[ScaleSource], ScaleSource]:
    def deco(fn: ScaleSource) -> ScaleSource:
        SCALE_SOURCES[name] = fn
        return fn

    return deco


@register_scale_source("width")
def from_width(cfg: SegmentConfig, nucleus: np.ndarray, shape: Sequence[int]) -> PixelSize:
    """The field spans the HPA field of view (163.84 um), whatever its pixel count."""
    return PixelSize(HPA_FIELD_OF_VIEW_UM / float(shape[1]), "width")


@register_scale_source("image")
def from_nucleus_size(cfg: SegmentConfig, nucleus: np.ndarray, shape: Sequence[int]) -> PixelSize | None:
    """A typical nucleus is ``cfg.nucleus_diameter_um`` across; None when no nucleus stands out."""
    size = nucleus_size(nucleus)
    if not size.count:
        return None
    um = cfg.nucleus_diameter_um / size.diameter_px
    if not MIN_PLAUSIBLE_UM <= um <= MAX_PLAUSIBLE_UM:
        return None
    return PixelSize(um, "image", size.diameter_px, size.count)


def plausible_pixel_size(um: float | None) -> bool:
    """Whether ``um`` micrometres per pixel can be a microscope's (screen resolutions, 72-300 dpi, cannot)."""
    return um is not None and MIN_PLAUSIBLE_UM <= um <= MAX_PLAUSIBLE_UM


def nucleus_plane(cfg: SegmentConfig, image: np.ndarray) -> np.ndarray:
    """The nucleus channel of an HxWxC field in ``cfg.channels`` order (an HxW image is itself)."""
    return image if image.ndim == 2 else image[..., cfg.channel_index(cfg.nucleus_channel)]


def resolve_pixel_size(cfg: SegmentConfig, image: np.ndarray, file_um: float | None = None) -> PixelSize:
    """The pixel size to segment ``image`` (HxW or HxWxC) with, by precedence: ``cfg.pixel_size_um``,
    then ``file_um`` (the file's resolution tags, when plausible), then ``cfg.scale_from``'s
    source, then the width rule (with the reason in its note).

    Backends that do not take a per-field pixel size (the hpa networks are trained at the HPA
    scale) get the config's or the width rule's, as they use.
    """
    if cfg.pixel_size_um:
        return PixelSize(float(cfg.pixel_size_um), "given")
    shape = np.shape(image)
    if cfg.backend not in SCALE_AWARE_BACKENDS:
        return from_width(cfg, image, shape)
    if plausible_pixel_size(file_um):
        return PixelSize(float(file_um), "file")  # type: ignore[arg-type]
    try:
        source = SCALE_SOURCES[cfg.scale_from]
    except KeyError:
        raise InputError(f"unknown scale source {cfg.scale_from!r}; known: {', '.join(sorted(SCALE_SOURCES))}") from None
    found = source(cfg, nucleus_plane(cfg, image), shape)
    width = from_width(cfg, image, shape)
    if found is None:
        return PixelSize(width.um, "width", note="no nuclei stand out of the noise to measure")
    if found.source == "image" and max(found.um / width.um, width.um / found.um) <= 1 + cfg.snap_to_width:
        note = f"the nuclei, {found.nucleus_diameter_px:.0f} px across, agree within {cfg.snap_to_width:.0%}"
        return PixelSize(width.um, "width", found.nucleus_diameter_px, found.nuclei, note)
    return found


SOURCE_WORDS = {"given": "given", "file": "from the file metadata", "image": "estimated from the nuclei",
                "width": "from the width (the HPA field of view)"}


def describe_pixel_sizes(sizes: Iterable[tuple[str, float]], noun: str = "image") -> str:
    """One line for a run's log: how many images took their pixel size from where, with the range,
    e.g. ``pixel size: estimated from the nuclei for 5 fields (0.2015-0.6104 um/px)``.

    ``sizes``: one (source, um) pair per image (:attr:`PixelSize.source`, :attr:`PixelSize.um`).
    """
    by_source: dict[str, list[float]] = {}
    for source, um in sizes:
        by_source.setdefault(source, []).append(float(um))
    if not by_source:
        return f"pixel size: no {noun}s segmented"
    parts = []
    for source, ums in by_source.items():
        lo, hi = min(ums), max(ums)
        span = f"{lo:.4g} um/px" if lo == hi else f"{lo:.4g}-{hi:.4g} um/px"
        parts.append(f"{SOURCE_WORDS.get(source, source)} for {len(ums)} {noun}{'s' * (len(ums) != 1)} ({span})")
    return "pixel size: " + "; ".join(parts)


def segment_with_scale(segmenter: Segmenter, cfg: SegmentConfig, image: np.ndarray,
                       file_um: float | None = None) -> tuple[np.ndarray, np.ndarray, PixelSize]:
    """``segmenter.segment(image)`` at the pixel size :func:`resolve_pixel_size` finds, measured
    once: (cell labels, nucleus labels, that pixel size). ``cfg`` is the segmenter's config."""
    px = resolve_pixel_size(cfg, image, file_um)
    if cfg.backend in SCALE_AWARE_BACKENDS:
        cells, nuclei = segmenter.segment(image, pixel_size_um=px.um)  # type: ignore[call-arg]
    else:
        cells, nuclei = segmenter.segment(image)
    return cells, nuclei, px

"""Pictures for people: colour composites of fields and cells, and mask outlines."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np
from skimage.segmentation import find_boundaries

# How each HPA channel shows on screen (RGB weights): the usual HPA colouring.
HPA_COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (0.5, 0.5, 0.0),
}
# RxRx1's six stains as two RGB pictures: (w3 actin, w2 ER, w1 nuclei) and (w5 mitochondria, w6 Golgi/membrane, w4 RNA).
RXRX1_COMPOSITES: tuple[dict[str, tuple[float, float, float]], ...] = (
    {"w3": (1.0, 0.0, 0.0), "w2": (0.0, 1.0, 0.0), "w1": (0.0, 0.0, 1.0)},
    {"w5": (1.0, 0.0, 0.0), "w6": (0.0, 1.0, 0.0), "w4": (0.0, 0.0, 1.0)},
)


def stretch(channel: np.ndarray, percentile: float = 99.8) -> np.ndarray:
    """Float [0,1] display scaling of one channel by its high percentile (robust to hot pixels)."""
    c = channel.astype(np.float32)
    hi = np.percentile(c, percentile)
    return np.clip(c / hi, 0, 1) if hi > 0 else np.zeros_like(c)


def composite_rgb(image: np.ndarray, channels: Sequence[str] = tuple(HPA_COLOURS), percentile: float = 99.8,
                  colours: Mapping[str, tuple[float, float, float]] = HPA_COLOURS) -> np.ndarray:
    """HxWxC field -> uint8 HxWx3 RGB picture; channels missing from ``colours`` are shown grey."""
    out = np.zeros(image.shape[:2] + (3,), np.float32)
    for i, name in enumerate(channels):
        colour = np.asarray(colours.get(name, (1 / len(channels),) * 3), np.float32)
        out += stretch(image[..., i], percentile)[..., None] * colour
    return (np.clip(out, 0, 1) * 255).astype(np.uint8)


def draw_outlines(rgb: np.ndarray, labels: np.ndarray, colour: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Copy of ``rgb`` with the borders of every instance in ``labels`` painted in ``colour``."""
    out = rgb.copy()
    out[find_boundaries(labels, mode="inner")] = colour
    return out


def overlay(image: np.ndarray, cells: np.ndarray, nuclei: np.ndarray | None = None, channels: Sequence[str] = tuple(HPA_COLOURS)) -> np.ndarray:
    """Composite with cell outlines (white) and nucleus outlines (cyan): what a person checks masks on."""
    rgb = composite_rgb(image, channels)
    if nuclei is not None:
        rgb = draw_outlines(rgb, nuclei, (0, 255, 255))
    return draw_outlines(rgb, cells)


def nearest_resize(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D label image (any integer dtype; ids are never mixed)."""
    rows = np.minimum((np.arange(height) + 0.5) * labels.shape[0] / height, labels.shape[0] - 1).astype(np.intp)
    cols = np.minimum((np.arange(width) + 0.5) * labels.shape[1] / width, labels.shape[1] - 1).astype(np.intp)
    return labels[rows[:, None], cols[None, :]]


def overlay_thumbnail(image: np.ndarray, cells: np.ndarray, nuclei: np.ndarray | None = None,
                      channels: Sequence[str] = tuple(HPA_COLOURS), max_side: int = 512) -> np.ndarray:
    """:func:`overlay` shrunk so its longer side is at most ``max_side`` (uint8 HxWx3).

    The composite is shrunk by area averaging and the masks by nearest neighbour *before* the
    outlines are drawn: shrinking a finished overlay would average the 1-pixel outlines away.
    """
    h, w = cells.shape
    scale = min(1.0, max_side / max(h, w))
    if scale == 1.0:
        return overlay(image, cells, nuclei, channels)
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    rgb = cv2.resize(composite_rgb(image, channels), (sw, sh), interpolation=cv2.INTER_AREA)
    if nuclei is not None:
        rgb = draw_outlines(rgb, nearest_resize(nuclei, sh, sw), (0, 255, 255))
    return draw_outlines(rgb, nearest_resize(cells, sh, sw))

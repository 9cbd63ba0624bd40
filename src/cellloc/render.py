"""Pictures for people: colour composites of fields and cells, and mask outlines."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from skimage.segmentation import find_boundaries

# How each HPA channel shows on screen (RGB weights): the usual HPA colouring.
HPA_COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (0.5, 0.5, 0.0),
}


def stretch(channel: np.ndarray, percentile: float = 99.8) -> np.ndarray:
    """Float [0,1] display scaling of one channel by its high percentile (robust to hot pixels)."""
    c = channel.astype(np.float32)
    hi = np.percentile(c, percentile)
    return np.clip(c / hi, 0, 1) if hi > 0 else np.zeros_like(c)


def composite_rgb(image: np.ndarray, channels: Sequence[str] = tuple(HPA_COLOURS), percentile: float = 99.8) -> np.ndarray:
    """HxWxC field -> uint8 HxWx3 RGB picture; unknown channel names are shown grey."""
    out = np.zeros(image.shape[:2] + (3,), np.float32)
    for i, name in enumerate(channels):
        colour = np.asarray(HPA_COLOURS.get(name, (1 / len(channels),) * 3), np.float32)
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

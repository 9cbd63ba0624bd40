"""The segmentation API shared by every backend: one config, one registry, one return shape.

``create_segmenter(cfg).segment(image) -> (cell_labels, nucleus_labels)``: both uint16 HxW
instance labels, 0 = background, and a nucleus carries the id of the cell that holds it.

Sizes are physical (square micrometres), never pixel counts: the reference tool's fixed
pixel-area cut-offs delete every cell when a field is resized. The pixel size is given, or read
from the image file's resolution tags, or estimated from the field's nuclei (``scale.py``);
``scale_from="width"`` keeps the older rule, that the field spans the HPA field of view
(2048 px at 0.08 um/px = 163.84 um), which is how the generated fields are drawn too.
Backends registered ``scale_aware`` take a per-field pixel size (``segment(image,
pixel_size_um=...)``); the others use :meth:`SegmentConfig.pixel_size`.
"""

from __future__ import annotations

import importlib

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..classes import CHANNEL_SETS
from ..errors import InputError

HPA_FIELD_OF_VIEW_UM = 2048 * 0.08


@dataclass
class SegmentConfig:
    """Everything a backend needs. ``channels`` names the planes of the HxWxC input, in order."""

    backend: str = "classical"
    channels: tuple[str, ...] = CHANNEL_SETS["hpa"]
    nucleus_channel: str = "blue"
    cell_channels: tuple[str, ...] = ("red", "yellow")
    pixel_size_um: float | None = None  # None: the file's, else from scale_from
    scale_from: str = "image"  # no pixel size given: "image" (nucleus size, scale.py) or "width" (HPA field of view)
    nucleus_diameter_um: float = 13.1  # a typical nucleus, as scale.nucleus_size measures it (calibrated on generated fields)
    snap_to_width: float = 0.25  # an estimate within this fraction of the width rule's value takes that exact value (0: never)
    min_nucleus_area_um2: float = 16.0  # reference: 2500 px at 0.08 um/px
    min_cell_area_um2: float = 35.2  # reference: 5500 px at 0.08 um/px
    max_hole_area_um2: float = 6.4  # reference: 1000 px at 0.08 um/px
    remove_edge_cells: bool = False
    # hpa backend
    weights_dir: str | None = None  # None: $CELLLOC_WEIGHTS or ~/.cache/cellloc/hpa
    cell_model: str = "3ch"  # "3ch" (MT+ER+nuclei) or "v2" (MT+zeros+nuclei)
    scale_factor: float = 0.25
    device: str = "cpu"
    runtime: str = "torch"  # "torch" or "openvino" (CPU only; the optional [fast] extra), see cellloc.runtime
    threads: int = 0  # CPU threads for the networks; 0: the runtime's default (all CPUs this process may use)
    batch_size: int = 1
    half: bool = False
    postprocess_at_network_scale: bool = True
    extra: dict = field(default_factory=dict)

    def pixel_size(self, shape: Sequence[int]) -> float:
        """Micrometres per pixel for a field of this (H, W, ...) shape: given, or the width rule
        (backends that are not scale-aware; see ``scale.resolve_pixel_size`` for the others)."""
        if self.pixel_size_um is not None:
            return float(self.pixel_size_um)
        return HPA_FIELD_OF_VIEW_UM / float(shape[1])

    def area_px(self, area_um2: float, shape: Sequence[int]) -> float:
        """A physical area in pixels at this field's scale."""
        return area_um2 / self.pixel_size(shape) ** 2

    def channel_index(self, name: str) -> int:
        try:
            return self.channels.index(name)
        except ValueError:
            raise ValueError(f"channel {name!r} is not among the input channels {self.channels}") from None


class Segmenter(Protocol):
    def segment(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...  # scale-aware: also pixel_size_um=

    def segment_batch(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]: ...


BACKENDS: dict[str, Callable[[SegmentConfig], Segmenter]] = {}
SCALE_AWARE_BACKENDS: set[str] = set()  # their segment() takes pixel_size_um= per field
KNOWN_BACKEND_MODULES = ("classical", "hpa")  # imported on demand (hpa pulls in torch)


def register_backend(name: str, scale_aware: bool = False):
    """Class decorator: make a backend constructible by name from a config.

    ``scale_aware``: its ``segment(image, pixel_size_um=None)`` takes the field's pixel size
    (None: it resolves one itself, ``scale.resolve_pixel_size``).
    """

    def deco(factory):
        BACKENDS[name] = factory
        if scale_aware:
            SCALE_AWARE_BACKENDS.add(name)
        return factory

    return deco


def create_segmenter(cfg: SegmentConfig) -> Segmenter:
    """Build the backend that ``cfg.backend`` names."""
    # A backend lives in the module of the same name; importing it registers it. Importing lazily
    # keeps torch out of runs that use the classical backend.
    if cfg.backend not in BACKENDS and cfg.backend.isidentifier():
        try:
            importlib.import_module(f"{__package__}.{cfg.backend}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{cfg.backend}":
                raise
    try:
        factory = BACKENDS[cfg.backend]
    except KeyError:
        for name in KNOWN_BACKEND_MODULES:  # so the message lists them
            importlib.import_module(f"{__package__}.{name}")
        raise InputError(f"unknown segmentation backend {cfg.backend!r}; known: {', '.join(sorted(BACKENDS))}") from None
    return factory(cfg)

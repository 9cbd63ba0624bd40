"""Cell and nucleus instance segmentation: backends behind one registry (see ``base``)."""

from .base import BACKENDS, SegmentConfig, Segmenter, create_segmenter, register_backend

__all__ = ["BACKENDS", "SegmentConfig", "Segmenter", "create_segmenter", "register_backend"]

"""Dataset layouts: how a dataset's fields are stored as files, behind one registry.

A layout is any object (a module will do) with four functions:

    list_fields(folder: Path, channels) -> fieldio.FieldListing   # field ids found under a split folder
    read_field(folder: Path, field_id: str, channels) -> np.ndarray  # HxWxC uint8/uint16, one-line InputErrors
    sample_of(field_id: str) -> str                               # the labels-CSV id a field belongs to
    channel_file(folder: Path, field_id: str, channel: str) -> Path  # the file holding one channel of a field

``channel_file`` lets a run read what a file records about itself (its pixel size,
:func:`cellloc.imagemeta.pixel_size_of_file`) beside the pixels ``read_field`` returns.

registered in :data:`LAYOUTS` under the name a :class:`cellloc.tasks.Task` gives as ``layout``.
``flat`` (HPA single-cell, HPA-2018) is the Kaggle layout ``{ID}_{channel}.{ext}``, one field
per labelled sample. RxRx1 stores ``{experiment}/Plate{p}/{well}_s{site}_w{c}.png``, two sites
(fields) per labelled well; its layout is provided by :mod:`cellloc.rxrx1` (imported on first
use).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from . import fieldio
from .registry import Registry


class Layout(Protocol):
    def list_fields(self, folder: str | Path, channels: Sequence[str]) -> fieldio.FieldListing: ...

    def read_field(self, folder: str | Path, field_id: str, channels: Sequence[str]) -> np.ndarray: ...

    def sample_of(self, field_id: str) -> str: ...

    def channel_file(self, folder: str | Path, field_id: str, channel: str) -> Path: ...


LAYOUTS: Registry[Layout] = Registry("layout", plugins={"rxrx1": "cellloc.rxrx1"})


class FlatLayout:
    """The Kaggle HPA layout: ``{ID}_{channel}.{png,tif,jpg}`` side by side in one folder.

    IDs may contain underscores; a field is its own sample (``sample_of`` is the identity).
    """

    def list_fields(self, folder: str | Path, channels: Sequence[str]) -> fieldio.FieldListing:
        return fieldio.list_fields(folder, channels)

    def read_field(self, folder: str | Path, field_id: str, channels: Sequence[str]) -> np.ndarray:
        return fieldio.read_field(folder, field_id, channels)

    def sample_of(self, field_id: str) -> str:
        return field_id

    def channel_file(self, folder: str | Path, field_id: str, channel: str) -> Path:
        return fieldio.find_channel_file(Path(folder), field_id, channel)


LAYOUTS["flat"] = FlatLayout()

"""Per-experiment or per-plate intensity normalisation: the first answer to RxRx1's batch effect.

Every experiment (and, less, every plate) of RxRx1 was stained and imaged on its own day, so
the same siRNA gives brighter or dimmer, sharper or softer fields from one batch to the next.
A model that learns absolute intensities learns the batch. Standardising each channel by the
statistics of the field's own experiment or plate removes the first-order part of it (gain and
offset per channel) before the network sees a pixel.

The statistics come from ``pixel_stats.csv`` (one row per well, site and channel with that
site's mean and std), pooled over all the wells of a plate or experiment, or over its
negative-control wells only: the controls carry no siRNA effect, so their statistics measure the
batch and nothing else, at the price of fewer pixels. ``site`` standardises each field by its
own statistics (no batch information; it also removes what an siRNA does to intensities).

A model trained on normalised fields sees them through :func:`to_reference`: each channel's
batch mean and std are mapped onto fixed values of a uint16 scale, so a normalised field is an
ordinary 16-bit image to every later step (augmentation, resizing, the training statistics).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InputError
from .rxrx1 import NEGATIVE, read_pixel_stats, read_table

LEVELS: dict[str, tuple[str, ...]] = {
    "experiment": ("experiment",),
    "plate": ("experiment", "plate"),
    "site": ("id_code", "site"),  # each site by its own statistics (no batch information used)
}
# Normalisation methods by name: (level, which wells give the statistics). "none" is no normalisation.
METHODS: dict[str, tuple[str, str]] = {
    "site": ("site", "all"),
    "experiment": ("experiment", "all"),
    "plate": ("plate", "all"),
    "experiment-controls": ("experiment", "negative_controls"),
    "plate-controls": ("plate", "negative_controls"),
}
NORMALISATIONS: tuple[str, ...] = ("none", *METHODS)
# Where a standardised value z lands on the uint16 scale: z = 0 at 8192, one std = 4096 (z in -2..14 kept).
REFERENCE_MEAN = 8192.0
REFERENCE_STD = 4096.0


def pooled_channel_stats(means: np.ndarray, stds: np.ndarray, pixels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the union of several images, per channel, from each image's own mean and std.

    ``means``, ``stds``: (N, C) float (N images, C channels; population std). ``pixels``: (N,)
    pixel counts per image (equal if omitted). Returns two (C,) float64 arrays: the pooled mean
    and the pooled population std, exactly what the concatenated pixels would give (the
    within-image variance plus the spread of the image means).
    """
    means = np.asarray(means, np.float64)
    stds = np.asarray(stds, np.float64)
    if means.shape != stds.shape or means.ndim != 2 or means.shape[0] == 0:
        raise ValueError(f"means and stds must be equal (N, C) arrays with N >= 1, got {means.shape} and {stds.shape}")
    w = np.ones(len(means)) if pixels is None else np.asarray(pixels, np.float64)
    w = w / w.sum()
    mean = w @ means
    second = w @ (stds**2 + means**2)
    return mean, np.sqrt(np.maximum(second - mean**2, 0.0))


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel mean and std (pixel units of the files) of one experiment or plate."""

    mean: np.ndarray  # (C,) float64, in the order of the channels asked for
    std: np.ndarray  # (C,) float64
    sites: int  # how many imaging sites were pooled


def channel_numbers(channels: Sequence[str]) -> list[int]:
    """RxRx1 channel names -> the numbers ``pixel_stats.csv`` uses: ``("w1", "w5")`` -> ``[1, 5]``."""
    out = []
    for ch in channels:
        if len(ch) < 2 or ch[0] != "w" or not ch[1:].isdigit():
            raise InputError(f"channel {ch!r}: expected w1..w6")
        out.append(int(ch[1:]))
    return out


def group_stats(
    pixel_stats: pd.DataFrame,
    level: str = "plate",
    channels: Sequence[str] = ("w1", "w2", "w3", "w4", "w5", "w6"),
    wells: Collection[str] | None = None,
) -> dict[tuple[str, ...], ChannelStats]:
    """Pool ``pixel_stats.csv`` rows into per-experiment, per-plate or per-site statistics.

    ``pixel_stats``: the frame :func:`cellloc.rxrx1.read_pixel_stats` returns. ``wells``:
    restrict to these id_codes (e.g. the negative controls). Keys are ``(experiment,)``,
    ``(experiment, plate)`` or ``(id_code, site)``, as strings. A group whose sites lack one of
    the channels is an InputError (its statistics would mix channels).
    """
    if level not in LEVELS:
        raise InputError(f"unknown normalisation level {level!r} (known: {', '.join(LEVELS)})")
    by = list(LEVELS[level])
    numbers = channel_numbers(channels)
    df = pixel_stats
    if wells is not None:
        df = df[df["id_code"].isin(set(wells))]
    df = df[df["channel"].isin(numbers)]
    out: dict[tuple[str, ...], ChannelStats] = {}
    for key, g in df.groupby(by, sort=True):
        key = tuple(str(k) for k in (key if isinstance(key, tuple) else (key,)))
        wide_mean = g.pivot_table(index=["id_code", "site"], columns="channel", values="mean", aggfunc="first")
        wide_std = g.pivot_table(index=["id_code", "site"], columns="channel", values="std", aggfunc="first")
        wide_mean = wide_mean.reindex(columns=numbers)
        wide_std = wide_std.reindex(columns=numbers)
        if wide_mean.isna().to_numpy().any():
            row = wide_mean[wide_mean.isna().any(axis=1)].index[0]
            raise InputError(f"pixel_stats: {'/'.join(key)}: site {row[0]} s{row[1]} lacks a row for some of channels {numbers}")
        mean, std = pooled_channel_stats(wide_mean.to_numpy(), wide_std.to_numpy())
        out[key] = ChannelStats(mean, std, len(wide_mean))
    return out


def field_stats(
    pixel_stats: pd.DataFrame,
    method: str,
    channels: Sequence[str] = ("w1", "w2", "w3", "w4", "w5", "w6"),
    negative_controls: Collection[str] = (),
) -> dict[str, ChannelStats]:
    """The statistics every site of ``pixel_stats`` is normalised with, by field id (``{id_code}_s{site}``).

    ``method``: a name in :data:`METHODS`. The ``-controls`` methods pool only the wells in
    ``negative_controls`` (their id_codes) and need at least one per experiment or plate; the
    other sites of that experiment or plate get those statistics. One dict lookup per field
    is then all a training or prediction loop does.
    """
    if method not in METHODS:
        raise InputError(f"unknown normalisation {method!r} (known: {', '.join(METHODS)})")
    level, source = METHODS[method]
    wells = None
    if source == "negative_controls":
        wells = set(negative_controls)
        if not wells:
            raise InputError(f"normalisation {method}: no negative-control wells given")
    stats = group_stats(pixel_stats, level, channels, wells)
    sites = pixel_stats.drop_duplicates(["id_code", "site"])
    by = list(LEVELS[level])
    out: dict[str, ChannelStats] = {}
    for row in sites[["id_code", "site", *[c for c in by if c not in ("id_code", "site")]]].itertuples(index=False):
        r = row._asdict()
        key = tuple(str(r[c]) for c in by)
        if key not in stats:
            raise InputError(f"normalisation {method}: no {'negative-control ' if wells is not None else ''}"
                             f"statistics for {'/'.join(key)} (site {r['id_code']}_s{r['site']})")
        out[f"{r['id_code']}_s{r['site']}"] = stats[key]
    return out


def stats_for(stats: Mapping[tuple[str, ...], ChannelStats], experiment: str, plate: int | str, level: str) -> ChannelStats:
    """The statistics a field of ``experiment``/``plate`` is normalised with; InputError if there are none."""
    key = (experiment,) if level == "experiment" else (experiment, str(plate))
    try:
        return stats[key]
    except KeyError:
        raise InputError(f"no pixel statistics for {'/'.join(key)} (is it in pixel_stats.csv, with the wells asked for?)") from None


def normalise(image: np.ndarray, mean: np.ndarray, std: np.ndarray, min_std: float = 1.0) -> np.ndarray:
    """Standardise each channel: ``(image - mean) / std``.

    ``image``: HxWxC uint8/uint16/float; ``mean``, ``std``: (C,) in the image's pixel units.
    ``min_std`` (pixel units) keeps a nearly empty channel from being blown up into noise.
    Returns float32 HxWxC with mean about 0 and std about 1 over the batch the stats describe.
    """
    mean = np.asarray(mean, np.float32)
    std = np.maximum(np.asarray(std, np.float32), np.float32(min_std))
    if image.ndim != 3 or image.shape[2] != mean.shape[0] or std.shape != mean.shape:
        raise ValueError(f"image {image.shape} needs one mean and std per channel, got {mean.shape} and {std.shape}")
    return (image.astype(np.float32) - mean) / std


def image_stats(image: np.ndarray) -> ChannelStats:
    """Per-channel mean and population std of one HxWxC field (what ``pixel_stats.csv`` lists per site)."""
    flat = image.reshape(-1, image.shape[-1]).astype(np.float64)
    return ChannelStats(flat.mean(0), flat.std(0), 1)


def to_reference(image: np.ndarray, mean: np.ndarray, std: np.ndarray, min_std: float = 1.0) -> np.ndarray:
    """Standardise each channel (:func:`normalise`) and write it on the reference uint16 scale.

    ``z`` becomes ``REFERENCE_MEAN + z * REFERENCE_STD``, rounded and clipped to 0..65535 (z from
    -2 to 14 survives; a batch's background sits near z = -0.5, its brightest structures below
    10). Returns uint16 HxWxC.
    """
    z = normalise(image, mean, std, min_std)
    return np.clip(np.rint(z * REFERENCE_STD + REFERENCE_MEAN), 0, 65535).astype(np.uint16)


def negative_control_wells(dataset_dir: str | Path) -> set[str]:
    """id_codes of the negative-control wells listed in ``{train,test}_controls.csv`` of a dataset folder."""
    out: set[str] = set()
    for split in ("train", "test"):
        path = Path(dataset_dir) / f"{split}_controls.csv"
        if path.exists():
            table = read_table(path)
            out |= set(table.loc[table["well_type"] == NEGATIVE, "ID"])
    return out


def dataset_field_stats(dataset_dir: str | Path, method: str, channels: Sequence[str]) -> dict[str, ChannelStats] | None:
    """The normalisation statistics of every site of a dataset folder, by field id; None for ``none`` and ``site``.

    Group methods read ``pixel_stats.csv`` (and, for ``-controls``, the controls CSVs) in
    ``dataset_dir``; ``site`` needs nothing beyond the field itself (see :class:`FieldNormaliser`).
    """
    if method not in NORMALISATIONS:
        raise InputError(f"unknown normalisation {method!r} (known: {', '.join(NORMALISATIONS)})")
    if method in ("none", "site"):
        return None
    path = Path(dataset_dir) / "pixel_stats.csv"
    if not path.exists():
        raise InputError(f"{path}: not found; normalisation {method} needs the dataset's pixel statistics "
                         "(or use --normalise site or none)")
    negatives = negative_control_wells(dataset_dir) if METHODS[method][1] == "negative_controls" else ()
    return field_stats(read_pixel_stats(path), method, channels, negatives)


@dataclass(frozen=True)
class FieldNormaliser:
    """How each field of a folder is normalised before the network: a method and, for batch methods, the statistics.

    ``normaliser(field_id, image)`` returns the field on the reference scale (uint16) or, for
    ``none``, unchanged. Picklable, so DataLoader workers can carry it.
    """

    method: str = "none"
    stats: Mapping[str, ChannelStats] | None = None  # by field id, for the batch methods

    def __post_init__(self) -> None:
        if self.method not in NORMALISATIONS:
            raise InputError(f"unknown normalisation {self.method!r} (known: {', '.join(NORMALISATIONS)})")
        if self.method not in ("none", "site") and self.stats is None:
            raise ValueError(f"normalisation {self.method} needs per-field statistics")

    def __call__(self, field_id: str, image: np.ndarray) -> np.ndarray:
        if self.method == "none":
            return image
        if self.method == "site":
            st = image_stats(image)
        else:
            try:
                st = self.stats[field_id]  # type: ignore[index]
            except KeyError:
                raise InputError(f"{field_id}: no pixel statistics for normalisation {self.method} "
                                 "(is the field in pixel_stats.csv?)") from None
        return to_reference(image, st.mean, st.std)

    def subset(self, field_ids: Sequence[str]) -> FieldNormaliser:
        """The same normaliser holding only the statistics of ``field_ids`` (less to pickle into workers)."""
        if self.stats is None:
            return self
        missing = [f for f in field_ids if f not in self.stats]
        if missing:
            raise InputError(f"{missing[0]}: no pixel statistics for normalisation {self.method} "
                             f"({len(missing)} of {len(field_ids)} fields lack them; is pixel_stats.csv complete?)")
        return FieldNormaliser(self.method, {f: self.stats[f] for f in field_ids})


def field_normaliser(dataset_dir: str | Path, method: str, channels: Sequence[str]) -> FieldNormaliser:
    """The :class:`FieldNormaliser` of a dataset folder (``dataset_dir`` holds ``pixel_stats.csv``)."""
    return FieldNormaliser(method, dataset_field_stats(dataset_dir, method, channels))

"""Samples -> model inputs: the training tables, preprocessing, augmentation, Dataset and sampler.

A model sees either cell crops (level ``cell``) or whole fields (level ``image``), through one
machinery: a *reader* gives sample ``i`` as an HxWxC uint8/uint16 array (:class:`CropFiles`
reads ``.npy`` crops, :class:`FieldFiles` reads fields through their task's layout), an *input
kind* (:data:`INPUT_KINDS`: :class:`CropInput`, :class:`FieldInput`) turns that array into the
network's float tensor for training (one, possibly augmented, view) and for prediction (the
views whose scores are averaged), and :class:`SampleDataset` pairs them with the targets.

A crop is an HxWxC array (uint8 or uint16, the task's channels, pixels of other cells zeroed)
written by the crop stage; the cells table (``folds.csv``) names it by a path relative to the
table's folder: ``crops/{ID}.npy#k``, row ``k`` of the field's stacked crops, or a ``.npy`` file
of its own (``cells.split_crop_reference``). Every crop goes through the same steps at training and inference time
(:func:`preprocess_crop`):

1. pad to a square with zeros (centred) and resize to ``image_size`` - padding first keeps the
   cell's aspect ratio, which the competition write-ups found better than stretching;
2. scale by the dtype's range (uint8 /255, uint16 /65535), so 8- and 16-bit fields land on one
   [0, 1] scale and per-channel statistics are comparable across bit depths;
3. subtract the per-channel mean and divide by the per-channel std (computed on training crops
   after step 2 and saved in the run's ``config.json``).

A field is padded to a square and resized to ``resize`` pixels; when that is larger than the
network's ``image_size``, training takes a random ``image_size`` crop of it (a fresh one each
epoch) and prediction averages the scores of ``tiles`` x ``tiles`` crops spread evenly over it
(1: the centre crop). Then the same steps 2 and 3 as for crops.

Augmentation (training only) sits between steps 2 and 3: flips, transposes, rot90 and a light
per-channel gain. Its randomness (and a field's crop position) comes from a per-sample seed that
:class:`EpochSampler` hands to the dataset together with the index, so a run is reproducible
whatever ``num_workers`` is and a resumed run sees the same augmentations as an uninterrupted one.
"""

from __future__ import annotations

import os
import random

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check at import

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from .cells import crop_reference, resize_square, split_crop_reference
from .errors import InputError
from .fieldio import format_label, multihot, parse_label, read_csv, row_lines, to_unit_float, write_csv, write_npy
from .layouts import LAYOUTS
from .losses import mix_field_labels
from .plate_norm import FieldNormaliser
from .registry import Registry

CELLS_REQUIRED = ("ID", "cell_id", "Label", "crop", "fold")
LABEL_COLUMNS = {"weak": "Label", "true": "TrueLabel"}


# --------------------------------------------------------------------------- the cells table


def read_cells(path: str | Path, num_classes: int) -> pd.DataFrame:
    """Read ``folds.csv``: validate columns, folds and labels; resolve crop paths.

    Returns the table with ``fold`` as int, ``crop_path`` (absolute path of each crop),
    ``weak`` (list of class ids from ``Label``) and, when a ``TrueLabel`` column exists, ``true``
    (list of ids; empty when the segmented cell matched no true cell).
    """
    path = Path(path)
    df = read_csv(path, CELLS_REQUIRED)
    try:
        df["fold"] = df["fold"].astype(int)
    except ValueError:
        bad = next(v for v in df["fold"] if not v.strip().lstrip("-").isdigit())
        raise InputError(f"{path}: fold {bad!r} is not an integer") from None
    lines = row_lines(df)
    df["weak"] = [parse_label(v, num_classes, f"{path}: line {line}") for line, v in zip(lines, df["Label"])]
    if "TrueLabel" in df.columns:
        df["true"] = [
            parse_label(v, num_classes, f"{path}: line {line} TrueLabel") if str(v).strip() else []
            for line, v in zip(lines, df["TrueLabel"])
        ]
    if (df["crop"].str.strip() == "").any():
        row = lines[int(np.flatnonzero(df["crop"].str.strip() == "")[0])]
        raise InputError(f"{path}: line {row}: empty crop path")
    df["crop_path"] = [_resolve_crop(path.parent, c) for c in df["crop"]]
    return df


def _resolve_crop(folder: Path, ref: str) -> str:
    """A crop reference made absolute against ``folder`` (a ``#k`` row index kept)."""
    file, row = split_crop_reference(ref)
    full = str((folder / file).resolve())
    return full if row is None else crop_reference(full, row)


def check_crops_exist(paths: Sequence[str]) -> None:
    """Fail in one line naming the first missing crop file, before a long run starts."""
    files = {split_crop_reference(p)[0] for p in paths}  # crops stacked per field: one file for many
    missing = sorted(f for f in files if not os.path.exists(f))
    if missing:
        raise InputError(f"{missing[0]}: crop file not found ({len(missing)} of {len(files)} files missing)")


def label_matrix(cells: pd.DataFrame, source: str, num_classes: int) -> np.ndarray:
    """(N, num_classes) float32 targets from the ``weak`` or ``true`` label lists."""
    col = {"weak": "weak", "true": "true"}[source]
    if col not in cells.columns:
        raise InputError(f"label source {source!r} needs a {LABEL_COLUMNS[source]} column in the cells table")
    return multihot(list(cells[col]), num_classes).astype(np.float32)


def read_soft_targets(path: str | Path, num_classes: int) -> pd.DataFrame:
    """Per-cell predictions to train on: ``ID, cell_id, p0..p{C-1}`` (float), one row per cell.

    ``path`` is one CSV or a run folder, whose ``fold*/val_predictions.csv`` (each fold's
    predictions of its held-out cells, written by ``train.py``) together hold an out-of-fold
    prediction of every cell. A cell predicted more than once gets the mean.
    """
    path = Path(path)
    files = sorted(path.glob("fold*/val_predictions.csv")) if path.is_dir() else [path]
    if not files:
        raise InputError(f"{path}: no fold*/val_predictions.csv (train the folds on image labels first)")
    cols = [f"p{k}" for k in range(num_classes)]
    parts = []
    for f in files:
        df = read_csv(f, ("ID", "cell_id", *cols))
        try:
            parts.append(df[["ID", "cell_id"]].assign(cell_id=df["cell_id"].astype(int), **{c: df[c].astype(float) for c in cols}))
        except ValueError as exc:
            raise InputError(f"{f}: not a number ({exc})") from None
    table = pd.concat(parts, ignore_index=True)
    bad = table[cols].to_numpy()
    if not np.isfinite(bad).all() or bad.min() < 0 or bad.max() > 1:
        raise InputError(f"{path}: predictions must be probabilities in [0, 1]")
    return table.groupby(["ID", "cell_id"], as_index=False, sort=False)[cols].mean()


def predictions_for(cells: pd.DataFrame, table: pd.DataFrame, num_classes: int) -> np.ndarray:
    """(N, C) the row of ``table`` (:func:`read_soft_targets`'s ``ID, cell_id, p0..``) of each cell of ``cells``, in
    their order; NaN rows for cells the table lacks."""
    key = cells[["ID", "cell_id"]].astype({"ID": str}).assign(cell_id=cells["cell_id"].astype(int))
    joined = key.merge(table.astype({"ID": str}), on=["ID", "cell_id"], how="left", validate="many_to_one")
    return joined[[f"p{k}" for k in range(num_classes)]].to_numpy(np.float64)


def soft_targets(labels: np.ndarray, predictions: np.ndarray, weight: float) -> np.ndarray:
    """(N, C) targets ``labels * ((1 - weight) + weight * predictions)``.

    ``labels`` (N, C) are the cells' field labels (multi-hot), ``predictions`` (N, C) out-of-fold
    probabilities of the same cells. A cell keeps ``1 - weight`` of its field's label and takes
    the rest from the prediction, and never gets a class its field lacks. ``weight = 0``: the
    field labels; ``1``: the predictions restricted to the field's classes.
    """
    if not 0 <= weight <= 1:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    return mix_field_labels(labels, np.asarray(predictions), weight).astype(np.float32)


def table_cell_weights(cells: pd.DataFrame, edge_weight: float = 0.5) -> np.ndarray:
    """(N,) :func:`cellloc.pipeline.cell_weights` of a cells table (``ID, area, edge[, nucleus_area]``), field by field.

    The area is compared with the median of its own field's cells, as at prediction time.
    """
    from .pipeline import cell_weights

    for col in ("ID", "area", "edge"):
        if col not in cells.columns:
            raise InputError(f"cell weights need a {col} column in the cells table")
    out = np.zeros(len(cells))
    edge = cells["edge"].astype(str).str.lower().isin(("true", "1")).to_numpy()
    area = cells["area"].astype(float).to_numpy()
    nucleus = cells["nucleus_area"].astype(float).to_numpy() if "nucleus_area" in cells.columns else None
    for rows in cells.groupby("ID", sort=False).indices.values():
        out[rows] = cell_weights(area[rows], edge[rows], None if nucleus is None else nucleus[rows], edge_weight)
    return out


def read_samples(path: str | Path, num_classes: int) -> pd.DataFrame:
    """Read a folds table for a whole-field (image-level) model: one row per labelled sample.

    The table is either a labels table with folds (``ID, Label, fold``, plus metadata columns:
    what ``gen_folds.py --labels`` writes) or a cells table (several rows per field, as for cell
    models; the image model then trains on the same folds). Returns ``ID, Label, fold, weak``
    (list of class ids) and the other columns of the first row of each sample.
    """
    path = Path(path)
    df = read_csv(path, ("ID", "Label", "fold"))
    try:
        df["fold"] = df["fold"].astype(int)
    except ValueError:
        bad = next(v for v in df["fold"] if not v.strip().lstrip("-").isdigit())
        raise InputError(f"{path}: fold {bad!r} is not an integer") from None
    mixed = df.groupby("ID")[["Label", "fold"]].nunique().max(axis=1)
    if (mixed > 1).any():
        raise InputError(f"{path}: sample {mixed[mixed > 1].index[0]!r} has rows with different labels or folds")
    first = df.drop_duplicates("ID").reset_index(drop=True)
    lines = np.asarray(row_lines(df))[~df.duplicated("ID").to_numpy()]
    first["weak"] = [parse_label(v, num_classes, f"{path}: line {line}") for v, line in zip(first["Label"], lines)]
    return first


def expand_to_fields(samples: pd.DataFrame, layout: str, folder: str | Path, channels: Sequence[str]) -> pd.DataFrame:
    """One row per field of each sample (``field_id`` added): RxRx1 has two sites per well, HPA one field per ID.

    Fields are found in ``folder`` through the layout; a sample without any field there is an
    error naming how many are missing and the first one, and so is a field of a sample that
    lacks a channel file (RxRx1's other site would otherwise stand for the well, silently).
    """
    lay = LAYOUTS[layout]
    listing = lay.list_fields(folder, channels)
    wanted = set(samples["ID"])
    broken = [(i, m) for i, m in listing.incomplete.items() if lay.sample_of(i) in wanted]
    if broken:
        (field_id, lacks), more = broken[0], len(broken) - 1
        raise InputError(f"{folder}: field {field_id} of sample {lay.sample_of(field_id)!r} lacks channel file(s) "
                         f"{', '.join(lacks)}{f' (and {more} more field(s))' if more else ''}; restore them, or drop "
                         "the sample from the folds table")
    by_sample: dict[str, list[str]] = {}
    for field_id in listing.ids:
        by_sample.setdefault(lay.sample_of(field_id), []).append(field_id)
    missing = [i for i in samples["ID"] if i not in by_sample]
    if missing:
        raise InputError(f"{folder}: no field of sample {missing[0]!r} ({len(missing)} of {len(samples)} samples "
                         f"have no complete field for channels {', '.join(channels)})")
    rows = samples.assign(field_id=[by_sample[i] for i in samples["ID"]]).explode("field_id", ignore_index=True)
    return rows


# --------------------------------------------------------------------------- crops -> arrays


def load_crop(path: str | Path, in_chans: int | None = None) -> np.ndarray:
    """Read an HxWxC uint8/uint16 crop: a ``.npy`` file of one crop, or ``file.npy#k``, row ``k``
    of a field's ``(n, H, W, C)`` stacked crops (only that row is read); one-line error on
    anything else."""
    file, row = split_crop_reference(str(path))
    try:
        arr = np.load(file, allow_pickle=False) if row is None else _read_stacked_row(file, row, str(path))
    except FileNotFoundError:
        raise InputError(f"{file}: crop file not found") from None
    except InputError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path}: cannot read crop ({str(exc).splitlines()[0]})") from None
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"{path}: crop has shape {arr.shape}; expected HxWxC")
    if arr.dtype not in (np.uint8, np.uint16):
        raise InputError(f"{path}: crop pixel type {arr.dtype}; expected uint8 or uint16")
    if in_chans is not None and arr.shape[2] != in_chans:
        raise InputError(f"{path}: crop has {arr.shape[2]} channels; the model expects {in_chans}")
    return arr


def _read_stacked_row(file: str, row: int, ref: str) -> np.ndarray:
    """Row ``row`` of the ``(n, ...)`` array in the ``.npy`` ``file``: its header, then a seek to
    the row and one read (a memory map costs ~3x more set-up for one crop)."""
    with open(file, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
        if len(shape) not in (3, 4) or fortran or dtype.hasobject:
            raise InputError(f"{file}: holds an array of shape {shape}; expected stacked crops (n, H, W, C)")
        if row >= shape[0]:
            raise InputError(f"{ref}: no crop {row}; the file holds {shape[0]}")
        count = int(np.prod(shape[1:]))
        fh.seek(row * count * dtype.itemsize, 1)
        arr = np.fromfile(fh, dtype, count)
    if arr.size != count:
        raise InputError(f"{ref}: cannot read crop (the file ends inside it)")
    return arr.reshape(shape[1:])


def pad_to_square(img: np.ndarray) -> np.ndarray:
    """Zero-pad an HxWxC array to a centred square (max(H, W) on each side); dtype kept."""
    h, w = img.shape[:2]
    s = max(h, w)
    if h == w:
        return img
    top, left = (s - h) // 2, (s - w) // 2
    pad = [(top, s - h - top), (left, s - w - left)] + [(0, 0)] * (img.ndim - 2)
    return np.pad(img, pad)


def preprocess_crop(
    crop: np.ndarray,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    augment: A.Compose | None = None,
) -> np.ndarray:
    """HxWxC uint8/uint16 crop -> float32 CxSxS network input (see the module docstring)."""
    img = to_unit_float(resize_square(pad_to_square(crop), image_size))
    if augment is not None:
        img = augment(image=img)["image"]
    img = (img - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)


def channel_stats(crops: Sequence[np.ndarray], image_size: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of preprocessed (padded, resized to ``image_size``, unit-scaled) samples."""
    if not crops:
        raise InputError("no samples to compute channel statistics from")
    c = crops[0].shape[2]
    total = np.zeros(c, np.float64)
    total_sq = np.zeros(c, np.float64)
    n = 0
    for crop in crops:
        img = to_unit_float(resize_square(pad_to_square(crop), image_size)).reshape(-1, c).astype(np.float64)
        total += img.sum(0)
        total_sq += (img**2).sum(0)
        n += img.shape[0]
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean**2, 0.0))
    std = np.where(std < 1e-6, 1.0, std)  # an empty channel must not divide by zero
    return [float(v) for v in mean], [float(v) for v in std]


def build_augment(gain: float = 0.1) -> A.Compose:
    """Training augmentation on a unit-float HxWxC image: the 8 dihedral views and a per-channel gain.

    Cells have no preferred orientation, so flips, transposes and rot90 are label-preserving;
    ``gain`` scales each channel by U(1-gain, 1+gain) with p=0.5 (stain and exposure vary
    between fields). ``gain=0`` disables the intensity change.
    """
    ops: list[A.BasicTransform] = [
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.Transpose(p=0.5),
        A.RandomRotate90(p=0.5),
    ]
    if gain > 0:
        ops.append(A.MultiplicativeNoise(multiplier=(1.0 - gain, 1.0 + gain), per_channel=True, p=0.5))
    compose = A.Compose(ops)
    seed_augment(compose, 0)
    return compose


def seed_augment(compose: A.Compose, seed: int) -> None:
    """Make ``compose``'s next draws depend on ``seed`` only.

    Not ``compose.set_random_seed(seed)`` (nor ``A.Compose(..., seed=s)``): in albumentations
    2.0.8 that gives every transform its own generator with the *same* seed, so their draws are
    identical and e.g. both flips, the transpose and the rot90 fire together or not at all (2 of
    the 8 dihedral views would dominate). One shared generator pair keeps them independent.
    """
    compose.set_random_state(np.random.default_rng(seed), random.Random(seed))


# --------------------------------------------------------------------------- input kinds


def _normalise(img: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Unit-float HxWxC -> float32 CxHxW standardised per channel."""
    img = (img - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)


@dataclass(frozen=True)
class CropInput:
    """Cell crops: padded to a square and resized to ``image_size`` (see the module docstring)."""

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def stats_size(self) -> int:
        """The side samples are resized to before channel statistics are measured."""
        return self.image_size

    def train_view(self, crop: np.ndarray, augment: A.Compose | None = None,
                   rng: np.random.Generator | None = None) -> np.ndarray:
        """One float32 CxSxS network input (augmented when ``augment`` is given)."""
        return preprocess_crop(crop, self.image_size, self.mean, self.std, augment)

    def predict_views(self, crop: np.ndarray) -> np.ndarray:
        """(1, C, S, S) float32: a crop is seen once."""
        return preprocess_crop(crop, self.image_size, self.mean, self.std)[None]


@dataclass(frozen=True)
class FieldInput:
    """Whole fields: padded to a square, resized to ``resize``, then crops of ``image_size``.

    Training takes one crop at a random position (the centre without ``rng``); prediction takes
    ``tiles`` x ``tiles`` crops spread evenly from corner to corner (overlapping when the field is
    not a multiple of ``image_size``), whose scores are averaged. ``resize == image_size`` is the
    whole field, resized.
    """

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int
    tiles: int = 1

    def __post_init__(self) -> None:
        if self.resize < self.image_size:
            raise ValueError(f"field resize ({self.resize}) must be >= image_size ({self.image_size})")
        if self.tiles < 1 or (self.tiles > 1 and self.resize == self.image_size):
            raise ValueError(f"tiles must be >= 1, and 1 when the field is resized to image_size; got {self.tiles}")

    @property
    def stats_size(self) -> int:
        return self.resize

    def _resized(self, field: np.ndarray) -> np.ndarray:
        return resize_square(pad_to_square(field), self.resize)

    def _crop(self, img: np.ndarray, top: int, left: int, augment: A.Compose | None = None) -> np.ndarray:
        s = self.image_size
        unit = to_unit_float(img[top:top + s, left:left + s])
        if augment is not None:
            unit = augment(image=unit)["image"]
        return _normalise(unit, self.mean, self.std)

    def train_view(self, field: np.ndarray, augment: A.Compose | None = None,
                   rng: np.random.Generator | None = None) -> np.ndarray:
        """One float32 CxSxS crop of the resized field: random with ``rng``, else the centre."""
        img = self._resized(field)
        span = self.resize - self.image_size
        if rng is None:
            top = left = span // 2
        else:
            top, left = (int(v) for v in rng.integers(0, span + 1, size=2))
        return self._crop(img, top, left, augment)

    def predict_views(self, field: np.ndarray) -> np.ndarray:
        """(tiles**2, C, S, S) float32 crops on an even grid (one centre crop for ``tiles == 1``)."""
        img = self._resized(field)
        span = self.resize - self.image_size
        starts = [span // 2] if self.tiles == 1 else np.linspace(0, span, self.tiles).round().astype(int).tolist()
        return np.stack([self._crop(img, t, left) for t in starts for left in starts])


InputKind = CropInput | FieldInput
INPUT_KINDS: Registry[type] = Registry("input kind")
INPUT_KINDS["cell_crop"] = CropInput
INPUT_KINDS["field"] = FieldInput


def make_input(recipe_input: dict, image_size: int, mean: Sequence[float], std: Sequence[float]) -> InputKind:
    """The input kind a model's recipe names (its ``"input"`` entry), with the model's size and statistics."""
    kind = recipe_input["kind"]
    cls = INPUT_KINDS[kind]
    extra = {"resize": int(recipe_input.get("resize") or image_size), "tiles": int(recipe_input.get("tiles", 1))} \
        if cls is FieldInput else {}
    return cls(int(image_size), tuple(float(v) for v in mean), tuple(float(v) for v in std), **extra)


# --------------------------------------------------------------------------- readers


class CropFiles(Sequence):
    """``.npy`` crops by path as a sequence of HxWxC arrays (read on access, so in loader workers)."""

    def __init__(self, paths: Sequence[str | Path], in_chans: int | None = None) -> None:
        self.paths = [str(p) for p in paths]
        self.in_chans = in_chans

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        return load_crop(self.paths[i], self.in_chans)


class FieldFiles(Sequence):
    """Fields of one folder as a sequence of HxWxC arrays, read through a layout (by name, so picklable).

    With a ``normaliser`` (:class:`cellloc.plate_norm.FieldNormaliser`, e.g. RxRx1's per-plate
    statistics) each field comes out standardised on its reference uint16 scale.
    """

    def __init__(self, layout: str, folder: str | Path, field_ids: Sequence[str], channels: Sequence[str],
                 normaliser: FieldNormaliser | None = None) -> None:
        self.layout = layout
        self.folder = str(folder)
        self.field_ids = list(field_ids)
        self.channels = tuple(channels)
        self.normaliser = None if normaliser is None or normaliser.method == "none" else normaliser.subset(self.field_ids)

    def __len__(self) -> int:
        return len(self.field_ids)

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        image = LAYOUTS[self.layout].read_field(self.folder, self.field_ids[i], self.channels)
        return image if self.normaliser is None else self.normaliser(self.field_ids[i], image)


class ChainedFields(Sequence):
    """Several field readers read as one: ``chained[i]`` runs through them in order (e.g. a fold's
    training fields, then pseudo-labelled test fields from another folder)."""

    def __init__(self, readers: Sequence[Sequence[np.ndarray]]) -> None:
        self.readers = list(readers)
        self.starts = np.cumsum([0, *map(len, self.readers)])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        if not 0 <= i < len(self):
            raise IndexError(i)
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.readers[k][i - int(self.starts[k])]


# --------------------------------------------------------------------------- Dataset and sampler


class SampleDataset(Dataset):
    """Samples -> ``{"image", "targets", "index"}`` dicts (tez passes batches as ``model(**batch)``).

    ``reader[i]`` is sample ``i`` as an HxWxC array, ``view`` an input kind. ``dataset[i]`` gives
    the unaugmented view of sample ``i``; ``dataset[(i, seed)]`` (what :class:`EpochSampler`
    yields) augments it (and places a field's crop) with randomness drawn from ``seed`` only.
    ``extras`` are further per-sample arrays passed on under their names (e.g. ``weight``: a
    sample's loss weight; ``group``: the field a cell belongs to; ``image_targets``: its field's labels).
    """

    def __init__(self, reader: Sequence[np.ndarray], targets: np.ndarray | None, view: InputKind,
                 augment: A.Compose | None = None, extras: dict[str, np.ndarray] | None = None) -> None:
        if targets is not None and len(targets) != len(reader):
            raise ValueError(f"{len(reader)} samples but {len(targets)} target rows")
        for name, values in (extras or {}).items():
            if len(values) != len(reader):
                raise ValueError(f"{len(reader)} samples but {len(values)} {name} values")
        self.reader = reader
        self.targets = None if targets is None else np.asarray(targets, np.float32)
        self.view = view
        self.augment = augment
        self.extras = {k: np.asarray(v) for k, v in (extras or {}).items()}

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = (key, None) if not isinstance(key, tuple) else key
        augment, rng = None, None
        if self.augment is not None and seed is not None:
            augment = self.augment
            seed_augment(augment, int(seed))
            rng = np.random.default_rng([int(seed), 1])
        image = self.view.train_view(self.reader[index], augment, rng)
        item = {"image": torch.from_numpy(image), "index": torch.tensor(index, dtype=torch.long)}
        if self.targets is not None:
            item["targets"] = torch.from_numpy(self.targets[index])
        for name, values in self.extras.items():
            item[name] = torch.as_tensor(values[index])
        return item


class CellCropDataset(SampleDataset):
    """:class:`SampleDataset` of ``.npy`` crops by path, seen as :class:`CropInput`."""

    def __init__(
        self,
        paths: Sequence[str],
        targets: np.ndarray | None,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: A.Compose | None = None,
        in_chans: int | None = None,
    ) -> None:
        view = CropInput(int(image_size), tuple(float(v) for v in mean), tuple(float(v) for v in std))
        super().__init__(CropFiles(paths, in_chans), targets, view, augment)


class EpochSampler(Sampler):
    """Yields ``(index, augmentation_seed)``; order and seeds depend only on (seed, epoch).

    Call :meth:`set_epoch` before each epoch. Because nothing depends on worker processes or on
    how many epochs this process has already run, ``--resume`` reproduces the uninterrupted run.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        self.n = int(n)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        seeds = rng.integers(0, 2**31 - 1, size=self.n)
        return iter([(int(i), int(s)) for i, s in zip(order, seeds)])


class FieldBatchSampler(Sampler):
    """Batches of the cells of a few fields: what a model with an image head pooled over a field's cells needs.

    ``groups`` (n,) gives each sample's field (any integer code). Each epoch every field's cells
    are shuffled and split into near-equal chunks of at most ``cells_per_field``; the chunks are
    shuffled and ``fields_per_batch`` of them make a batch, so every cell is seen once per epoch
    (as with :class:`EpochSampler`) and a batch holds ``fields_per_batch`` fields. Yields lists of
    ``(index, augmentation_seed)``; order and seeds depend only on (seed, epoch).
    """

    def __init__(self, groups: Sequence[int] | np.ndarray, cells_per_field: int, fields_per_batch: int, seed: int) -> None:
        if cells_per_field < 1 or fields_per_batch < 1:
            raise ValueError(f"cells_per_field and fields_per_batch must be >= 1, got {cells_per_field}, {fields_per_batch}")
        codes = np.asarray(groups)
        self.members = [np.flatnonzero(codes == g) for g in np.unique(codes)]
        self.cells_per_field = int(cells_per_field)
        self.fields_per_batch = int(fields_per_batch)
        self.seed = int(seed)
        self.epoch = 0
        self.n = len(codes)
        self.n_chunks = sum(-(-len(m) // self.cells_per_field) for m in self.members)
        self.batch_size = self.cells_per_field * self.fields_per_batch  # nominal (tez reads it); batches vary around it

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        # a lone last chunk joins the batch before it (a one-cell batch would break batch norm)
        full, rest = divmod(self.n_chunks, self.fields_per_batch)
        return full + (rest > 1 or (rest == 1 and full == 0))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        chunks: list[np.ndarray] = []
        for m in self.members:
            chunks += np.array_split(rng.permutation(m), -(-len(m) // self.cells_per_field))
        order = rng.permutation(len(chunks))
        seeds = rng.integers(0, 2**31 - 1, size=self.n)
        batches = [order[k:k + self.fields_per_batch] for k in range(0, len(order), self.fields_per_batch)]
        if len(batches) > 1 and len(batches[-1]) == 1:
            lone = batches.pop()
            batches[-1] = np.concatenate([batches[-1], lone])
        return iter([[(int(i), int(seeds[i])) for c in b for i in chunks[c]] for b in batches])


# --------------------------------------------------------------------------- synthetic crops


# Green-channel patterns for a few classes, so a smoke run has something learnable per cell.
SYNTH_CLASSES: tuple[int, ...] = (0, 2, 12, 13, 14, 16)


def _synthetic_crop(
    rng: np.random.Generator, classes: Sequence[int], dtype: np.dtype, size_range: tuple[int, int] = (40, 90)
) -> np.ndarray:
    """One HxWx4 cell: red/yellow cytoplasm, blue nucleus, green drawn from ``classes``."""
    h, w = (int(v) for v in rng.integers(size_range[0], size_range[1], size=2))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = h / 2 + rng.normal(0, 2), w / 2 + rng.normal(0, 2)
    ry, rx = h / 2 - 2, w / 2 - 2
    r = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    cell = r < 1.0
    nucleus = r < 0.45
    cyto = cell & ~nucleus
    green = rng.normal(0.03, 0.01, (h, w)).clip(0)
    for k in classes:
        if k == 0:  # nucleoplasm: fill the nucleus
            green += 0.6 * nucleus
        elif k == 2:  # nucleoli: a few bright spots inside the nucleus
            for _ in range(3):
                a = rng.uniform(0, 2 * np.pi)
                d = rng.uniform(0, 0.25)
                sy, sx = cy + d * ry * np.sin(a), cx + d * rx * np.cos(a)
                green += 0.9 * (((yy - sy) ** 2 + (xx - sx) ** 2) < 6)
        elif k == 12:  # centrosome: one bright dot beside the nucleus
            a = rng.uniform(0, 2 * np.pi)
            sy, sx = cy + 0.6 * ry * np.sin(a), cx + 0.6 * rx * np.cos(a)
            green += 1.0 * (((yy - sy) ** 2 + (xx - sx) ** 2) < 5)
        elif k == 13:  # plasma membrane: the cell's rim
            green += 0.7 * ((r > 0.85) & (r < 1.0))
        elif k == 14:  # mitochondria: many small dots in the cytoplasm
            green += 0.6 * (cyto & (rng.random((h, w)) < 0.12))
        elif k == 16:  # cytosol: fill the cytoplasm
            green += 0.4 * cyto
    red = 0.3 * cyto * rng.uniform(0.6, 1.0) + rng.normal(0, 0.02, (h, w))
    blue = 0.7 * nucleus * rng.uniform(0.7, 1.0)
    yellow = 0.3 * cell * rng.uniform(0.6, 1.0)
    img = np.stack([red, green, blue, yellow], -1).clip(0, 1) * cell[..., None]
    scale = 255 if np.dtype(dtype) == np.uint8 else 65535
    return (img * scale).round().astype(dtype)


def write_synthetic_cells(
    folder: str | Path,
    n_fields: int = 50,
    cells_per_field: int = 10,
    n_folds: int = 5,
    dtype: str = "uint8",
    seed: int = 0,
    size_range: tuple[int, int] = (40, 90),
    negative_share: float = 0.0,
) -> Path:
    """Write crops with class-dependent green patterns and a ``folds.csv`` with weak and true labels.

    Each field draws 1-3 classes from :data:`SYNTH_CLASSES` (Negative, 18, when none); each of
    its cells shows a non-empty subset of them; the field's ``Label`` is the union of its cells'
    labels (weak, as in HPA) and ``TrueLabel`` the cell's own. About 5% of cells get an empty
    ``TrueLabel`` (a segmented cell that matched no true cell). Crop sides are drawn from
    ``size_range`` pixels (HPA cells at full resolution are ~100-300 px). With ``negative_share``,
    each cell of a field with classes shows none of them (Negative, no green pattern) with that
    chance, and the field's label then carries Negative beside them. For smoke runs, tests
    and benchmarks; the real data come from the synth/crop stages. Returns the CSV path.
    """
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    rows = []
    for f in range(n_fields):
        field_id = f"synth{f:04d}"
        n_cls = int(rng.integers(0, 4))
        field_classes = sorted(rng.choice(SYNTH_CLASSES, size=n_cls, replace=False).tolist()) if n_cls else []
        cell_labels = []
        for c in range(cells_per_field):
            if field_classes:
                k = int(rng.integers(1, len(field_classes) + 1))
                cls = sorted(rng.choice(field_classes, size=k, replace=False).tolist())
                if negative_share and rng.random() < negative_share:
                    cls = []
            else:
                cls = []
            cell_labels.append(cls)
        union = sorted(set().union(*map(set, cell_labels))) if field_classes else []
        if union and not all(cell_labels):
            union.append(18)
        weak = format_label(union) if union else "18"
        for c, cls in enumerate(cell_labels):
            crop = _synthetic_crop(rng, cls, np.dtype(dtype), size_range)
            rel = f"crops/{field_id}_{c}.npy"
            write_npy(folder / rel, crop)
            true = format_label(cls) if cls else "18"
            rows.append(
                {
                    "ID": field_id,
                    "cell_id": c + 1,
                    "Label": weak,
                    "crop": rel,
                    "fold": f % n_folds,
                    "TrueLabel": "" if rng.random() < 0.05 else true,
                }
            )
    path = folder / "folds.csv"
    write_csv(path, pd.DataFrame(rows))
    return path

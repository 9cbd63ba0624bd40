"""Channel files <-> arrays, label CSVs, and atomic writes.

A *field* is one microscope image stored as one grey-level file per channel, named
``{ID}_{channel}.{ext}`` (the Kaggle HPA layout). Reading keeps the bit depth: uint8 stays
uint8 and uint16 stays uint16 (imageio would silently drop 16-bit RGBA to 8-bit, so OpenCV's
``IMREAD_UNCHANGED`` decoder is used). Every problem with a file raises :class:`InputError`
with the file's name and the problem on one line.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from .classes import CHANNEL_SETS
from .errors import InputError

HPA_CHANNELS: tuple[str, ...] = CHANNEL_SETS["hpa"]
IMAGE_EXTS: tuple[str, ...] = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
SUPPORTED_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))


# --------------------------------------------------------------------------- images


MAX_PIXELS_ENV = "CELLLOC_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 16384 * 16384  # 5x the largest HPA field side (3072) squared; 512 MiB at uint16


def max_pixels() -> int:
    """Pixels one channel image may hold (width x height): ``$CELLLOC_MAX_PIXELS`` or 16384^2."""
    try:
        return max(1, int(os.environ.get(MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS)))
    except ValueError:
        raise InputError(f"${MAX_PIXELS_ENV}: expected a whole number of pixels, got "
                         f"{os.environ[MAX_PIXELS_ENV]!r}") from None


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from an image's header, without decoding it; None when not read.

    PNG from its IHDR chunk; TIFF and JPEG from Pillow's header parse (lazy: no pixels).
    """
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    try:
        import io

        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:  # noqa: BLE001 - an unreadable header is the decoder's to report
        return None


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode PNG/TIFF/JPEG bytes to an array with the file's own bit depth.

    The size in the header is checked first: a small compressed file can declare a huge image
    (an 875 KB PNG of zeros decodes to 30000 x 30000 = 900 MB), so one over :func:`max_pixels`
    is refused before any pixel is decoded.
    """
    if not data:
        raise InputError(f"{name}: file is empty")
    size, limit = image_size(data), max_pixels()
    if size is not None and size[0] * size[1] > limit:
        raise InputError(f"{name}: {size[0]} x {size[1]} pixels, over the limit of {limit:,} per image "
                         f"(set {MAX_PIXELS_ENV} to allow more)")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise InputError(f"{name}: cannot decode image (corrupt or truncated file?)")
    return img


def read_channel(path: str | Path) -> np.ndarray:
    """Read one channel file as a 2-D uint8 or uint16 array (HxW).

    A colour file whose colour planes are identical is accepted as grey; any other colour
    file is rejected, because which plane holds the stain would be a guess.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    return grey_channel(decode_image(data, str(path)), str(path))


def grey_channel(img: np.ndarray, name: str) -> np.ndarray:
    """A decoded channel image as a 2-D uint8/uint16 array: HxW, or colour planes that are all equal.

    A colour image whose planes differ is refused, because which plane holds the stain would be
    a guess; ``name`` (a file or upload field) starts the one-line message.
    """
    if img.ndim == 3:
        planes = img[..., :3]
        if img.shape[2] == 4 and not np.all(img[..., 3] == img[..., 3].flat[0]):
            raise InputError(f"{name}: has a varying alpha plane; expected a single-channel image")
        if img.shape[2] < 3 or not (
            np.array_equal(planes[..., 0], planes[..., 1]) and np.array_equal(planes[..., 0], planes[..., 2])
        ):
            raise InputError(f"{name}: is a colour image ({img.shape[2]} planes); expected one grey channel per file")
        img = np.ascontiguousarray(planes[..., 0])
    if img.ndim != 2:
        raise InputError(f"{name}: has shape {img.shape}; expected a 2-D grey image")
    if img.dtype not in SUPPORTED_DTYPES:
        raise InputError(f"{name}: unsupported pixel type {img.dtype}; expected uint8 or uint16")
    return img


def find_channel_file(folder: Path, image_id: str, channel: str, exts: Sequence[str] = IMAGE_EXTS) -> Path:
    """Path of ``{ID}_{channel}.{ext}`` in ``folder``; exactly one extension may exist."""
    hits = [folder / f"{image_id}_{channel}{ext}" for ext in exts if (folder / f"{image_id}_{channel}{ext}").exists()]
    if not hits:
        raise InputError(f"{folder / (image_id + '_' + channel + '.png')}: missing channel file for field {image_id}")
    if len(hits) > 1:
        raise InputError(f"{folder}: field {image_id} has several {channel!r} files ({', '.join(h.name for h in hits)})")
    return hits[0]


def read_field(
    folder: str | Path,
    image_id: str,
    channels: Sequence[str] = HPA_CHANNELS,
    exts: Sequence[str] = IMAGE_EXTS,
) -> np.ndarray:
    """Read a field's channel files and stack them as HxWxC in the order of ``channels``.

    All channels must share one size and one dtype (uint8 or uint16); the dtype is kept.
    """
    folder = Path(folder)
    if not channels:
        raise InputError("no channels requested")
    arrays = []
    for ch in channels:
        path = find_channel_file(folder, image_id, ch, exts)
        arr = read_channel(path)
        if arrays:
            first = arrays[0]
            if arr.shape != first.shape:
                raise InputError(
                    f"{path}: size {arr.shape[1]}x{arr.shape[0]} differs from {channels[0]} channel "
                    f"({first.shape[1]}x{first.shape[0]}) of field {image_id}"
                )
            if arr.dtype != first.dtype:
                raise InputError(f"{path}: pixel type {arr.dtype} differs from {channels[0]} channel ({first.dtype})")
        arrays.append(arr)
    # OpenCV interleaves the planes ~5x faster than np.stack(arrays, -1) (a 2048^2 field: 2 ms against 10)
    return cv2.merge(arrays).reshape(*arrays[0].shape, len(arrays))


@dataclass
class FieldListing:
    """What a folder holds: complete fields, fields missing channels, and stray image files."""

    ids: list[str]
    incomplete: dict[str, list[str]] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)

    def failures(self) -> list[tuple[str, str]]:
        """(ID, reason) for each field that lacks channel files: what a run reports as failed."""
        return [(i, f"missing channel file(s): {', '.join(m)}") for i, m in self.incomplete.items()]


def dataset_root(fields_folder: str | Path) -> Path:
    """The dataset folder of a folder of fields: the parent of ``train/`` or ``test/``, else the folder itself.

    ``make_data.py`` writes ``<dataset>/{train,test}/`` beside ``<dataset>/truth/``; outputs are
    named after the dataset, so ``input/synth/train`` goes to ``output/synth``.
    """
    p = Path(fields_folder)
    return p.parent if p.name in ("train", "test") else p


def list_fields(folder: str | Path, channels: Sequence[str] = HPA_CHANNELS, exts: Sequence[str] = IMAGE_EXTS) -> FieldListing:
    """Find field IDs in ``folder`` from their channel file names.

    IDs may themselves contain underscores (``57_F11_1``), so a name is split at the last
    ``_{channel}`` suffix of a known channel. Image files with no known channel suffix are
    listed in ``unmatched`` (an extra channel such as ``_purple`` or a mask) and skipped.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    pattern = re.compile(r"^(?P<id>.+)_(?P<ch>" + "|".join(map(re.escape, channels)) + r")$")
    seen: dict[str, set[str]] = {}
    unmatched: list[str] = []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.suffix.lower() not in exts:
            continue
        m = pattern.match(p.stem)
        if m is None:
            unmatched.append(p.name)
            continue
        seen.setdefault(m["id"], set()).add(m["ch"])
    ids, incomplete = [], {}
    for image_id in sorted(seen):
        missing = [c for c in channels if c not in seen[image_id]]
        if missing:
            incomplete[image_id] = missing
        else:
            ids.append(image_id)
    return FieldListing(ids, incomplete, unmatched)


def to_unit_float(img: np.ndarray) -> np.ndarray:
    """Scale an integer image to float32 in [0, 1] by its dtype's range (uint8 /255, uint16 /65535)."""
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 65535.0
    if np.issubdtype(img.dtype, np.floating):
        return img.astype(np.float32, copy=False)
    raise ValueError(f"unsupported dtype {img.dtype}")


# --------------------------------------------------------------------------- labels


def parse_label(text: object, num_classes: int, where: str = "label") -> list[int]:
    """Parse a pipe-separated class-id string (``"13|16"``) into a sorted list of unique ids."""
    if text is None or (isinstance(text, float) and np.isnan(text)):
        raise InputError(f"{where}: empty label")
    s = str(text).strip()
    if not s:
        raise InputError(f"{where}: empty label")
    ids = []
    for part in s.split("|"):
        part = part.strip()
        if not re.fullmatch(r"\d+", part):
            raise InputError(f"{where}: malformed label {s!r} (expected class ids separated by '|')")
        k = int(part)
        if k >= num_classes:
            raise InputError(f"{where}: unknown class id {k} in {s!r} (valid: 0..{num_classes - 1})")
        ids.append(k)
    return sorted(set(ids))


def format_label(ids: Sequence[int]) -> str:
    """Inverse of :func:`parse_label`: sorted ids joined by ``|``."""
    return "|".join(str(int(i)) for i in sorted(set(int(i) for i in ids)))


def allow_csv_fields(n_chars: int) -> None:
    """Let the csv module read fields of up to ``n_chars`` characters (it refuses fields over
    128 KiB by default, and one submission row's PredictionString can be longer)."""
    csv.field_size_limit(max(csv.field_size_limit(), int(n_chars) + 1))


def read_csv(path: str | Path, required: Sequence[str] = ()) -> pd.DataFrame:
    """Read a CSV as strings, failing in one line when it is missing, empty, ragged or lacks columns.

    Every row must have as many fields as the header: a ragged row is an error naming its
    line, not a row shifted into other columns. Blank lines are skipped. Each row's physical
    line number in the file (1 = the header; a quoted field may span lines, the row's first
    counts) is kept for error messages: see :func:`row_lines`.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a CSV file")
    allow_csv_fields(path.stat().st_size)
    header: list[str] | None = None
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            end = 0
            for row in reader:
                start, end = end + 1, reader.line_num
                if not row:
                    continue
                if header is None:
                    header = row
                    continue
                if len(row) != len(header):
                    raise InputError(
                        f"{path}: line {start}: {len(row)} field(s) where the header ({','.join(header)}) has {len(header)}"
                    )
                rows.append(row)
                lines.append(start)
    except (csv.Error, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot parse CSV ({str(exc).splitlines()[0]})") from None
    if header is None:
        raise InputError(f"{path}: CSV is empty")
    dup = sorted({c for c in header if header.count(c) > 1})
    if dup:
        raise InputError(f"{path}: column {dup[0]!r} appears more than once in the header")
    missing = [c for c in required if c not in header]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(header)})")
    if not rows:
        raise InputError(f"{path}: CSV has a header but no rows")
    df = pd.DataFrame(rows, columns=header, dtype=str)
    df.attrs["lines"] = lines
    return df


def row_lines(df: pd.DataFrame) -> list[int]:
    """Physical line number in its file of each row of a frame from :func:`read_csv`.

    Falls back to ``position + 2`` (a header and no blank lines) for other frames.
    """
    lines = df.attrs.get("lines")
    return list(lines) if lines is not None and len(lines) == len(df) else [i + 2 for i in range(len(df))]


def read_labels(path: str | Path, num_classes: int, id_col: str = "ID", label_col: str = "Label") -> pd.DataFrame:
    """Read an ``ID,Label`` CSV; validate IDs (non-empty, unique) and every label string.

    Returns the frame with ``Label`` normalised (sorted unique ids) and a ``labels`` column of
    ``list[int]``. Errors name the file's physical line.
    """
    df = read_csv(path, (id_col, label_col))
    lines = row_lines(df)
    ids = df[id_col].str.strip()
    if (ids == "").any():
        raise InputError(f"{path}: line {lines[int(np.flatnonzero(ids == '')[0])]}: empty {id_col}")
    dup = np.flatnonzero(ids.duplicated().to_numpy())
    if len(dup):
        first = lines[int(np.flatnonzero((ids == ids.iloc[dup[0]]).to_numpy())[0])]
        raise InputError(f"{path}: line {lines[dup[0]]}: duplicate {id_col} {ids.iloc[dup[0]]!r} (first on line {first})")
    labels = [parse_label(v, num_classes, f"{path}: line {line}") for line, v in zip(lines, df[label_col])]
    df = df.assign(**{id_col: ids, label_col: [format_label(x) for x in labels]})
    df["labels"] = labels
    df.attrs["lines"] = lines
    return df


def multihot(labels: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    """Lists of class ids -> (N, num_classes) uint8 multi-hot matrix."""
    out = np.zeros((len(labels), num_classes), np.uint8)
    for i, ids in enumerate(labels):
        out[i, list(ids)] = 1
    return out


# --------------------------------------------------------------------------- atomic writes


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    A killed run therefore leaves either the old file or the complete new one, never half.
    An ``OSError`` that names no file (a full disk met by a write) or names the temporary file
    is raised again naming ``path``, so the user is told which output could not be written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    except OSError as exc:
        raise _naming_output(exc, path) from None
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as exc:
        raise _naming_output(exc, path) from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _naming_output(exc: OSError, path: Path) -> OSError:
    """``exc`` as it is, unless it names no file or one of ``path``'s temporary files: then the
    same kind of error naming ``path``."""
    named = exc.filename
    if exc.errno is None:  # not a system call's error (a URLError, say): left as it is
        return exc
    if named is None or (Path(named).parent == path.parent and Path(named).name.startswith(f".{path.name}.")):
        return OSError(exc.errno, exc.strerror or str(exc), str(path))  # the errno's own subclass
    return exc


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def encode_png(img: np.ndarray, compression: int = 1, labels: bool = False) -> bytes:
    """PNG bytes of a uint8/uint16 grey (HxW) or colour (HxWx3, RGB order) image (lossless).

    ``labels``: encode for instance labels (long runs of one id, rows much like the row above):
    every row stored as its difference from the one above (the "up" filter) and deflated as runs
    (zlib's RLE strategy), instead of libpng trying its five filters on every row and a general
    match search. For a 2048^2 uint16 mask that is ~15 against ~42 ms, and the file half the size
    (25 against 54 kB); any PNG reader decodes the same pixels.
    """
    if img.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"PNG needs uint8 or uint16, got {img.dtype}")
    if img.ndim == 3:
        img = img[..., ::-1]  # OpenCV writes BGR
    params = [cv2.IMWRITE_PNG_COMPRESSION, compression]
    if labels:
        params += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img), params)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def write_png(path: str | Path, img: np.ndarray, compression: int = 1, labels: bool = False) -> None:
    """Write a uint8/uint16 image as PNG, atomically (see :func:`encode_png`)."""
    write_bytes(path, encode_png(img, compression, labels))


def write_csv(path: str | Path, df: pd.DataFrame) -> None:
    """Write a DataFrame as CSV (no index), atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (a checkpoint or weight file, say)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: str | Path, obj: object) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")


def write_npy(path: str | Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, arr)


# mask format name -> file suffix
MASK_FORMATS: dict[str, str] = {"png": ".png", "npz": ".npz", "tif": ".tif", "roi": ".zip"}
# what find_mask looks for, in this order: the formats that hold the image size (a ROI set does not)
FIELD_MASK_FORMATS: tuple[str, ...] = ("png", "npz", "tif")


def mask_file(folder: str | Path, stem: str, fmt: str) -> Path:
    """``folder/{stem}{suffix}`` for a mask format name (``roi`` -> ``.zip``, an ImageJ ROI set)."""
    try:
        return Path(folder) / f"{stem}{MASK_FORMATS[fmt]}"
    except KeyError:
        raise InputError(f"unknown mask format {fmt!r}; known: {', '.join(MASK_FORMATS)}") from None


def write_mask(path: str | Path, labels: np.ndarray, pixel_size_um: float | None = None) -> None:
    """Write instance labels (int HxW, 0 = background) atomically, in the format of the suffix.

    * ``.png``: uint16 PNG encoded for labels (fast to write, small; see :func:`encode_png`); opens in any image viewer.
    * ``.npz``: compressed, key ``labels``; keeps any integer dtype (more than 65,535 instances).
    * ``.tif``/``.tiff``: deflate-compressed TIFF, ImageJ-flavoured uint16 (uint32 plain TIFF above
      65,535 ids), with ``pixel_size_um`` as its resolution in micrometres when given; opens with
      its scale in Fiji, QuPath and napari.
    * ``.zip``: an ImageJ ROI set, one traced polygon per label named by its id (``7``; a second
      piece of the same label ``7-2``), along pixel edges so it fills back to the same pixels
      (holes inside a label are filled). Fiji's ROI Manager and QuPath open it over the image.
    """
    path = Path(path)
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 2-D integer array, got {labels.dtype} {labels.shape}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, labels=labels)
    elif suffix in (".tif", ".tiff"):
        _write_tiff_mask(path, labels, pixel_size_um)
    elif suffix == ".zip":
        _write_roi_set(path, labels)
    else:
        write_png(path, labels, labels=True)


def _write_tiff_mask(path: Path, labels: np.ndarray, pixel_size_um: float | None) -> None:
    import tifffile

    top = int(labels.max(initial=0))
    if int(labels.min(initial=0)) < 0:
        raise ValueError("labels must be non-negative")
    imagej = top <= 65535  # ImageJ's TIFFs hold 8/16-bit integers or 32-bit float, not uint32
    data = labels.astype(np.uint16 if imagej else np.uint32, copy=False)
    kwargs: dict = {"compression": "zlib", "imagej": imagej}
    if pixel_size_um:
        kwargs["resolution"] = (1.0 / pixel_size_um, 1.0 / pixel_size_um)
        if imagej:
            kwargs["metadata"] = {"unit": "um"}
        else:
            kwargs["resolutionunit"] = "CENTIMETER"
            kwargs["resolution"] = (1e4 / pixel_size_um, 1e4 / pixel_size_um)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, data, **kwargs)


def _write_roi_set(path: Path, labels: np.ndarray) -> None:
    from roifile import ROI_TYPE, ImagejRoi, roiwrite

    from .outlines import label_outlines

    rois = []
    for label, pieces in label_outlines(labels).items():
        for k, points in enumerate(pieces):
            roi = ImagejRoi.frompoints(points, name=f"{label}" if k == 0 else f"{label}-{k + 1}")
            roi.roitype = ROI_TYPE.TRACED  # outlines along pixel edges, as ImageJ's wand draws them
            rois.append(roi)
    with atomic_path(path) as tmp:
        tmp.unlink()  # roiwrite appends to an existing zip
        if rois:
            roiwrite(tmp, rois)
        else:  # no cells: an empty set, still a zip
            zipfile.ZipFile(tmp, "w").close()


def read_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read an instance-label mask written by :func:`write_mask` (0 = background), by suffix.

    PNG uint8/uint16; ``.npz`` with one 2-D integer array; TIFF with one 2-D integer plane; an
    ImageJ ROI set (``.zip`` or a single ``.roi``) filled into uint16 labels of ``shape`` (H, W),
    a ROI's id from its name (``7`` or ``7-2``) else its position, later ROIs over earlier ones.
    A ROI set does not record the image size: without ``shape`` the labels end at the ROIs' extent.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".zip", ".roi"):
        return _read_roi_set(path, shape)
    if suffix in (".tif", ".tiff"):
        arr = _read_tiff_mask(path)
    elif suffix != ".npz":
        return read_channel(path)
    else:
        arr = _read_npz_mask(path)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{path}: mask must be a 2-D integer array, got {arr.dtype} {arr.shape}")
    return arr


def _read_npz_mask(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = list(data.keys())
            if "labels" not in keys and len(keys) != 1:
                raise InputError(f"{path}: expected one array named 'labels', found {keys or 'none'}")
            return data["labels" if "labels" in keys else keys[0]]
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: not a readable .npz mask ({' '.join(str(exc).split())})") from None


@contextmanager
def quiet_tifffile() -> Iterator[None]:
    """Silence tifffile's logged warnings for a block: about a damaged file they would print
    beside the one-line error that reports it."""
    import logging

    log = logging.getLogger("tifffile")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _read_tiff_mask(path: Path) -> np.ndarray:
    import tifffile

    try:
        with quiet_tifffile():
            arr = tifffile.imread(path)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (OSError, ValueError, tifffile.TiffFileError) as exc:
        raise InputError(f"{path}: not a readable TIFF mask ({' '.join(str(exc).split())})") from None
    if arr.size == 0:
        raise InputError(f"{path}: not a readable TIFF mask (no image in it)")
    return np.squeeze(arr) if arr.ndim > 2 else arr


def _read_roi_set(path: Path, shape: tuple[int, int] | None) -> np.ndarray:
    from roifile import ROI_TYPE, roiread

    from .outlines import fill_outline

    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        rois = roiread(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: not a readable ImageJ ROI file ({' '.join(str(exc).split())})") from None
    rois = rois if isinstance(rois, list) else [rois]
    polygons = []
    for k, roi in enumerate(rois):
        if roi.roitype in (ROI_TYPE.RECT, ROI_TYPE.OVAL) and not roi.subpixelresolution:
            x0, y0, x1, y1 = roi.left, roi.top, roi.right, roi.bottom
            if roi.roitype == ROI_TYPE.RECT:
                pts = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)
            else:
                t = np.linspace(0, 2 * np.pi, 4 * max(8, x1 - x0 + y1 - y0), endpoint=False)
                pts = np.stack([(x0 + x1) / 2 + (x1 - x0) / 2 * np.cos(t), (y0 + y1) / 2 + (y1 - y0) / 2 * np.sin(t)], 1)
        else:
            pts = np.asarray(roi.coordinates(), np.float64).reshape(-1, 2)
        name = (roi.name or "").split("-")[0]
        polygons.append((int(name) if name.isdigit() else k + 1, pts))
    if shape is None:
        extent = [np.ceil(p.max(axis=0)) for _, p in polygons if len(p)]
        width, height = (int(v) for v in np.max(extent, axis=0)) if extent else (0, 0)
        shape = (height, width)
    top = max((label for label, _ in polygons), default=0)
    out = np.zeros(shape, np.uint16 if top <= 65535 else np.uint32)
    for label, pts in polygons:
        out[fill_outline(pts, shape)] = label
    return out


def find_mask(folder: str | Path, stem: str) -> Path | None:
    """``folder/{stem}`` in the first of :data:`FIELD_MASK_FORMATS` that exists (PNG first); None if none."""
    for fmt in FIELD_MASK_FORMATS:
        path = mask_file(folder, stem, fmt)
        if path.exists():
            return path
    return None

"""Cell masks <-> submission text, the streaming submission writer, and the checker.

A submission is a CSV ``ID,ImageWidth,ImageHeight,PredictionString``. The PredictionString
holds space-separated triples ``class confidence mask``, one per (cell, class), and ``mask``
is the cell's binary mask over the whole field as COCO compressed RLE (what pycocotools
``mask.encode`` gives for a Fortran-ordered uint8 HxWx1 array), its ``counts`` bytes
compressed with zlib at level 9 and then base64-encoded.

The run lengths are computed here with numpy straight from a field's label image, for all of
its cells in one pass, instead of building one full-size Fortran-ordered mask per cell for
pycocotools: a C-ordered 2048^2 mask needs a ~20 ms transposing copy before pycocotools can
encode it, while finding every cell's runs costs a few milliseconds. The bytes are identical
to pycocotools' (the tests compare them). Decoding validates every string before any C code
sees it, so a corrupt submission gives a one-line reason instead of a crash.

Memory stays bounded whatever a submission holds: a mask is decompressed only up to the most
bytes an RLE of its field's size can need (:func:`max_rle_bytes`; a zlib bomb stops there and is
refused), masks are parsed in batches of bounded size, and a row claiming a field larger than
``MAX_FIELD_PIXELS`` is refused before any of its masks is touched.
"""

from __future__ import annotations

import base64
import binascii
import csv
import os
import re
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .fieldio import allow_csv_fields, read_csv, row_lines

COLUMNS: tuple[str, ...] = ("ID", "ImageWidth", "ImageHeight", "PredictionString")
ZLIB_LEVEL = 9
# pycocotools reads a run length of at most 6 five-bit groups without overflowing its int
# shifts (a 7th group would be shifted by 30 bits); its encoder needs 7 only past 2^29 pixels.
_MAX_CHARS_PER_VALUE = 6
# The largest field a submission row may claim (8192 x 8192): far above any microscope field
# (HPA's largest are 3072 x 3072), and what keeps one claimed size from allowing a huge mask.
MAX_FIELD_PIXELS = 1 << 26
# Decoded RLE characters validated per vectorised pass (the pass needs ~110 bytes per character).
_PARSE_BATCH_CHARS = 1 << 18


# --------------------------------------------------------------------------- run lengths


def _column_major_runs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximal runs of equal value in column-major (Fortran) pixel order.

    Returns ``(starts, ends, values)``, three (n_runs,) arrays; ``starts``/``ends`` are int64
    positions in the column-major flattening (end exclusive). No transposed copy is made:
    for a C-ordered image, changes inside a column come from one row-to-row comparison and
    changes across a column boundary from comparing the last row with the first.
    """
    h, w = labels.shape
    if labels.flags.f_contiguous and not labels.flags.c_contiguous:
        flat = labels.T.ravel()  # a view: column-major order is this array's memory order
        starts = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        starts = np.concatenate(([0], starts))
        values = flat[starts]
    else:
        inside = np.flatnonzero(labels[1:] != labels[:-1])  # C order over (h - 1, w)
        row, col = np.divmod(inside, w)
        across = np.flatnonzero(labels[0, 1:] != labels[-1, :-1]) + 1
        starts = np.concatenate(([0], col * h + row + 1, across * h))
        starts.sort()
        col, row = np.divmod(starts, h)
        values = labels[row, col]
    ends = np.append(starts[1:], h * w)
    return starts.astype(np.int64, copy=False), ends, values


def _cell_counts(
    runs: tuple[np.ndarray, np.ndarray, np.ndarray], n_pixels: int, cell_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """COCO run lengths of every cell's mask, concatenated, from a field's runs.

    Each cell's counts alternate background/foreground starting with background, exactly as
    pycocotools' ``rleEncode`` writes them: ``[zeros, ones, zeros, ones, ..., trailing zeros]``
    with the trailing zeros dropped when the mask reaches the last pixel, and ``[h*w]`` for an
    empty mask. ``cell_ids`` must be sorted and unique. Returns ``(counts, bounds)``: int64
    (total,), and (n_cells + 1,) offsets so cell ``i`` owns ``counts[bounds[i]:bounds[i + 1]]``.
    """
    starts, ends, values = runs
    keep = np.isin(values, cell_ids)
    starts, ends, values = starts[keep], ends[keep], values[keep]
    order = np.argsort(values, kind="stable")  # group by cell, keep pixel order inside
    starts, ends, values = starts[order], ends[order], values[order]
    first = np.searchsorted(values, cell_ids, "left")
    last = np.searchsorted(values, cell_ids, "right")
    n_runs = last - first

    has = n_runs > 0
    prev_end = np.concatenate(([0], ends[:-1]))  # end of the cell's previous run ...
    prev_end[first[has]] = 0  # ... or 0 before its first run
    tail = np.full(cell_ids.size, n_pixels, np.int64)
    tail[has] = n_pixels - ends[last[has] - 1]

    # Every cell gets 2 * n_runs + 1 slots; a zero tail after a run is dropped afterwards.
    slots = 2 * n_runs + 1
    offset = np.concatenate(([0], np.cumsum(slots)))
    counts = np.empty(offset[-1], np.int64)
    cell_of_run = np.repeat(np.arange(cell_ids.size), n_runs)
    k = np.arange(starts.size) - first[cell_of_run]
    base = offset[:-1][cell_of_run] + 2 * k
    counts[base] = starts - prev_end
    counts[base + 1] = ends - starts
    counts[offset[1:] - 1] = tail
    drop = np.zeros(counts.size, bool)
    drop[offset[1:] - 1] = has & (tail == 0)
    counts = counts[~drop]
    bounds = offset - np.concatenate(([0], np.cumsum(drop[offset[1:] - 1])))
    return counts, bounds


def _coco_strings(counts: np.ndarray, bounds: np.ndarray) -> list[bytes]:
    """pycocotools' ``rleToString`` for many masks at once.

    Each count after the third is stored as the difference from the count two places back,
    then written little-end first in 5-bit groups as characters ``48 + group``, with bit 0x20
    meaning "more groups follow" and bit 0x10 of the last group carrying the sign.
    """
    n = bounds.size - 1
    local = np.arange(counts.size) - np.repeat(bounds[:-1], np.diff(bounds))
    x = counts.copy()
    delta = local > 2
    x[delta] -= counts[np.flatnonzero(delta) - 2]
    nchar = np.ones(x.size, np.int64)
    for j in range(1, 13):
        lim = 1 << (5 * j - 1)
        nchar += (x >= lim) | (x < -lim)
    value_start = np.concatenate(([0], np.cumsum(nchar)))
    which = np.repeat(np.arange(x.size), nchar)
    group = np.arange(value_start[-1]) - value_start[:-1][which]
    chars = (x[which] >> (5 * group)) & 0x1F
    chars |= (group < nchar[which] - 1) << 5
    chars += 48
    buf = chars.astype(np.uint8).tobytes()
    char_bounds = value_start[bounds]
    return [buf[char_bounds[i] : char_bounds[i + 1]] for i in range(n)]


def _parse_coco_strings(
    strings: Sequence[bytes], n_pixels: np.ndarray | None
) -> tuple[list[np.ndarray | None], list[str | None]]:
    """Inverse of :func:`_coco_strings`, validating each string as it goes.

    Returns per string either its run lengths (int64 array) and ``None``, or ``None`` and the
    reason it is not a mask of ``n_pixels[i]`` pixels (``n_pixels=None`` skips the size
    check). A string is accepted only if pycocotools would read it back to the same counts.
    """
    out: list[np.ndarray | None] = [None] * len(strings)
    errors: list[str | None] = [None] * len(strings)
    lens = np.fromiter((len(s) for s in strings), np.int64, len(strings))
    sb = np.concatenate(([0], np.cumsum(lens)))
    c = np.frombuffer(b"".join(strings), np.uint8).astype(np.int64) - 48
    owner = np.repeat(np.arange(len(strings)), lens)

    def fail(mask_of_strings: np.ndarray, reason: str) -> None:
        for i in np.flatnonzero(mask_of_strings):
            if errors[i] is None:
                errors[i] = reason

    fail(lens == 0, "empty RLE string")
    fail(np.bincount(owner[(c < 0) | (c > 63)], minlength=len(strings)) > 0, "not a COCO RLE string (bad character)")
    nonempty = lens > 0
    last_more = np.zeros(len(strings), bool)
    last_more[nonempty] = (c[sb[1:][nonempty] - 1] & 0x20) != 0
    fail(last_more, "RLE string ends inside a run length")

    good = np.array([e is None for e in errors], bool)
    if not good.any():
        return out, errors
    if not good.all():
        strings = [s for s, g in zip(strings, good) if g]
        lens = lens[good]
        sb = np.concatenate(([0], np.cumsum(lens)))
        c = np.frombuffer(b"".join(strings), np.uint8).astype(np.int64) - 48
        owner = np.repeat(np.arange(len(strings)), lens)
    good_idx = np.flatnonzero(good)

    value_end = np.flatnonzero((c & 0x20) == 0)
    value_start = np.concatenate(([0], value_end[:-1] + 1))
    nchar = value_end - value_start + 1
    group = np.arange(c.size) - np.repeat(value_start, nchar)
    x = np.add.reduceat((c & 0x1F) << (5 * group), value_start)
    negative = (c[value_end] & 0x10) != 0
    x[negative] -= np.left_shift(1, 5 * nchar[negative])
    v_owner = owner[value_start]
    n_values = np.bincount(v_owner, minlength=len(strings))
    vb = np.concatenate(([0], np.cumsum(n_values)))
    local = np.arange(x.size) - vb[v_owner]

    # Undo the "difference from two places back" for counts 3, 4, ...: a cumulative sum along
    # each string's odd chain (1, 3, 5, ...) and even chain (2, 4, ...).
    counts = x.copy()
    for chain in (local % 2 == 1, (local % 2 == 0) & (local >= 2)):
        idx = np.flatnonzero(chain)
        if idx.size == 0:
            continue
        v = x[idx]
        cs = np.cumsum(v)
        seg = v_owner[idx]
        head = np.concatenate(([True], seg[1:] != seg[:-1]))
        base = (cs - v)[head]
        counts[idx] = cs - np.repeat(base, np.diff(np.append(np.flatnonzero(head), idx.size)))

    too_long = np.bincount(v_owner[nchar > _MAX_CHARS_PER_VALUE], minlength=len(strings)) > 0
    negative_count = np.bincount(v_owner[counts < 0], minlength=len(strings)) > 0
    totals = np.bincount(v_owner, weights=counts, minlength=len(strings))
    for j, i in enumerate(good_idx):
        if too_long[j]:
            errors[i] = "RLE run length too large"
        elif negative_count[j]:
            errors[i] = "RLE has a negative run length"
        elif n_pixels is not None and int(totals[j]) != n_pixels[i]:
            errors[i] = f"mask covers {int(totals[j])} pixels but the field has {n_pixels[i]}"
        else:
            out[i] = counts[vb[j] : vb[j + 1]]
    return out, errors


def _pack(coco: bytes) -> str:
    return base64.b64encode(zlib.compress(coco, ZLIB_LEVEL)).decode("ascii")


def max_rle_bytes(n_pixels: int) -> int:
    """The most bytes a COCO RLE string of a mask of ``n_pixels`` pixels can need.

    A mask has at most ``n + 1`` runs (pycocotools writes a zero-length run only first), and a
    run length takes one character plus one per further 5-bit group. Every value after the
    third is the difference ``d`` from the one two places back, and a value needs a 2nd
    character only when ``|d| >= 16``, a 3rd when ``|d| >= 512`` and so on; since the ``|d|``
    sum to at most ``2n``, the extra characters number at most ``2n/16 * 32/31 < n/7``. The
    three values stored whole add at most 18 more.
    """
    n = int(n_pixels)
    return n + 1 + n // 7 + 3 * _MAX_CHARS_PER_VALUE


def _unpack(text: str, max_bytes: int) -> tuple[bytes | None, str | None]:
    """base64 + zlib layers of one mask -> (COCO counts bytes, None) or (None, reason).

    Decompression stops after ``max_bytes + 1`` bytes, so a zlib bomb costs at most that much.
    """
    try:
        packed = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None, "mask is not valid base64"
    inflate = zlib.decompressobj()
    try:
        coco = inflate.decompress(packed, max_bytes + 1)
    except zlib.error:
        return None, "mask is not zlib-compressed data"
    if len(coco) > max_bytes or inflate.unconsumed_tail:
        return None, f"mask decompresses to more than {max_bytes} bytes, more than any RLE of its field size needs"
    if not inflate.eof:
        return None, "mask is not zlib-compressed data (the stream is cut short)"
    return coco, None


def _parse_long(coco: bytes, n_pixels: int | None, keep_counts: bool) -> tuple[np.ndarray | None, str | None]:
    """:func:`_parse_coco_strings` of one string longer than a parsing batch, a batch at a time.

    The string is cut after the last complete value of each batch-sized piece. Every piece after
    the first is parsed behind three whole values (0 and the two counts before it), which
    makes its first values differences from the right counts. Memory: the string, one piece's
    parse, and the counts only when ``keep_counts``.
    """
    buf = np.frombuffer(coco, np.uint8)
    parts: list[np.ndarray] = []
    last_two: np.ndarray | None = None
    total = 0
    start = 0
    while start < len(coco):
        stop = min(start + _PARSE_BATCH_CHARS, len(coco))
        if stop < len(coco):
            ends = np.flatnonzero(((buf[start:stop] - 48) & 0x20) == 0)  # uint8 wraps: bad characters stay bad
            if ends.size == 0:
                return None, "RLE run length too large"
            stop = start + int(ends[-1]) + 1
        prefix = b"" if last_two is None else _coco_strings(np.r_[0, last_two], np.array([0, 3]))[0]
        [counts], [error] = _parse_coco_strings([prefix + coco[start:stop]], None)
        if error is not None:
            return None, error
        counts = counts[3:] if last_two is not None else counts  # type: ignore[index]
        total += int(counts.sum())
        last_two = np.r_[last_two if last_two is not None else [], counts][-2:].astype(np.int64)
        if keep_counts:
            parts.append(counts)
        start = stop
    if n_pixels is not None and total != n_pixels:
        return None, f"mask covers {total} pixels but the field has {n_pixels}"
    return (np.concatenate(parts) if keep_counts else np.zeros(0, np.int64)), None


def _decode_texts(
    texts: Sequence[str], n_pixels: np.ndarray | None, keep_counts: bool = True
) -> tuple[list[bytes | None], list[np.ndarray | None], list[str | None]]:
    """Per mask text: (COCO bytes, run lengths, None) or (None, None, reason).

    ``n_pixels``: (n,) expected pixel count per text, or None to skip that check (each text
    is then bounded as a mask of ``MAX_FIELD_PIXELS``). Texts are decompressed one by one and
    parsed in batches of about ``_PARSE_BATCH_CHARS`` characters (a longer one a piece at a
    time), so the memory in use is that of the valid masks kept plus one batch, never that of
    everything the texts inflate to. Without ``keep_counts`` the run lengths are not kept.
    """
    coco: list[bytes | None] = [None] * len(texts)
    counts: list[np.ndarray | None] = [None] * len(texts)
    errors: list[str | None] = [None] * len(texts)
    batch: list[int] = []
    batch_chars = 0

    def parse_batch() -> None:
        sub_pixels = None if n_pixels is None else n_pixels[batch]
        parsed, parse_errors = _parse_coco_strings([coco[i] for i in batch], sub_pixels)  # type: ignore[misc]
        for i, cnt, e in zip(batch, parsed, parse_errors):
            counts[i] = cnt if keep_counts else None
            if e is not None:
                coco[i], errors[i] = None, e
        batch.clear()

    for i, t in enumerate(texts):
        n = None if n_pixels is None else int(n_pixels[i])
        coco[i], errors[i] = _unpack(t, max_rle_bytes(MAX_FIELD_PIXELS if n is None else n))
        size = len(coco[i] or b"")
        if coco[i] is None:
            continue
        if size > _PARSE_BATCH_CHARS:
            counts[i], errors[i] = _parse_long(coco[i], n, keep_counts)  # type: ignore[arg-type]
            if errors[i] is not None:
                coco[i] = None
            continue
        if batch and batch_chars + size > _PARSE_BATCH_CHARS:
            parse_batch()
            batch_chars = 0
        batch.append(i)
        batch_chars += size
    if batch:
        parse_batch()
    return coco, counts, errors


def unpack_masks(
    texts: Sequence[str], height: int | np.ndarray | None, width: int | np.ndarray | None
) -> tuple[list[bytes | None], list[str | None]]:
    """Validate submission mask texts and return their COCO ``counts`` bytes.

    Args:
        texts: (n,) mask texts, all checked in one vectorised pass (batch many fields).
        height, width: the field size, as ints or as (n,) arrays with one size per text;
            ``None`` checks only the encoding, not the pixel count.
    Returns:
        ``(coco, errors)``: per text either the bytes (safe to hand to pycocotools as
        ``{"size": [height, width], "counts": ...}``) and ``None``, or ``None`` and a reason.
    """
    n_pixels = None
    if height is not None and width is not None:
        n_pixels = np.broadcast_to(np.asarray(height, np.int64) * np.asarray(width, np.int64), (len(texts),))
    coco, _, errors = _decode_texts(texts, n_pixels, keep_counts=False)
    return coco, errors


# --------------------------------------------------------------------------- masks <-> text


def _as_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"expected a 2-D label image or mask, got shape {labels.shape}")
    if labels.dtype == bool:
        return labels.view(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"expected an integer label image or a boolean mask, got {labels.dtype}")
    return labels


def field_rles(cell_labels: np.ndarray, cell_ids: Iterable[int] | None = None) -> dict[int, bytes]:
    """COCO compressed RLE ``counts`` of each cell (before zlib and base64).

    Same arguments as :func:`encode_field`; the bytes equal pycocotools' ``mask.encode`` of
    the cell's Fortran-ordered uint8 mask, ``["counts"]``.
    """
    labels = _as_labels(cell_labels)
    if labels.size == 0:
        raise ValueError("cannot encode masks of an empty field")
    runs = _column_major_runs(labels)
    if cell_ids is None:
        ids = np.unique(runs[2])  # far fewer runs than pixels
        ids = ids[ids > 0]
    else:
        ids = np.unique(np.asarray(list(cell_ids), np.int64))
        if ids.size and ids[0] <= 0:
            raise ValueError(f"cell ids must be positive, got {int(ids[0])}")
    counts, bounds = _cell_counts(runs, labels.size, ids)
    return dict(zip((int(i) for i in ids), _coco_strings(counts, bounds)))


def encode_field(cell_labels: np.ndarray, cell_ids: Iterable[int] | None = None) -> dict[int, str]:
    """Submission mask text of every cell of a field, from its label image in one pass.

    Args:
        cell_labels: HxW integer instance labels (0 = background), any memory order.
        cell_ids: which cells to encode (default: every positive id present). An id that is
            absent from the image gets the empty mask.
    Returns:
        ``{cell_id: text}``; ``text`` is ASCII base64 of zlib(level 9) of the COCO RLE counts.
    """
    return {k: _pack(v) for k, v in field_rles(cell_labels, cell_ids).items()}


def encode_mask(mask: np.ndarray) -> str:
    """Submission text of one HxW boolean mask (C or Fortran order, no copy of the mask)."""
    mask = np.asarray(mask)
    if mask.dtype != bool:
        raise ValueError(f"encode_mask needs a boolean mask, got {mask.dtype}")
    return encode_field(mask, [1])[1]


def counts_to_mask(counts: np.ndarray, height: int, width: int) -> np.ndarray:
    """Run lengths (background first, column-major) -> HxW bool mask (a Fortran-ordered view)."""
    parity = np.arange(counts.size) % 2 == 1
    return np.repeat(parity, counts).reshape(width, height).T


def decode_mask(text: str, height: int, width: int) -> np.ndarray:
    """Inverse of :func:`encode_mask`: HxW bool array (Fortran-ordered).

    Raises ``ValueError`` with the reason when the text is not a valid mask of this size.
    """
    _, counts, errors = _decode_texts([text], np.array([int(height) * int(width)]))
    if errors[0] is not None:
        raise ValueError(errors[0])
    return counts_to_mask(counts[0], height, width)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- prediction strings


def format_confidence(value: float) -> str:
    """Positional decimal with 6 significant digits: never scientific notation."""
    return np.format_float_positional(float(value), precision=6, unique=False, fractional=False, trim="-")


def prediction_string(
    encoded_masks: Sequence[str],
    scores: np.ndarray,
    min_confidence: float = 0.0,
    top_k: int | None = None,
) -> str:
    """The PredictionString of one field.

    Args:
        encoded_masks: (n_cells,) mask texts from :func:`encode_field`.
        scores: (n_cells, n_classes) float confidences in [0, 1]; the column is the class id.
        min_confidence: (cell, class) pairs scoring below this are left out.
        top_k: keep at most this many classes per cell, highest first (None: all).
    Returns:
        ``"class confidence mask ..."``, cells in input order, classes by descending score.
        An empty string when nothing passes: a field with no predictions is valid.
    """
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 2 or scores.shape[0] != len(encoded_masks):
        raise ValueError(f"scores must be (n_cells={len(encoded_masks)}, n_classes), got {scores.shape}")
    if scores.size and not (np.isfinite(scores).all() and scores.min() >= 0.0 and scores.max() <= 1.0):
        raise ValueError("scores must be finite and within [0, 1]")
    order = np.argsort(-scores, axis=1, kind="stable")
    if top_k is not None:
        order = order[:, : max(int(top_k), 0)]
    picked = np.take_along_axis(scores, order, axis=1)
    cells, ranks = np.nonzero(picked >= min_confidence)
    return " ".join(
        f"{order[i, r]} {format_confidence(picked[i, r])} {encoded_masks[i]}" for i, r in zip(cells, ranks)
    )


@dataclass
class FieldPrediction:
    """One submission row, parsed: (n,) class ids, (n,) confidences and n mask texts."""

    width: int
    height: int
    classes: np.ndarray
    confidences: np.ndarray
    masks: list[str]
    line: int


def _parse_row(
    image_id: str, width: str, height: str, text: str, num_classes: int, sizes: Mapping[str, tuple[int, int]] | None
) -> tuple[FieldPrediction | None, list[str]]:
    """Parse one row's cells; mask texts are not decoded here. Returns (row or None, reasons)."""
    errors: list[str] = []
    if not image_id.strip():
        errors.append("empty ID")
    dims = []
    for name, v in (("ImageWidth", width), ("ImageHeight", height)):
        if re.fullmatch(r"\s*\d+\s*", v) and int(v) > 0:
            dims.append(int(v))
        else:
            errors.append(f"bad {name} {v!r} (expected a positive integer)")
    if len(dims) == 2 and dims[0] * dims[1] > MAX_FIELD_PIXELS:
        errors.append(f"size {dims[0]}x{dims[1]} is larger than any field (at most {MAX_FIELD_PIXELS} pixels)")
        dims = []
    if len(dims) == 2 and sizes is not None and image_id in sizes:
        exp_w, exp_h = sizes[image_id]
        if (dims[0], dims[1]) != (int(exp_w), int(exp_h)):
            errors.append(f"size {dims[0]}x{dims[1]} differs from the field's {exp_w}x{exp_h}")
    tokens = text.split()
    if len(tokens) % 3:
        errors.append(f"PredictionString has {len(tokens)} tokens, not a multiple of 3 (class confidence mask)")
        return None, errors
    classes, confs = [], []
    for k in range(0, len(tokens), 3):
        c, p = tokens[k], tokens[k + 1]
        where = f"prediction {k // 3 + 1}"
        if not re.fullmatch(r"\d+", c) or int(c) >= num_classes:
            errors.append(f"{where}: unknown class {c!r} (valid: 0..{num_classes - 1})")
        else:
            classes.append(int(c))
        try:
            v = float(p)
        except ValueError:
            v = float("nan")
        if not np.isfinite(v):
            errors.append(f"{where}: confidence {p!r} is not a number")
        elif not 0.0 <= v <= 1.0:
            errors.append(f"{where}: confidence {p} is outside [0, 1]")
        else:
            confs.append(v)
    if errors:
        return None, errors
    row = FieldPrediction(dims[0], dims[1], np.array(classes, np.int64), np.array(confs, np.float64), tokens[2::3], 0)
    return row, errors


def _read_rows(path: str | Path) -> list[tuple[int, list[str]]]:
    """(line number, the 4 fields) of every data row; checks the header."""
    df = read_csv(path, COLUMNS)
    cols = [df[c].tolist() for c in COLUMNS]
    return [(line, [c[i] for c in cols]) for i, line in enumerate(row_lines(df))]


def parse_submission(path: str | Path, num_classes: int) -> dict[str, FieldPrediction]:
    """Read a submission CSV into ``{ID: FieldPrediction}``; the first malformed row raises.

    Mask texts are kept as text (decoding is the evaluator's and the checker's job). Raises
    :class:`InputError` naming the line and the problem.
    """
    out: dict[str, FieldPrediction] = {}
    for line, (image_id, w, h, text) in _read_rows(path):
        row, errors = _parse_row(image_id, w, h, text, num_classes, None)
        if errors:
            raise InputError(f"{path}: line {line}: {errors[0]} (run src/check_submission.py for every problem)")
        if image_id in out:
            raise InputError(f"{path}: line {line}: duplicate ID {image_id!r} (first on line {out[image_id].line})")
        row.line = line  # type: ignore[union-attr]
        out[image_id] = row  # type: ignore[assignment]
    return out


def check_submission(
    path: str | Path,
    expected_ids: Iterable[str] | None = None,
    sizes: Mapping[str, tuple[int, int]] | None = None,
    *,
    num_classes: int,
    max_per_line: int = 5,
) -> list[tuple[int, str]]:
    """Every problem in a submission file, as ``(line, reason)``; empty means valid.

    Checks the header, IDs (empty, duplicate, unexpected, missing: missing ones are reported
    at line 0, the whole file), sizes (positive integers, equal to ``sizes[ID] = (width,
    height)`` when given), the triple count, classes, confidences and every mask (base64,
    zlib, RLE structure, pixel count equal to width x height). At most ``max_per_line``
    reasons are listed per line, then a count of the rest.
    """
    try:
        rows = _read_rows(path)
    except InputError as exc:
        if not Path(path).is_file():
            raise
        return [(1, str(exc))]
    expected = None if expected_ids is None else set(expected_ids)
    problems: list[tuple[int, str]] = []
    first_line: dict[str, int] = {}
    for line, (image_id, w, h, text) in rows:
        errors: list[str] = []
        if image_id in first_line:
            errors.append(f"duplicate ID {image_id!r} (first on line {first_line[image_id]})")
        else:
            first_line[image_id] = line
        if expected is not None and image_id not in expected:
            errors.append(f"unexpected ID {image_id!r}")
        row, row_errors = _parse_row(image_id, w, h, text, num_classes, sizes)
        errors += row_errors
        if row is None:
            # Still check the masks' encoding when the size or a class is what went wrong.
            tokens = text.split()
            masks = tokens[2::3] if len(tokens) % 3 == 0 else []
            hw = (None, None)
        else:
            masks = row.masks
            hw = (row.height, row.width)
        unique = list(dict.fromkeys(masks))
        _, mask_errors = unpack_masks(unique, *hw)
        bad = {m: e for m, e in zip(unique, mask_errors) if e is not None}
        errors += [f"prediction {k + 1}: {bad[m]}" for k, m in enumerate(masks) if m in bad]
        if len(errors) > max_per_line:
            errors = errors[:max_per_line] + [f"... and {len(errors) - max_per_line} more problems on this line"]
        problems += [(line, e) for e in errors]
    if expected is not None:
        problems += [(0, f"missing ID {i!r}") for i in sorted(expected - set(first_line))]
    return problems


def read_sample_submission(path: str | Path) -> dict[str, tuple[int, int]]:
    """``{ID: (width, height)}`` from a sample submission (or any file with those columns)."""
    out = {}
    for line, (image_id, w, h, _) in _read_rows(path):
        try:
            out[image_id] = (int(w), int(h))
        except ValueError:
            raise InputError(f"{path}: line {line}: bad size {w!r}x{h!r}") from None
    return out


# --------------------------------------------------------------------------- writing


class SubmissionWriter:
    """Write a submission row by row; the file appears, complete, only when closed.

    Rows go to ``{path}.partial`` and are flushed one by one; a clean exit from the ``with``
    block moves that file onto ``path`` in one atomic rename. If the run dies (or the block
    raises), the partial file stays and a new writer for the same path resumes it: the
    IDs already written are in :attr:`done` and a torn last line is dropped. An OS error of a
    write (a full disk) is raised naming the partial file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.done: set[str] = set()
        self._fh = None

    def __enter__(self) -> SubmissionWriter:
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(commit=exc_type is None)

    @contextmanager
    def _naming_partial(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            if exc.filename is None and exc.errno is not None:  # what write() and flush() raise
                raise OSError(exc.errno, exc.strerror or str(exc), str(self.partial)) from None
            raise

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.partial.exists():
            self._recover()
            self._fh = open(self.partial, "a", newline="")
        else:
            self._fh = open(self.partial, "w", newline="")
            with self._naming_partial():
                csv.writer(self._fh).writerow(COLUMNS)
                self._fh.flush()

    def _recover(self) -> None:
        """Read the IDs of complete rows and cut a half-written last row."""
        data = self.partial.read_bytes()
        if not data.endswith(b"\n"):
            data = data[: data.rfind(b"\n") + 1]
            with open(self.partial, "r+b") as fh:
                fh.truncate(len(data))
        allow_csv_fields(len(data))
        rows = list(csv.reader(data.decode("utf-8").splitlines()))
        if not rows or tuple(rows[0]) != COLUMNS:
            raise InputError(f"{self.partial}: not a partial submission (header {rows[0] if rows else 'missing'}); delete it to start over")
        self.done = {r[0] for r in rows[1:] if r}

    def write(self, image_id: str, width: int, height: int, prediction: str) -> None:
        """Append one field's row and flush it (a crash keeps every earlier row)."""
        if self._fh is None:
            raise RuntimeError("SubmissionWriter is not open")
        if image_id in self.done:
            raise ValueError(f"field {image_id!r} is already in {self.partial.name}")
        with self._naming_partial():
            csv.writer(self._fh).writerow((image_id, int(width), int(height), prediction))
            self._fh.flush()
        self.done.add(image_id)

    def close(self, commit: bool = True) -> None:
        """Close; with ``commit`` move the finished file onto ``path`` atomically."""
        if self._fh is None:
            return
        fh, self._fh = self._fh, None
        try:
            with self._naming_partial():
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            fh.close()
        if commit:
            os.replace(self.partial, self.path)

"""Uploaded channel files -> one HxWxC field array, with every check a public upload needs.

What a web request brings is untrusted: a missing or extra channel, a file that is no image,
a truncated one, channels of different sizes, a small file that decodes to gigabytes (a
decompression bomb), or simply too many bytes. Each problem is an :class:`UploadError` with an
HTTP status and a one-line message naming the upload field, raised before any large allocation:

- the byte limit is enforced while the body streams in (:class:`MultipartCollector`), never
  after it has been buffered;
- an image's width, height and page count are read from its header (PNG/JPEG by Pillow's lazy
  open, TIFF by tifffile's page table) and checked against the pixel limit before it is decoded.

Everything stays in memory: the multipart parser hands each part's bytes to a ``bytearray``
(never a spooled temporary file), so nothing a user sent outlives the request. Pure functions
of bytes, so the service, a test or a notebook call them alike.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .errors import InputError
from .fieldio import SUPPORTED_DTYPES, decode_image, grey_channel

STACK_FIELD = "image"  # the upload field of a multi-page TIFF holding every channel
# Part content types a browser, curl or a script may give an image file (browsers guess from
# the extension; curl sends application/octet-stream for names it does not know).
IMAGE_CONTENT_TYPES = frozenset({
    "image/png", "image/tiff", "image/x-tiff", "image/tif", "image/jpeg", "image/jpg", "image/pjpeg",
    "application/octet-stream", "",
})
MAGIC: dict[str, tuple[bytes, ...]] = {
    "png": (b"\x89PNG\r\n\x1a\n",),
    "tiff": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),
    "jpeg": (b"\xff\xd8\xff",),
}


class UploadError(InputError):
    """Bad upload: ``status`` is the HTTP status to answer (400, 413, 415 or 422)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = int(status)


@dataclass(frozen=True)
class UploadLimits:
    """What one request may bring. ``max_bytes`` bounds the whole request body (all files);
    ``max_pixels`` bounds each channel image (width x height), checked from its header."""

    max_bytes: int = 64 * 2**20
    max_pixels: int = 6144 * 6144


# --------------------------------------------------------------------------- multipart, streamed


@dataclass
class Part:
    """One multipart part, in memory."""

    name: str
    filename: str | None
    content_type: str
    data: bytearray = field(default_factory=bytearray)


def parse_content_type(value: str | bytes | None) -> tuple[str, dict[str, str]]:
    """``multipart/form-data; boundary=x`` -> (``"multipart/form-data"``, ``{"boundary": "x"}``)."""
    from python_multipart.multipart import parse_options_header

    kind, params = parse_options_header(value or "")
    return kind.decode("latin-1").lower(), {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in params.items()}


class MultipartCollector:
    """Feed a ``multipart/form-data`` body chunk by chunk; collect its parts in memory.

    ``feed`` raises :class:`UploadError` 413 as soon as the body passes ``max_bytes`` (so a huge
    upload is refused after reading at most ``max_bytes`` of it), 400 for a duplicate or unnamed
    field, more parts than ``max_parts``, or a body the parser cannot read.
    """

    def __init__(self, content_type: str | None, max_bytes: int, max_parts: int = 16) -> None:
        from python_multipart.multipart import MultipartParser

        kind, params = parse_content_type(content_type)
        if kind != "multipart/form-data":
            raise UploadError(415, f"request: content type {kind or 'missing'}; send the channel files as multipart/form-data")
        if not params.get("boundary"):
            raise UploadError(400, "request: multipart/form-data without a boundary")
        self.max_bytes, self.max_parts = int(max_bytes), int(max_parts)
        self.received = 0
        self.parts: dict[str, Part] = {}
        self._headers: dict[str, str] = {}
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._current: Part | None = None
        self._done = False
        callbacks = {
            "on_part_begin": self._part_begin, "on_part_data": self._part_data, "on_part_end": self._part_end,
            "on_header_field": self._header_field, "on_header_value": self._header_val,
            "on_header_end": self._header_end, "on_headers_finished": self._headers_finished, "on_end": self._end,
        }
        self._parser = MultipartParser(params["boundary"], callbacks)

    def feed(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.max_bytes:
            raise UploadError(413, f"request: body over the upload limit of {self.max_bytes:,} bytes")
        try:
            self._parser.write(chunk)
        except UploadError:
            raise
        except Exception as exc:  # python-multipart raises several error types for malformed bodies
            raise UploadError(400, f"request: malformed multipart body ({' '.join(str(exc).split())})") from None

    def close(self) -> dict[str, Part]:
        """The parts by field name; 400 if the body ended before its closing boundary."""
        if not self._done:
            raise UploadError(400, "request: multipart body ends before its closing boundary (truncated upload?)")
        return self.parts

    # python-multipart callbacks
    def _part_begin(self) -> None:
        self._headers = {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_val(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_name.decode("latin-1").lower()] = self._header_value.decode("latin-1")
        self._header_name.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, disposition = parse_content_type(self._headers.get("content-disposition"))
        name = disposition.get("name")
        if not name:
            raise UploadError(400, "request: a multipart part has no field name")
        if name in self.parts:
            raise UploadError(400, f"{name}: sent more than once")
        if len(self.parts) >= self.max_parts:
            raise UploadError(400, f"request: more than {self.max_parts} fields")
        kind, _ = parse_content_type(self._headers.get("content-type"))
        self._current = self.parts[name] = Part(name, disposition.get("filename"), kind)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        assert self._current is not None
        self._current.data += data[start:end]

    def _part_end(self) -> None:
        self._current = None

    def _end(self) -> None:
        self._done = True


# --------------------------------------------------------------------------- images


@dataclass(frozen=True)
class ImageHeader:
    """What an image file says about itself before any pixel is decoded."""

    format: str  # "png" | "tiff" | "jpeg"
    width: int
    height: int
    pages: int = 1  # TIFF pages
    samples: int = 1  # planes per page (a TIFF page may hold every channel)


def sniff_format(data: bytes, name: str) -> str:
    """The image format from the file's first bytes (never its name or declared type); 415 otherwise."""
    if not data:
        raise UploadError(422, f"{name}: file is empty")
    for fmt, signatures in MAGIC.items():
        if data.startswith(signatures):
            return fmt
    raise UploadError(415, f"{name}: not a PNG, TIFF or JPEG image (its first bytes say otherwise)")


def read_header(data: bytes, name: str, max_pixels: int) -> ImageHeader:
    """Width, height and pages from the header, refused (413) past ``max_pixels`` per page."""
    fmt = sniff_format(data, name)
    try:
        if fmt == "tiff":
            header = _tiff_header(data, name)
        elif fmt == "png":  # IHDR is the first chunk: width and height are bytes 16..24
            if len(data) < 24 or data[12:16] != b"IHDR":
                raise UploadError(422, f"{name}: PNG without an IHDR header (corrupt or truncated file?)")
            header = ImageHeader(fmt, int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"))
        else:
            from PIL import Image

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as im:  # reads the header only
                    header = ImageHeader(fmt, int(im.width), int(im.height))
    except UploadError:
        raise
    except Exception as exc:
        if type(exc).__name__ == "DecompressionBombError":  # Pillow's own limit, past twice its default
            raise UploadError(413, f"{name}: image over the pixel limit of {max_pixels:,} per image ({exc})") from None
        raise UploadError(422, f"{name}: cannot read the {fmt.upper()} header (corrupt or truncated file?)") from None
    if header.width * header.height > max_pixels:
        raise UploadError(413, f"{name}: {header.width}x{header.height} = {header.width * header.height:,} pixels "
                               f"is over the limit of {max_pixels:,} per image")
    return header


def _tiff_header(data: bytes, name: str) -> ImageHeader:
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        pages = tif.pages
        first = pages.first
        shape, axes = first.shape, first.axes
        sizes = {(p.shape[0], p.shape[1]) if p.axes.startswith("YX") else p.shape[-2:] for p in pages}
    if len(sizes) != 1:
        raise UploadError(422, f"{name}: TIFF pages have different sizes {sorted(sizes)}")
    if axes.startswith("YX"):
        h, w = shape[0], shape[1]
        samples = shape[2] if len(shape) == 3 else 1
    else:  # planar: samples first
        h, w = shape[-2], shape[-1]
        samples = shape[0] if len(shape) == 3 else 1
    return ImageHeader("tiff", int(w), int(h), len(pages), int(samples))


def _tiff_planes(data: bytes, name: str) -> list[np.ndarray]:
    """Every 2-D plane of a TIFF, page by page (a page of S samples gives S planes)."""
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            planes: list[np.ndarray] = []
            for page in tif.pages:
                arr = page.asarray()
                if arr.ndim == 2:
                    planes.append(arr)
                elif page.axes.startswith("YX"):
                    planes.extend(arr[..., k] for k in range(arr.shape[-1]))
                else:
                    planes.extend(arr)
    except Exception:
        raise UploadError(422, f"{name}: cannot decode the TIFF (corrupt or truncated file?)") from None
    return planes


def decode_channel(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """One channel file's bytes -> HxW uint8/uint16 (its own bit depth), after the header checks."""
    header = read_header(data, name, max_pixels)
    try:
        if header.format == "tiff":
            if header.pages * header.samples != 1:
                raise InputError(f"{name}: TIFF holds {header.pages * header.samples} planes; a channel file holds one")
            img = _tiff_planes(data, name)[0]
        else:
            img = decode_image(bytes(data), name)
        return grey_channel(img, name)
    except UploadError:
        raise
    except InputError as exc:
        raise UploadError(422, str(exc)) from None


def decode_stack(data: bytes, name: str, channels: tuple[str, ...], max_pixels: int) -> list[np.ndarray]:
    """A TIFF holding every channel (one page per channel, or one page of C samples) -> C planes."""
    header = read_header(data, name, max_pixels)
    if header.format != "tiff":
        raise UploadError(415, f"{name}: a stack of channels must be a multi-page TIFF, got {header.format.upper()}")
    n = header.pages * header.samples
    if n != len(channels):
        raise UploadError(422, f"{name}: TIFF holds {n} planes; expected {len(channels)} ({', '.join(channels)}, in that order)")
    planes = _tiff_planes(data, name)
    for k, plane in enumerate(planes):
        if plane.dtype not in SUPPORTED_DTYPES:
            raise UploadError(422, f"{name}: plane {k + 1} has pixel type {plane.dtype}; expected uint8 or uint16")
    return planes


def stack_channels(planes: list[np.ndarray], names: list[str]) -> np.ndarray:
    """HxW planes -> one HxWxC array; 422 when sizes or pixel types differ (``names`` label each plane)."""
    first = planes[0]
    for plane, name in zip(planes[1:], names[1:]):
        if plane.shape != first.shape:
            raise UploadError(422, f"{name}: size {plane.shape[1]}x{plane.shape[0]} differs from {names[0]} "
                                   f"({first.shape[1]}x{first.shape[0]})")
        if plane.dtype != first.dtype:
            raise UploadError(422, f"{name}: pixel type {plane.dtype} differs from {names[0]} ({first.dtype})")
    return np.stack(planes, axis=-1)


def check_part(part: Part) -> None:
    """415 for a part whose declared content type is no image type (e.g. text/plain)."""
    if part.content_type not in IMAGE_CONTENT_TYPES:
        raise UploadError(415, f"{part.name}: content type {part.content_type} is not an image (PNG, TIFF or JPEG)")


def field_from_parts(parts: dict[str, Part], channels: tuple[str, ...], max_pixels: int) -> np.ndarray:
    """The uploaded field as HxWxC (``channels`` order): one part per channel, or one ``image`` TIFF.

    400 for a missing or unexpected field (the message lists what is expected), then the
    content, header and decoding checks of each file.
    """
    expected = f"expected one file per channel ({', '.join(channels)}) or one multi-page TIFF named {STACK_FIELD!r}"
    names = set(parts)
    if STACK_FIELD in names and STACK_FIELD not in channels:
        extra = sorted(names - {STACK_FIELD})
        if extra:
            raise UploadError(400, f"{', '.join(extra)}: unexpected field(s) beside {STACK_FIELD!r}; {expected}")
        part = parts[STACK_FIELD]
        check_part(part)
        planes = decode_stack(bytes(part.data), STACK_FIELD, channels, max_pixels)
        return stack_channels(planes, [f"{STACK_FIELD} plane {k + 1} ({c})" for k, c in enumerate(channels)])
    extra = sorted(names - set(channels))
    if extra:
        raise UploadError(400, f"{', '.join(extra)}: unexpected field(s); {expected}")
    missing = [c for c in channels if c not in names]
    if missing:
        raise UploadError(400, f"{', '.join(missing)}: missing channel file(s); {expected}")
    for c in channels:
        check_part(parts[c])
    return stack_channels([decode_channel(bytes(parts[c].data), c, max_pixels) for c in channels], list(channels))


def read_field_bytes(files: dict[str, bytes], channels: tuple[str, ...], limits: UploadLimits = UploadLimits(),
                     content_type: Callable[[str], str] = lambda name: "") -> np.ndarray:
    """:func:`field_from_parts` for files already in memory (``{field name: bytes}``): the in-process path."""
    parts = {k: Part(k, k, content_type(k), bytearray(v)) for k, v in files.items()}
    total = sum(len(v) for v in files.values())
    if total > limits.max_bytes:
        raise UploadError(413, f"request: {total:,} bytes is over the upload limit of {limits.max_bytes:,} bytes")
    return field_from_parts(parts, channels, limits.max_pixels)


def encode_multipart(files: dict[str, tuple[str, bytes, str]], boundary: str = "cellloc-field-upload") -> tuple[bytes, str]:
    """The client side: ``{field: (filename, data, content type)}`` -> (body, Content-Type header value).

    What a browser's FormData sends; used by the tests and the bench to talk to the service.
    """
    chunks = []
    for name, (filename, data, kind) in files.items():
        chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                      f"Content-Type: {kind}\r\n\r\n".encode("latin-1"))
        chunks.append(bytes(data))
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode("latin-1"))
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"

"""uploads: channel files in memory -> one field array, with every check a public upload needs."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import tifffile

from cellloc.fieldio import encode_png
from cellloc.uploads import (
    MultipartCollector, UploadError, UploadLimits, decode_channel, encode_multipart, read_field_bytes, read_header,
)

CHANNELS = ("red", "green", "blue", "yellow")


def field(h=48, w=64, dtype=np.uint8, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, np.iinfo(dtype).max, (h, w, 4), dtype=dtype)


def pngs(img: np.ndarray) -> dict[str, bytes]:
    return {c: encode_png(np.ascontiguousarray(img[..., k])) for k, c in enumerate(CHANNELS)}


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def status_of(fn, *args, **kw) -> tuple[int, str]:
    with pytest.raises(UploadError) as err:
        fn(*args, **kw)
    return err.value.status, str(err.value)


def test_channel_files_stack_in_task_order_and_keep_their_depth():
    for dtype in (np.uint8, np.uint16):
        img = field(dtype=dtype)
        out = read_field_bytes(pngs(img), CHANNELS)
        assert out.dtype == dtype and np.array_equal(out, img)


def test_multi_page_and_planar_tiffs_give_the_same_field():
    img = field(dtype=np.uint16)
    planar = io.BytesIO()
    tifffile.imwrite(planar, np.moveaxis(img, -1, 0), photometric="minisblack", planarconfig="separate")  # 1 page, 4 planes
    contig = io.BytesIO()
    tifffile.imwrite(contig, img, photometric="minisblack", planarconfig="contig")  # 1 page, 4 samples per pixel
    pages = io.BytesIO()
    with tifffile.TiffWriter(pages) as tif:
        for k in range(4):
            tif.write(img[..., k])  # one page per channel
    for data in (planar.getvalue(), contig.getvalue(), pages.getvalue()):
        assert np.array_equal(read_field_bytes({"image": data}, CHANNELS), img)


def test_missing_extra_and_mixed_fields_are_400_naming_them():
    files = pngs(field())
    del files["yellow"]
    status, msg = status_of(read_field_bytes, files, CHANNELS)
    assert status == 400 and msg.startswith("yellow: missing")
    status, msg = status_of(read_field_bytes, {**pngs(field()), "purple": b"x"}, CHANNELS)
    assert status == 400 and msg.startswith("purple: unexpected")
    status, msg = status_of(read_field_bytes, {"image": b"x", "red": b"y"}, CHANNELS)
    assert status == 400 and "red" in msg


def test_not_an_image_is_415_corrupt_is_422_wrong_type_is_415():
    files = pngs(field())
    assert status_of(read_field_bytes, {**files, "green": b"ID,Label\n1,0\n"}, CHANNELS)[0] == 415
    assert status_of(read_field_bytes, {**files, "green": files["green"][:60]}, CHANNELS)[0] == 422
    assert status_of(read_field_bytes, {**files, "green": b""}, CHANNELS)[0] == 422
    status, msg = status_of(read_field_bytes, files, CHANNELS, content_type=lambda name: "text/plain")
    assert status == 415 and "text/plain" in msg


def test_different_sizes_depths_and_colour_files_are_422():
    files = pngs(field())
    status, msg = status_of(read_field_bytes, {**files, "blue": pngs(field(h=40))["blue"]}, CHANNELS)
    assert status == 422 and msg.startswith("blue: size 64x40 differs from red")
    status, msg = status_of(read_field_bytes, {**files, "blue": pngs(field(dtype=np.uint16))["blue"]}, CHANNELS)
    assert status == 422 and "uint16" in msg
    colour = encode_png(field()[..., :3])
    status, msg = status_of(read_field_bytes, {**files, "red": colour}, CHANNELS)
    assert status == 422 and "colour" in msg


def test_a_bomb_is_refused_from_its_header_before_decoding():
    bomb = png_claiming(100_000, 100_000)  # 10^10 pixels in a file of under 100 bytes
    assert len(bomb) < 100
    status, msg = status_of(read_header, bomb, "red", 10**8)
    assert status == 413 and "100000x100000" in msg
    # a real image just over the limit: refused the same way, and just under it decodes
    zeros = encode_png(np.zeros((300, 400), np.uint8))
    assert status_of(decode_channel, zeros, "red", 300 * 400 - 1)[0] == 413
    assert decode_channel(zeros, "red", 300 * 400).shape == (300, 400)
    tif = io.BytesIO()
    tifffile.imwrite(tif, np.zeros((4, 300, 400), np.uint8), photometric="minisblack")
    assert status_of(read_field_bytes, {"image": tif.getvalue()}, CHANNELS, UploadLimits(max_pixels=1000))[0] == 413


def test_a_tiff_stack_needs_one_plane_per_channel():
    tif = io.BytesIO()
    tifffile.imwrite(tif, np.zeros((3, 20, 20), np.uint8), photometric="minisblack")
    status, msg = status_of(read_field_bytes, {"image": tif.getvalue()}, CHANNELS)
    assert status == 422 and "3 planes; expected 4" in msg


def test_multipart_is_parsed_chunk_by_chunk_and_the_byte_limit_stops_reading():
    files = pngs(field())
    body, kind = encode_multipart({c: (f"f_{c}.png", d, "image/png") for c, d in files.items()})
    collector = MultipartCollector(kind, max_bytes=len(body))
    for i in range(0, len(body), 7):  # any chunking
        collector.feed(body[i:i + 7])
    parts = collector.close()
    assert {k: bytes(p.data) for k, p in parts.items()} == files
    assert parts["red"].filename == "f_red.png" and parts["red"].content_type == "image/png"

    small = MultipartCollector(kind, max_bytes=len(body) - 1)
    fed = 0
    with pytest.raises(UploadError) as err:
        for i in range(0, len(body), 100):
            small.feed(body[i:i + 100])
            fed += len(body[i:i + 100])
    assert err.value.status == 413 and fed < len(body)


def test_multipart_errors():
    assert status_of(MultipartCollector, "application/json", 100)[0] == 415
    assert status_of(MultipartCollector, "multipart/form-data", 100)[0] == 400
    body, kind = encode_multipart({"red": ("a.png", b"x", "image/png")})
    truncated = MultipartCollector(kind, 10**6)
    truncated.feed(body[:-10])
    assert status_of(truncated.close)[0] == 400
    twice = body.replace(b"--cellloc-field-upload--", b"") + body
    status, msg = status_of(MultipartCollector(kind, 10**6).feed, twice)
    assert status == 400 and msg.startswith("red: sent more than once")

"""Reading fields and label CSVs, and every bad input getting a one-line error."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from cellloc.errors import InputError
from cellloc.fieldio import (
    atomic_path, list_fields, multihot, parse_label, read_channel, read_field, read_labels, to_unit_float, write_png,
)
from conftest import REPO

CH = ("red", "green", "blue", "yellow")


def write_field(folder, image_id, dtype=np.uint8, shape=(20, 30), channels=CH):
    rng = np.random.default_rng(0)
    top = np.iinfo(dtype).max
    planes = {}
    for c in channels:
        planes[c] = rng.integers(0, top, shape, dtype=dtype)
        write_png(folder / f"{image_id}_{c}.png", planes[c])
    return planes


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_read_field_keeps_bit_depth_and_channel_order(tmp_path, dtype):
    planes = write_field(tmp_path, "f1", dtype)
    img = read_field(tmp_path, "f1")
    assert img.shape == (20, 30, 4) and img.dtype == dtype
    for i, c in enumerate(CH):
        np.testing.assert_array_equal(img[..., i], planes[c])


def test_channel_order_and_count_come_from_config(tmp_path):
    names = ("w1", "w2", "w3", "w4", "w5", "w6")
    planes = write_field(tmp_path, "rx", channels=names)
    img = read_field(tmp_path, "rx", channels=names[::-1])
    assert img.shape[-1] == 6
    np.testing.assert_array_equal(img[..., 0], planes["w6"])


def test_real_sample_field_reads():
    img = read_field(REPO / "input" / "sample", "57_F11_1")
    assert img.shape == (1728, 1728, 4) and img.dtype == np.uint8
    assert img[..., 2].max() > 100  # nuclei are there


def test_missing_channel_names_the_file(tmp_path):
    write_field(tmp_path, "f1")
    (tmp_path / "f1_yellow.png").unlink()
    with pytest.raises(InputError) as e:
        read_field(tmp_path, "f1")
    assert "f1_yellow.png" in one_line(e) and "missing" in str(e.value)


def test_duplicate_channel_files_rejected(tmp_path):
    write_field(tmp_path, "f1")
    write_png(tmp_path / "f1_red.tif", np.zeros((20, 30), np.uint8))
    with pytest.raises(InputError, match="several 'red' files"):
        read_field(tmp_path, "f1")


def test_channels_of_different_sizes(tmp_path):
    write_field(tmp_path, "f1")
    write_png(tmp_path / "f1_blue.png", np.zeros((21, 30), np.uint8))
    with pytest.raises(InputError) as e:
        read_field(tmp_path, "f1")
    assert "f1_blue.png" in one_line(e) and "differs" in str(e.value)


def test_mixed_bit_depth_rejected(tmp_path):
    write_field(tmp_path, "f1")
    write_png(tmp_path / "f1_green.png", np.zeros((20, 30), np.uint16))
    with pytest.raises(InputError, match="pixel type uint16 differs"):
        read_field(tmp_path, "f1")


def test_corrupt_truncated_and_empty_png(tmp_path):
    write_field(tmp_path, "f1")
    data = (tmp_path / "f1_red.png").read_bytes()
    (tmp_path / "f1_red.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as e:
        read_field(tmp_path, "f1")
    assert "f1_red.png" in one_line(e) and "corrupt" in str(e.value)
    (tmp_path / "f1_red.png").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        read_channel(tmp_path / "f1_red.png")
    (tmp_path / "f1_red.png").write_bytes(b"not a png at all")
    with pytest.raises(InputError, match="cannot decode"):
        read_channel(tmp_path / "f1_red.png")


def test_colour_channel_file_rejected_but_grey_rgb_accepted(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 10
    write_png(tmp_path / "c.png", rgb)
    with pytest.raises(InputError, match="colour image"):
        read_channel(tmp_path / "c.png")
    grey = np.repeat(np.arange(64, dtype=np.uint8).reshape(8, 8, 1), 3, axis=2)
    write_png(tmp_path / "g.png", grey)
    np.testing.assert_array_equal(read_channel(tmp_path / "g.png"), grey[..., 0])


def test_unsupported_dtype(tmp_path):
    import cv2

    cv2.imwrite(str(tmp_path / "f.tif"), np.zeros((4, 4), np.float32))
    with pytest.raises(InputError, match="unsupported pixel type float32"):
        read_channel(tmp_path / "f.tif")


def test_list_fields_reports_incomplete_and_extra_files(tmp_path):
    write_field(tmp_path, "57_F11_1")
    write_field(tmp_path, "b")
    (tmp_path / "b_green.png").unlink()
    write_png(tmp_path / "57_F11_1_purple.png", np.zeros((4, 4), np.uint8))
    listing = list_fields(tmp_path)
    assert listing.ids == ["57_F11_1"]
    assert listing.incomplete == {"b": ["green"]}
    assert listing.unmatched == ["57_F11_1_purple.png"]


def test_unit_float_scales_by_dtype_range():
    assert to_unit_float(np.array([255], np.uint8))[0] == 1.0
    assert to_unit_float(np.array([65535], np.uint16))[0] == 1.0
    assert to_unit_float(np.array([255], np.uint16))[0] == pytest.approx(255 / 65535)


# ----------------------------------------------------------------------------- labels


def test_parse_label():
    assert parse_label("16|13", 19) == [13, 16]
    assert parse_label(" 0 ", 19) == [0]
    for bad, msg in [("", "empty"), ("1||2", "malformed"), ("a|1", "malformed"), ("1,2", "malformed"),
                     ("19", "unknown class id 19"), ("-1", "malformed")]:
        with pytest.raises(InputError, match=msg):
            parse_label(bad, 19)


def write_labels(path, text):
    path.write_text(text)
    return path


def test_read_labels_good(tmp_path):
    df = read_labels(write_labels(tmp_path / "t.csv", "ID,Label\na,16|13\nb,18\n"), 19)
    assert df["Label"].tolist() == ["13|16", "18"]
    assert multihot(df["labels"], 19).sum(1).tolist() == [2, 1]


@pytest.mark.parametrize("text,msg", [
    ("", "CSV is empty"),
    ("ID,Label\n", "no rows"),
    ("Id,Labels\na,1\n", "missing column"),
    ("ID,Label\na,1\na,2\n", "duplicate ID 'a'"),
    ("ID,Label\n,1\n", "line 2: empty ID"),
    ("ID,Label\na,1\nb,x|2\n", "line 3: malformed"),
    ("ID,Label\na,30\n", "unknown class id 30"),
    ("ID,Label\na,\n", "empty label"),
    # Errors name the physical line: ragged rows are not shifted into other columns, blank
    # lines count, and a quoted field spanning lines counts from its row's first line.
    ("ID,Label\nf1,1,2,3\nb,2\n", r"line 2: 4 field\(s\) where the header \(ID,Label\) has 2"),
    ("ID,Label\na,1\n\nb,2\nf1,1,2,3\n", "line 5: 4 field"),
    ("ID,Label\na,1\n\n\nb,x\n", "line 5: malformed label 'x'"),
    ('ID,Label\n"a\nb",1\nc,1|x\n', "line 4: malformed label"),
    ("ID,Label\na,1\n\nb,1\na,2\n", "line 5: duplicate ID 'a' \\(first on line 2\\)"),
    ("ID,Label\nb,1\n   \n", "line 3: 1 field"),
    ("ID,ID\na,1\n", "column 'ID' appears more than once"),
])
def test_read_labels_bad(tmp_path, text, msg):
    path = write_labels(tmp_path / "t.csv", text)
    with pytest.raises(InputError, match=msg) as e:
        read_labels(path, 19)
    assert "t.csv" in one_line(e)


def test_read_labels_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_labels(tmp_path / "nope.csv", 19)


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_masks_round_trip_as_png_and_npz(tmp_path):
    from cellloc.fieldio import find_mask, read_mask, write_mask

    labels = np.zeros((7, 9), np.uint16)
    labels[1:4, 2:6] = 3
    labels[5, 8] = 65535
    for fmt in ("png", "npz"):
        write_mask(tmp_path / f"a_{fmt}.{fmt}", labels)
        back = read_mask(tmp_path / f"a_{fmt}.{fmt}")
        assert back.dtype == np.uint16
        np.testing.assert_array_equal(back, labels)
    big = np.arange(12, dtype=np.int32).reshape(3, 4) * 100_000  # more ids than uint16 holds
    write_mask(tmp_path / "big.npz", big)
    np.testing.assert_array_equal(read_mask(tmp_path / "big.npz"), big)
    assert find_mask(tmp_path, "big") == tmp_path / "big.npz"
    assert find_mask(tmp_path, "nothing") is None


def test_png_masks_encoded_for_labels_read_the_same_everywhere(tmp_path):
    """Masks are PNGs encoded for labels (up filter, run-length deflate): faster and smaller than
    the general encoding, and Pillow and OpenCV decode the same labels."""
    from PIL import Image

    from cellloc.fieldio import encode_png, write_mask

    rng = np.random.default_rng(0)
    labels = np.repeat(np.repeat(rng.integers(0, 65535, (40, 50)), 7, 0), 5, 1).astype(np.uint16)
    write_mask(tmp_path / "m.png", labels)
    data = (tmp_path / "m.png").read_bytes()
    assert data != encode_png(labels)  # not the general encoding ...
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "m.png"), cv2.IMREAD_UNCHANGED), labels)  # ... the same pixels
    with Image.open(tmp_path / "m.png") as im:
        np.testing.assert_array_equal(np.asarray(im).astype(np.uint16), labels)


@pytest.mark.parametrize("content, message", [
    (b"PK\x03\x04 broken zip", "not a readable .npz mask"),
    (None, "mask must be a 2-D integer array"),
])
def test_bad_npz_masks_are_one_line_errors(tmp_path, content, message):
    from cellloc.fieldio import read_mask

    path = tmp_path / "m.npz"
    if content is None:
        np.savez_compressed(path, labels=np.zeros((2, 2, 2), np.float32))
    else:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message) as err:
        read_mask(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_sha256_file_reads_in_chunks(tmp_path):
    import hashlib

    from cellloc.fieldio import sha256_file

    path = tmp_path / "best.pt"
    path.write_bytes(b"abc" * 1000)
    assert sha256_file(path, chunk=7) == hashlib.sha256(b"abc" * 1000).hexdigest()


def test_a_truncated_png_is_one_line_without_opencv_log_noise(tmp_path):
    """OpenCV logs '[ WARN:0@..] ... buffer is incomplete' on stderr beside our one line unless told not to."""
    import subprocess
    import sys

    good = tmp_path / "a_red.png"
    cv2.imwrite(str(good), np.full((32, 32), 7, np.uint8))
    (tmp_path / "b_red.png").write_bytes(good.read_bytes()[:60])
    code = ("import sys\nfrom cellloc.errors import InputError\nfrom cellloc.fieldio import read_channel\n"
            "try:\n    read_channel(sys.argv[1])\nexcept InputError as e:\n    print('error:', e, file=sys.stderr)\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_LOG_LEVEL"}
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "b_red.png")], capture_output=True, text=True, env=env)
    assert r.stderr.strip().splitlines() == [f"error: {tmp_path / 'b_red.png'}: cannot decode image (corrupt or truncated file?)"]


@pytest.mark.parametrize("ext", [".png", ".tif", ".jpg"])
def test_an_image_over_the_pixel_limit_is_refused_from_its_header(tmp_path, monkeypatch, ext):
    """A small compressed file may declare a huge image (an 875 KB PNG of zeros is 30000 x 30000):
    the header's size is checked before any pixel is decoded."""
    from cellloc.fieldio import read_channel

    path = tmp_path / f"a_red{ext}"
    cv2.imwrite(str(path), np.zeros((300, 400), np.uint8))
    assert read_channel(path).shape == (300, 400)
    monkeypatch.setenv("CELLLOC_MAX_PIXELS", str(300 * 400 - 1))
    with pytest.raises(InputError) as err:
        read_channel(path)
    assert str(err.value) == f"{path}: 400 x 300 pixels, over the limit of 119,999 per image (set CELLLOC_MAX_PIXELS to allow more)"
    monkeypatch.setenv("CELLLOC_MAX_PIXELS", "lots")
    with pytest.raises(InputError, match=r"\$CELLLOC_MAX_PIXELS: expected a whole number of pixels, got 'lots'"):
        read_channel(path)

"""The pixel size image files record: ImageJ, OME and plain TIFF tags, PNG pHYs; screen dpi ignored."""

from __future__ import annotations

import numpy as np
import pytest

from cellloc.imagemeta import pixel_size_of_file

PLANE = (np.arange(48 * 64) % 251).astype(np.uint8).reshape(48, 64)


def write_tiff(path, **kwargs):
    import tifffile

    tifffile.imwrite(path, PLANE, **kwargs)
    return path


def write_pillow(path, **kwargs):
    from PIL import Image

    Image.fromarray(PLANE).save(path, **kwargs)
    return path


@pytest.mark.parametrize("make, expected", [
    (lambda p: write_tiff(p / "ij.tif", imagej=True, resolution=(1 / 0.325, 1 / 0.325), metadata={"unit": "um"}), 0.325),
    (lambda p: write_tiff(p / "ij2.tif", imagej=True, resolution=(5, 5), metadata={"unit": "micron"}), 0.2),
    (lambda p: write_tiff(p / "nm.tif", imagej=True, resolution=(1 / 108, 1 / 108), metadata={"unit": "nm"}), 0.108),
    (lambda p: write_tiff(p / "x.ome.tif", metadata={"PhysicalSizeX": 0.65, "PhysicalSizeXUnit": "µm"}), 0.65),
    (lambda p: write_tiff(p / "cm.tif", resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER"), 0.5),
    (lambda p: write_pillow(p / "phys.png", dpi=(25400 / 0.65, 25400 / 0.65)), 0.65),
])
def test_recorded_pixel_sizes_are_read(tmp_path, make, expected):
    assert pixel_size_of_file(make(tmp_path)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("make", [
    lambda p: write_tiff(p / "plain.tif"),
    lambda p: write_tiff(p / "dpi72.tif", resolution=(72, 72), resolutionunit="INCH"),
    lambda p: write_tiff(p / "ratio.tif", resolution=(3, 3), resolutionunit="NONE"),
    lambda p: write_pillow(p / "dpi96.png", dpi=(96, 96)),
    lambda p: write_pillow(p / "plain.png"),
    lambda p: write_pillow(p / "screen.jpg", dpi=(300, 300)),
])
def test_no_or_screen_resolutions_give_none(tmp_path, make):
    assert pixel_size_of_file(make(tmp_path)) is None


def test_unreadable_headers_give_none(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG garbage")
    assert pixel_size_of_file(tmp_path / "bad.png") is None
    assert pixel_size_of_file(tmp_path / "missing.tif") is None

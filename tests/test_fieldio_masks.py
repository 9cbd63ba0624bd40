"""Masks in the formats the tools around the pipeline read (PNG, npz, TIFF, ImageJ ROI sets),
each tested by reading it back: with our reader, and with the library Fiji/napari users rely on."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import numpy as np
import pytest

from cellloc.errors import InputError
from cellloc.fieldio import MASK_FORMATS, find_mask, mask_file, read_mask, write_mask
from cellloc.imagemeta import pixel_size_of_file
from cellloc.metrics import segmentation_scores
from cellloc.segmentation import SegmentConfig, create_segmenter
from cellloc.synth import SynthConfig, generate_field
from conftest import REPO


@pytest.fixture(scope="module")
def field_masks():
    """Cell and nucleus labels of a generated field, as the segmenter draws them."""
    f = generate_field(SynthConfig(size=384, seed=4), 0)
    cells, nuclei = create_segmenter(SegmentConfig()).segment(f.image)
    assert cells.max() > 5
    return cells, nuclei


@pytest.mark.parametrize("fmt", list(MASK_FORMATS))
def test_every_format_reads_back_the_same_cells(tmp_path, field_masks, fmt):
    cells, _ = field_masks
    path = mask_file(tmp_path, "f_cell_mask", fmt)
    write_mask(path, cells)
    back = read_mask(path, shape=cells.shape)
    assert back.shape == cells.shape and np.issubdtype(back.dtype, np.integer)
    assert np.array_equal(back, cells)  # the ROI outlines run along pixel edges: nothing is lost


def test_tiff_masks_carry_their_scale_and_open_as_imagej_stacks(tmp_path, field_masks):
    import tifffile

    cells, _ = field_masks
    write_mask(tmp_path / "c.tif", cells, pixel_size_um=0.32)
    with tifffile.TiffFile(tmp_path / "c.tif") as tif:
        assert tif.is_imagej and tif.pages.first.dtype == np.uint16 and tif.pages.first.compression == 8  # deflate
    assert pixel_size_of_file(tmp_path / "c.tif") == pytest.approx(0.32)
    big = (np.arange(12, dtype=np.int64).reshape(3, 4) * 10_000).astype(np.int32)  # ids above 65,535
    write_mask(tmp_path / "big.tif", big, pixel_size_um=0.5)
    assert read_mask(tmp_path / "big.tif").dtype == np.uint32
    np.testing.assert_array_equal(read_mask(tmp_path / "big.tif"), big)
    assert pixel_size_of_file(tmp_path / "big.tif") == pytest.approx(0.5)


def test_roi_sets_name_each_roi_by_its_id_and_open_with_roifile(tmp_path, field_masks):
    from roifile import ROI_TYPE, roiread

    from cellloc.outlines import fill_outline

    cells, _ = field_masks
    write_mask(tmp_path / "c.zip", cells)
    rois = roiread(tmp_path / "c.zip")
    ids = sorted(int(r.name) for r in rois)
    assert ids == sorted(int(i) for i in np.unique(cells) if i) and all(r.roitype == ROI_TYPE.TRACED for r in rois)
    for roi in rois[:5]:  # what another reader sees: each polygon, filled, is its cell
        filled = fill_outline(roi.coordinates(), cells.shape)
        iou = (filled & (cells == int(roi.name))).sum() / (filled | (cells == int(roi.name))).sum()
        assert iou == 1.0
    assert segmentation_scores(cells, read_mask(tmp_path / "c.zip", shape=cells.shape), [0.95])["ap"][0] == 1.0


def test_roi_set_of_an_empty_field_and_without_a_shape(tmp_path):
    write_mask(tmp_path / "none.zip", np.zeros((10, 10), np.uint16))
    assert zipfile.is_zipfile(tmp_path / "none.zip")
    assert read_mask(tmp_path / "none.zip", shape=(10, 10)).max() == 0
    lab = np.zeros((10, 12), np.uint16)
    lab[2:4, 3:6] = 9
    write_mask(tmp_path / "one.zip", lab)
    assert read_mask(tmp_path / "one.zip").shape == (4, 6)  # no shape: the ROIs' extent (a ROI set has no image size)


def test_roi_sets_from_other_tools_rectangles_and_unnamed_polygons(tmp_path):
    from roifile import ImagejRoi, roiwrite

    poly = ImagejRoi.frompoints(np.array([[1, 1], [5, 1], [5, 4], [1, 4]]))  # unnamed: numbered by position
    rect = ImagejRoi.frompoints(np.array([[6, 5], [9, 5], [9, 8], [6, 8]]), name="7")
    roiwrite(tmp_path / "set.zip", [poly, rect])
    lab = read_mask(tmp_path / "set.zip", shape=(10, 10))
    assert (lab == 1).sum() == 12 and (lab == 7).sum() == 9


def test_find_mask_prefers_png_and_skips_roi_sets(tmp_path):
    lab = np.ones((4, 4), np.uint16)
    write_mask(tmp_path / "a.zip", lab)
    assert find_mask(tmp_path, "a") is None  # a ROI set alone cannot say the field's size
    write_mask(tmp_path / "a.tif", lab)
    assert find_mask(tmp_path, "a") == tmp_path / "a.tif"
    write_mask(tmp_path / "a.png", lab)
    assert find_mask(tmp_path, "a") == tmp_path / "a.png"
    with pytest.raises(InputError, match="unknown mask format 'bmp'"):
        mask_file(tmp_path, "a", "bmp")


@pytest.mark.parametrize("name, content, message", [
    ("m.tif", b"II*\x00 not a tiff", "not a readable TIFF mask"),
    ("m.zip", b"PK\x03\x04 broken", "not a readable ImageJ ROI file"),
    ("m.roi", b"Iout garbage", "not a readable ImageJ ROI file"),
])
def test_bad_tiff_and_roi_masks_are_one_line_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=message) as err:
        read_mask(path, shape=(4, 4))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_non_integer_labels_are_refused(tmp_path):
    with pytest.raises(ValueError, match="2-D integer"):
        write_mask(tmp_path / "x.tif", np.zeros((3, 3), np.float32))


def test_segment_cli_writes_every_format_asked_for(synth_dataset, tmp_path):
    def segment(*args):
        return subprocess.run([sys.executable, "src/segment.py", "--input", synth_dataset / "train", "--limit", "1",
                               "--crop-size", "16", *args], capture_output=True, text=True, cwd=REPO)

    r = segment("--out", tmp_path / "o", "--mask-format", "png,tif,roi")
    assert r.returncode == 0, r.stderr
    masks = tmp_path / "o" / "masks"
    png = sorted(masks.glob("*_cell_mask.png"))[0]
    cells = read_mask(png)
    for suffix in (".tif", ".zip"):
        assert np.array_equal(read_mask(png.with_suffix(suffix), shape=cells.shape), cells)
    r = segment("--out", tmp_path / "o2", "--mask-format", "png,bmp")
    assert r.returncode == 2 and "unknown bmp" in r.stderr and r.stderr.count("\n") == 1

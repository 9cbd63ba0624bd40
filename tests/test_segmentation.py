"""Classical backend, label helpers, crops and the segment/score command lines."""

from __future__ import annotations

import errno
import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from cellloc.cells import cell_table, crop_cell
from cellloc.data import load_crop
from cellloc.errors import InputError
from cellloc.fieldio import write_png
from cellloc.metrics import segmentation_scores
from cellloc.runs.segment import SegmentRunConfig, run_segmentation
from cellloc.segmentation import SegmentConfig, create_segmenter
from cellloc.segmentation.postprocess import fill_small_holes_per_label, relabel_sequential, remove_edge_labels, remove_small_labels
from cellloc.synth import SynthConfig, generate_field
from conftest import REPO, SHARED
from test_run_state import hold_lock


def test_label_helpers_on_tiny_arrays():
    lab = np.zeros((10, 10), np.int32)
    lab[1:5, 1:5] = 3
    lab[2, 2] = 0  # a one-pixel hole
    lab[7:9, 7:10] = 8  # touches the right edge
    lab[0, 9] = 5  # a one-pixel fragment
    assert fill_small_holes_per_label(lab, 2)[2, 2] == 3
    assert fill_small_holes_per_label(lab, 1)[2, 2] == 0  # hole not strictly smaller than the limit
    assert set(np.unique(remove_small_labels(lab, 2))) == {0, 3, 8}
    assert set(np.unique(remove_edge_labels(lab))) == {0, 3}
    assert set(np.unique(relabel_sequential(lab))) == {0, 1, 2, 3}


def test_reconstruct_by_dilation_equals_scikit_image():
    import cv2
    from skimage.morphology import reconstruction

    from cellloc.segmentation.classical import reconstruct_by_dilation

    rng = np.random.default_rng(3)
    fg = cv2.GaussianBlur(rng.random((80, 90)).astype(np.float32), (0, 0), 4) > 0.5
    dist = cv2.GaussianBlur(cv2.distanceTransform(fg.astype(np.uint8), cv2.DIST_L2, 5), (0, 0), 1.5)
    for h in (0.5, 2.0):
        seed = np.clip(dist - h, 0, None)
        assert np.array_equal(reconstruct_by_dilation(seed, dist), reconstruction(seed, dist, method="dilation"))
        q, qs = np.rint(dist * 1000).astype(np.uint16), np.rint(seed * 1000).astype(np.uint16)
        rec = reconstruct_by_dilation(qs, q)
        assert rec.dtype == np.uint16 and np.array_equal(rec, reconstruction(qs, q, method="dilation"))


def test_reconstruct_by_pieces_equals_the_whole_map_pass(monkeypatch):
    """Pieces of the mask touching only diagonally, nested bounding boxes, pieces on the border:
    reconstructed piece by piece or in one pass over the map, the same values."""
    import cv2

    from cellloc.segmentation import classical

    rng = np.random.default_rng(5)
    fg = cv2.GaussianBlur(rng.random((120, 130)).astype(np.float32), (0, 0), 3) > 0.52
    fg[10:40, 10:12] = fg[10:12, 10:40] = fg[38:40, 10:40] = True  # a ring ...
    fg[20:28, 20:28], fg[19, 19] = True, False  # ... around a piece inside its box
    fg[50, 50] = fg[51, 51] = True  # diagonal neighbours: one piece under 8-connectivity
    q = np.rint(cv2.distanceTransform(fg.astype(np.uint8), cv2.DIST_L2, 5) * 900).astype(np.uint16)
    seed = np.clip(q.astype(np.int32) - 1500, 0, None).astype(np.uint16)
    pieces = cv2.connectedComponents(fg.astype(np.uint8), connectivity=8)[0] - 1
    assert 5 < pieces <= classical.MAX_RECONSTRUCTED_PIECES
    by_pieces = classical.reconstruct_by_dilation(seed, q)
    monkeypatch.setattr(classical, "MAX_RECONSTRUCTED_PIECES", 0)
    whole = classical.reconstruct_by_dilation(seed, q)
    assert np.array_equal(by_pieces, whole) and (whole > 0).any()


def test_tighten_to_edge_finds_the_step_of_dim_and_bright_nuclei():
    import cv2

    from cellloc.segmentation.classical import tighten_to_edge

    yy, xx = np.mgrid[:60, :120]
    disks = [(30, 30), (30, 90)]
    img = np.full((60, 120), 0.05, np.float32)
    for (cy, cx), level in zip(disks, (0.2, 1.0)):  # a dim and a bright disk of radius 12 px
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 12**2] = level
    img = cv2.GaussianBlur(img, (0, 0), 3)
    wide = np.where(img > 0.07, 1 + (xx >= 60), 0).astype(np.int32)  # one low threshold: both too wide

    def radius(lab, i):
        return np.sqrt((lab == i).sum() / np.pi)

    assert radius(wide, 2) > 17
    tight = tighten_to_edge(img, wide, wide > 0, 0.5)
    for i in (1, 2):  # each back near its own step (12 px): the rim in the mean puts it a little outside
        assert 12 <= radius(tight, i) < 14
        assert np.all(wide[tight == i] == i)


def test_fill_holes_from_fills_inner_holes_only():
    from cellloc.segmentation.classical import fill_holes_from

    lab = np.zeros((12, 12), np.int32)
    lab[2:7, 2:7] = 4
    lab[4, 4] = 0  # a hole, inside the territory of 4
    lab[9:12, 0:3] = 5
    lab[11, 0] = 0  # touches the border: not a hole
    fill = np.where(lab > 0, lab, 0)
    fill[4, 4] = 4
    out = fill_holes_from(lab, fill, max_hole_px=2)
    assert out[4, 4] == 4 and out[11, 0] == 0
    assert fill_holes_from(lab, fill, max_hole_px=1)[4, 4] == 0  # not strictly smaller than the limit


def test_nuclei_are_cut_back_inside_their_territories():
    from cellloc.segmentation.classical import ClassicalParams, nucleus_regions

    f = generate_field(SynthConfig(size=512, seed=5), 0)
    px = SegmentConfig().pixel_size(f.image.shape)
    terr, nuc = nucleus_regions(f.image[..., 2], px, 20 / px**2, 10 / px**2)
    assert nuc.max() > 5 and set(np.unique(nuc)) == set(np.unique(terr))
    assert np.all(terr[nuc > 0] == nuc[nuc > 0]) and (nuc > 0).sum() < (terr > 0).sum()
    wide = nucleus_regions(f.image[..., 2], px, 20 / px**2, 10 / px**2, ClassicalParams(nucleus_edge_level=0))
    assert np.array_equal(wide[0], wide[1]) and np.array_equal(wide[0], terr)
    truth = f.nucleus_labels
    assert segmentation_scores(truth, nuc, [0.75])["ap"][0] > segmentation_scores(truth, terr, [0.75])["ap"][0] + 0.3


def test_split_at_new_necks_splits_only_nuclei_with_two_lobes():
    import cv2

    from cellloc.segmentation.classical import split_at_new_necks

    yy, xx = np.mgrid[:60, :120]

    def disk(cy, cx):
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= 16**2

    nuclei = np.zeros((60, 120), np.int32)
    nuclei[disk(30, 18) | disk(30, 46)] = 3  # two 5 um nuclei joined by a 5 um neck (at 0.32 um/px)
    nuclei[disk(30, 95)] = 7  # a round one
    territories = cv2.dilate(nuclei.astype(np.uint16), np.ones((7, 7), np.uint8)).astype(np.int32)
    terr, nuc = split_at_new_necks(territories, nuclei, px_um=0.32)  # necks: 1.5 um, seeds 5 um apart
    assert sorted(np.unique(nuc[:, :60])) == [0, 8, 9]  # 3 became two new ids above the old ones
    assert np.array_equal(nuc == 7, nuclei == 7) and np.array_equal(terr == 7, territories == 7)  # kept
    assert nuc[30, 18] != nuc[30, 46]
    assert np.array_equal(terr > 0, territories > 0) and np.all(terr[nuc > 0] == nuc[nuc > 0])
    round_only = np.where(nuclei == 7, 7, 0)
    assert split_at_new_necks(round_only, round_only, 0.32)[1] is round_only  # nothing to split: untouched


def test_downscaled_segmentation_is_the_working_scale_result_upscaled():
    import cv2

    f = generate_field(SynthConfig(size=1024, seed=3), 0)
    cells, nuclei = create_segmenter(SegmentConfig(remove_edge_cells=True)).segment(f.image)
    assert cells.shape == (1024, 1024) and cells.dtype == nuclei.dtype == np.uint16
    ids = np.unique(cells)
    assert ids.tolist() == list(range(ids.size)) and ids.size > 5  # 1..n, no gaps
    assert not set(np.unique(np.concatenate([cells[0], cells[-1], cells[:, 0], cells[:, -1]]))) - {0}
    inside = nuclei > 0
    assert np.all(cells[inside] == nuclei[inside])
    # each working pixel became a 2x2 block
    small = cells[::2, ::2]
    assert np.array_equal(cv2.resize(small, (1024, 1024), interpolation=cv2.INTER_NEAREST), cells)


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="unknown segmentation backend 'nope'"):
        create_segmenter(SegmentConfig(backend="nope"))


@pytest.mark.parametrize("size,bit_depth", [(512, 8), (384, 16)])
def test_classical_finds_generated_cells(size, bit_depth):
    seg = create_segmenter(SegmentConfig())
    f1c, f1n = [], []
    for i in range(3):
        f = generate_field(SynthConfig(size=size, bit_depth=bit_depth, seed=7), i)
        cells, nuclei = seg.segment(f.image)
        assert cells.dtype == np.uint16 and cells.shape == f.cell_labels.shape
        inside = nuclei > 0
        assert np.all(cells[inside] == nuclei[inside])  # a nucleus carries its cell's id
        f1c.append(segmentation_scores(f.cell_labels, cells)["f1_50"])
        f1n.append(segmentation_scores(f.nucleus_labels, nuclei)["f1_50"])
    assert np.mean(f1c) > 0.85 and np.mean(f1n) > 0.85


def test_sizes_are_physical_so_resizing_keeps_cells():
    f = generate_field(SynthConfig(size=512, seed=2), 0)
    seg = create_segmenter(SegmentConfig())
    n_full = len(np.unique(seg.segment(f.image)[0])) - 1
    import cv2

    small = cv2.resize(f.image, (256, 256), interpolation=cv2.INTER_AREA)
    n_small = len(np.unique(seg.segment(small)[0])) - 1
    assert n_full > 5 and abs(n_small - n_full) <= 2


def test_six_channel_fields_segment_like_their_used_channels():
    """RxRx1 has 6 channels (OpenCV resizes at most 4 at once): only the used planes matter."""
    f = generate_field(SynthConfig(size=512, seed=2), 0)  # red, green, blue, yellow
    red, green, blue, yellow = np.moveaxis(f.image, -1, 0)
    six = np.stack([blue, green, red, green, green, yellow], axis=-1)
    cfg = SegmentConfig(channels=("w1", "w2", "w3", "w4", "w5", "w6"), nucleus_channel="w1", cell_channels=("w3", "w6"))
    cells6, nuclei6 = create_segmenter(cfg).segment(six)
    cells4, nuclei4 = create_segmenter(SegmentConfig()).segment(f.image)
    assert cells4.max() > 5 and np.array_equal(cells6, cells4) and np.array_equal(nuclei6, nuclei4)


def test_empty_field_gives_no_cells():
    seg = create_segmenter(SegmentConfig())
    cells, nuclei = seg.segment(np.zeros((256, 256, 4), np.uint8))
    assert cells.max() == 0 and nuclei.max() == 0
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 6, (256, 256, 4)).astype(np.uint8)
    assert seg.segment(noise)[0].max() == 0  # the contrast floor (tests/test_scale.py)


def test_non_square_field_keeps_its_shape():
    f = generate_field(SynthConfig(size=512, seed=4), 1)
    cells, nuclei = create_segmenter(SegmentConfig()).segment(f.image[:, :300])
    assert cells.shape == (512, 300)


def test_cell_table_and_crops():
    img = np.zeros((20, 30, 2), np.uint16)
    img[..., 0] = 1000
    cells = np.zeros((20, 30), np.uint16)
    cells[2:6, 3:11] = 1
    cells[10:20, 20:30] = 2
    nuclei = (cells == 1).astype(np.uint16)
    t = cell_table(img, cells, nuclei, ("a", "b"))
    assert t.cell_id.tolist() == [1, 2]
    assert t.loc[0, ["x0", "y0", "x1", "y1", "area", "nucleus_area"]].tolist() == [3, 2, 11, 6, 32, 32]
    assert t.edge.tolist() == [False, True] and t.mean_a.tolist() == [1000, 1000]
    crop = crop_cell(img, cells, 2, (20, 10, 30, 20), 16)
    assert crop.shape == (16, 16, 2) and crop.dtype == np.uint16
    assert crop[..., 0].max() == 1000 and crop[0, 0, 0] == 0  # outside the cell is zero
    with pytest.raises(ValueError):
        crop_cell(img, cells, 2, (20, 10, 30, 20), 16, mask="bogus")


def test_stretched_crops_fill_the_square_with_the_cell():
    """fit=stretch resizes the cell's bounding box to the square; pad keeps its shape inside a square."""
    img = np.full((60, 60, 1), 200, np.uint8)
    cells = np.zeros((60, 60), np.uint16)
    cells[20:30, 5:45] = 1  # a 40 x 10 cell, four times wider than tall
    padded = crop_cell(img, cells, 1, (5, 20, 45, 30), 32, mask="cell", margin=0.0)
    stretched = crop_cell(img, cells, 1, (5, 20, 45, 30), 32, mask="cell", margin=0.0, fit="stretch")
    assert padded.shape == stretched.shape == (32, 32, 1)
    assert 0.15 < (padded[..., 0] > 0).mean() < 0.35  # a band a quarter of the square high
    assert (stretched[..., 0] > 0).all()  # the cell fills the square
    edge = crop_cell(img, cells, 1, (5, 20, 45, 30), 32, mask="cell", margin=0.25, fit="stretch")
    assert (edge[..., 0] > 0).mean() == pytest.approx((1 / 1.5) ** 2, abs=0.08)  # the margin on each side, zero outside
    with pytest.raises(ValueError, match="fit must be one of"):
        crop_cell(img, cells, 1, (5, 20, 45, 30), 32, fit="zoom")


def test_crops_of_six_channel_fields_keep_every_channel():
    """RxRx1 has 6 channels; OpenCV resizes at most 4 at once with some interpolations."""
    img = np.arange(6, dtype=np.uint8)[None, None, :].repeat(40, 0).repeat(40, 1) * 40
    cells = np.zeros((40, 40), np.uint16)
    cells[5:35, 8:30] = 1
    for size in (8, 64):  # shrinking and growing
        crop = crop_cell(img, cells, 1, (8, 5, 30, 35), size, mask="none")
        assert crop.shape == (size, size, 6)
        np.testing.assert_array_equal(crop[size // 2, size // 2], np.arange(6) * 40)


def test_cell_table_and_crops_equal_the_whole_field_formulas():
    """The per-box table and OpenCV's masked crops give exactly what the plain whole-field
    formulas give (bincount sums, np.where masks), for 8- and 16-bit fields of 4 and 6 channels."""
    rng = np.random.default_rng(5)
    cells = np.zeros((120, 150), np.uint16)
    for cid in range(1, 30):  # overlapping boxes, later ones on top; some ids vanish, some touch the border
        y, x, h, w = rng.integers(0, 110), rng.integers(0, 140), rng.integers(3, 40), rng.integers(3, 40)
        cells[y:y + h, x:x + w] = cid
    nuclei = np.where(rng.random(cells.shape) < 0.3, cells, 0).astype(np.uint16)
    ids = np.unique(cells[cells > 0])
    for dtype, channels in ((np.uint8, 4), (np.uint16, 6)):
        image = rng.integers(0, np.iinfo(dtype).max, (*cells.shape, channels), dtype=dtype)
        names = [f"c{k}" for k in range(channels)]
        t = cell_table(image, cells, nuclei, names)
        flat = cells.ravel().astype(np.int64)
        area = np.bincount(flat, minlength=ids.max() + 1)[ids]
        yy, xx = np.indices(cells.shape)
        assert t.cell_id.tolist() == ids.tolist() and t.area.tolist() == area.tolist()
        np.testing.assert_array_equal(t.centroid_y, np.round(np.bincount(flat, yy.ravel())[ids] / area, 1))
        np.testing.assert_array_equal(t.centroid_x, np.round(np.bincount(flat, xx.ravel())[ids] / area, 1))
        assert t.nucleus_area.tolist() == np.bincount(flat, nuclei.ravel() > 0)[ids].astype(int).tolist()
        for c, name in enumerate(names):  # the same float64 to the last bit
            np.testing.assert_array_equal(t[f"mean_{name}"], np.round(np.bincount(flat, image[..., c].ravel().astype(np.float64))[ids] / area, 2))
        for mode, keep in (("cell", lambda lab, cid: lab == cid), ("others", lambda lab, cid: (lab == 0) | (lab == cid))):
            for r in t.itertuples():
                bbox = (r.x0, r.y0, r.x1, r.y1)
                reference = crop_cell(np.where(keep(cells, r.cell_id)[..., None], image, 0), cells, r.cell_id, bbox, 24, "none")
                np.testing.assert_array_equal(crop_cell(image, cells, r.cell_id, bbox, 24, mode), reference)
    assert cell_table(image, np.zeros_like(cells), nuclei, names).empty


def test_take_channels_is_a_plain_channel_gather():
    from cellloc.segmentation.classical import take_channels

    rng = np.random.default_rng(1)
    for dtype in (np.uint8, np.uint16, np.float32, np.int32):
        image = rng.integers(0, 200, (23, 31, 6)).astype(dtype)
        for idx in ([2], [2, 0, 3], [5, 4, 3, 2, 1, 0], [0, 0]):
            out = take_channels(image, idx)
            assert out.dtype == dtype and out.flags.c_contiguous
            np.testing.assert_array_equal(out, image[..., idx])
        np.testing.assert_array_equal(take_channels(image[3:, 5:20], [1, 4]), image[3:, 5:20][..., [1, 4]])  # a view


def test_segment_run_records_each_fields_pixel_size(tmp_path):
    """No options: each field at its own scale, as score_segmentation does (the file's tags, else
    the estimate from its nuclei, snapped to the width rule on HPA-like fields), recorded per row."""
    from PIL import Image

    from cellloc.fieldio import read_mask
    from cellloc.segmentation.scale import describe_pixel_sizes, segment_with_scale

    f = generate_field(SynthConfig(size=384, seed=0), 0)  # 163.84 um across: 0.4267 um/px
    centre = f.image[96:288, 96:288]  # a quarter of it, at the same scale: the width rule would say 0.853
    folder = tmp_path / "train"
    folder.mkdir()
    for name, image in (("hpa", f.image), ("part", centre), ("tagged", centre)):
        for c, channel in enumerate(("red", "green", "blue", "yellow")):
            write_png(folder / f"{name}_{channel}.png", image[..., c])
    Image.fromarray(centre[..., 2]).save(folder / "tagged_blue.png", dpi=(25400 / 0.5, 25400 / 0.5))  # pHYs: 0.5 um/px

    summary = run_segmentation(SegmentRunConfig(input=str(folder), out=str(tmp_path / "out"), crop_size=16))
    cells = pd.read_csv(tmp_path / "out" / "cells.csv")
    px = cells.groupby("ID")[["pixel_size_um", "pixel_size_source"]].first()
    assert px.loc["hpa"].tolist() == [float(f"{163.84 / 384:.6g}"), "width"]
    assert px.loc["tagged"].tolist() == [0.5, "file"]
    assert px.loc["part", "pixel_size_source"] == "image"
    assert float(px.loc["part", "pixel_size_um"]) == pytest.approx(163.84 / 384, rel=0.2)
    cfg = SegmentConfig()
    expected, _, found = segment_with_scale(create_segmenter(cfg), cfg, centre)  # what score_segmentation does
    assert found.source == "image"
    np.testing.assert_array_equal(read_mask(tmp_path / "out" / "masks" / "part_cell_mask.png"), expected)
    line = describe_pixel_sizes(summary.pixel_sizes, "field")
    assert "estimated from the nuclei for 1 field (" in line and "from the file metadata for 1 field (0.5 um/px)" in line

    given = run_segmentation(SegmentRunConfig(input=str(folder), out=str(tmp_path / "given"), crop_size=16, pixel_size_um=0.3))
    assert sorted(given.pixel_sizes) == [("given", 0.3)] * 3
    assert set(pd.read_csv(tmp_path / "given" / "cells.csv")["pixel_size_source"]) == {"given"}
    free = run_segmentation(SegmentRunConfig(input=str(folder), out=str(tmp_path / "free"), crop_size=16, snap_to_width=0, limit=1))
    assert free.pixel_sizes[0][0] == "image" and free.pixel_sizes[0][1] == pytest.approx(163.84 / 384, rel=0.2)  # "hpa", not snapped


def run(*args):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=REPO)


def test_segment_cli_end_to_end_resume_and_failures(synth_dataset, tmp_path):
    out = tmp_path / "seg"
    r = run("src/segment.py", "--input", synth_dataset / "train", "--out", out, "--crop-size", "32", "--overlay")
    assert r.returncode == 0, r.stderr
    cells = pd.read_csv(out / "cells.csv", dtype={"Label": str, "TrueLabel": str}, keep_default_na=False)
    assert cells.ID.nunique() == 4 and len(cells) > 20
    assert {"ID", "cell_id", "Label", "crop", "area", "mean_green", "TrueLabel"} <= set(cells.columns)
    assert (cells.TrueLabel != "").mean() > 0.8
    assert cells.crop.iloc[0] == f"crops/{cells.ID.iloc[0]}.npy#0"  # one file of stacked crops per field
    crop = load_crop(out / cells.crop.iloc[0])
    assert crop.shape == (32, 32, 4) and crop.dtype == np.uint8
    assert (cells.pixel_size_source == "width").all()  # HPA-like fields: the width rule's exact value
    assert "pixel size: from the width (the HPA field of view) for 4 fields" in r.stdout
    assert (out / "overlays").is_dir() and (out / "masks").is_dir()
    # rerun: everything is skipped; a corrupt field is reported, the others kept
    again = run("src/segment.py", "--input", synth_dataset / "train", "--out", out, "--crop-size", "32")
    assert again.returncode == 0 and "4 already done" in again.stdout
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in (synth_dataset / "train").glob("synth003_00000_*.png"):
        (bad / p.name).write_bytes(p.read_bytes())
    (bad / "broken_red.png").write_bytes(b"\x89PNG garbage")
    for ch in ("green", "blue", "yellow"):
        (bad / f"broken_{ch}.png").write_bytes((bad / f"synth003_00000_{ch}.png").read_bytes())
    (bad / "lonely_red.png").write_bytes((bad / "synth003_00000_red.png").read_bytes())
    r = run("src/segment.py", "--input", bad, "--out", tmp_path / "o2")
    assert r.returncode == 1
    fails = pd.read_csv(tmp_path / "o2" / "failures.csv")
    assert set(fails.ID) == {"broken", "lonely"}
    assert "cannot decode" in fails.set_index("ID").loc["broken", "reason"]
    assert (tmp_path / "o2" / "cells" / "synth003_00000.csv").exists()


def test_segment_cli_one_line_errors(tmp_path):
    r = run("src/segment.py", "--input", tmp_path / "nowhere")
    assert r.returncode == 2 and r.stderr.strip().startswith("error:") and r.stderr.count("\n") == 1
    (tmp_path / "empty").mkdir()
    r = run("src/segment.py", "--input", tmp_path / "empty")
    assert r.returncode == 2 and "no fields found" in r.stderr
    write_png(tmp_path / "empty" / "a_red.png", np.zeros((8, 8), np.uint8))
    for ch in ("green", "blue", "yellow"):
        write_png(tmp_path / "empty" / f"a_{ch}.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "empty" / "train.csv").write_text("ID,Label\na,1|x\n")
    r = run("src/segment.py", "--input", tmp_path / "empty")
    assert r.returncode == 2 and "malformed label" in r.stderr


def test_score_cli_on_generated_data(synth_dataset):
    r = run("src/score_segmentation.py", synth_dataset)
    assert r.returncode == 0, r.stderr
    last = r.stdout.strip().splitlines()[-1]
    ap, f1 = (float(x.split("=")[1]) for x in last.split())
    assert last.startswith("AP50=") and ap > 0.8 and f1 > 0.85


def test_score_cli_scores_saved_masks_as_segmenting_would(synth_dataset, tmp_path):
    """--masks: segment.py's masks scored as they are give the scores of segmenting anew (same settings)."""
    out = tmp_path / "seg"
    assert run("src/segment.py", "--input", synth_dataset / "train", "--out", out, "--crop-size", "32").returncode == 0
    fresh, saved = run("src/score_segmentation.py", synth_dataset), run("src/score_segmentation.py", synth_dataset,
                                                                          "--masks", out / "masks")
    assert saved.returncode == 0, saved.stderr
    assert "masks: 4 images scored as saved" in saved.stdout
    assert fresh.stdout.strip().splitlines()[-3:] == saved.stdout.strip().splitlines()[-3:]  # the table and AP50 line
    gone = sorted((out / "masks").glob("*_nucleus_mask.*"))[0]
    gone.unlink()
    r = run("src/score_segmentation.py", synth_dataset, "--masks", out / "masks")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert f"{gone.with_suffix('.png')}: not found" in r.stderr
    r = run("src/score_segmentation.py", synth_dataset, "--masks", out / "masks", "--rescale", "0.5")
    assert r.returncode == 2 and "--rescale needs segmentation" in r.stderr
    r = run("src/score_segmentation.py", synth_dataset, "--masks", tmp_path / "nowhere")
    assert r.returncode == 2 and "not a folder of masks" in r.stderr


@pytest.mark.skipif(not (SHARED / "data" / "nuclei_gt").is_dir(), reason="../shared/data/nuclei_gt not present")
def test_score_cli_on_real_nuclei():
    r = run("src/score_segmentation.py", SHARED / "data" / "nuclei_gt", "--pattern", "gowt1_t01", "--pixel-size-um", "0.24")
    assert r.returncode == 0, r.stderr
    ap = float(r.stdout.strip().splitlines()[-1].split()[0].split("=")[1])
    assert ap > 0.6


# --------------------------------------------------------------------------- reruns, locks, the environment


def seg_cfg(synth_dataset, out, **kw) -> SegmentRunConfig:
    return SegmentRunConfig(**{"input": str(synth_dataset / "train"), "out": str(out), "crop_size": 32, "limit": 1, **kw})


def test_segment_rerun_with_other_crop_settings_stops_saying_what_changed(synth_dataset, tmp_path):
    out = tmp_path / "seg"
    first = run_segmentation(seg_cfg(synth_dataset, out))
    assert first.done == 1 and not first.start.resuming
    crop = load_crop(out / first.cells["crop"].iloc[0])
    with pytest.raises(InputError) as err:
        run_segmentation(seg_cfg(synth_dataset, out, crop_size=48, crop_mask="none"))
    msg = str(err.value)
    assert msg.startswith(f"{out}: its segment outputs were made with other settings (crop_mask: \"cell\" -> \"none\"; "
                          "crop_size: 32 -> 48); add --overwrite to start over") and "another --out" in msg
    assert json.loads((out / "segment_config.json").read_text())["crop_size"] == 32  # the record still says 32
    again = run_segmentation(seg_cfg(synth_dataset, out, workers=2))  # how fast it runs is not a setting
    assert again.start.resuming and again.skipped == 1 and again.done == 0
    over = run_segmentation(seg_cfg(synth_dataset, out, crop_size=48, overwrite=True))
    assert over.done == 1 and load_crop(out / over.cells["crop"].iloc[0]).shape[:2] == (48, 48)
    aside = over.start.moved_aside
    np.testing.assert_array_equal(load_crop(aside / first.cells["crop"].iloc[0]), crop)  # the old run, intact
    assert "overwrite" not in json.loads((out / "segment_config.json").read_text())  # never re-run from the file


def test_segment_rerun_at_another_scale_stops(synth_dataset, tmp_path):
    """Where the pixel size comes from changes the masks: a rerun told otherwise is not resumed."""
    out = tmp_path / "seg"
    run_segmentation(seg_cfg(synth_dataset, out))
    for change, said in (({"pixel_size_um": 0.3}, "segment.pixel_size_um: null -> 0.3"),
                         ({"scale_from": "width"}, 'segment.scale_from: "image" -> "width"'),
                         ({"snap_to_width": 0.0}, "segment.snap_to_width: 0.25 -> 0.0")):
        with pytest.raises(InputError, match=r"made with other settings \(" + re.escape(said) + r"\)"):
            run_segmentation(seg_cfg(synth_dataset, out, **change))


def test_segment_outputs_from_before_manifests_are_not_resumed_over(synth_dataset, tmp_path):
    out = tmp_path / "seg"
    run_segmentation(seg_cfg(synth_dataset, out))
    (out / "segment_manifest.json").unlink()
    with pytest.raises(InputError, match="holds segment outputs .* with no record of their settings"):
        run_segmentation(seg_cfg(synth_dataset, out))


def test_two_segment_runs_on_one_folder(synth_dataset, tmp_path):
    out = tmp_path / "seg"
    holder = hold_lock(out)
    try:
        with pytest.raises(InputError, match=rf"another run is writing to this folder \(pid {holder.pid}\)"):
            run_segmentation(seg_cfg(synth_dataset, out))
    finally:
        holder.kill()
        holder.wait()
    assert run_segmentation(seg_cfg(synth_dataset, out)).done == 1  # a killed holder blocks nothing


def test_a_full_disk_stops_the_run_instead_of_failing_every_field(synth_dataset, tmp_path, monkeypatch):
    import cellloc.runs.segment as seg_run

    def full(path, arr):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(seg_run, "write_npy", full)
    with pytest.raises(OSError) as err:
        run_segmentation(seg_cfg(synth_dataset, tmp_path / "seg"))
    assert err.value.errno == errno.ENOSPC and "crops" in err.value.filename


def test_segment_into_an_unwritable_place_is_one_line(synth_dataset, tmp_path):
    (tmp_path / "blocked").write_text("a file where the output folder should be")
    r = run("src/segment.py", "--input", synth_dataset / "train", "--out", tmp_path / "blocked" / "seg", "--limit", "1")
    errors = [line for line in r.stderr.splitlines() if "error" in line.lower()]
    assert r.returncode == 2 and errors == [r.stderr.splitlines()[-1]] and errors[0].startswith("error: ")
    assert str(tmp_path / "blocked") in errors[0] and "Traceback" not in r.stderr


def test_segment_warns_about_fields_missing_from_the_labels(synth_dataset, tmp_path):
    folder = tmp_path / "train"
    folder.mkdir()
    ids = sorted({p.name.rsplit("_", 1)[0] for p in (synth_dataset / "train").glob("*_red.png")})[:2]
    for image_id in ids:
        for p in (synth_dataset / "train").glob(f"{image_id}_*.png"):
            (folder / p.name).write_bytes(p.read_bytes())
    (folder / "train.csv").write_text(f"ID,Label\n{ids[0]},1\n")
    r = run("src/segment.py", "--input", folder, "--out", tmp_path / "seg", "--crop-size", "16")
    assert r.returncode == 0, r.stderr
    assert f"warning: 1 field(s) have no row in {folder / 'train.csv'} ({ids[1]}): their cells get an empty Label" in r.stderr

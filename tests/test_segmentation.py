"""Classical backend, label helpers, crops and the segment/score command lines."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from cellloc.cells import cell_table, crop_cell
from cellloc.fieldio import write_png
from cellloc.metrics import segmentation_scores
from cellloc.segmentation import SegmentConfig, create_segmenter
from cellloc.segmentation.postprocess import fill_small_holes_per_label, relabel_sequential, remove_edge_labels, remove_small_labels
from cellloc.synth import SynthConfig, generate_field
from conftest import REPO, SHARED


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
    crop = np.load(out / cells.crop.iloc[0])
    assert crop.shape == (32, 32, 4) and crop.dtype == np.uint8
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


@pytest.mark.skipif(not (SHARED / "data" / "nuclei_gt").is_dir(), reason="../shared/data/nuclei_gt not present")
def test_score_cli_on_real_nuclei():
    r = run("src/score_segmentation.py", SHARED / "data" / "nuclei_gt", "--pattern", "gowt1_t01", "--pixel-size-um", "0.24")
    assert r.returncode == 0, r.stderr
    ap = float(r.stdout.strip().splitlines()[-1].split()[0].split("=")[1])
    assert ap > 0.6

"""The pixel size from the image: nuclei measured, the estimate used, the old width rule kept for HPA
fields, and no cells drawn out of pure noise."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from cellloc.errors import InputError
from cellloc.metrics import segmentation_scores
from cellloc.segmentation import SegmentConfig, create_segmenter
from cellloc.segmentation.classical import drop_faint_labels, noise_level, smoothing_gain
from cellloc.segmentation.scale import (PixelSize, fill_enclosed_holes, nucleus_size, resolve_pixel_size, segment_with_scale,
                                        weighted_median)
from cellloc.synth import SynthConfig, generate_field
from conftest import REPO, SHARED

NUCLEI_GT = SHARED / "data" / "nuclei_gt"


def resized(image: np.ndarray, factor: float) -> np.ndarray:
    size = round(image.shape[1] * factor)
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)


def cell_count(cells: np.ndarray) -> int:
    return len(np.unique(cells)) - 1


def test_helpers_on_tiny_arrays():
    lab = np.zeros((9, 9), np.int32)
    lab[1:8, 1:8] = 2
    lab[4, 4] = 0  # a hole of 1 px in a label of 48
    assert fill_enclosed_holes(lab, 0.1)[4, 4] == 2
    assert fill_enclosed_holes(lab, 0.01)[4, 4] == 0  # larger than 1% of the label: kept open
    assert weighted_median(np.array([1.0, 5.0, 9.0]), np.array([1.0, 1.0, 10.0])) == 9.0
    rng = np.random.default_rng(0)
    assert noise_level(rng.normal(0, 0.1, (200, 200)).astype(np.float32)) == pytest.approx(0.1, rel=0.05)
    assert noise_level(np.zeros((50, 50), np.float32)) == 0
    assert smoothing_gain(0) == 1 and smoothing_gain(2.0) == pytest.approx(1 / (2 * np.sqrt(np.pi) * 2), rel=0.02)
    img = np.zeros((6, 6), np.float32)
    img[1:3, 1:3], img[4:6, 4:6] = 1.0, 0.05
    labels = np.zeros((6, 6), np.int32)
    labels[1:3, 1:3], labels[4:6, 4:6] = 1, 2
    assert set(np.unique(drop_faint_labels(img, labels, labels > 0, 0.5))) == {0, 1}
    assert drop_faint_labels(img, labels, labels > 0, 0) is labels


@pytest.mark.parametrize("factor", [0.5, 1, 2])
def test_nucleus_size_follows_the_image_scale(factor):
    f = generate_field(SynthConfig(size=384, seed=2), 0)
    ids, areas = np.unique(f.nucleus_labels[f.nucleus_labels > 0], return_counts=True)
    true_diameter = np.median(2 * np.sqrt(areas / np.pi)) * factor
    size = nucleus_size(resized(f.image[..., 2], factor))
    assert size.count >= 5 and size.diameter_px == pytest.approx(true_diameter, rel=0.2)


def test_pixel_size_precedence():
    f = generate_field(SynthConfig(size=384, seed=0), 0)  # 163.84 um across: 0.4267 um/px
    true_um = 163.84 / 384
    assert resolve_pixel_size(SegmentConfig(pixel_size_um=0.4), f.image, file_um=0.3) == PixelSize(0.4, "given")
    assert resolve_pixel_size(SegmentConfig(), f.image, file_um=0.3) == PixelSize(0.3, "file")
    assert resolve_pixel_size(SegmentConfig(), f.image, file_um=300.0).source != "file"  # a screen's dpi, ignored
    est = resolve_pixel_size(SegmentConfig(), f.image)  # an HPA-like field: the width rule's exact value
    assert est.source == "width" and est.um == pytest.approx(true_um) and "agree" in est.describe()
    assert resolve_pixel_size(SegmentConfig(scale_from="width"), f.image).note == ""
    free = resolve_pixel_size(SegmentConfig(snap_to_width=0), f.image)
    assert free.source == "image" and free.um == pytest.approx(true_um, rel=0.15) and free.nuclei >= 5
    half = f.image[:, :192]  # half the field at the same scale: the width rule would say 2x too coarse
    assert resolve_pixel_size(SegmentConfig(), half).um == pytest.approx(true_um, rel=0.15)
    assert resolve_pixel_size(SegmentConfig(backend="hpa"), half) == PixelSize(2 * true_um, "width")  # networks at HPA scale
    with pytest.raises(InputError, match="unknown scale source 'nope'"):
        resolve_pixel_size(SegmentConfig(scale_from="nope"), half)


def test_cell_count_holds_from_a_quarter_to_four_times_the_size():
    """The estimate alone (no snapping to the width rule), on one field resized 0.25x-4x."""
    f = generate_field(SynthConfig(size=384, seed=7), 1)
    cfg = SegmentConfig(snap_to_width=0)
    seg = create_segmenter(cfg)
    n_true = cell_count(f.cell_labels)
    for factor in (0.25, 0.5, 2, 4):
        cells, _, px = segment_with_scale(seg, cfg, resized(f.image, factor))
        assert px.source == "image" and px.um == pytest.approx(163.84 / 384 / factor, rel=0.2)
        assert abs(cell_count(cells) - n_true) <= 1, factor


def test_a_mosaic_of_small_fields_is_segmented_at_its_own_scale():
    """Four fields at half size tiled into one: the width rule draws every nucleus twice too
    large; the estimate sees the nuclei and finds the cells of all four."""
    fields = [generate_field(SynthConfig(size=256, seed=9), i) for i in range(4)]
    half = [resized(f.image, 0.5) for f in fields]
    mosaic = np.vstack([np.hstack(half[:2]), np.hstack(half[2:])])
    truth = sum(cell_count(f.cell_labels) for f in fields)
    cells, _, px = segment_with_scale(create_segmenter(SegmentConfig()), SegmentConfig(), mosaic)
    assert px.source == "image" and px.um == pytest.approx(1.28, rel=0.2)
    assert abs(cell_count(cells) - truth) <= 2


@pytest.mark.parametrize("size", [256, 1024])
def test_pure_noise_gives_no_cells(size):
    rng = np.random.default_rng(size)
    fields = [rng.integers(0, 256, (size, size, 4)).astype(np.uint8), rng.normal(1000, 30, (size, size, 4)).astype(np.uint16),
              rng.poisson(3, (size, size, 4)).astype(np.uint8)]
    for cfg in (SegmentConfig(), SegmentConfig(pixel_size_um=0.08), SegmentConfig(pixel_size_um=0.6)):
        seg = create_segmenter(cfg)
        for noise in fields:
            cells, nuclei, px = segment_with_scale(seg, cfg, noise)
            assert cells.max() == 0 and nuclei.max() == 0
    px = resolve_pixel_size(SegmentConfig(), fields[0])
    assert px.source == "width" and "no nuclei" in px.describe()
    unfloored = SegmentConfig(pixel_size_um=0.3, extra={"classical": {"nucleus_min_contrast": 0}})
    assert sum(create_segmenter(unfloored).segment(n)[0].max() for n in fields) > 0  # what the floor removes


def test_a_dim_noisy_field_is_still_segmented():
    f = generate_field(SynthConfig(size=256, seed=3), 0)
    rng = np.random.default_rng(0)
    dim = np.clip(f.image * 0.1 + 20 + rng.normal(0, 3, f.image.shape), 0, 255).astype(np.uint8)  # nuclei ~15 grey levels up
    _, nuclei = create_segmenter(SegmentConfig()).segment(dim)
    assert segmentation_scores(f.nucleus_labels, nuclei)["f1_50"] > 0.9


@pytest.mark.skipif(not NUCLEI_GT.is_dir(), reason="../shared/data/nuclei_gt not present")
def test_real_nuclei_with_no_options_score_as_well_as_told():
    from cellloc.runs.score_segmentation import find_items, score_items, summarise
    from cellloc.tasks import get_task

    def ap50(pattern, **kw):
        table = score_items(find_items(NUCLEI_GT, get_task("hpa-sc"), pattern), SegmentConfig(**kw))
        return summarise(table).iloc[0]["AP50"], table

    default, table = ap50("*")
    assert default >= 0.8 and set(table["scale"]) == {"image"}
    for pattern, published in (("gowt1*", 0.24), ("hela*", 0.645)):
        assert ap50(pattern)[0] >= ap50(pattern, pixel_size_um=published)[0] - 0.05


def test_score_cli_prints_where_the_pixel_size_came_from(synth_dataset):
    r = subprocess.run([sys.executable, "src/score_segmentation.py", synth_dataset, "--rescale", "0.5", "--snap-to-width", "0"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("pixel size: estimated from the nuclei for 4 images")
    assert float(lines[-1].split()[0].split("=")[1]) > 0.8

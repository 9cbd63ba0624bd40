"""The generator: deterministic, HPA layout, truth consistent with the pictures."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from cellloc.fieldio import list_fields, read_field, read_labels, read_mask
from cellloc.generators import write_dataset
from cellloc.synth import (CLASS_DRAWS, HPA_LIKE_CLASS_WEIGHTS, NEGATIVE, SPINDLE, SynthConfig, class_example,
                           draw_field_classes, generate_field, outline_distance, radial_profile, shape_radius,
                           slot_counts, stratified_numbers)
from conftest import REPO


def test_same_seed_same_field_and_different_seed_differs():
    a = generate_field(SynthConfig(size=256, seed=1), 0)
    b = generate_field(SynthConfig(size=256, seed=1), 0)
    c = generate_field(SynthConfig(size=256, seed=2), 0)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.cell_labels, b.cell_labels)
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("bit_depth,dtype", [(8, np.uint8), (16, np.uint16)])
def test_field_shapes_dtypes_and_truth(bit_depth, dtype):
    f = generate_field(SynthConfig(size=256, bit_depth=bit_depth, seed=5), 2)
    assert f.image.shape == (256, 256, 4) and f.image.dtype == dtype
    ids = set(np.unique(f.cell_labels)) - {0}
    assert ids == set(f.cell_classes) and len(ids) >= 5
    assert set(np.unique(f.nucleus_labels)) - {0} <= ids
    # nuclei lie inside their own cell, and the blue channel is brighter there
    inside = f.nucleus_labels > 0
    assert np.all(f.cell_labels[inside] == f.nucleus_labels[inside])
    blue = f.image[..., 2].astype(float)
    assert blue[inside].mean() > 3 * blue[f.cell_labels == 0].mean()


def test_image_label_is_union_of_cells_and_cells_differ():
    union_differs = 0
    for i in range(12):
        f = generate_field(SynthConfig(size=256, seed=0), i)
        assert f.image_classes == sorted({c for v in f.cell_classes.values() for c in v})
        if any(v != f.image_classes for v in f.cell_classes.values()):
            union_differs += 1
    assert union_differs >= 6  # weak labels: most fields have cells that lack some field class


def test_protein_pattern_follows_class():
    nuc = class_example(0, 256)  # nucleoplasm: green inside nuclei
    cyt = class_example(16, 256)  # cytosol: green outside nuclei
    neg = class_example(18, 256)

    def ratio(f):
        g = f.image[..., 1].astype(float)
        return g[f.nucleus_labels > 0].mean() / g[(f.cell_labels > 0) & (f.nucleus_labels == 0)].mean()

    assert ratio(nuc) > 2 and ratio(cyt) < 0.5
    assert neg.image[..., 1][neg.cell_labels > 0].mean() < 0.5 * cyt.image[..., 1][cyt.cell_labels > 0].mean()


def test_spindle_only_in_mitotic_cells():
    f = class_example(SPINDLE, 256)
    assert any(SPINDLE in v for v in f.cell_classes.values())


def test_bad_config_values():
    for kw in ({"size": 64}, {"bit_depth": 12}, {"class_weights": (1.0,)}, {"cells_per_field": (5, 2)}):
        with pytest.raises(ValueError):
            SynthConfig(**kw)


def test_written_dataset_has_kaggle_layout_and_truth(synth_dataset):
    listing = list_fields(synth_dataset / "train")
    assert len(listing.ids) == 4 and not listing.incomplete
    labels = read_labels(synth_dataset / "train.csv", 19)
    cells = pd.read_csv(synth_dataset / "truth" / "cells.csv", dtype={"Label": str})
    for image_id in listing.ids:
        img = read_field(synth_dataset / "train", image_id)
        mask = read_mask(synth_dataset / "truth" / f"{image_id}_cell_mask.png")
        assert mask.dtype == np.uint16 and mask.shape == img.shape[:2]
        mine = cells[cells.ID == image_id]
        assert set(mine.cell_id) == set(np.unique(mask)) - {0}
        union = sorted({int(k) for v in mine.Label for k in v.split("|")})
        assert labels.set_index("ID").loc[image_id, "labels"] == union


def test_make_data_cli_resumes_and_rejects_bad_args(tmp_path):
    cmd = [sys.executable, str(REPO / "src" / "make_data.py"), "--root", str(tmp_path), "--name", "d",
           "--fields", "2", "--size", "192"]
    first = subprocess.run(cmd, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert "field/s" not in first.stderr  # no progress bar redrawn into a pipe or a log file
    mtime = (tmp_path / "d" / "train" / "synth000_00000_red.png").stat().st_mtime_ns
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 0
    assert (tmp_path / "d" / "train" / "synth000_00000_red.png").stat().st_mtime_ns == mtime
    bad = subprocess.run(cmd[:-1] + ["32"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: hpa-sc generator: size 32 is too small") and bad.stderr.count("\n") == 1
    test_split = subprocess.run(cmd + ["--split", "test", "--name", "t"], capture_output=True, text=True)
    assert test_split.returncode == 0
    sub = pd.read_csv(tmp_path / "t" / "sample_submission.csv")
    assert list(sub.columns) == ["ID", "ImageWidth", "ImageHeight", "PredictionString"]


def test_truth_classes_name_exactly_the_cells_in_the_mask_when_fragments_are_dropped():
    """Field 37 of seed 1 at 512 px loses a border sliver; its classes once gained a cell id 0."""
    f = generate_field(SynthConfig(size=512, seed=1), 37)
    ids = set(np.unique(f.cell_labels)[1:].tolist())
    assert set(f.cell_classes) == ids and 0 not in f.cell_classes
    # every nucleus lies inside the cell with its id (geometry and ids stay aligned)
    inside = f.cell_labels[f.nucleus_labels > 0] == f.nucleus_labels[f.nucleus_labels > 0]
    assert inside.all()


def test_rerun_with_fewer_fields_or_another_seed_removes_the_fields_it_does_not_list(tmp_path):
    out = tmp_path / "d"
    write_dataset(SynthConfig(size=128, seed=0), out, 3)
    (out / "train" / "mine_red.png").write_bytes(b"a user's file")  # not the generator's naming
    (out / "notes.txt").write_text("kept")
    said: list[str] = []
    write_dataset(SynthConfig(size=128, seed=0), out, 1, log=said.append)
    assert list_fields(out / "train").ids == ["synth000_00000"]
    assert sorted(p.name for p in (out / "truth").glob("synth*")) == [
        "synth000_00000_cell_mask.png", "synth000_00000_cells.csv", "synth000_00000_nucleus_mask.png"]
    assert read_labels(out / "train.csv", 19)["ID"].tolist() == ["synth000_00000"]
    assert said == [f"{out / 'train'}: removed 2 generated field(s) this run does not list (synth000_00001 ...)"]
    assert (out / "train" / "mine_red.png").exists() and (out / "notes.txt").exists()
    write_dataset(SynthConfig(size=128, seed=4), out, 1)
    assert list_fields(out / "train").ids == ["synth004_00000"]


def test_stratified_class_draw_holds_each_class_near_its_share():
    """Any first N fields hold each first class about N times its share (random draws miss rare classes)."""
    w = np.asarray(HPA_LIKE_CLASS_WEIGHTS) / sum(HPA_LIKE_CLASS_WEIGHTS)
    edges = np.concatenate([[0.0], np.cumsum(w)])
    for n in (40, 120, 200):
        u = np.array([stratified_numbers(SynthConfig(seed=3), i) for i in range(n)])
        assert u.shape == (n, 3) and u.min() >= 0 and u.max() < 1
        first = np.histogram(u[:, 0], edges)[0]
        assert np.all(np.abs(first - n * w) <= 2), (n, first, np.round(n * w, 1))
        assert abs((u[:, 1] < 0.45).sum() - 0.45 * n) <= 2  # fields with a second class
    negatives = sum(draw_field_classes(np.random.default_rng(i), SynthConfig(seed=3), i) == [NEGATIVE]
                    for i in range(120))
    assert abs(negatives - 120 * w[NEGATIVE]) <= 2


def test_balanced_class_draw_holds_every_class_near_its_share():
    """class_draw=balanced: any first N fields hold every class, not only the first, within about
    one of its share of their class slots, and the fields keep the configured number of classes."""
    w = np.asarray(HPA_LIKE_CLASS_WEIGHTS, float)
    share = w.copy()
    share[NEGATIVE] = 0
    share /= share.sum()
    for seed in (0, 3):
        cfg = SynthConfig(seed=seed, class_draw="balanced")
        for n in (40, 120, 200):
            drawn = [draw_field_classes(np.random.default_rng(i), cfg, i) for i in range(n)]
            slots = slot_counts(cfg, n)
            assert [len(d) if d != [NEGATIVE] else 0 for d in drawn] == slots.tolist()
            counts = np.bincount([k for d in drawn for k in d], minlength=len(w))
            assert np.all(np.abs(counts[:NEGATIVE] - slots.sum() * share[:NEGATIVE]) <= 2), (seed, n, counts)
            assert abs(counts[NEGATIVE] - n * w[NEGATIVE] / w.sum()) <= 2
            assert abs(slots.sum() - n * (1 - w[NEGATIVE] / w.sum()) * (1 + 0.45 + 0.12)) <= 3
            assert all(len(set(d)) == len(d) for d in drawn)


def test_class_draw_modes_and_purity():
    """Fields stay a pure function of (config, index) in both modes; the seed moves the strata."""
    for mode in CLASS_DRAWS:
        cfg = SynthConfig(size=256, seed=1, class_draw=mode)
        a, b = generate_field(cfg, 5), generate_field(cfg, 5)
        assert a.cell_classes == b.cell_classes and np.array_equal(a.image, b.image)
    draws = {s: [draw_field_classes(np.random.default_rng(0), SynthConfig(seed=s), i) for i in range(30)] for s in (0, 1)}
    assert draws[0] != draws[1]
    with pytest.raises(ValueError, match="class_draw"):
        SynthConfig(class_draw="sobol")


def test_zero_weight_class_is_never_drawn():
    w = [0.0] * len(HPA_LIKE_CLASS_WEIGHTS)
    w[2], w[5] = 1.0, 1.0
    cfg = SynthConfig(class_weights=tuple(w), second_class_p=1.0, third_class_p=0.0)
    for i in range(50):
        assert draw_field_classes(np.random.default_rng(i), cfg, i) == [2, 5]


def test_outline_distance_skips_only_pixels_no_outline_reaches():
    rng = np.random.default_rng(3)
    for _ in range(20):
        base, elong, angle = rng.uniform(8, 30), rng.uniform(1.0, 2.4), rng.uniform(0, np.pi)
        amp, phase = radial_profile(rng, rng.uniform(0, 0.6))
        half = int(base * elong * 1.6 + 2)  # the square rasterise looks in
        yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float32)
        full = np.sqrt(yy**2 + xx**2) / shape_radius(np.arctan2(yy, xx), base, elong, angle, amp, phase)
        d = outline_distance(yy, xx, base, elong, angle, amp, phase)
        skipped = np.isinf(d)
        assert skipped.mean() > 0.3  # most of the square is out of reach
        assert (full[skipped] >= 1).all()  # none of it inside the outline
        assert np.array_equal(d[~skipped], full[~skipped])  # the rest to the bit

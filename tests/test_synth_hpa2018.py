"""The HPA 2018 generator: the competition's layout, its label statistics, truth that matches the pictures."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from cellloc.classes import HPA_2018
from cellloc.fieldio import list_fields, read_csv, read_field
from cellloc.hpa2018 import read_ids, read_labels
from cellloc.synth import SINGLE_CELL_PATTERNS, SynthConfig, generate_field
from cellloc.synth_hpa2018 import (
    BRIDGE_2018,
    HPA_2018_IMAGES,
    HPA_2018_LABELS_PER_IMAGE,
    HPA_2018_PATTERNS,
    HPA_2018_TRAIN_COUNTS,
    JUNCTIONS_2018,
    SPINDLE_2018,
    Hpa2018Config,
    class_example,
    class_gallery,
    draw_classes,
    generate_image,
    image_records,
    protein_groups,
    write_dataset,
)

RARE = [27, 15, 10, 9, 8, 20]  # Rods & rings, Microtubule ends, Lysosomes, Endosomes, Peroxisomes, Lipid droplets


def test_real_set_facts_are_consistent():
    assert len(HPA_2018_TRAIN_COUNTS) == HPA_2018.num_classes == len(HPA_2018_PATTERNS)
    assert sum(HPA_2018_LABELS_PER_IMAGE) == HPA_2018_IMAGES
    # the class counts and the classes-per-image counts describe the same 50,782 labels
    assert sum(HPA_2018_TRAIN_COUNTS) == sum(k * n for k, n in enumerate(HPA_2018_LABELS_PER_IMAGE, start=1))
    assert len(set(HPA_2018_PATTERNS)) == 28


def test_label_statistics_follow_the_real_training_set():
    cfg = Hpa2018Config(seed=0)
    rng = np.random.default_rng(0)
    y = np.zeros((20000, 28))
    for i in range(len(y)):  # one protein's classes per draw
        y[i, draw_classes(rng, cfg)] = 1
    share = y.mean(0)
    real = np.array(HPA_2018_TRAIN_COUNTS) / HPA_2018_IMAGES
    common = real > 0.02
    np.testing.assert_allclose(share[common], real[common], rtol=0.12)
    assert np.all(share[RARE] < 0.01)  # the rarest classes in well under 1% of images
    assert share[0] > 0.35 and share[25] > 0.2  # Nucleoplasm and Cytosol lead, as in the real set
    n_classes = y.sum(1)
    assert n_classes.min() == 1 and n_classes.max() >= 4
    assert 1.55 < n_classes.mean() < 1.72  # real: 1.63
    assert 0.45 < (n_classes >= 2).mean() < 0.57  # real: 51% of images have several classes


def test_images_of_a_dataset_are_long_tailed():
    records = image_records(Hpa2018Config(seed=0), "train", 3000)
    y = np.zeros((len(records), 28))
    for i, r in enumerate(records):
        y[i, list(r.classes)] = 1
    share = y.mean(0)
    assert share[0] == share.max() and np.all(share[RARE] < 0.01) and (y.sum(1) >= 2).mean() > 0.4


def test_records_are_prefix_stable_and_grouped_by_protein():
    cfg = Hpa2018Config(seed=4)
    short, long = image_records(cfg, "train", 10), image_records(cfg, "train", 40)
    assert short == long[:10]
    groups = protein_groups(cfg, "train", 40)
    sizes = np.bincount(groups)
    assert sizes.min() >= 1 and sizes.max() <= 4 and (sizes > 1).any()
    for r in long:  # one protein, one set of classes
        assert r.classes == next(o.classes for o in long if o.protein == r.protein)
    ids = [r.image_id for r in long]
    assert len(set(ids)) == 40 and all(len(i) == 36 and i.count("-") == 4 for i in ids)
    test_ids = {r.image_id for r in image_records(cfg, "test", 40)}
    assert not test_ids & set(ids)  # the test split never repeats a training image, even with one seed


def test_cover_groups_put_every_class_in_a_small_split():
    plain = image_records(Hpa2018Config(seed=1), "test", 120)
    assert len({k for r in plain for k in r.classes}) < 24  # the real shares leave the rare classes out
    covered = image_records(Hpa2018Config(seed=1, cover_groups=1), "test", 120)
    assert {k for r in covered for k in r.classes} == set(range(28))
    first = {}
    for r in covered:
        first.setdefault(r.protein, r.classes)
    order = sorted(range(28), key=lambda k: (HPA_2018_TRAIN_COUNTS[k], k))  # rarest first: Rods & rings
    assert all(order[g] in first[g] for g in range(28))
    later = [r for r in covered if r.protein >= 28]  # the groups after the covering ones: drawn as usual
    assert later and later == [r for r in plain if r.protein >= 28]
    # none asked for: the same records as before the option existed
    assert image_records(Hpa2018Config(seed=1, cover_groups=0), "test", 120) == plain


def test_images_are_deterministic_and_labels_match_cells():
    cfg = Hpa2018Config(size=256, seed=1)
    records = image_records(cfg, "train", 6)
    for r in records:
        f = generate_image(cfg, r)
        assert f.image.shape == (256, 256, 4) and f.image.dtype == np.uint8
        assert tuple(f.image_classes) == r.classes  # the image label is the union of its cells'
    a, b = generate_image(cfg, records[0]), generate_image(cfg, records[0])
    np.testing.assert_array_equal(a.image, b.image)
    other = generate_image(Hpa2018Config(size=256, seed=2), records[0])
    assert not np.array_equal(a.image, other.image)


def test_sixteen_bit_full_size_option():
    f = generate_image(Hpa2018Config(size=1024, bit_depth=16, seed=0), image_records(Hpa2018Config(), "train", 1)[0])
    assert f.image.shape == (1024, 1024, 4) and f.image.dtype == np.uint16 and f.image.max() > 255


def green_mean(f, mask):
    return f.image[..., 1][mask].astype(float).mean()


def test_patterns_sit_where_their_class_says():
    nuc = class_example(0, 256)  # nucleoplasm: green in nuclei
    cyt = class_example(25, 256)  # cytosol: green outside nuclei
    cytoplasm = lambda f: (f.cell_labels > 0) & (f.nucleus_labels == 0)  # noqa: E731
    assert green_mean(nuc, nuc.nucleus_labels > 0) > 2 * green_mean(nuc, cytoplasm(nuc))
    assert green_mean(cyt, cytoplasm(cyt)) > 2 * green_mean(cyt, cyt.nucleus_labels > 0)


def test_cell_junctions_light_shared_borders_not_free_edges():
    import cv2

    f = class_example(JUNCTIONS_2018, 512)
    labels = f.cell_labels
    k = np.ones((5, 5), np.uint8)
    edge = (labels > 0) & (cv2.erode((labels > 0).astype(np.uint8), k) == 0)  # a cell's pixels next to background
    grown = cv2.dilate(labels, k)
    shrunk = -cv2.dilate(-labels.astype(np.int32).astype(np.float32), k)  # min filter over cells
    shared = (labels > 0) & (grown != shrunk) & ~edge  # next to another cell, not to background
    assert green_mean(f, shared) > 2 * green_mean(f, edge)


def test_spindle_only_in_dividing_cells_and_bridge_in_few_cells():
    f = class_example(SPINDLE_2018, 256)
    assert any(SPINDLE_2018 in v for v in f.cell_classes.values())
    for seed in range(3):
        b = class_example(BRIDGE_2018, 256, seed)
        n = sum(BRIDGE_2018 in v for v in b.cell_classes.values())
        assert 1 <= n <= 3


def test_gallery_has_one_tile_per_class():
    g = class_gallery(tile=32, size=256)
    assert g.dtype == np.uint8 and g.ndim == 3
    assert g.shape[0] == 4 * (32 + 20) and g.shape[1] == 7 * 32  # 28 tiles in 4 rows of 7


def test_single_cell_generator_output_is_unchanged():
    """The shared drawing code serves both generators; single-cell fields must stay bit-identical.

    Independent class draws give the fields of the versions before stratified draws."""
    expected = {"random": "d48acde74b5de5860b3c10ec88eeba9c181692448c91ec0cace0d2f82bc3daa2",
                "stratified": "fab4b942f972a2686a29942810a1b28285b1005c2df7510270e67369aa72c4d5"}
    for mode, sha in expected.items():
        f = generate_field(SynthConfig(size=256, seed=7, class_draw=mode), 3)
        digest = hashlib.sha256(f.image.tobytes() + f.cell_labels.tobytes() + repr(sorted(f.cell_classes.items())).encode())
        assert digest.hexdigest() == sha, mode
    assert SINGLE_CELL_PATTERNS[18] is None and len(SINGLE_CELL_PATTERNS) == 19


def test_bad_config_values():
    for kw in ({"size": 64}, {"bit_depth": 12}, {"class_counts": (1,) * 5}, {"images_per_protein": (3, 2)},
               {"labels_per_image": ()}, {"cover_groups": -1}):
        with pytest.raises(ValueError):
            Hpa2018Config(**kw)
    with pytest.raises(ValueError):
        image_records(Hpa2018Config(), "val", 3)


# --------------------------------------------------------------------------- the written dataset


@pytest.fixture(scope="module")
def train_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("hpa2018")
    summary = write_dataset(out, Hpa2018Config(size=128, seed=3), 5)
    return out, summary


def test_written_train_set_has_the_competition_layout(train_set):
    out, summary = train_set
    assert summary.images == summary.written == 5
    listing = list_fields(out / "train")
    labels = read_labels(out / "train.csv")
    assert sorted(listing.ids) == labels["ID"].tolist() and not listing.incomplete
    assert labels["ID"].tolist() == sorted(labels["ID"])  # sorted by Id, as Kaggle's
    truth = read_labels(out / "truth" / "labels.csv")
    assert truth["Label"].tolist() == labels["Label"].tolist()
    images = read_csv(out / "truth" / "images.csv", ("Id", "protein", "cell_line", "Target"))
    assert images["Id"].tolist() == labels["ID"].tolist()
    img = read_field(out / "train", listing.ids[0])
    assert img.shape == (128, 128, 4) and img.dtype == np.uint8
    assert not (out / "sample_submission.csv").exists()


def test_rerun_resumes_and_redraws_only_what_is_missing(train_set):
    out, _ = train_set
    first = sorted((out / "train").iterdir())
    before = {p.name: p.read_bytes() for p in first}
    first[0].unlink()
    again = write_dataset(out, Hpa2018Config(size=128, seed=3), 5)
    assert again.written == 1
    assert {p.name: p.read_bytes() for p in (out / "train").iterdir()} == before


def test_test_split_keeps_its_truth_apart(tmp_path):
    summary = write_dataset(tmp_path, Hpa2018Config(size=128, seed=3), 4, split="test", workers=2)
    assert summary.written == 4 and not (tmp_path / "train.csv").exists() and not (tmp_path / "train").exists()
    ids = read_ids(tmp_path / "sample_submission.csv")
    assert ids == read_labels(tmp_path / "truth" / "labels.csv")["ID"].tolist()
    assert sorted(list_fields(tmp_path / "test").ids) == ids
    assert (tmp_path / "sample_submission.csv").read_text().splitlines()[1].endswith(",0")
    # two processes draw the same pixels as one
    serial = tmp_path / "serial"
    write_dataset(serial, Hpa2018Config(size=128, seed=3), 4, split="test")
    for p in (tmp_path / "test").iterdir():
        assert p.read_bytes() == (serial / "test" / p.name).read_bytes()


def test_another_seed_or_size_replaces_the_images(tmp_path):
    write_dataset(tmp_path, Hpa2018Config(size=128, seed=3), 3)
    (tmp_path / "train" / "notes.txt").write_text("mine")
    other = write_dataset(tmp_path, Hpa2018Config(size=128, seed=4), 2)
    ids = read_labels(tmp_path / "train.csv")["ID"].tolist()
    assert other.removed == 3 and other.written == 2
    assert sorted(list_fields(tmp_path / "train").ids) == sorted(ids)  # no image of seed 3 left behind
    bigger = write_dataset(tmp_path, Hpa2018Config(size=160, seed=4), 2)
    assert bigger.removed == 2 and bigger.written == 2  # same Ids, another size: drawn again
    assert read_field(tmp_path / "train", ids[0]).shape == (160, 160, 4)
    assert (tmp_path / "train" / "notes.txt").read_text() == "mine"  # not a generated file: kept
    assert write_dataset(tmp_path, Hpa2018Config(size=160, seed=4), 2).written == 0

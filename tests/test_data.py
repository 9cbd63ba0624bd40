"""data.py: the cells table, crop preprocessing for 8/16-bit, augmentation, Dataset and sampler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from cellloc.data import (
    CellCropDataset,
    EpochSampler,
    FieldBatchSampler,
    FieldFiles,
    FieldInput,
    SampleDataset,
    build_augment,
    check_crops_exist,
    channel_stats,
    expand_to_fields,
    label_matrix,
    load_crop,
    pad_to_square,
    preprocess_crop,
    read_cells,
    read_samples,
    read_soft_targets,
    seed_augment,
    soft_targets,
    table_cell_weights,
    write_synthetic_cells,
)
from cellloc.cells import resize_square, split_crop_reference
from cellloc.errors import InputError
from cellloc.fieldio import write_csv


def _crop(h: int = 30, w: int = 20, c: int = 4, dtype=np.uint8, seed: int = 0) -> np.ndarray:
    hi = 255 if dtype == np.uint8 else 65535
    return np.random.default_rng(seed).integers(1, hi, (h, w, c)).astype(dtype)


# --------------------------------------------------------------------------- preprocessing


def test_pad_to_square_centres_and_keeps_dtype():
    crop = _crop(30, 20, dtype=np.uint16)
    sq = pad_to_square(crop)
    assert sq.shape == (30, 30, 4) and sq.dtype == np.uint16
    assert np.array_equal(sq[:, 5:25], crop)
    assert not sq[:, :5].any() and not sq[:, 25:].any()


def test_resize_square_any_channel_count_and_dtype():
    for c in (1, 4, 6):
        out = resize_square(pad_to_square(_crop(30, 20, c, np.uint16)), 16)
        assert out.shape == (16, 16, c) and out.dtype == np.uint16
    flat = np.full((40, 40, 6), 1000, np.uint16)
    assert (resize_square(flat, 24) == 1000).all()  # channels 5-6 resized like 1-4


def test_preprocess_same_for_8_and_16_bit():
    c8 = _crop(24, 24, dtype=np.uint8)
    c16 = c8.astype(np.uint16) * 257  # the same image at 16 bits (255 -> 65535)
    mean, std = [0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.25, 0.25]
    x8 = preprocess_crop(c8, 24, mean, std)
    x16 = preprocess_crop(c16, 24, mean, std)
    assert x8.shape == (4, 24, 24) and x8.dtype == np.float32
    np.testing.assert_allclose(x8, x16, atol=1e-5)
    np.testing.assert_allclose(x8[2, 0, 0], (c8[0, 0, 2] / 255 - 0.3) / 0.25, rtol=1e-5)


def test_channel_stats_match_numpy_and_survive_empty_channels():
    crops = [_crop(16, 16, seed=s) for s in range(3)]
    crops[0][..., 3] = 0
    for c in crops:
        c[..., 1] = 0  # an all-zero channel must give std 1, not a division by zero
    mean, std = channel_stats(crops, 16)
    allpix = np.concatenate([c.reshape(-1, 4) / 255.0 for c in crops])
    np.testing.assert_allclose(mean, allpix.mean(0), rtol=1e-6)
    np.testing.assert_allclose(std[0], allpix[:, 0].std(), rtol=1e-6)
    assert std[1] == 1.0


def test_augment_is_a_dihedral_view_and_seeded():
    img = np.random.default_rng(0).random((8, 8, 4)).astype(np.float32)
    aug = build_augment(gain=0.0)
    views = [np.rot90(v, k) for v in (img, img.transpose(1, 0, 2)) for k in range(4)]
    seen = set()
    for seed in range(60):
        seed_augment(aug, seed)
        out = aug(image=img)["image"]
        match = [i for i, v in enumerate(views) if np.array_equal(out, v)]
        assert len(match) == 1, "output must be one of the 8 dihedral views"
        seen.add(match[0])
        seed_augment(aug, seed)
        assert np.array_equal(aug(image=img)["image"], out)
    assert len(seen) == 8  # albumentations' own set_random_seed reaches far fewer (see seed_augment)


def test_augment_gain_changes_channels_independently():
    img = np.full((8, 8, 4), 0.5, np.float32)
    aug = build_augment(gain=0.2)
    ratios = []
    for seed in range(30):
        seed_augment(aug, seed)
        out = aug(image=img)["image"]
        ratios.append(out[0, 0] / 0.5)
    ratios = np.array(ratios)
    assert ratios.min() >= 0.8 - 1e-6 and ratios.max() <= 1.2 + 1e-6
    assert (np.ptp(ratios, axis=1) > 1e-3).any()  # per channel, not one gain for all


# --------------------------------------------------------------------------- table and files


@pytest.fixture()
def cells_csv(tmp_path: Path) -> Path:
    return write_synthetic_cells(tmp_path, n_fields=6, cells_per_field=3, n_folds=3, seed=1)


def test_read_cells_resolves_crops_and_labels(cells_csv: Path):
    cells = read_cells(cells_csv, 19)
    assert len(cells) == 18 and cells["fold"].dtype.kind == "i"
    assert all(Path(p).is_absolute() and Path(p).exists() for p in cells["crop_path"])
    for _, field in cells.groupby("ID"):
        union = set().union(*[set(t) for t in field["true"]]) - {18}
        weak = set(field["weak"].iloc[0]) - {18}
        assert union <= weak  # cells show a subset of their field's (weak) labels
    y = label_matrix(cells, "weak", 19)
    assert y.shape == (18, 19) and y.dtype == np.float32 and (y.sum(1) >= 1).all()


def test_read_cells_errors_are_one_line(tmp_path: Path, cells_csv: Path):
    df = pd.read_csv(cells_csv, dtype=str, keep_default_na=False)
    bad = tmp_path / "bad.csv"
    write_csv(bad, df.assign(fold=["x"] + list(df["fold"][1:])))
    with pytest.raises(InputError, match="fold 'x' is not an integer"):
        read_cells(bad, 19)
    write_csv(bad, df.assign(Label=["3|99"] + list(df["Label"][1:])))
    with pytest.raises(InputError, match="unknown class id 99"):
        read_cells(bad, 19)
    write_csv(bad, df.drop(columns=["crop"]))
    with pytest.raises(InputError, match="missing column"):
        read_cells(bad, 19)
    cells = read_cells(cells_csv, 19).drop(columns=["true"])
    with pytest.raises(InputError, match="needs a TrueLabel column"):
        label_matrix(cells, "true", 19)


def test_load_crop_validates(tmp_path: Path):
    np.save(tmp_path / "f.npy", np.zeros((4, 4, 4), np.float32))
    with pytest.raises(InputError, match="pixel type float32"):
        load_crop(tmp_path / "f.npy")
    np.save(tmp_path / "c3.npy", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(InputError, match="3 channels; the model expects 4"):
        load_crop(tmp_path / "c3.npy", 4)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="cannot read crop"):
        load_crop(tmp_path / "obj.npy")
    with pytest.raises(InputError, match="not found"):
        load_crop(tmp_path / "missing.npy")


def test_stacked_crops_are_read_by_row(tmp_path: Path):
    """segment.py writes a field's crops as one (n, S, S, C) file; a table row names crop k as file.npy#k."""
    stack = np.arange(3 * 4 * 4 * 2, dtype=np.uint16).reshape(3, 4, 4, 2)
    np.save(tmp_path / "f#1.npy", stack)  # a field id may hold '#'
    for k in range(3):
        np.testing.assert_array_equal(load_crop(f"{tmp_path / 'f#1.npy'}#{k}"), stack[k])
    assert split_crop_reference("crops/f#1.npy#2") == ("crops/f#1.npy", 2)
    assert split_crop_reference("crops/f#1.npy") == ("crops/f#1.npy", None)
    assert split_crop_reference("crops/a/a_3.npy") == ("crops/a/a_3.npy", None)
    with pytest.raises(InputError, match="no crop 3; the file holds 3"):
        load_crop(f"{tmp_path / 'f#1.npy'}#3")
    (tmp_path / "cut.npy").write_bytes((tmp_path / "f#1.npy").read_bytes()[:-5])
    with pytest.raises(InputError, match="the file ends inside it"):
        load_crop(f"{tmp_path / 'cut.npy'}#2")
    np.save(tmp_path / "flat.npy", np.zeros((4, 4), np.uint8))
    with pytest.raises(InputError, match="expected stacked crops"):
        load_crop(f"{tmp_path / 'flat.npy'}#0")
    table = pd.DataFrame({"ID": ["f#1"] * 3, "cell_id": [1, 2, 3], "Label": ["0"] * 3, "fold": [0] * 3,
                          "crop": [f"f#1.npy#{k}" for k in range(3)]})
    write_csv(tmp_path / "cells.csv", table)
    cells = read_cells(tmp_path / "cells.csv", 19)
    assert cells["crop_path"].tolist() == [f"{(tmp_path / 'f#1.npy').resolve()}#{k}" for k in range(3)]
    check_crops_exist(cells["crop_path"])
    with pytest.raises(InputError, match=r"crop file not found \(1 of 1 files missing\)"):
        check_crops_exist([f"{tmp_path / 'gone.npy'}#0", f"{tmp_path / 'gone.npy'}#1"])


# --------------------------------------------------------------------------- Dataset and sampler


def _dataset(cells_csv: Path, augment=True) -> CellCropDataset:
    cells = read_cells(cells_csv, 19)
    return CellCropDataset(
        cells["crop_path"], label_matrix(cells, "weak", 19), 32, [0.1] * 4, [0.2] * 4,
        build_augment() if augment else None, in_chans=4,
    )


def test_dataset_items_are_dicts_and_augmentation_is_seeded(cells_csv: Path):
    ds = _dataset(cells_csv)
    item = ds[3]
    assert set(item) == {"image", "targets", "index"}
    assert item["image"].shape == (4, 32, 32) and item["image"].dtype == torch.float32
    assert item["targets"].shape == (19,) and int(item["index"]) == 3
    assert torch.equal(ds[(3, 7)]["image"], ds[(3, 7)]["image"])
    differs = [not torch.equal(ds[(3, s)]["image"], item["image"]) for s in range(8)]
    assert any(differs)


def test_epoch_sampler_is_a_permutation_fixed_by_seed_and_epoch():
    s = EpochSampler(10, seed=3)
    s.set_epoch(0)
    e0 = list(s)
    assert sorted(i for i, _ in e0) == list(range(10))
    assert list(s) == e0
    s.set_epoch(1)
    assert list(s) != e0
    s2 = EpochSampler(10, seed=3)
    s2.set_epoch(1)
    assert list(s2) == list(s)
    assert [i for i, _ in EpochSampler(5, 0, shuffle=False)] == [0, 1, 2, 3, 4]


def test_field_batches_hold_whole_fields_and_every_cell_once():
    groups = np.repeat([5, 7, 9, 11], [9, 3, 8, 1])  # 21 cells of 4 fields
    sampler = FieldBatchSampler(groups, cells_per_field=4, fields_per_batch=2, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3  # chunks 3+3+3, 3, 4+4, 1 = 7 chunks: 2 + 2 + 3 (the lone chunk joins)
    seen = [i for b in batches for i, _ in b]
    assert sorted(seen) == list(range(21))  # every cell once
    for b in batches:
        fields = groups[[i for i, _ in b]]
        assert len(set(fields)) <= 3 and all((fields == g).sum() <= 4 for g in set(fields))
    assert batches == list(sampler)  # same epoch, same batches
    sampler.set_epoch(1)
    assert list(sampler) != batches
    with pytest.raises(ValueError):
        FieldBatchSampler(groups, 0, 2, 0)


def test_dataset_passes_extras_on(cells_csv: Path):
    cells = read_cells(cells_csv, 19)
    y = label_matrix(cells, "weak", 19)
    extras = {"weight": np.linspace(0, 1, len(cells)).astype(np.float32), "group": np.arange(len(cells)) // 4}
    ds = CellCropDataset(cells["crop_path"], y, 32, [0.1] * 4, [0.2] * 4)
    ds = SampleDataset(ds.reader, y, ds.view, None, extras)
    batch = next(iter(DataLoader(ds, batch_size=6)))
    np.testing.assert_allclose(batch["weight"].numpy(), extras["weight"][:6])
    assert batch["group"].tolist() == [0, 0, 0, 0, 1, 1]
    with pytest.raises(ValueError, match="3 weight values"):
        SampleDataset(ds.reader, y, ds.view, None, {"weight": np.ones(3)})


def test_soft_targets_never_give_a_class_the_field_lacks(tmp_path: Path):
    labels = np.array([[1, 0, 1], [1, 1, 0]], np.float32)
    preds = np.array([[0.2, 0.9, 0.6], [0.9, 0.1, 0.7]])
    np.testing.assert_allclose(soft_targets(labels, preds, 1.0), [[0.2, 0, 0.6], [0.9, 0.1, 0]])
    np.testing.assert_allclose(soft_targets(labels, preds, 0.5), [[0.6, 0, 0.8], [0.95, 0.55, 0]])
    np.testing.assert_array_equal(soft_targets(labels, preds, 0.0), labels)
    # a run folder's fold*/val_predictions.csv together; a cell predicted twice is averaged
    cols = [f"p{k}" for k in range(3)]
    for k, rows in enumerate(([["a", 1, 0.2, 0.4, 0.6]], [["a", 2, 0.1, 0.1, 0.1], ["a", 1, 0.4, 0.4, 0.4]])):
        write_csv(tmp_path / f"fold{k}" / "val_predictions.csv", pd.DataFrame(rows, columns=["ID", "cell_id", *cols]))
    got = read_soft_targets(tmp_path, 3).sort_values("cell_id")
    assert got["cell_id"].tolist() == [1, 2]
    np.testing.assert_allclose(got[cols].to_numpy(), [[0.3, 0.4, 0.5], [0.1, 0.1, 0.1]])
    write_csv(tmp_path / "bad.csv", pd.DataFrame([["a", 1, 1.5, 0, 0]], columns=["ID", "cell_id", *cols]))
    with pytest.raises(InputError, match="probabilities in"):
        read_soft_targets(tmp_path / "bad.csv", 3)


def test_table_cell_weights_compare_cells_within_their_field():
    cells = pd.DataFrame({"ID": ["a", "a", "a", "b", "b"], "area": [100, 100, 40, 10, 10],
                          "edge": ["False", "True", "False", "False", "False"], "nucleus_area": [5, 5, 5, 0, 3]})
    np.testing.assert_allclose(table_cell_weights(cells), [1.0, 0.5, 0.4, 0.0, 1.0])
    np.testing.assert_allclose(table_cell_weights(cells, edge_weight=0.0), [1.0, 0.0, 0.4, 0.0, 1.0])
    with pytest.raises(InputError, match="need a area column"):
        table_cell_weights(cells.drop(columns="area"))


def test_batches_do_not_depend_on_worker_count(cells_csv: Path):
    ds = _dataset(cells_csv)
    batches = []
    for workers in (0, 2):
        sampler = EpochSampler(len(ds), seed=5)
        sampler.set_epoch(2)
        loader = DataLoader(ds, batch_size=6, sampler=sampler, num_workers=workers)
        batches.append(torch.cat([b["image"] for b in loader]))
    assert torch.equal(batches[0], batches[1])


def test_tripwire_albumentations_set_random_seed_correlates_transforms():
    """Why seed_augment exists: albumentations 2.0.8 seeds each transform identically.

    If this starts failing, albumentations fixed it and seed_augment may use set_random_seed.
    """
    img = np.random.default_rng(0).random((8, 8, 4)).astype(np.float32)
    aug = build_augment(gain=0.0)
    outs = set()
    for seed in range(60):
        aug.set_random_seed(seed)
        outs.add(aug(image=img)["image"].tobytes())
    assert len(outs) < 8


# --------------------------------------------------------------------------- whole fields


def test_field_input_crops_and_resizes():
    rng = np.random.default_rng(0)
    field = rng.integers(0, 65535, (60, 80, 4)).astype(np.uint16)  # non-square: padded first
    view = FieldInput(32, (0.0,) * 4, (1.0,) * 4, resize=64, tiles=3)
    centre = view.train_view(field)
    assert centre.shape == (4, 32, 32) and centre.dtype == np.float32
    a = view.train_view(field, rng=np.random.default_rng(5))
    assert np.array_equal(a, view.train_view(field, rng=np.random.default_rng(5)))  # same seed, same crop
    assert len({view.train_view(field, rng=np.random.default_rng(s)).tobytes() for s in range(6)}) > 1
    tiles = view.predict_views(field)
    assert tiles.shape == (9, 4, 32, 32)
    np.testing.assert_array_equal(tiles[4], centre)  # the middle of a 3x3 grid is the centre crop
    whole = FieldInput(32, (0.0,) * 4, (1.0,) * 4, resize=32)
    np.testing.assert_allclose(whole.predict_views(field)[0], preprocess_crop(field, 32, [0.0] * 4, [1.0] * 4))
    with pytest.raises(ValueError, match="resize"):
        FieldInput(32, (0.0,), (1.0,), resize=16)


def test_whole_field_training_views_are_flipped_and_rotated():
    """HPA-2018 fields are augmented like cell crops: each training view is one of the 8 dihedral
    views of the same (resized, cropped) field, and all 8 occur."""
    field = np.random.default_rng(1).integers(0, 255, (40, 40, 4)).astype(np.uint8)
    view = FieldInput(32, (0.0,) * 4, (1.0,) * 4, resize=32)
    plain = view.train_view(field).transpose(1, 2, 0)  # CxSxS -> SxSxC
    dihedral = [np.rot90(v, k) for v in (plain, plain.transpose(1, 0, 2)) for k in range(4)]
    aug = build_augment(gain=0.0)
    seen = set()
    for seed in range(60):
        seed_augment(aug, seed)
        out = view.train_view(field, aug).transpose(1, 2, 0)
        match = [i for i, v in enumerate(dihedral) if np.allclose(out, v)]
        assert len(match) == 1
        seen.add(match[0])
    assert len(seen) == 8


def test_read_samples_collapses_cells_to_fields(tmp_path):
    cells = pd.DataFrame({"ID": ["a", "a", "b"], "cell_id": [1, 2, 1], "Label": ["0|16", "0|16", "3"], "fold": [0, 0, 1],
                          "crop": ["x", "y", "z"]})
    write_csv(tmp_path / "cells.csv", cells)
    samples = read_samples(tmp_path / "cells.csv", 19)
    assert samples["ID"].tolist() == ["a", "b"] and samples["weak"].tolist() == [[0, 16], [3]]
    assert samples["fold"].tolist() == [0, 1]
    write_csv(tmp_path / "bad.csv", cells.assign(fold=[0, 1, 1]))
    with pytest.raises(InputError, match="sample 'a' has rows with different labels or folds"):
        read_samples(tmp_path / "bad.csv", 19)


def test_samples_expand_to_their_fields_through_the_layout(tmp_path):
    from cellloc.fieldio import write_png

    for fid in ("a", "b"):
        for ch in ("red", "green", "blue", "yellow"):
            write_png(tmp_path / f"{fid}_{ch}.png", np.zeros((8, 8), np.uint8))
    samples = pd.DataFrame({"ID": ["a", "b"], "Label": ["0", "1"]})
    rows = expand_to_fields(samples, "flat", tmp_path, ("red", "green", "blue", "yellow"))
    assert rows["field_id"].tolist() == ["a", "b"]
    reader = FieldFiles("flat", tmp_path, rows["field_id"], ("blue", "red"))
    assert len(reader) == 2 and reader[1].shape == (8, 8, 2)
    with pytest.raises(InputError, match=r"no field of sample 'c' \(1 of 3 samples"):
        expand_to_fields(pd.concat([samples, pd.DataFrame({"ID": ["c"], "Label": ["2"]})]), "flat", tmp_path,
                         ("red", "green", "blue", "yellow"))


def test_field_dataset_places_its_crop_by_the_sample_seed(tmp_path):
    from cellloc.fieldio import write_png

    rng = np.random.default_rng(2)
    for ch in ("red", "green", "blue", "yellow"):
        write_png(tmp_path / f"f_{ch}.png", rng.integers(0, 255, (64, 64)).astype(np.uint8))
    view = FieldInput(32, (0.0,) * 4, (1.0,) * 4, resize=64)
    ds = SampleDataset(FieldFiles("flat", tmp_path, ["f"], ("red", "green", "blue", "yellow")), np.ones((1, 19)), view,
                       build_augment(0.0))
    assert torch.equal(ds[(0, 3)]["image"], ds[(0, 3)]["image"])
    assert len({ds[(0, s)]["image"].numpy().tobytes() for s in range(6)}) > 1
    assert torch.equal(ds[0]["image"], torch.from_numpy(view.train_view(ds.reader[0])))  # unaugmented: the centre

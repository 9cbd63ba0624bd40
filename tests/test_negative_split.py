"""--negative-split intensity: a field labelled Negative and other classes has its cells told one or the other
by whether their protein channel shows anything, learned from the fields whose label is certain."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_cell_config

from cellloc.data import label_matrix, read_cells, write_synthetic_cells
from cellloc.errors import InputError
from cellloc.negative_split import certain_fields, fit_shows_protein, protein_level, split_negative
from cellloc.runs.train import TrainConfig, cell_samples, format_summary, train_fold

NEG = 18


def _labels(*rows: tuple[int, ...]) -> np.ndarray:
    out = np.zeros((len(rows), 19), np.float32)
    for i, row in enumerate(rows):
        out[i, list(row)] = 1
    return out


def test_protein_level_reads_the_protein_channel_inside_the_cell_only():
    crop = np.zeros((10, 10, 4), np.uint8)
    crop[2:8, 2:8, 2] = 50  # the nucleus stain marks the cell's pixels
    crop[2:8, 2:8, 1] = 9
    crop[2, 2, 1] = 99  # one bright protein pixel among 36
    crop[0, 0, 1] = 0
    level = np.expm1(protein_level(crop, channel=1))
    assert level[0] == pytest.approx(9) and level[2] > 60  # median: background; 99th percentile: the bright pixel
    assert np.array_equal(protein_level(np.zeros((4, 4, 4), np.uint8), 1), np.zeros(3))  # an empty crop


def test_certain_fields_are_negative_alone_or_without_negative():
    labels = _labels((NEG,), (0, 16), (0, NEG), (NEG, 7))
    alone, without, mixed = certain_fields(labels, NEG)
    assert alone.tolist() == [True, False, False, False]
    assert without.tolist() == [False, True, False, False]
    assert mixed.tolist() == [False, False, True, True]


def test_dim_cells_of_mixed_fields_are_split_off_as_negative():
    """Fit on bright cells of Negative-free fields and dim cells of Negative fields; a mixed field's dim cell then
    loses most of its field's other classes and keeps Negative, its bright cell the reverse."""
    rng = np.random.default_rng(0)
    dim, bright = rng.normal(2.5, 0.2, (30, 3)), rng.normal(4.5, 0.3, (60, 3))
    levels = np.vstack([dim, bright, [[2.5] * 3, [4.5] * 3]])
    labels = np.vstack([_labels(*[(NEG,)] * 30), _labels(*[(0, 16)] * 60), _labels((0, NEG), (0, NEG))])
    model = fit_shows_protein(levels, labels, NEG)
    assert (model.cells_negative, model.cells_showing) == (30, 60)
    q = model(levels)
    assert q[-2] < 0.1 < 0.9 < q[-1]
    targets = split_negative(labels, labels, q, NEG)
    np.testing.assert_allclose(targets[-2, [0, NEG]], [q[-2], 1 - q[-2]], rtol=1e-6)
    np.testing.assert_allclose(targets[-1, [0, NEG]], [q[-1], 1 - q[-1]], rtol=1e-6)
    assert np.array_equal(targets[:90], labels[:90])  # certain fields keep their labels
    assert targets[-2, 16] == 0  # never a class the field lacks


def test_split_scales_already_softened_targets():
    labels = _labels((3, NEG))
    soft = labels * 0.5
    out = split_negative(soft, labels, np.array([0.8]), NEG)
    np.testing.assert_allclose(out[0, [3, NEG]], [0.4, 0.1], rtol=1e-6)


def test_without_fields_labelled_negative_alone_the_split_is_a_one_line_error():
    labels = _labels(*[(0,)] * 10, *[(0, NEG)] * 10)
    with pytest.raises(InputError) as exc:
        fit_shows_protein(np.ones((20, 3)), labels, NEG)
    assert "hold 0 of fields labelled Negative alone and 10 of fields without" in str(exc.value)
    assert "--negative-split none" in str(exc.value)
    assert "\n" not in str(exc.value)


@pytest.fixture(scope="module")
def mixed_csv(tmp_path_factory):
    """Fields whose cells show nothing one time in seven, so many labels carry Negative beside their classes."""
    return write_synthetic_cells(tmp_path_factory.mktemp("mixed"), n_fields=30, cells_per_field=6, n_folds=3, seed=5,
                                 negative_share=0.15)


def _cfg(csv, out, **kw) -> TrainConfig:
    return tiny_cell_config(csv, out, **{"negative_split": "intensity", "teacher": "none", **kw})


def test_training_targets_of_mixed_fields_follow_what_each_cell_shows(mixed_csv, tmp_path):
    cfg = _cfg(mixed_csv, tmp_path)
    sets = cell_samples(cfg)
    weak = label_matrix(sets.train, "weak", 19)
    _, _, mixed = certain_fields(weak, NEG)
    shows = np.array([bool(t) and NEG not in t for t in sets.train["true"]])
    assert mixed.sum() > 10 and (mixed & shows).any() and (mixed & ~shows).any()
    held = weak[:, :NEG] > 0
    field_classes = (sets.y_train[:, :NEG] * held).sum(1) / held.sum(1).clip(1)  # mean target of the field's classes
    assert field_classes[mixed & ~shows].mean() < 0.3 < 0.8 < field_classes[mixed & shows].mean()
    assert sets.y_train[mixed & ~shows, NEG].mean() > 0.7 > 0.2 > sets.y_train[mixed & shows, NEG].mean()
    assert np.array_equal(sets.y_train[~mixed], weak[~mixed])
    plain = cell_samples(_cfg(mixed_csv, tmp_path, negative_split="none"))
    assert np.array_equal(plain.y_train, weak)


def test_a_run_records_the_split_it_trained_on(mixed_csv, tmp_path):
    run = train_fold(_cfg(mixed_csv, tmp_path, run_name="split"))
    fitted = json.loads((run.run_dir / "negative_split.json").read_text())
    assert fitted["cells_negative"] > 0 and fitted["cells_showing"] > 0 and fitted["mixed_cells"] > 0
    assert sum(fitted["coef"]) > 0  # a brighter protein channel: likelier to show something
    assert f"negative split: {fitted['mixed_cells']} cells of {fitted['mixed_fields']} fields" in format_summary(run)


def test_without_mixed_fields_nothing_is_split_or_fit(tmp_path):
    csv = write_synthetic_cells(tmp_path / "cells", n_fields=6, cells_per_field=4, n_folds=3, seed=3)
    cfg = _cfg(csv, tmp_path)
    sets = cell_samples(cfg)
    assert sets.negative_split is None
    assert np.array_equal(sets.y_train, label_matrix(sets.train, "weak", 19))


def test_without_fields_labelled_negative_alone_intensity_stops_and_auto_keeps_the_field_labels(mixed_csv, tmp_path):
    """Asked for, the split stops with one line; by default (auto) the run trains on the field labels and says why."""
    table = pd.read_csv(mixed_csv)
    table.loc[table["Label"] == "18", "Label"] = "0"  # no field is Negative alone any more
    csv = tmp_path / "folds.csv"
    table.assign(crop=[str(mixed_csv.parent / c) for c in table["crop"]]).to_csv(csv, index=False)
    with pytest.raises(InputError, match="but the training cells hold 0 of fields labelled Negative alone"):
        cell_samples(_cfg(csv, tmp_path))
    run = train_fold(_cfg(csv, tmp_path, negative_split="auto", run_name="auto"))
    record = json.loads((run.run_dir / "negative_split.json").read_text())
    assert record["split"] is False and record["mixed_cells"] > 0
    assert "negative split: not made, the training cells hold 0 of fields labelled Negative alone" in format_summary(run)
    sets = cell_samples(_cfg(csv, tmp_path, negative_split="auto"))
    assert np.array_equal(sets.y_train, label_matrix(sets.train, "weak", 19))


@pytest.mark.parametrize(("task", "label_source", "expected"),
                         [("hpa-sc", "weak", "auto"), ("hpa-sc", "true", "none"), ("rxrx1", "weak", "none")])
def test_the_default_splits_where_it_applies(task, label_source, expected):
    cfg = TrainConfig(task=task, label_source=label_source, level="cell" if task == "hpa-sc" else "")
    assert cfg.negative_split == expected


def test_crops_that_keep_the_neighbours_pixels_are_refused(mixed_csv, tmp_path):
    """The protein level is read over a crop's nonzero pixels, which must be the cell's own."""
    from cellloc.config import save_config
    from cellloc.runs.segment import SegmentRunConfig

    table = pd.read_csv(mixed_csv)
    csv = tmp_path / "folds.csv"
    table.assign(crop=[str(mixed_csv.parent / c) for c in table["crop"]]).to_csv(csv, index=False)
    save_config(SegmentRunConfig(input=str(tmp_path), out=str(tmp_path), crop_mask="others"), tmp_path / "segment_config.json")
    with pytest.raises(InputError, match="cut with --crop-mask others"):
        cell_samples(_cfg(csv, tmp_path))

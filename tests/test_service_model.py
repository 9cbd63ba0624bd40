"""service_model (the service's one door into the pipeline) and the class overlay it draws."""

from __future__ import annotations

import numpy as np
import pytest

from cellloc.errors import InputError
from cellloc.fieldio import read_field
from cellloc.render import UNCLASSIFIED, class_colours, class_overlay
from cellloc.service_model import load_service_model

from conftest import REPO
from test_service import SAMPLE, SAMPLE_ID, write_untrained_run


@pytest.fixture(scope="module")
def sample() -> np.ndarray:
    return read_field(SAMPLE, SAMPLE_ID)


def test_a_loaded_run_scores_every_cell_and_the_field(sample, tmp_path):
    model = load_service_model(write_untrained_run(tmp_path), "hpa-sc")
    assert model.info()["classifier"] and model.folds == ("fold0",) and len(model.class_names) == 19
    pred = model.predict(sample)
    n = len(pred.table)
    assert n >= 5 and pred.cell_scores.shape == (n, 19) and pred.field_scores.shape == (19,)
    assert set(np.unique(pred.cells)) - {0} == set(pred.table["cell_id"])
    # the field's score is the one its cells were blended with (the pipeline's, on the same cells), and a pool of
    # the cells' own scores: inside their range, class by class
    from cellloc.pipeline import field_scores

    res = field_scores(sample, pred.cells, pred.nuclei, model._classifier, options=model._options)
    np.testing.assert_array_equal(pred.field_scores, res.field_score)
    np.testing.assert_array_equal(pred.cell_scores, res.scores)
    assert np.all(pred.field_scores <= res.cell_probs.max(0) + 1e-6)
    assert np.all(pred.field_scores >= res.cell_probs.min(0) - 1e-6)


def test_the_service_runtime_reaches_the_classifier_and_the_segmentation(openvino_installed, tmp_path):
    from cellloc.service import ServiceConfig

    assert ServiceConfig().runtime == "auto"
    model = load_service_model(write_untrained_run(tmp_path), "hpa-sc", runtime="auto")
    assert hasattr(model._classifier.members[0].net, "runner") is openvino_installed  # the converted graph, or torch's module
    assert model._segmenter.cfg.runtime == "auto"  # not the recorded one: this machine's choice


def test_without_a_model_any_task_segments_its_own_channels(sample):
    model = load_service_model(None, "rxrx1")
    assert model.channels == ("w1", "w2", "w3", "w4", "w5", "w6") and model.class_names == ()
    red, green, blue, yellow = np.moveaxis(sample, -1, 0)
    six = np.stack([blue, green, red, green, green, yellow], axis=-1)  # nuclei in w1, cell bodies in w3 and w6
    pred = model.predict(six)
    assert len(pred.table) >= 5 and pred.cell_scores is None and pred.field_scores is None
    with pytest.raises(InputError, match="expected HxWx6"):
        model.predict(sample)


def test_an_image_level_run_scores_the_whole_field_and_outlines_its_cells(sample, tmp_path):
    model = load_service_model(write_untrained_run(tmp_path, "hpa-2018"), "hpa-2018")
    assert model.level == "image" and len(model.class_names) == 28
    pred = model.predict(sample)
    assert len(pred.table) >= 5 and pred.cell_scores is None
    assert pred.field_scores.shape == (28,) and np.all((pred.field_scores > 0) & (pred.field_scores < 1))
    again = model.predict(sample)
    assert np.array_equal(again.field_scores, pred.field_scores)  # a pure function of the field


def test_cells_blend_with_an_image_model_of_the_task(sample, tmp_path):
    cell_run = write_untrained_run(tmp_path / "c")
    image_run = write_untrained_run(tmp_path / "i", level="image", name="image")
    plain = load_service_model(cell_run, "hpa-sc", blend="none").predict(sample)
    model = load_service_model(cell_run, "hpa-sc", image_models=image_run)
    assert model.info()["image_classifier"]
    pred = model.predict(sample)
    # product blend: sqrt(cell x field) with the image model's field score (Negative, class 18, raised after)
    expected = np.sqrt(plain.cell_scores[:, :18] * pred.field_scores[None, :18])
    assert np.allclose(pred.cell_scores[:, :18], expected, atol=1e-5)
    with pytest.raises(InputError, match="not an image-level run of task hpa-sc"):
        load_service_model(cell_run, "hpa-sc", image_models=cell_run)


def test_a_run_of_another_task_is_refused(tmp_path):
    run = write_untrained_run(tmp_path)
    with pytest.raises(InputError, match="trained for task hpa-sc, not hpa-2018"):
        load_service_model(run, "hpa-2018")
    with pytest.raises(InputError, match="unknown task"):
        load_service_model(None, "hpa-2019")


def test_class_overlay_outlines_each_cell_in_its_top_class_colour():
    image = np.zeros((60, 80, 4), np.uint8)
    cells = np.zeros((60, 80), np.uint16)
    cells[10:30, 10:30] = 1
    cells[10:40, 45:70] = 2
    cells[45:55, 5:15] = 3
    names = ("A", "B", "C")
    out = class_overlay(image, cells, [1, 2, 3], [0, 2, -1], names, max_side=1024, legend_width=200)
    assert out.shape[1:] == (280, 3) and out.shape[0] >= 60 and out.dtype == np.uint8  # the legend may be taller
    colours = class_colours(3)
    assert tuple(out[10, 20]) == tuple(colours[0])  # cell 1's top edge
    assert tuple(out[25, 45]) == tuple(colours[2])  # cell 2's left edge
    assert tuple(out[50, 5]) == UNCLASSIFIED
    assert tuple(out[20, 20]) == (0, 0, 0)  # insides stay the (black) field
    legend = out[:, 80:]
    for colour in (colours[0], colours[2]):
        assert np.all(legend == colour, axis=-1).sum() >= 100  # a swatch per class present
    assert not np.all(legend == colours[1], axis=-1).any()  # none for a class no cell has


def test_class_overlay_shrinks_big_fields_before_outlining():
    cells = np.zeros((2000, 1000), np.uint16)
    cells[100:900, 100:900] = 1
    out = class_overlay(np.zeros((2000, 1000, 4), np.uint16), cells, [1], [1], ("A", "B"), max_side=500, legend_width=100)
    assert out.shape == (500, 350, 3)
    assert tuple(out[25, 50]) == tuple(class_colours(2)[1])

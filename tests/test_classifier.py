"""classifier.py: recipes, loading a fold folder, ensembles, field tiles and TTA (random B0 nets, 32 px)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cellloc.classifier import (RECIPE_FILE, Classifier, Ensemble, Recipe, dihedral_views, load_classifier, load_ensemble,
                                save_untrained)
from cellloc.errors import InputError


def write_fold(folder: Path, task: str = "hpa-sc", level: str = "image", kind: str = "multilabel", seed: int = 0,
               **input_kw) -> Path:
    """A fold folder as train.py writes it: best.pt (random weights) and recipe.json."""
    channels = 6 if task == "rxrx1" else 4
    classes = {"hpa-sc": 19, "hpa-2018": 28, "rxrx1": 1139}[task]
    recipe_input = {"kind": "field", "resize": 32, "tiles": 1, **input_kw} if level == "image" else \
        {"kind": "cell_crop", "crop_size": 32, "crop_mask": "cell", "segment": None}
    recipe = Recipe(task, level, "efficientnet-b0", channels, classes, 32, [0.1] * channels, [0.2] * channels, kind,
                    recipe_input)
    return save_untrained(folder, recipe, seed)


def fields(n: int, channels: int = 4, size: int = 48) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 255, (size, size, channels)).astype(np.uint8) for _ in range(n)]


def test_multiclass_outputs_are_softmax_rows(tmp_path):
    model = load_classifier(write_fold(tmp_path / "f", "rxrx1", kind="multiclass"))
    assert isinstance(model, Classifier) and model.kind == "multiclass" and model.task.name == "rxrx1"
    probs = model.predict(fields(3, 6))
    assert probs.shape == (3, 1139)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-4)
    multilabel = load_classifier(write_fold(tmp_path / "g")).predict(fields(2))
    assert multilabel.shape == (2, 19) and not np.allclose(multilabel.sum(1), 1.0)  # independent sigmoids


def test_field_tiles_are_averaged(tmp_path):
    """tiles=2 on a field resized to 48: the mean of the four 32 px corner crops' scores."""
    model = load_classifier(write_fold(tmp_path / "f", resize=48, tiles=2))
    image = fields(1)[0]
    views = model.view.predict_views(image)
    assert views.shape == (4, 4, 32, 32)
    with torch.no_grad():
        direct = torch.sigmoid(model(torch.from_numpy(views))).mean(0).numpy()
    np.testing.assert_allclose(model.predict([image])[0], direct, atol=1e-5)
    # corners: the first tile is the top-left 32 px of the (resized) field
    whole = model.view.train_view(image)  # the centre crop, without rng
    assert not np.allclose(views[0], whole)


def test_tta_averages_dihedral_views(tmp_path):
    model = load_classifier(write_fold(tmp_path / "f"))
    image = fields(1)[0]
    x = torch.from_numpy(model.view.predict_views(image))
    with torch.no_grad():
        expected = torch.stack([torch.sigmoid(model(v)) for v in dihedral_views(x, 4)]).mean((0, 1)).numpy()
    np.testing.assert_allclose(model.predict([image], tta=4)[0], expected, atol=1e-5)


def test_ensemble_is_the_mean_of_its_members(tmp_path):
    a, b = (write_fold(tmp_path / "run" / f"fold{k}", seed=k) for k in (0, 1))
    ensemble = load_ensemble(tmp_path / "run")
    assert isinstance(ensemble, Ensemble) and len(ensemble.members) == 2 and ensemble.task.name == "hpa-sc"
    x = fields(3)
    np.testing.assert_allclose(ensemble.predict(x),
                               (load_classifier(a).predict(x) + load_classifier(b).predict(x)) / 2, atol=1e-6)
    assert len(load_ensemble(tmp_path / "run", folds=[1]).members) == 1
    write_fold(tmp_path / "mixed" / "fold0")
    write_fold(tmp_path / "mixed" / "fold1", level="cell")
    with pytest.raises(InputError, match="another task or input recipe than the first model"):
        load_ensemble(tmp_path / "mixed")


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.pop("task"), "missing task"),
    (lambda r: r.update(num_classes=28), "28 classes and 4 channels do not fit task hpa-sc"),
    (lambda r: r.update(mean=[0.1]), "mean/std need 4 values each"),
    (lambda r: r.update(task="hpa-2019"), "unknown task 'hpa-2019'"),
    (lambda r: r["input"].update(kind="tile"), "unknown input kind 'tile'"),
])
def test_bad_recipes_are_one_line_errors(tmp_path, edit, message):
    folder = write_fold(tmp_path / "f")
    recipe = json.loads((folder / RECIPE_FILE).read_text())
    edit(recipe)
    (folder / RECIPE_FILE).write_text(json.dumps(recipe))
    with pytest.raises(InputError, match=message):
        load_classifier(folder)


def test_missing_recipe_and_weights(tmp_path):
    folder = write_fold(tmp_path / "f")
    (folder / "best.pt").unlink()
    with pytest.raises(InputError, match="best.pt: checkpoint not found"):
        load_classifier(folder)
    (folder / RECIPE_FILE).unlink()
    with pytest.raises(InputError, match="recipe.json: not found"):
        load_classifier(folder)
    with pytest.raises(InputError, match="no trained fold"):
        load_ensemble(tmp_path / "nothing")


def test_a_garbage_checkpoint_is_one_line_without_unsafe_advice(tmp_path):
    folder = write_fold(tmp_path / "fold0")
    (folder / "best.pt").write_bytes(b"garbage, not a checkpoint")
    with pytest.raises(InputError) as err:
        load_classifier(folder)
    msg = str(err.value)
    assert msg.startswith(f"{folder / 'best.pt'}: cannot load checkpoint") and "weights_only" not in msg

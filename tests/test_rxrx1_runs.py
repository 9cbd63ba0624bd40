"""RxRx1 through the scripts: per-plate normalisation recorded and reused, plate-aware assignment, lone fields."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellloc import rxrx1
from cellloc.classifier import Recipe, load_classifier, save_untrained
from cellloc.data import FieldFiles
from cellloc.errors import InputError
from cellloc.pipeline import score_image
from cellloc.plate_norm import field_normaliser, to_reference
from cellloc.runs.predict import PredictConfig, encode_options

from conftest import module_folder
from test_evaluate_cli import load_script
from test_task_runs import TINY

# two cell types, 8 siRNAs in 4 groups of 2, 4 plates, one negative control per plate
DATA = ["--task", "rxrx1", "--size", "64", "--options", "sirnas=8", "train_experiments=2", "test_experiments=1",
        "positive_controls=1", "negative_wells=1", "cell_types=[HEPG2,U2OS]"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    with module_folder(tmp_path_factory, "rx") as root:
        make = load_script("make_data").main
        for split in ("train", "test"):
            make([*DATA, "--root", str(root / "input"), "--split", split])
        data = root / "input" / "rxrx1"
        folds = root / "folds.csv"
        load_script("gen_folds").main(["--task", "rxrx1", "--labels", str(data / "train.csv"), "--out", str(folds), "--folds", "2"])
        models = root / "models"
        assert load_script("train").main(["--task", "rxrx1", "--folds-csv", str(folds), "--input", str(data / "train"),
                                          "--out-dir", str(models), "--run-name", "rx", "--label-smoothing", "0.1",
                                          "--monitor", "accuracy", *TINY]) == 0
        yield data, models / "rx"


def test_the_recipe_records_the_normalisation_and_training_used_it(trained):
    data, run = trained
    recipe = json.loads((run / "fold0" / "recipe.json").read_text())
    assert recipe["input"]["normalise"] == "plate"  # the task's default
    config = json.loads((run / "fold0" / "config.json").read_text())
    assert (config["normalise"], config["label_smoothing"], config["monitor"]) == ("plate", 0.1, "accuracy")
    # the training statistics were measured on reference-scale fields: z = 0 sits at 8192 / 65535
    assert all(0.05 < m < 0.2 for m in recipe["mean"])
    summary = json.loads((run / "fold0" / "summary.json").read_text())
    assert list(summary["metrics"]) == ["accuracy", "top3_accuracy", "top5_accuracy"]


def test_fields_are_read_on_the_plate_scale(trained):
    data, _ = trained
    fid = rxrx1.list_fields(data / "train").ids[0]
    normaliser = field_normaliser(data, "plate", rxrx1.CHANNELS)
    raw = FieldFiles("rxrx1", data / "train", [fid], rxrx1.CHANNELS)[0]
    seen = FieldFiles("rxrx1", data / "train", [fid], rxrx1.CHANNELS, normaliser)[0]
    st = normaliser.stats[fid]
    assert raw.dtype == np.uint8 and seen.dtype == np.uint16
    np.testing.assert_array_equal(seen, to_reference(raw, st.mean, st.std))


def test_predict_with_and_without_plate_assignment(trained, tmp_path, capsys):
    data, run = trained
    predict = load_script("predict").main
    assert predict(["--models", str(run), "--input", str(data / "test"), "--out", str(tmp_path / "plain")]) == 0
    assert predict(["--models", str(run), "--input", str(data / "test"), "--out", str(tmp_path / "plate"),
                    "--plate-assignment"]) == 0
    groups = rxrx1.plate_groups_of(data / "train.csv")
    truth = pd.read_csv(data / "truth" / "labels.csv")
    for name in ("plain", "plate"):
        sub = pd.read_csv(tmp_path / name / "submission.csv")
        assert sorted(sub["id_code"]) == sorted(truth["id_code"])
        assert sub["sirna"].between(0, 1107).all()  # test wells are treatments: never a control class
        assert load_script("check_submission").main([str(tmp_path / name / "submission.csv"), "--task", "rxrx1",
                                                     "--sample-submission", str(data / "sample_submission.csv")]) == 0
    sub = pd.read_csv(tmp_path / "plate" / "submission.csv")
    sub["plate"] = [rxrx1.parse_id_code(i)[:2] for i in sub["id_code"]]
    for _, plate in sub.groupby("plate"):
        assert plate["sirna"].is_unique  # each siRNA once per plate
        assert any(set(plate["sirna"]) <= g for g in groups)  # all from one of the design's groups
    capsys.readouterr()
    assert load_script("evaluate").main(["--task", "rxrx1", "--truth", str(data / "truth"),
                                         "--submission", str(tmp_path / "plate" / "submission.csv")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("accuracy=")


def test_plate_assignment_needs_the_groups_and_an_rxrx1_submission(trained, tmp_path):
    data, run = trained
    cfg = PredictConfig(models=str(run), input=str(data / "test"), plate_assignment=True,
                        plate_groups=str(tmp_path / "nope.csv"))
    with pytest.raises(InputError, match=r"nope.csv: not found; --plate-assignment reads the siRNA groups"):
        encode_options(cfg, "rxrx1", ("plate_groups",))
    with pytest.raises(InputError, match="the hpa-2018 submission has no plate design"):
        encode_options(cfg, "hpa-2018", ())
    assert encode_options(PredictConfig(models=str(run), input=str(data / "test")), "hpa-2018", ()) == {}


def test_a_lone_field_is_scored_only_by_a_model_that_needs_no_batch_statistics(trained, tmp_path):
    data, run = trained
    image = rxrx1.read_field(data / "test", rxrx1.list_fields(data / "test").ids[0])
    with pytest.raises(InputError, match="standardises each field by its plate statistics"):
        score_image(image, load_classifier(run / "fold0"))
    recipe = Recipe("rxrx1", "image", "efficientnet-b0", 6, rxrx1.NUM_CLASSES, 32, [0.125] * 6, [0.0625] * 6,
                    "multiclass", {"kind": "field", "resize": 32, "tiles": 1, "normalise": "site"})
    site = load_classifier(save_untrained(tmp_path / "site", recipe))
    probs = score_image(image, site)
    assert probs.shape == (rxrx1.NUM_CLASSES,) and probs.sum() == pytest.approx(1.0, abs=1e-4)
    # the same field on another gain and offset is the same field to a site-normalised model
    brighter = np.clip(image.astype(float) * 1.5 + 4, 0, 255).astype(np.uint8)
    np.testing.assert_allclose(score_image(brighter, site), probs, atol=2e-3)


def test_train_refuses_an_unknown_normalisation(tmp_path, capsys):
    with pytest.raises(SystemExit):
        load_script("train").main(["--task", "rxrx1", "--normalise", "batchnorm"])
    assert "normalise must be one of none, site, experiment, plate" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        load_script("train").main(["--task", "hpa-sc", "--normalise", "plate"])
    assert "normalise applies to image models" in capsys.readouterr().err


def test_data_folder_layout_matches_kaggle(trained):
    data, _ = trained
    for name in ("train.csv", "train_controls.csv", "test.csv", "test_controls.csv", "pixel_stats.csv",
                 "sample_submission.csv", "truth/labels.csv"):
        assert (data / name).is_file(), name
    assert Path(data / "train" / "HEPG2-01" / "Plate1").is_dir()

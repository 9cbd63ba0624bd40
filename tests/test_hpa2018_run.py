"""HPA-2018 through the scripts: grouped folds, every fold trained (focal loss, balanced sampling, field
cache), thresholds fitted on the out-of-fold predictions, applied by predict.py, scored by evaluate.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellloc.classifier import RECIPE_FILE, Recipe
from cellloc.hpa2018 import encode_rows

from conftest import module_folder
from test_evaluate_cli import load_script

TINY = ["--model", "efficientnet-b0", "--pretrained", "none", "--image-size", "32", "--epochs", "1",
        "--batch-size", "4", "--num-workers", "0", "--device", "cpu", "--stats-samples", "4"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    with module_folder(tmp_path_factory, "hpa2018run") as root:
        make = load_script("make_data").main
        make(["--task", "hpa-2018", "--root", str(root / "input"), "--size", "128", "--fields", "14"])
        make(["--task", "hpa-2018", "--root", str(root / "input"), "--name", "hpa2018_test", "--split", "test",
              "--seed", "1", "--size", "128", "--fields", "5"])
        train = root / "input" / "hpa2018"
        assert load_script("gen_folds").main(["--task", "hpa-2018", "--labels", str(train / "train.csv"),
                                              "--groups", str(train / "truth" / "images.csv"), "--group-col", "protein",
                                              "--out", str(root / "folds.csv"), "--folds", "2"]) is None
        yield root


def train(root: Path, fold: int, run: str, *extra: str) -> Path:
    argv = ["--task", "hpa-2018", "--folds-csv", str(root / "folds.csv"), "--input", str(root / "input" / "hpa2018" / "train"),
            "--out-dir", str(root / "models"), "--run-name", run, "--fold", str(fold), *TINY, *extra]
    assert load_script("train").main(argv) == 0
    return root / "models" / run


def test_folds_keep_a_protein_together(data):
    folds = pd.read_csv(data / "folds.csv", dtype=str)
    assert folds.groupby("protein")["fold"].nunique().max() == 1 and set(folds["fold"]) == {"0", "1"}


def test_the_field_cache_changes_speed_not_results(data):
    plain = train(data, 0, "plain")
    cached = train(data, 0, "cached", "--cache-mb", "16")
    assert json.loads((cached / "fold0" / "summary.json").read_text())["cached_fields"] > 0
    assert json.loads((plain / "fold0" / "summary.json").read_text())["cached_fields"] == 0
    a = pd.read_csv(plain / "fold0" / "val_predictions.csv")
    b = pd.read_csv(cached / "fold0" / "val_predictions.csv")
    pd.testing.assert_frame_equal(a, b)


def test_whole_chain_with_fitted_thresholds(data, capsys):
    for fold in (0, 1):
        run = train(data, fold, "full", "--loss", "focal", "--balance-power", "0.5", "--cache-mb", "16")
    config = json.loads((run / "fold1" / "config.json").read_text())
    assert (config["loss"], config["balance_power"]) == ("focal", 0.5)
    assert load_script("fit_thresholds").main(["--models", str(run)]) == 0
    thresholds = Recipe.read(run / "fold0" / RECIPE_FILE).thresholds
    assert thresholds is not None and len(thresholds["per_class"]) == 28
    assert json.loads((run / "thresholds.json").read_text())["fitted_on"]["samples"] == 14

    test = data / "input" / "hpa2018_test"
    pred = data / "pred"
    assert load_script("predict").main(["--models", str(run), "--input", str(test / "test"), "--out", str(pred)]) == 0
    scores = pd.read_csv(pred / "scores.csv")
    sub = pd.read_csv(pred / "submission.csv", dtype=str, keep_default_na=False)
    expected = encode_rows(scores["ID"].tolist(), scores[[f"p{k}" for k in range(28)]].to_numpy(), None, thresholds)
    assert list(zip(sub["Id"], sub["Predicted"])) == expected  # the run's thresholds, not 0.5
    assert load_script("check_submission").main([str(pred / "submission.csv"), "--task", "hpa-2018",
                                                 "--sample-submission", str(test / "sample_submission.csv")]) == 0
    capsys.readouterr()

    assert load_script("fit_thresholds").main(["--models", str(run), "--scores", str(pred / "scores.csv"),
                                               "--truth", str(test / "truth")]) == 0
    compared = capsys.readouterr().out.strip().splitlines()
    assert [line.split("=")[0] for line in compared[-4:]] == ["macro_F1_at_0.5", "macro_F1_global", "macro_F1_share", "macro_F1"]
    assert load_script("evaluate").main(["--task", "hpa-2018", "--truth", str(test / "truth"),
                                         "--submission", str(pred / "submission.csv")]) == 0
    evaluated = capsys.readouterr().out.strip().splitlines()[-1]
    assert evaluated == compared[-1]  # the comparison's fitted rule is the submission, scored the same way
    assert np.isfinite(float(evaluated.split("=")[1]))

"""Every registered task end to end on tiny generated data, through the same scripts a user runs.

HPA single-cell (segment -> folds -> train on cells -> predict -> check -> evaluate) is covered in
``test_predict.py``; here the two image-level tasks go make_data -> folds -> train on whole
fields -> predict -> check -> evaluate on their own generators' data, in their real layouts.
The models are EfficientNet-B0 at 32 px for one epoch: the point is the plumbing, not the score.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from cellloc.metrics import METRICS
from cellloc.tasks import get_task

from test_evaluate_cli import load_script

TINY = ["--model", "efficientnet-b0", "--pretrained", "none", "--image-size", "32", "--epochs", "1",
        "--batch-size", "4", "--num-workers", "0", "--device", "cpu", "--stats-samples", "4"]
# RxRx1: one cell type, 8 siRNAs on 2 plates (2 per plate), 2 training experiments and 1 test experiment
RXRX1_TINY = ["--size", "64", "--options", "sirnas=8", "plates=2", "train_experiments=2", "test_experiments=1",
              "positive_controls=1", "negative_wells=0", "cell_types=[HEPG2]"]


def make_hpa2018(root: Path) -> tuple[Path, Path]:
    """(train dataset, test dataset) of 128 px HPA 2018-like images: 10 to train on, 4 held out."""
    make = load_script("make_data").main
    make(["--task", "hpa-2018", "--root", str(root), "--size", "128", "--fields", "10"])
    make(["--task", "hpa-2018", "--root", str(root), "--name", "hpa2018_test", "--split", "test", "--seed", "1",
          "--size", "128", "--fields", "4"])
    return root / "hpa2018", root / "hpa2018_test"


def make_rxrx1(root: Path) -> tuple[Path, Path]:
    """One RxRx1 design, both splits in one folder (the test plates share the training siRNAs)."""
    make = load_script("make_data").main
    for split in ("train", "test"):
        make(["--task", "rxrx1", "--root", str(root), "--split", split, *RXRX1_TINY])
    return root / "rxrx1", root / "rxrx1"


@pytest.mark.parametrize("task_name, make, metric", [("hpa-2018", make_hpa2018, "macro_F1"),
                                                     ("rxrx1", make_rxrx1, "accuracy")])
def test_image_task_end_to_end(task_name, make, metric, tmp_path, capsys):
    task = get_task(task_name)
    train_data, test_data = make(tmp_path / "input")
    folds = tmp_path / "out" / "folds.csv"
    models = tmp_path / "models"
    group = ["--group-col", "experiment"] if task_name == "rxrx1" else []
    assert load_script("gen_folds").main(["--task", task_name, "--labels", str(train_data / "train.csv"), "--out", str(folds),
                                          "--folds", "2", *group]) is None
    table = pd.read_csv(folds, dtype=str)
    assert {"ID", "Label", "fold"} <= set(table.columns) and table["ID"].is_unique
    assert all(re.fullmatch(r"\d+(\|\d+)*", v) for v in table["Label"])  # canonical label strings
    if task_name == "rxrx1":
        assert table.groupby("experiment")["fold"].nunique().max() == 1  # an experiment stays in one fold

    assert load_script("train").main(["--task", task_name, "--folds-csv", str(folds), "--input", str(train_data / "train"),
                                      "--out-dir", str(models), "--run-name", "tiny", *TINY]) == 0
    run = models / "tiny" / "fold0"
    recipe = json.loads((run / "recipe.json").read_text())
    assert (recipe["task"], recipe["level"], recipe["kind"]) == (task_name, "image", task.kind)
    assert recipe["input"] == {"kind": "field", "resize": 32, "tiles": 1, "normalise": task.normalise}
    assert recipe["in_chans"] == len(task.channels) and task.normalise == ("plate" if task_name == "rxrx1" else "none")
    config = json.loads((run / "config.json").read_text())
    assert config["loss"] == task.loss and config["level"] == "image"
    summary = json.loads((run / "summary.json").read_text())
    assert list(summary["metrics"]) == list(task.metrics)
    valid_samples = (table["fold"] == "0").sum()
    fields_per_sample = 2 if task_name == "rxrx1" else 1
    assert summary["n_valid"] == valid_samples * fields_per_sample  # every site is a sample of its well's label
    assert len(pd.read_csv(run / "val_predictions.csv")) == valid_samples  # scored per labelled sample
    out = capsys.readouterr().out
    assert f"validation: {METRICS[task.metrics[0]].label} " in out

    pred = tmp_path / "pred"
    assert load_script("predict").main(["--models", str(models / "tiny"), "--input", str(test_data / "test"),
                                        "--out", str(pred)]) == 0
    sub = pd.read_csv(pred / "submission.csv", dtype=str, keep_default_na=False)
    truth = pd.read_csv(test_data / "truth" / "labels.csv", dtype=str)
    sample = pd.read_csv(test_data / "sample_submission.csv", dtype=str)
    assert list(sub.columns) == list(sample.columns)
    # one row per sample of the sample submission (RxRx1: sites averaged, imaged control wells left out)
    assert sorted(sub.iloc[:, 0]) == sorted(sample.iloc[:, 0]) == sorted(truth.iloc[:, 0])
    scores = pd.read_csv(pred / "scores.csv")
    assert len(scores) == len(truth)
    if task.kind == "multiclass":
        assert all(0 <= int(v) < task.num_classes for v in sub["sirna"])
        assert (scores["p_top1"] >= scores["p_top2"]).all()
    else:
        assert all(sub["Predicted"].str.len() > 0)  # the top class is always kept
        probs = scores[[f"p{k}" for k in range(task.num_classes)]].to_numpy()
        assert ((probs >= 0) & (probs <= 1)).all()
    saved = json.loads((pred / "predict_config.json").read_text())
    assert saved["task"] == task_name and saved["sample_submission"] == str(test_data / "sample_submission.csv")

    assert load_script("check_submission").main([str(pred / "submission.csv"), "--task", task_name,
                                                 "--sample-submission", str(test_data / "sample_submission.csv")]) == 0
    capsys.readouterr()
    assert load_script("evaluate").main(["--task", task_name, "--truth", str(test_data / "truth"),
                                         "--submission", str(pred / "submission.csv")]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(rf"{metric}=\d\.\d{{4}}", last)

    # a rerun finds every chunk of field scores done and writes the same submission
    before = (pred / "submission.csv").read_text()
    assert load_script("predict").main(["--models", str(models / "tiny"), "--input", str(test_data / "test"),
                                        "--out", str(pred)]) == 0
    assert "0 fields predicted" in capsys.readouterr().out and (pred / "submission.csv").read_text() == before


def test_a_task_that_differs_from_the_models_is_refused(tmp_path, capsys):
    data, _ = make_rxrx1(tmp_path / "input")
    folds = tmp_path / "folds.csv"
    load_script("gen_folds").main(["--task", "rxrx1", "--labels", str(data / "train.csv"), "--out", str(folds),
                                   "--folds", "2", "--group-col", "experiment"])
    load_script("train").main(["--task", "rxrx1", "--folds-csv", str(folds), "--input", str(data / "train"),
                               "--out-dir", str(tmp_path / "m"), "--run-name", "rx", *TINY])
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        load_script("predict").main(["--models", str(tmp_path / "m" / "rx"), "--task", "hpa-sc", "--input", str(data / "test")])
    assert stop.value.code == 2
    assert "trained for task rxrx1, not hpa-sc" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        load_script("train").main(["--task", "rxrx1", "--loss", "bce", "--label-source", "true"])
    assert "label_source true needs cell-level training" in capsys.readouterr().err

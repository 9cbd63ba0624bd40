"""RxRx1 training recipes through the scripts: stages from a previous run's weights, pseudo-labels
without the true test labels, channel-subset models and their ensemble, per-cell-type merging, sites."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellloc import rxrx1
from cellloc.classifier import Recipe
from cellloc.config import read_config_file
from cellloc.plate_assignment import plate_confidence
from cellloc.runs.predict import per_sample, read_field_scores
from cellloc.runs.train import TrainConfig
from cellloc.tasks import get_task

from conftest import module_folder
from test_evaluate_cli import load_script
from test_task_runs import TINY

REPO = Path(__file__).resolve().parents[1]
DATA = ["--task", "rxrx1", "--size", "64", "--options", "sirnas=8", "train_experiments=2", "test_experiments=1",
        "positive_controls=1", "negative_wells=1", "cell_types=[HEPG2,U2OS]"]
CONTROLS = "well_type=negative_control,positive_control"
FIVE = ["w1", "w2", "w3", "w5", "w6"]


class Lab:
    """The tiny dataset, its folds (treatments and controls) and the runs made so far."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "input" / "rxrx1"
        self.folds = root / "folds.csv"
        self.models = root / "models"
        self.out = root / "output"

    def train(self, name: str, *args: str) -> dict:
        argv = ["--task", "rxrx1", "--folds-csv", str(self.folds), "--input", str(self.data / "train"),
                "--out-dir", str(self.models), "--run-name", name, "--monitor", "accuracy", *TINY, *args]
        assert load_script("train").main(argv) == 0
        return json.loads((self.models / name / "fold0" / "summary.json").read_text())

    def predict(self, name: str, *args: str) -> Path:
        out = self.out / name
        assert load_script("predict").main(["--models", str(self.models / name), "--input", str(self.data / "test"),
                                            "--out", str(out), *args]) == 0
        return out


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with module_folder(tmp_path_factory, "recipes") as root:
        lab = Lab(root)
        for split in ("train", "test"):
            load_script("make_data").main([*DATA, "--root", str(lab.root / "input"), "--split", split])
        load_script("gen_folds").main(["--task", "rxrx1", "--labels", str(lab.data / "train.csv"), "--more-labels",
                                       str(lab.data / "train_controls.csv"), "--out", str(lab.folds), "--folds", "2"])
        lab.stage1 = lab.train("stage1", "--subset", CONTROLS)
        lab.stage2 = lab.train("stage2", "--init-from", str(lab.models / "stage1"))
        lab.pred2 = lab.predict("stage2", "--plate-assignment")
        yield lab


def test_folds_hold_controls_with_their_experiments(lab):
    folds = pd.read_csv(lab.folds)
    assert set(folds["well_type"]) == {"treatment", "negative_control", "positive_control"}
    assert folds.groupby("experiment")["fold"].nunique().max() == 1


def test_stage_one_trains_and_validates_on_control_wells_only(lab):
    val = pd.read_csv(lab.models / "stage1" / "fold0" / "val_predictions.csv")
    assert (val["Label"] >= 1108).all()
    folds = pd.read_csv(lab.folds)
    controls = folds[(folds["fold"] != 0) & (folds["well_type"] != "treatment")]
    assert lab.stage1["n_train"] == 2 * len(controls)  # two sites per well
    assert lab.stage1["init_from"] is None


def test_stage_two_starts_from_stage_one(lab):
    assert lab.stage2["init_from"].startswith(str(lab.models / "stage1" / "fold0"))
    assert "tensors copied" in lab.stage2["init_from"] and "stem" not in lab.stage2["init_from"]
    config = json.loads((lab.models / "stage2" / "fold0" / "config.json").read_text())
    assert config["init_from"] == str(lab.models / "stage1")


def test_pseudo_labels_come_from_the_predictions_and_never_from_the_truth(lab, tmp_path, capsys):
    argv = ["--predictions", str(lab.pred2), "--input", str(lab.data / "test"), "--threshold", "0.0"]
    load_script("pseudo_labels").main([*argv, "--out", str(tmp_path / "a.csv")])
    table = pd.read_csv(tmp_path / "a.csv")
    sub = pd.read_csv(lab.pred2 / "submission.csv").set_index("id_code")["sirna"]
    predicted = table[table["source"] == "predicted"]
    assert len(predicted) == len(sub)  # threshold 0: every submitted well
    assert (predicted["Label"].to_numpy() == sub.loc[predicted["ID"]].to_numpy()).all()
    given = table[table["source"] == "given"]
    controls = pd.read_csv(lab.data / "test_controls.csv").set_index("id_code")["sirna"]
    assert sorted(given["ID"]) == sorted(controls.index)
    assert (given["Label"].to_numpy() == controls.loc[given["ID"]].to_numpy()).all()
    assert (table["fold"] == -1).all()
    # the true test labels changed, then gone: the same table, byte for byte
    truth = lab.data / "truth"
    saved = tmp_path / "truth"
    shutil.copytree(truth, saved)
    try:
        labels = pd.read_csv(truth / "labels.csv")
        labels["sirna"] = labels["sirna"].to_numpy()[::-1]
        labels.to_csv(truth / "labels.csv", index=False)
        load_script("pseudo_labels").main([*argv, "--out", str(tmp_path / "b.csv")])
        shutil.rmtree(truth)
        load_script("pseudo_labels").main([*argv, "--out", str(tmp_path / "c.csv")])
    finally:
        shutil.rmtree(truth, ignore_errors=True)
        shutil.copytree(saved, truth)
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes() == (tmp_path / "c.csv").read_bytes()
    # a threshold keeps only the wells whose submitted siRNA is that probable
    load_script("pseudo_labels").main([*argv[:-1], "0.5", "--out", str(tmp_path / "d.csv"), "--top-share", "0.5"])
    sure = pd.read_csv(tmp_path / "d.csv")
    assert (sure.loc[sure["source"] == "predicted", "confidence"] >= 0.5).all()
    assert "given control wells" in capsys.readouterr().out
    # the default confidence is the plate design's (group posterior times within-group probability);
    # --confidence probability is the submitted siRNA's probability among all classes
    ids, probs = read_field_scores(lab.pred2)
    samples, well_probs = per_sample(ids, probs, get_task("rxrx1"))
    groups = rxrx1.plate_groups_of(lab.data / "train.csv")
    labels = sub.loc[samples].to_numpy()
    plates = [rxrx1.parse_id_code(s)[:2] for s in samples]
    want = dict(zip(samples, plate_confidence(np.log(well_probs), plates, groups, labels)))
    assert np.allclose(predicted["confidence"], [want[i] for i in predicted["ID"]], atol=1e-5)
    load_script("pseudo_labels").main([*argv, "--confidence", "probability", "--out", str(tmp_path / "e.csv")])
    raw = pd.read_csv(tmp_path / "e.csv").set_index("ID")
    at = dict(zip(samples, well_probs[np.arange(len(samples)), labels]))
    assert np.allclose(raw.loc[predicted["ID"], "confidence"], [at[i] for i in predicted["ID"]], atol=1e-5)


def test_stage_three_trains_on_pseudo_labelled_test_wells_too(lab, tmp_path, capsys):
    load_script("pseudo_labels").main(["--predictions", str(lab.pred2), "--input", str(lab.data / "test"),
                                       "--out", str(tmp_path / "pseudo.csv")])
    pseudo = pd.read_csv(tmp_path / "pseudo.csv")
    summary = lab.train("stage3", "--init-from", str(lab.models / "stage2"), "--extra-train", str(tmp_path / "pseudo.csv"))
    folds = pd.read_csv(lab.folds)
    assert summary["n_train"] == 2 * ((folds["fold"] != 0).sum() + len(pseudo))
    assert summary["n_valid"] == 2 * (folds["fold"] == 0).sum()  # validation: training experiments only
    # a sample of the folds table given again as an extra one is refused
    folds.head(1).assign(fold=-1).to_csv(tmp_path / "twice.csv", index=False)
    with pytest.raises(SystemExit) as exit_info:
        load_script("train").main(["--task", "rxrx1", "--folds-csv", str(lab.folds), "--input", str(lab.data / "train"),
                                   "--extra-train", str(tmp_path / "twice.csv"), "--out-dir", str(lab.models), *TINY])
    assert exit_info.value.code == 2 and "is in the folds table" in capsys.readouterr().err


def test_a_channel_subset_model_from_the_six_channel_one_and_the_ensemble(lab, tmp_path, capsys):
    summary = lab.train("no_w4", "--init-from", str(lab.models / "stage2"), "--channels", *FIVE)
    assert "stem adapted" in summary["init_from"]
    recipe = Recipe.read(lab.models / "no_w4" / "fold0" / "recipe.json")
    assert (recipe.in_chans, recipe.channels) == (5, tuple(FIVE))
    pred = lab.predict("no_w4", "--plate-assignment")
    ids, five = read_field_scores(pred)
    ids2, six = read_field_scores(lab.pred2)
    assert ids == ids2 and not np.allclose(five, six)
    ensemble = load_script("ensemble").main
    out = tmp_path / "ens"
    ensemble(["--predictions", str(lab.pred2), str(pred), "--input", str(lab.data / "test"), "--out", str(out),
              "--plate-assignment"])
    assert load_script("check_submission").main([str(out / "submission.csv"), "--task", "rxrx1", "--sample-submission",
                                                 str(lab.data / "sample_submission.csv")]) == 0
    _, mean = read_field_scores(out)
    g = np.sqrt(five.astype(np.float64) * six)
    np.testing.assert_allclose(mean, g / g.sum(axis=1, keepdims=True), rtol=1e-4, atol=1e-7)
    # one folder alone gives back its own submission
    ensemble(["--predictions", str(lab.pred2), "--input", str(lab.data / "test"), "--out", str(tmp_path / "one"),
              "--plate-assignment"])
    assert (tmp_path / "one" / "submission.csv").read_text() == (lab.pred2 / "submission.csv").read_text()
    # per-cell-type merge: each well's scores from its own cell type's folder
    ensemble(["--predictions", f"HEPG2={lab.pred2}", f"U2OS={pred}", "--by", "cell_type", "--input",
              str(lab.data / "test"), "--out", str(tmp_path / "by")])
    _, merged = read_field_scores(tmp_path / "by")
    hepg2 = np.array([i.startswith("HEPG2") for i in ids])
    np.testing.assert_array_equal(merged[hepg2], six[hepg2])
    np.testing.assert_array_equal(merged[~hepg2], five[~hepg2])
    with pytest.raises(SystemExit) as exit_info:
        ensemble(["--predictions", f"HEPG2={lab.pred2}", "--by", "cell_type", "--input", str(lab.data / "test"),
                  "--out", str(tmp_path / "bad")])
    assert exit_info.value.code == 2 and "no --predictions entry for 'U2OS'" in capsys.readouterr().err


def test_site_by_site_and_per_cell_type_runs_see_only_their_fields(lab):
    site1 = lab.train("site1", "--site", "1", "--subset", "cell_type=U2OS")
    folds = pd.read_csv(lab.folds)
    u2os = folds[folds["cell_type"] == "U2OS"]
    assert (site1["n_train"], site1["n_valid"]) == ((u2os["fold"] != 0).sum(), (u2os["fold"] == 0).sum())
    val = pd.read_csv(lab.models / "site1" / "fold0" / "val_predictions.csv")
    assert val["ID"].str.startswith("U2OS").all()


def test_the_stage_configs_are_train_configs():
    for path in sorted((REPO / "configs" / "rxrx1").glob("*.yaml")):
        options = read_config_file(path, TrainConfig)
        cfg = TrainConfig(**{**options, "folds_csv": "f.csv", "input": "in/train"})
        assert cfg.task == "rxrx1" and cfg.loss == "ce", path.name
    stage1 = read_config_file(REPO / "configs" / "rxrx1" / "stage1_controls.yaml", TrainConfig)
    assert stage1["subset"] == [CONTROLS]


def test_bad_recipe_options_are_one_line(lab, capsys):
    train = load_script("train").main
    for args, message in ((["--channels", "w1", "w9"], "w9 are not channels of task rxrx1"),
                          (["--subset", "plate"], "is not COLUMN=V1,V2"),
                          (["--init-from", str(lab.root / "nothing")], "holds a trained fold")):
        with pytest.raises(SystemExit) as exit_info:
            train(["--task", "rxrx1", "--folds-csv", str(lab.folds), "--input", str(lab.data / "train"),
                   "--out-dir", str(lab.models), *TINY, *args])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err, args
    with pytest.raises(SystemExit):
        train(["--task", "rxrx1", "--folds-csv", str(lab.folds), "--input", str(lab.data / "train"),
               "--out-dir", str(lab.models), *TINY, "--subset", "colour=red"])
    assert "--subset colour=red: no column colour" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train(["--task", "rxrx1", "--folds-csv", str(lab.folds), "--input", str(lab.data / "train"), "--model",
               "resnet18", "--out-dir", str(lab.models), *TINY[2:], "--init-from", str(lab.models / "stage1")])
    assert "a efficientnet-b0 model, but this run trains resnet18" in capsys.readouterr().err


def test_saved_scores_are_reused_only_for_the_model_that_made_them(lab, tmp_path, capsys):
    predict = load_script("predict").main
    args = ["--input", str(lab.data / "test"), "--out", str(tmp_path / "p")]
    assert predict(["--models", str(lab.models / "stage1"), *args]) == 0
    _, first = read_field_scores(tmp_path / "p")
    assert predict(["--models", str(lab.models / "stage1"), *args]) == 0
    assert " 0 fields predicted, " in capsys.readouterr().out  # the same model: every chunk reused
    with pytest.raises(SystemExit) as exit_info:  # another model into the same folder: refused, not mixed
        predict(["--models", str(lab.models / "stage2"), *args])
    assert exit_info.value.code == 2
    capsys.readouterr()
    assert predict(["--models", str(lab.models / "stage2"), *args, "--overwrite"]) == 0
    assert ", 0 already done" in capsys.readouterr().out
    _, again = read_field_scores(tmp_path / "p")
    _, stage2 = read_field_scores(lab.pred2)
    np.testing.assert_allclose(again, stage2, rtol=1e-5, atol=1e-7)
    assert not np.allclose(again, first)


def test_a_lone_field_reaches_a_channel_subset_model_as_its_stains(tmp_path):
    from cellloc.classifier import load_classifier, save_untrained
    from cellloc.pipeline import score_image
    from cellloc.plate_norm import FieldNormaliser

    recipe = Recipe("rxrx1", "image", "efficientnet-b0", 5, rxrx1.NUM_CLASSES, 32, [0.125] * 5, [0.0625] * 5,
                    "multiclass", {"kind": "field", "resize": 32, "tiles": 1, "normalise": "site", "channels": FIVE})
    model = load_classifier(save_untrained(tmp_path / "five", recipe))
    rng = np.random.default_rng(0)
    field = rng.integers(0, 255, (48, 48, 6), dtype=np.uint8)
    probs = score_image(field, model)
    own = model.predict([FieldNormaliser("site")("", field[..., [0, 1, 2, 4, 5]])], batch_size=1)[0]
    np.testing.assert_allclose(np.log(probs), np.log(own), atol=1e-5)

    class Recording:  # what reaches the network, exactly
        def __init__(self) -> None:
            self.recipe, self.task = recipe, recipe.task_record

        def predict(self, samples, tta=1, batch_size=1):
            self.seen = samples[0]
            return np.zeros((1, rxrx1.NUM_CLASSES), np.float32)

    seen = Recording()
    score_image(field, seen)
    np.testing.assert_array_equal(seen.seen, FieldNormaliser("site")("", field[..., [0, 1, 2, 4, 5]]))


def test_the_recipe_demo_has_its_own_small_design_and_scores_its_pseudo_labels(tmp_path):
    demo = load_script("demo")
    recipe = demo.parse_config(demo.DemoConfig, ["--task", "rxrx1", "--recipe", "full"])
    plain = demo.parse_config(demo.DemoConfig, ["--task", "rxrx1"])
    assert (recipe.sirnas, recipe.size, recipe.image_size) == (16, 128, 64)
    assert plain.sirnas == 32 and plain.size == demo.DEMO_DEFAULTS["rxrx1"]["size"]
    assert demo.parse_config(demo.DemoConfig, ["--task", "rxrx1", "--recipe", "full", "--sirnas", "8"]).sirnas == 8
    # precision of the pseudo-labels against the truth the demo holds back from training
    pd.DataFrame({"ID": ["a", "b", "c", "k"], "Label": ["1", "2", "3", "1138"],
                  "source": ["predicted"] * 3 + ["given"]}).to_csv(tmp_path / "pseudo.csv", index=False)
    pd.DataFrame({"id_code": ["a", "b", "c", "d"], "sirna": [1, 5, 3, 4]}).to_csv(tmp_path / "truth.csv", index=False)
    kept, precision = demo.pseudo_label_precision(tmp_path / "pseudo.csv", tmp_path / "truth.csv")
    assert kept == 3 and precision == pytest.approx(2 / 3)


def test_side_by_side_demo_stages_run_single_threaded_whatever_the_users_thread_setting(tmp_path, monkeypatch):
    demo = load_script("demo")
    monkeypatch.setenv("CELLLOC_THREADS", "2")  # read before OMP_NUM_THREADS by the thread rule
    code = "import os; print(os.environ['CELLLOC_THREADS'], os.environ['OMP_NUM_THREADS'])"
    demo.run("threads", ["-c", code], log=tmp_path / "stage.log")
    assert (tmp_path / "stage.log").read_text().split() == ["1", "1"]

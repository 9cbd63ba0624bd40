"""predict.py: generated fields -> segment -> train a tiny fold model -> predict -> check -> evaluate.

The model is an EfficientNet-B0 trained for one epoch on 32 px crops: the point is the
plumbing (same crops as training, masks that decode to the segmentation, resume, failures),
not the score.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellloc.cells import crop_cells
from cellloc.config import save_config
from cellloc.errors import InputError
from cellloc.fieldio import list_fields, read_field, read_mask
from cellloc.generators import write_dataset
from cellloc.metrics import competition_map
from cellloc.predict_run import ModelSpec, PredictConfig, field_scores, fold_dirs, load_ensemble, run_predict
from cellloc.segment_run import SegmentRunConfig, run_segmentation
from cellloc.segmentation import SegmentConfig
from cellloc.submission import check_submission, decode_mask, parse_submission
from cellloc.submission_formats import read_truth
from cellloc.synth import SynthConfig
from cellloc.tasks import get_task
from cellloc.training import TrainConfig, train_fold

from test_evaluate_cli import load_script

N_TEST = 3


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A segmented 6-field training set, a fold-0 model trained on it, and 3 test fields with truth."""
    root = tmp_path_factory.mktemp("predict")
    write_dataset(SynthConfig(size=256, seed=5), root / "train_data", 6)
    seg_out = root / "seg"
    seg = SegmentRunConfig(input=str(root / "train_data" / "train"), out=str(seg_out), crop_size=32)
    run_segmentation(seg)
    cells = pd.read_csv(seg_out / "cells.csv", dtype={"ID": str, "Label": str, "TrueLabel": str}, keep_default_na=False)
    ids = sorted(cells["ID"].unique())
    cells["fold"] = cells["ID"].map({i: k % 2 for k, i in enumerate(ids)})
    cells.to_csv(seg_out / "folds.csv", index=False)
    cfg = TrainConfig(folds_csv=str(seg_out / "folds.csv"), out_dir=str(root / "models"), run_name="tiny",
                      model="efficientnet-b0", pretrained="none", image_size=32, batch_size=8, epochs=1,
                      num_workers=0, device="cpu", stats_samples=8)
    train_fold(cfg)
    write_dataset(SynthConfig(size=256, seed=9), root / "test_data", N_TEST, split="test")
    return {"root": root, "seg": seg_out, "models": root / "models" / "tiny", "test": root / "test_data" / "test",
            "truth": root / "test_data" / "truth"}


def predict_cfg(trained, out: Path, **kw) -> PredictConfig:
    return PredictConfig(input=str(trained["test"]), models=str(trained["models"]), out=str(out), **kw)


def test_submission_is_valid_and_masks_are_the_segmentation(trained, tmp_path):
    cfg = predict_cfg(trained, tmp_path)
    fns, spec, names = load_ensemble(cfg)
    assert names == ["fold0"] and spec.crop_size == 32 and spec.crop_mask == "cell" and spec.num_classes == 19
    res = run_predict(cfg, spec, fns)
    assert res["done"] == N_TEST and not res["failed"]
    sub = tmp_path / "submission.csv"
    sizes = {i: (256, 256) for i in list_fields(cfg.input, spec.channels).ids}
    assert check_submission(sub, expected_ids=list(sizes), sizes=sizes, num_classes=19) == []
    parsed = parse_submission(sub, 19)
    assert sorted(parsed) == sorted(list_fields(cfg.input, spec.channels).ids)
    # every predicted mask is exactly one segmented cell, scored for all 19 classes
    from cellloc.segmentation import create_segmenter

    seg = create_segmenter(spec.segment)
    for image_id, pred in parsed.items():
        cells, _ = seg.segment(read_field(cfg.input, image_id, spec.channels))
        scores = pd.read_csv(tmp_path / "cell_scores" / f"{image_id}.csv")
        assert len(pred.classes) == 19 * len(scores) == 19 * (len(np.unique(cells)) - 1)
        for k, cid in enumerate(scores["cell_id"]):
            mask = decode_mask(pred.masks[19 * k], *cells.shape)
            np.testing.assert_array_equal(mask, cells == cid)
        probs = scores[[f"p{c}" for c in range(19)]].to_numpy()
        assert ((probs >= 0) & (probs <= 1)).all()
        # Negative is at least min(1 - p) over the other classes for every cell
        assert (probs[:, 18] >= (1 - np.delete(probs, 18, 1)).min(1) - 1e-4).all()
    truth = read_truth(trained["truth"], 19)
    result = competition_map(truth, parsed, 19)
    assert 0.0 <= result["map"] <= 1.0


def test_test_crops_are_the_training_crops(trained):
    """On a training field, predict's crops equal the .npy crops segment.py saved for training."""
    cfg = predict_cfg(trained, trained["root"] / "unused")
    spec = load_ensemble(cfg)[1]
    seg_out = trained["seg"]
    cells_table = pd.read_csv(seg_out / "cells.csv", dtype={"ID": str}, keep_default_na=False)
    image_id = cells_table["ID"].iloc[0]
    image = read_field(trained["root"] / "train_data" / "train", image_id, spec.channels)
    labels = read_mask(seg_out / "masks" / f"{image_id}_cell_mask.png")
    rows = cells_table[cells_table["ID"] == image_id]
    crops = crop_cells(image, labels, rows, spec.crop_size, spec.crop_mask)
    for _, row in rows.iterrows():
        np.testing.assert_array_equal(crops[int(row["cell_id"])], np.load(seg_out / row["crop"]))


@pytest.mark.parametrize("mask_format", ["png", "npz"])
def test_reusing_masks_gives_the_same_submission(trained, tmp_path, mask_format):
    seg_test = tmp_path / "seg_test"
    run_segmentation(SegmentRunConfig(input=str(trained["test"]), out=str(seg_test), crop_size=32, mask_format=mask_format))
    assert len(list((seg_test / "masks").glob(f"*.{mask_format}"))) == 2 * N_TEST
    a, b = tmp_path / "a", tmp_path / "b"
    for out, masks in ((a, ""), (b, str(seg_test / "masks"))):
        cfg = predict_cfg(trained, out, masks=masks)
        fns, spec, _ = load_ensemble(cfg)
        run_predict(cfg, spec, fns)
    assert (a / "submission.csv").read_text() == (b / "submission.csv").read_text()


def test_killed_run_resumes_and_finished_run_is_skipped(trained, tmp_path):
    cfg = predict_cfg(trained, tmp_path / "full")
    fns, spec, _ = load_ensemble(cfg)
    run_predict(cfg, spec, fns)
    full = (tmp_path / "full" / "submission.csv").read_text().splitlines(keepends=True)
    # a run killed during field 2: header + field 1 + half of field 2 in the partial file
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "submission.csv.partial").write_text(full[0] + full[1] + full[2][: len(full[2]) // 2])
    calls = []
    counted = [lambda crops: (calls.append(len(crops)), fns[0](crops))[1]]
    res = run_predict(predict_cfg(trained, killed), spec, counted)
    assert res["skipped"] == 1 and res["done"] == N_TEST - 1
    assert (killed / "submission.csv").read_text() == "".join(full)
    assert not (killed / "submission.csv.partial").exists()
    calls.clear()
    res = run_predict(predict_cfg(trained, killed), spec, counted)
    assert res["skipped"] == N_TEST and res["done"] == 0 and calls == []
    assert (killed / "submission.csv").read_text() == "".join(full)


def test_bad_fields_fail_alone_and_exit_non_zero(trained, tmp_path, capsys):
    test = tmp_path / "test"
    shutil.copytree(trained["test"], test)
    ids = list_fields(test, ("red", "green", "blue", "yellow")).ids
    (test / f"{ids[0]}_green.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (test / f"{ids[1]}_yellow.png").unlink()
    predict = load_script("predict")
    rc = predict.main(["--input", str(test), "--models", str(trained["models"]), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 1
    assert f"failed: {ids[0]}: " in err and f"{ids[0]}_green.png" in err
    assert f"failed: {ids[1]}: missing channel file(s): yellow" in err
    failures = pd.read_csv(tmp_path / "out" / "predict_failures.csv")
    assert sorted(failures["ID"]) == sorted(ids[:2])
    assert list(parse_submission(tmp_path / "out" / "submission.csv", 19)) == ids[2:]


def test_mask_of_wrong_size_is_a_field_failure(trained, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    ids = list_fields(trained["test"], ("red", "green", "blue", "yellow")).ids
    from cellloc.fieldio import write_png

    for i in ids:
        write_png(masks / f"{i}_cell_mask.png", np.ones((10, 10), np.uint16))
    cfg = predict_cfg(trained, tmp_path / "out", masks=str(masks))
    fns, spec, _ = load_ensemble(cfg)
    res = run_predict(cfg, spec, fns)
    assert res["done"] == 0 and len(res["failed"]) == N_TEST
    assert "size (10, 10) differs from the field (256, 256)" in res["failed"][0][1]


def test_no_trained_fold_and_missing_segment_config_are_one_line_errors(trained, tmp_path, capsys):
    with pytest.raises(InputError, match="no trained fold"):
        fold_dirs(tmp_path)
    with pytest.raises(InputError, match=r"among folds \[3\]"):
        fold_dirs(trained["models"], [3])
    run = tmp_path / "run"
    shutil.copytree(trained["models"], run)
    cfg_path = run / "fold0" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["folds_csv"] = str(tmp_path / "elsewhere" / "folds.csv")
    cfg_path.write_text(json.dumps(cfg))
    predict = load_script("predict")
    with pytest.raises(SystemExit) as stop:
        predict.main(["--input", str(trained["test"]), "--models", str(run), "--out", str(tmp_path / "o")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "segment_config.json: not found; pass --segment-config" in err[0]
    # naming the config explicitly works
    assert predict.main(["--input", str(trained["test"]), "--models", str(run), "--out", str(tmp_path / "o"),
                         "--segment-config", str(trained["seg"] / "segment_config.json")]) == 0


@pytest.mark.parametrize("argv, message", [
    (["--min-confidence", "2"], "--min-confidence must be in [0, 1]"),
    (["--field-weight", "-1"], "--field-weight must be in [0, 1]"),
    (["--batch-size", "0"], "--batch-size >= 1"),
])
def test_bad_options_are_one_line_errors(argv, message, capsys):
    predict = load_script("predict")
    with pytest.raises(SystemExit) as stop:
        predict.main(argv)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_field_with_no_cells_gets_an_empty_row():
    spec = ModelSpec(segment=SegmentConfig(), crop_size=16, crop_mask="cell", task=get_task("hpa-sc"))
    image = np.zeros((64, 64, 4), np.uint8)
    empty = np.zeros((64, 64), np.uint16)

    def never(crops):
        raise AssertionError("no crops to predict")

    table, scores = field_scores(image, empty, empty, spec, [never], PredictConfig())
    assert len(table) == 0 and scores.shape == (0, 19)


def test_field_scores_blend_and_negative():
    """Two cells; the model is sure of class 0 for cell 1 only: blending lifts cell 2, Negative fills in."""
    spec = ModelSpec(segment=SegmentConfig(), crop_size=16, crop_mask="cell", task=get_task("hpa-sc"))
    image = np.full((64, 64, 4), 100, np.uint8)
    cells = np.zeros((64, 64), np.uint16)
    cells[5:25, 5:25] = 1
    cells[35:55, 35:55] = 2

    def model(crops):
        out = np.zeros((len(crops), 19), np.float32)
        out[0, 0] = 1.0
        return out

    _, none = field_scores(image, cells, np.zeros_like(cells), spec, [model], PredictConfig(blend="none"))
    _, mean = field_scores(image, cells, np.zeros_like(cells), spec, [model], PredictConfig(blend="mean", field_weight=0.5))
    assert none[1, 0] == 0 and none[1, 18] == 1.0 and none[0, 18] == 0
    np.testing.assert_allclose(mean[:, 0], [0.75, 0.25])

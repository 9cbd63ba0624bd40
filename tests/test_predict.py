"""predict.py: generated fields -> segment -> train a tiny fold model -> predict -> check -> evaluate.

The model is an EfficientNet-B0 trained for one epoch on 32 px crops: the point is the
plumbing (same crops as training, masks that decode to the segmentation, resume, failures),
not the score.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellloc.classifier import fold_dirs
from cellloc.config import save_config
from cellloc.data import load_crop
from cellloc.errors import InputError
from cellloc.fieldio import list_fields, read_field, read_mask
from cellloc.generators import write_dataset
from cellloc.metrics import competition_map
from cellloc.pipeline import crop_field
from cellloc.runs.predict import PredictConfig, load_predictor, run_predict
from cellloc.runs.segment import SegmentRunConfig, run_segmentation
from cellloc.runs.train import TrainConfig, train_fold
from cellloc.submission import check_submission, decode_mask, parse_submission
from cellloc.submission_formats import read_truth
from cellloc.synth import SynthConfig

from conftest import module_folder
from test_evaluate_cli import load_script
from test_run_state import hold_lock

N_TEST = 3


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A segmented 6-field training set, a fold-0 model trained on it, and 3 test fields with truth."""
    with module_folder(tmp_path_factory, "predict") as root:
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
        yield {"root": root, "seg": seg_out, "models": root / "models" / "tiny", "test": root / "test_data" / "test",
                "truth": root / "test_data" / "truth"}


def predict_cfg(trained, out: Path, **kw) -> PredictConfig:
    return PredictConfig(input=str(trained["test"]), models=str(trained["models"]), out=str(out), **kw)


def test_submission_is_valid_and_masks_are_the_segmentation(trained, tmp_path):
    cfg = predict_cfg(trained, tmp_path)
    predictor = load_predictor(cfg)
    recipe = predictor.model.recipe
    assert predictor.names == ["fold0"] and recipe.input["crop_size"] == 32 and recipe.input["crop_mask"] == "cell"
    assert recipe.num_classes == 19 and recipe.task == "hpa-sc"
    res = run_predict(cfg, predictor)
    assert res.done == N_TEST and not res.failed
    sub = tmp_path / "submission.csv"
    channels = predictor.task.channels
    sizes = {i: (256, 256) for i in list_fields(cfg.input, channels).ids}
    assert check_submission(sub, expected_ids=list(sizes), sizes=sizes, num_classes=19) == []
    parsed = parse_submission(sub, 19)
    assert sorted(parsed) == sorted(list_fields(cfg.input, channels).ids)
    # every predicted mask is exactly one segmented cell, scored for all 19 classes
    from cellloc.segmentation import create_segmenter

    seg = create_segmenter(predictor.segment)
    for image_id, pred in parsed.items():
        cells, _ = seg.segment(read_field(cfg.input, image_id, channels))
        scores = pd.read_csv(tmp_path / "cell_scores" / f"{image_id}.csv")
        assert len(pred.classes) == 19 * len(scores) == 19 * (len(np.unique(cells)) - 1)
        for k, cid in enumerate(scores["cell_id"]):
            mask = decode_mask(pred.masks[19 * k], *cells.shape)
            np.testing.assert_array_equal(mask, cells == cid)
        probs = scores[[f"p{c}" for c in range(19)]].to_numpy()
        assert ((probs >= 0) & (probs <= 1)).all()
    # Negative is the chance the cell shows none of the other classes (the default rule, "absent"), read from the
    # cells blended with less of the field (0.25) than the classes (0.85) and not centred on the field: the same as
    # the product blend's; with the product blend and the same share it is the product of the written scores
    product = run_predict(predict_cfg(trained, tmp_path / "product", blend="product"), predictor)
    same = run_predict(predict_cfg(trained, tmp_path / "same", blend="product", negative_field_weight=0.75), predictor)
    assert product.done == same.done == N_TEST
    for image_id in parsed:
        probs, prod, other = (pd.read_csv(folder / "cell_scores" / f"{image_id}.csv")[[f"p{c}" for c in range(19)]].to_numpy()
                              for folder in (tmp_path, tmp_path / "product", tmp_path / "same"))
        np.testing.assert_array_equal(probs[:, 18], prod[:, 18])
        np.testing.assert_array_equal(prod[:, :18], other[:, :18])
        np.testing.assert_allclose(other[:, 18], np.prod(1 - np.delete(other, 18, 1), 1), atol=1e-4)
    truth = read_truth(trained["truth"], 19)
    result = competition_map(truth, parsed, 19)
    assert 0.0 <= result["map"] <= 1.0


def test_test_crops_are_the_training_crops(trained):
    """On a training field, predict's crops equal the .npy crops segment.py saved for training."""
    model = load_predictor(predict_cfg(trained, trained["root"] / "unused")).model
    seg_out = trained["seg"]
    cells_table = pd.read_csv(seg_out / "cells.csv", dtype={"ID": str}, keep_default_na=False)
    image_id = cells_table["ID"].iloc[0]
    image = read_field(trained["root"] / "train_data" / "train", image_id, model.task.channels)
    labels = read_mask(seg_out / "masks" / f"{image_id}_cell_mask.png")
    table, crops = crop_field(image, labels, np.zeros_like(labels), model)
    rows = cells_table[cells_table["ID"] == image_id]
    assert table["cell_id"].tolist() == rows["cell_id"].tolist()
    for crop, (_, row) in zip(crops, rows.iterrows()):
        np.testing.assert_array_equal(crop, load_crop(seg_out / row["crop"]))


@pytest.mark.parametrize("mask_format", ["png", "npz"])
def test_reusing_masks_gives_the_same_submission(trained, tmp_path, mask_format):
    seg_test = tmp_path / "seg_test"
    run_segmentation(SegmentRunConfig(input=str(trained["test"]), out=str(seg_test), crop_size=32, mask_format=mask_format))
    assert len(list((seg_test / "masks").glob(f"*.{mask_format}"))) == 2 * N_TEST
    a, b = tmp_path / "a", tmp_path / "b"
    for out, masks in ((a, ""), (b, str(seg_test / "masks"))):
        cfg = predict_cfg(trained, out, masks=masks)
        run_predict(cfg, load_predictor(cfg))
    assert (a / "submission.csv").read_text() == (b / "submission.csv").read_text()


def test_killed_run_resumes_and_finished_run_is_skipped(trained, tmp_path):
    cfg = predict_cfg(trained, tmp_path / "full")
    predictor = load_predictor(cfg)
    run_predict(cfg, predictor)
    full = (tmp_path / "full" / "submission.csv").read_text().splitlines(keepends=True)
    # a run killed during field 2: header + field 1 + half of field 2 in the partial file
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "submission.csv.partial").write_text(full[0] + full[1] + full[2][: len(full[2]) // 2])
    shutil.copy(tmp_path / "full" / "predict_manifest.json", killed)  # written when the killed run started
    calls = []
    member = predictor.model.members[0]
    original = member.predict
    member.predict = lambda crops, *a, **k: (calls.append(len(crops)), original(crops, *a, **k))[1]
    res = run_predict(predict_cfg(trained, killed), predictor)
    assert res.skipped == 1 and res.done == N_TEST - 1 and len(calls) == N_TEST - 1
    assert (killed / "submission.csv").read_text() == "".join(full)
    assert not (killed / "submission.csv.partial").exists()
    calls.clear()
    res = run_predict(predict_cfg(trained, killed), predictor)
    assert res.skipped == N_TEST and res.done == 0 and calls == []
    assert (killed / "submission.csv").read_text() == "".join(full)


def test_bad_fields_fail_alone_and_exit_non_zero(trained, tmp_path, capsys):
    test = tmp_path / "test"
    shutil.copytree(trained["test"], test)
    ids = list_fields(test, ("red", "green", "blue", "yellow")).ids
    (test / f"{ids[0]}_green.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (test / f"{ids[1]}_yellow.png").unlink()
    predict = load_script("predict")
    rc = predict.main(["--input", str(test), "--models", str(trained["models"]), "--out", str(tmp_path / "out")])
    said = capsys.readouterr()
    err = said.err
    assert rc == 1
    assert sum(line.startswith("runtime: ") for line in said.out.splitlines()) == 1  # which runtime, and why: once
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
    res = run_predict(cfg, load_predictor(cfg))
    assert res.done == 0 and len(res.failed) == N_TEST
    assert "size (10, 10) differs from the field (256, 256)" in res.failed[0][1]


def test_the_model_folder_alone_is_enough_to_predict(trained, tmp_path):
    """The run folder carries its recipe: training's tables and segmentation output can be gone."""
    run = tmp_path / "run"
    shutil.copytree(trained["models"], run)
    cfg = PredictConfig(input=str(trained["test"]), models=str(run), out=str(tmp_path / "o"))
    config = json.loads((run / "fold0" / "config.json").read_text())
    assert not Path(config["folds_csv"]).is_relative_to(run)  # a path to training's table, not needed here
    reference = PredictConfig(input=str(trained["test"]), models=str(trained["models"]), out=str(tmp_path / "ref"))
    run_predict(cfg, load_predictor(cfg))
    run_predict(reference, load_predictor(reference))
    assert (tmp_path / "o" / "submission.csv").read_text() == (tmp_path / "ref" / "submission.csv").read_text()


def test_no_trained_fold_and_no_segmentation_are_one_line_errors(trained, tmp_path, capsys):
    with pytest.raises(InputError, match="no trained fold"):
        fold_dirs(tmp_path)
    with pytest.raises(InputError, match=r"among folds \[3\]"):
        fold_dirs(trained["models"], [3])
    run = tmp_path / "run"
    shutil.copytree(trained["models"], run)
    recipe_path = run / "fold0" / "recipe.json"
    recipe = json.loads(recipe_path.read_text())
    recipe_path.write_text(json.dumps({**recipe, "input": {"kind": "cell_crop", "crop_size": None, "crop_mask": None,
                                                           "segment": None}}))
    predict = load_script("predict")
    with pytest.raises(SystemExit) as stop:
        predict.main(["--input", str(trained["test"]), "--models", str(run), "--out", str(tmp_path / "o")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the recipe records no segmentation" in err[0] and "pass --segment-config" in err[0]
    # naming the config explicitly works
    assert predict.main(["--input", str(trained["test"]), "--models", str(run), "--out", str(tmp_path / "o"),
                         "--segment-config", str(trained["seg"] / "segment_config.json")]) == 0


@pytest.mark.parametrize("argv, message", [
    (["--min-confidence", "2"], "--min-confidence must be in [0, 1]"),
    (["--field-weight", "-1"], "--field-weight must be in [0, 1]"),
    (["--negative-field-weight", "2"], "--negative-field-weight must be in [0, 1]"),
    (["--field-power", "0"], "--field-power must be in (0, 64]"),
    (["--batch-size", "0"], "--batch-size >= 1"),
])
def test_bad_options_are_one_line_errors(argv, message, capsys):
    predict = load_script("predict")
    with pytest.raises(SystemExit) as stop:
        predict.main(argv)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_an_image_model_on_the_same_folds_is_blended_into_the_cells(trained, tmp_path, capsys):
    """HPA single-cell image model: whole fields with the cells table's folds, then predict --blend image."""
    fields = trained["root"] / "train_data" / "train"
    assert load_script("train").main([
        "--level", "image", "--folds-csv", str(trained["seg"] / "folds.csv"), "--input", str(fields),
        "--out-dir", str(tmp_path / "models"), "--run-name", "image", "--model", "efficientnet-b0", "--pretrained", "none",
        "--image-size", "64", "--epochs", "1", "--batch-size", "2", "--num-workers", "0", "--device", "cpu",
        "--stats-samples", "4"]) == 0
    image_run = tmp_path / "models" / "image"
    recipe = json.loads((image_run / "fold0" / "recipe.json").read_text())
    assert (recipe["task"], recipe["level"], recipe["num_classes"]) == ("hpa-sc", "image", 19)
    summary = json.loads((image_run / "fold0" / "summary.json").read_text())
    assert summary["n_train"] == 3 and summary["n_valid"] == 3  # the 6 fields, one sample each, on the cells' folds
    assert "validation: macro AP " in capsys.readouterr().out

    runs = {"none": ["--blend", "none"], "centred": [], "image": ["--blend", "image", "--image-models", str(image_run)],
            "image_mean": ["--blend", "image_mean", "--field-weight", "0.5", "--image-models", str(image_run)]}
    for name, extra in runs.items():
        assert load_script("predict").main(["--models", str(trained["models"]), "--input", str(trained["test"]),
                                            "--out", str(tmp_path / name), *extra]) == 0
    image = load_predictor(predict_cfg(trained, tmp_path / "unused", image_models=str(image_run))).image_model
    p = [f"p{k}" for k in range(18)]  # Negative (18) is raised after blending
    changed = 0
    for path in sorted((tmp_path / "none" / "cell_scores").glob("*.csv")):
        cells = pd.read_csv(path)[p].to_numpy()
        field = image.predict([read_field(trained["test"], path.stem, image.task.channels)])[0][None, :18]
        scores = {name: pd.read_csv(tmp_path / name / "cell_scores" / path.name)[p].to_numpy() for name in runs}
        # the image model's score of the field is what each cell is blended with: cell x image, or halfway to it
        np.testing.assert_allclose(scores["image"] ** 2, cells * field, atol=2e-5)  # squared: the files hold 5 decimals
        np.testing.assert_allclose(scores["image_mean"], 0.5 * cells + 0.5 * field, atol=2e-5)
        changed += int(np.abs(scores["image"] - scores["centred"]).max() > 1e-3)  # not the mean-cell blend
    assert changed == N_TEST
    assert json.loads((tmp_path / "image" / "predict_config.json").read_text())["blend"] == "image"
    saved = json.loads((tmp_path / "centred" / "predict_config.json").read_text())
    assert (saved["blend"], saved["field_weight"], saved["field_power"], saved["field_max"], saved["shown_power"]) == (
        "centred", 0.85, 3.0, 0.5, 0.0)
    assert (tmp_path / "image" / "submission.csv").read_bytes() != (tmp_path / "centred" / "submission.csv").read_bytes()
    # the saved config re-runs it: the same submission and cell scores from nothing but predict_config.json
    assert load_script("predict").main(["--config", str(tmp_path / "image" / "predict_config.json"),
                                        "--out", str(tmp_path / "again")]) == 0
    for name in ["submission.csv", *(f"cell_scores/{p.name}" for p in (tmp_path / "image" / "cell_scores").glob("*.csv"))]:
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "image" / name).read_bytes()

    common = ["--models", str(trained["models"]), "--input", str(trained["test"]), "--out", str(tmp_path / "x")]
    for argv, message in [(["--image-models", str(trained["models"])], "not an image-level run of task hpa-sc"),
                          (["--blend", "image"], "--blend image blends each cell with an image-level model's field score"),
                          (["--blend", "mean", "--image-models", str(image_run)], "is read by --blend image or image_mean")]:
        with pytest.raises(SystemExit) as stop:
            load_script("predict").main([*common, *argv])
        assert stop.value.code == 2 and message in capsys.readouterr().err


# --------------------------------------------------------------------------- reruns, locks, the environment


def test_rerun_with_other_settings_stops_and_overwrite_starts_over(trained, tmp_path):
    out = tmp_path / "out"
    cfg = predict_cfg(trained, out, limit=1)
    predictor = load_predictor(cfg)
    run_predict(cfg, predictor)
    first = (out / "submission.csv").read_text()
    with pytest.raises(InputError) as err:
        run_predict(predict_cfg(trained, out, limit=2, tta=2, blend="mean", negative="raise"), predictor)
    msg = str(err.value)
    assert msg.startswith(f"{out}: its predict outputs were made with other settings (blend.field_max: 0.5 -> (absent); "
                          "blend.field_power: 3.0 -> (absent); blend.field_weight: 0.85 -> 0.3; blend.mode: \"centred\" -> "
                          "\"mean\"; and 3 more); add --overwrite to start over") and "\n" not in msg
    assert (out / "submission.csv").read_text() == first  # no row of the other settings was added ...
    assert json.loads((out / "predict_config.json").read_text())["tta"] == 1  # ... and the record is unchanged
    more = run_predict(predict_cfg(trained, out, limit=2, batch_size=7), predictor)  # same settings: resumes
    assert more.start.resuming and more.skipped == 1 and more.done == 1
    over = run_predict(predict_cfg(trained, out, limit=1, tta=2, overwrite=True), predictor)
    assert over.done == 1 and (over.start.moved_aside / "submission.csv").read_text().startswith(first)
    assert json.loads((out / "predict_config.json").read_text())["tta"] == 2


def test_other_model_weights_are_other_settings(trained, tmp_path):
    """Same folder layout, other weights: the checksum of each fold's best.pt tells them apart."""
    out = tmp_path / "out"
    copy = tmp_path / "models"
    shutil.copytree(trained["models"], copy)
    cfg = PredictConfig(input=str(trained["test"]), models=str(copy), out=str(out), limit=1)
    run_predict(cfg, load_predictor(cfg))
    moved = PredictConfig(input=str(trained["test"]), models=str(trained["models"]), out=str(out), limit=1)
    assert run_predict(moved, load_predictor(moved)).start.resuming  # the same weights elsewhere
    import torch

    state = torch.load(copy / "fold0" / "best.pt", weights_only=True)
    state = {k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, copy / "fold0" / "best.pt")
    with pytest.raises(InputError, match=r'other settings \(models: \[\{"fold": "fold0", "best_sha256": "[0-9a-f]{10}\.\.\. ->'):
        run_predict(cfg, load_predictor(cfg))


def test_a_product_blend_folder_of_before_field_power_resumes(trained, tmp_path):
    """Records made before --field-power had no r: the plain mean's r is left out, so they still match."""
    out = tmp_path / "out"
    predictor = load_predictor(predict_cfg(trained, out))
    run_predict(predict_cfg(trained, out, limit=1, blend="product"), predictor)
    settings = json.loads((out / "predict_manifest.json").read_text())["settings"]
    assert settings["blend"] == {"mode": "product", "field_weight": 0.75}  # as before the option
    assert run_predict(predict_cfg(trained, out, limit=2, blend="product"), predictor).start.resuming
    with pytest.raises(InputError, match=r"blend.field_power: \(absent\) -> 2.0"):
        run_predict(predict_cfg(trained, out, limit=2, blend="product", field_power=2.0), predictor)
    with pytest.raises(InputError, match=r"blend.shown_power: \(absent\) -> 2.0"):  # k 0 is left out, as r 1
        run_predict(predict_cfg(trained, out, limit=2, blend="product", shown_power=2.0), predictor)
    with pytest.raises(InputError, match=r"blend.field_max: \(absent\) -> 0.5"):  # m 0 is left out too
        run_predict(predict_cfg(trained, out, limit=2, blend="product", field_max=0.5), predictor)
    with pytest.raises(ValueError, match=r"--field-max must be in \[0, 1\]"):
        predict_cfg(trained, out, field_max=1.5)


def test_two_predict_runs_on_one_output(trained, tmp_path):
    out = tmp_path / "out"
    cfg = predict_cfg(trained, out, limit=1)
    predictor = load_predictor(cfg)
    holder = hold_lock(out)
    try:
        with pytest.raises(InputError, match=rf"{out}: another run is writing to this folder \(pid {holder.pid}\)"):
            run_predict(cfg, predictor)
    finally:
        holder.kill()
        holder.wait()
    assert not (out / "submission.csv.partial").exists() and not (out / "predict_config.json").exists()


def test_a_full_disk_stops_the_prediction_instead_of_failing_every_field(trained, tmp_path, monkeypatch):
    import errno

    import cellloc.runs.predict as predict_run

    def full(path, df):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(predict_run, "write_csv", full)
    cfg = predict_cfg(trained, tmp_path / "out", limit=2)
    with pytest.raises(OSError) as err:
        run_predict(cfg, load_predictor(cfg))
    assert err.value.errno == errno.ENOSPC and "cell_scores" in err.value.filename
    assert not (tmp_path / "out" / "submission.csv").exists()


def test_predict_into_an_unwritable_place_is_one_line(trained, tmp_path, capsys):
    (tmp_path / "blocked").write_text("a file where the output folder should be")
    predict = load_script("predict")
    with pytest.raises(SystemExit) as stop:
        predict.main(["--input", str(trained["test"]), "--models", str(trained["models"]), "--out",
                      str(tmp_path / "blocked" / "out")])
    assert stop.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and str(tmp_path / "blocked") in errors[0]


def last_digit(token: str) -> float:
    """One unit in the last printed place of a number ("0.30152" -> 1e-05; "3e-05" -> 1e-05)."""
    mantissa, _, exponent = token.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    return 10.0 ** (int(exponent or 0) - decimals)


def assert_same_but_float_noise(got: dict[str, bytes], want: dict[str, bytes]) -> None:
    """The same files with the same text, token for token, except that a printed number may differ
    by one unit in its last place, 1e-3 of itself or 1e-6 (float32 rounding carried through the network).

    Dask starts its workers with one BLAS/OpenMP thread, the driver's serial run uses every core,
    and oneDNN's convolutions round differently with another thread count: a score can move in
    its 7th decimal, so a printed score's last digit may flip. Masks, ids, classes and failures
    must match exactly.
    """
    assert got.keys() == want.keys()
    for name, data in want.items():
        a, b = re.split(r"[,\s]+", got[name].decode()), re.split(r"[,\s]+", data.decode())
        assert len(a) == len(b), name
        for x, y in zip(a, b):
            if x != y:
                try:
                    fx, fy = float(x), float(y)
                    room = max(1.001 * max(last_digit(x), last_digit(y)), 1e-3 * max(abs(fx), abs(fy)), 1e-6)
                    assert abs(fx - fy) <= room, (name, x, y)
                except ValueError:
                    raise AssertionError(f"{name}: {x!r} != {y!r}") from None


@pytest.mark.parametrize("executor", ["process", pytest.param("dask", marks=pytest.mark.skipif(
    importlib.util.find_spec("distributed") is None, reason='the dask executor needs pip install -e ".[distributed]"'))])
def test_every_executor_writes_the_same_bytes_and_the_same_failure_row(trained, tmp_path, executor):
    test = tmp_path / "test"
    shutil.copytree(trained["test"], test)
    bad = list_fields(test, ("red", "green", "blue", "yellow")).ids[1]
    (test / f"{bad}_green.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    predict = load_script("predict")
    common = ["--input", str(test), "--models", str(trained["models"])]
    assert predict.main([*common, "--out", str(tmp_path / "serial")]) == 1
    assert predict.main([*common, "--out", str(tmp_path / executor), "--executor", executor, "--workers", "2"]) == 1

    def outputs(out: Path) -> dict[str, bytes]:
        return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
                if p.is_file() and p.name != "predict_config.json" and not p.name.startswith(".")}

    serial = outputs(tmp_path / "serial")
    assert_same_but_float_noise(outputs(tmp_path / executor), serial)
    assert serial["predict_failures.csv"].decode().splitlines()[1].startswith(f"{bad},")
    assert {k for k in serial if k.startswith("cell_scores/")} == {f"cell_scores/{i}.csv" for i in
                                                                   list_fields(test, ("red", "green", "blue", "yellow")).ids if i != bad}

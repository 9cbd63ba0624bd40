"""fit_thresholds.py: out-of-fold predictions of a run -> thresholds in every recipe; held-out comparison."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellloc.classifier import RECIPE_FILE, Recipe, save_untrained
from cellloc.hpa2018 import encode_rows, write_labels

from test_evaluate_cli import load_script

RARE = 3  # a class whose positives score only ~0.2 (a model trained with BCE on a rare class)


def scores_for(labels: list[list[int]], rng: np.random.Generator) -> np.ndarray:
    """Probabilities (N, 28): common classes around 0.7 / 0.2, the rare class 0.2 / 0.03."""
    y = np.zeros((len(labels), 28), bool)
    for i, ids in enumerate(labels):
        y[i, ids] = True
    p = np.where(y, 0.7, 0.2) + rng.normal(0, 0.08, y.shape)
    p[:, RARE] = np.where(y[:, RARE], 0.2, 0.03) + rng.normal(0, 0.01, len(y))
    return np.clip(p, 0.001, 0.999)


def draw_labels(n: int, rng: np.random.Generator) -> list[list[int]]:
    out = []
    for i in range(n):
        ids = {0} if i % 2 else {25}
        if i % 5 == 0:
            ids.add(RARE)
        if rng.random() < 0.3:
            ids.add(2)
        out.append(sorted(ids))
    return out


def write_run(root: Path, n: int = 60, folds: int = 2, kind: str = "multilabel") -> Path:
    """A two-fold hpa-2018 run as train.py leaves it: recipe.json, best.pt, config.json, val_predictions.csv."""
    rng = np.random.default_rng(0)
    labels = draw_labels(n, rng)
    ids = [f"img{i:03d}" for i in range(n)]
    table = pd.DataFrame({"ID": ids, "Label": ["|".join(map(str, x)) for x in labels], "fold": [i % folds for i in range(n)]})
    table.to_csv(root / "folds.csv", index=False)
    probs = scores_for(labels, rng)
    run = root / "run"
    for k in range(folds):
        d = save_untrained(run / f"fold{k}", Recipe("hpa-2018", "image", "efficientnet-b0", 4, 28, 32, [0.1] * 4,
                                                    [0.2] * 4, kind, {"kind": "field", "resize": 32, "tiles": 1}))
        (d / "config.json").write_text(json.dumps({"folds_csv": str(root / "folds.csv"), "fold": k}))
        mine = (table["fold"] == k).to_numpy()
        df = pd.DataFrame(np.round(probs[mine], 5), columns=[f"p{c}" for c in range(28)])
        df.insert(0, "ID", table["ID"][mine].to_numpy())
        df.to_csv(d / "val_predictions.csv", index=False)
    return run


def test_fits_on_oof_and_writes_every_recipe(tmp_path, capsys):
    run = write_run(tmp_path)
    assert load_script("fit_thresholds").main(["--models", str(run), "--min-positives", "1", "--shrink", "0"]) == 0
    out = capsys.readouterr().out
    saved = json.loads((run / "thresholds.json").read_text())
    assert saved["fitted_on"] == {"folds": [0, 1], "of_folds": 2, "samples": 60}
    assert 0.05 < saved["per_class"][RARE] < 0.2  # between the rare class's negatives and positives
    for k in (0, 1):
        recipe = Recipe.read(run / f"fold{k}" / RECIPE_FILE)
        assert recipe.thresholds == {key: v for key, v in saved.items() if key != "fitted_on"}
    table = pd.read_csv(run / "thresholds.csv")
    assert table.loc[RARE, "positives"] == 12 and table.loc[RARE, "f1_at_0.5"] == 0 and table.loc[RARE, "f1"] == 1
    assert "OOF macro F1 per_class" in out and "wrote" in out
    # predict.py's encoder applies them: the rare class appears in the submission rows
    rows = encode_rows(["a", "b"], np.array([[0.9] + [0.0] * 2 + [0.15] + [0.0] * 24, [0.1] * 28]), None, recipe.thresholds)
    assert rows[0] == ("a", f"0 {RARE}")


def test_share_method_is_set_on_the_images_being_labelled(tmp_path, capsys):
    run = write_run(tmp_path)
    assert load_script("fit_thresholds").main(["--models", str(run), "--method", "share"]) == 0
    th = Recipe.read(run / "fold0" / RECIPE_FILE).thresholds
    assert th["method"] == "share" and th["target_share"][RARE] == pytest.approx(0.2)
    probs = np.random.default_rng(3).random((50, 28))
    rows = encode_rows([str(i) for i in range(50)], probs, None, th)
    assert sum(str(RARE) in r[1].split() for r in rows) >= 10  # a fifth of these 50 images, plus top-class extras


def test_heldout_comparison_ends_with_the_fitted_macro_f1(tmp_path, capsys):
    run = write_run(tmp_path)
    rng = np.random.default_rng(7)
    labels = draw_labels(40, rng)
    probs = scores_for(labels, rng)
    ids = [f"t{i}" for i in range(40)]
    scores = pd.DataFrame(np.round(probs, 5), columns=[f"p{c}" for c in range(28)])
    scores.insert(0, "ID", ids)
    scores.to_csv(tmp_path / "scores.csv", index=False)
    (tmp_path / "truth").mkdir()
    write_labels(tmp_path / "truth" / "labels.csv", dict(zip(ids, labels)))
    argv = ["--models", str(run), "--scores", str(tmp_path / "scores.csv"), "--truth", str(tmp_path / "truth")]
    assert load_script("fit_thresholds").main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    values = {k: float(v) for k, v in (line.split("=") for line in lines if line.startswith("macro_F1"))}
    assert lines[-1].startswith("macro_F1=") and list(values)[-1] == "macro_F1"
    assert values["macro_F1_at_0.5"] < values["macro_F1"]  # at 0.5 the rare class is lost
    # 4 classes present of 28: the competition's mean counts the 24 absent ones as 0
    assert values["macro_F1"] <= round(4 / 28, 4)


@pytest.mark.parametrize("damage, words", [
    ("multiclass", "image-level multilabel runs"),
    ("duplicate", "is predicted by two folds"),
    ("column", "missing probability column(s) p27"),
    ("unknown", "is not in the folds table"),
])
def test_bad_runs_fail_in_one_line(tmp_path, capsys, damage, words):
    run = write_run(tmp_path, kind="multiclass" if damage == "multiclass" else "multilabel")
    preds = run / "fold1" / "val_predictions.csv"
    df = pd.read_csv(preds)
    if damage == "duplicate":
        df.iloc[0, 0] = pd.read_csv(run / "fold0" / "val_predictions.csv").iloc[0, 0]
    elif damage == "column":
        df = df.drop(columns="p27")
    elif damage == "unknown":
        df.iloc[0, 0] = "stranger"
    df.to_csv(preds, index=False)
    with pytest.raises(SystemExit) as exit_info:
        load_script("fit_thresholds").main(["--models", str(run)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err


def test_only_the_folds_asked_for(tmp_path, capsys):
    run = write_run(tmp_path)
    assert load_script("fit_thresholds").main(["--models", str(run), "--folds", "1"]) == 0
    assert json.loads((run / "thresholds.json").read_text())["fitted_on"] == {"folds": [1], "of_folds": 2, "samples": 30}
    assert Recipe.read(run / "fold0" / RECIPE_FILE).thresholds is None  # fold 0 was not asked for: left as it was
    assert "folds 1 of 2" in capsys.readouterr().out


# --------------------------------------------------------------------------- reruns never lose thresholds


def test_a_rerun_with_the_same_settings_writes_the_same_thresholds(tmp_path, capsys):
    run = write_run(tmp_path)
    fit = load_script("fit_thresholds")
    assert fit.main(["--models", str(run)]) == 0
    first = (run / "fold0" / RECIPE_FILE).read_text()
    assert fit.main(["--models", str(run)]) == 0
    assert (run / "fold0" / RECIPE_FILE).read_text() == first
    assert not list(run.glob("thresholds.replaced-*"))


def test_other_settings_do_not_replace_fitted_thresholds_without_overwrite(tmp_path, capsys):
    run = write_run(tmp_path)
    fit = load_script("fit_thresholds")
    assert fit.main(["--models", str(run)]) == 0
    fitted = {k: (run / f"fold{k}" / RECIPE_FILE).read_text() for k in (0, 1)}
    record = (run / "thresholds.json").read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        fit.main(["--models", str(run), "--method", "share"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {run / 'fold0' / RECIPE_FILE}: holds thresholds fitted otherwise (")
    assert 'method: "f1" -> "share"' in err and "add --overwrite" in err and "\n" not in err
    assert {k: (run / f"fold{k}" / RECIPE_FILE).read_text() for k in (0, 1)} == fitted  # nothing written
    assert (run / "thresholds.json").read_text() == record

    assert fit.main(["--models", str(run), "--method", "share", "--overwrite"]) == 0
    kept = list(run.glob("thresholds.replaced-*.json"))
    assert len(kept) == 1 and f"kept in {kept[0]}" in capsys.readouterr().out
    old = json.loads(kept[0].read_text())
    assert old["recipes"]["fold0"] == json.loads(fitted[0])["thresholds"] and old["thresholds.json"]["method"] == "f1"
    assert Recipe.read(run / "fold1" / RECIPE_FILE).thresholds["method"] == "share"


def test_a_fit_killed_among_the_recipes_completes_on_a_rerun(tmp_path, capsys):
    run = write_run(tmp_path)
    fit = load_script("fit_thresholds")
    assert fit.main(["--models", str(run)]) == 0
    # the share fit wrote thresholds.json and fold0's recipe, then was killed before fold1's
    assert fit.main(["--models", str(run), "--method", "share", "--overwrite"]) == 0
    share = Recipe.read(run / "fold0" / RECIPE_FILE).thresholds
    f1 = json.loads(sorted(run.glob("thresholds.replaced-*.json"))[0].read_text())["recipes"]["fold1"]
    recipe = Recipe.read(run / "fold1" / RECIPE_FILE)
    recipe.thresholds = f1
    (run / "fold1" / RECIPE_FILE).write_text(json.dumps(recipe.to_dict()))
    assert fit.main(["--models", str(run), "--method", "share"]) == 0  # the same fit again: no --overwrite needed
    assert Recipe.read(run / "fold1" / RECIPE_FILE).thresholds == share


def test_a_mistyped_models_folder_is_one_line_and_makes_no_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        load_script("fit_thresholds").main(["--models", str(tmp_path / "nope")])
    assert stop.value.code == 2 and str(tmp_path / "nope") in capsys.readouterr().err
    assert not (tmp_path / "nope").exists()

"""The two scripts end to end on a tiny truth folder and submission written by the test."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellloc.errors import InputError
from cellloc.fieldio import write_png
from cellloc.submission import SubmissionWriter, encode_field, prediction_string
from cellloc.submission_formats import read_truth

SRC = Path(__file__).resolve().parents[1] / "src"


def load_script(name: str):
    """Import ``src/{name}.py`` by path (its module name could clash with installed packages)."""
    spec = importlib.util.spec_from_file_location(f"cellloc_script_{name}", SRC / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through it
    spec.loader.exec_module(module)
    return module


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, str(SRC / f"{name}.py"), *args], capture_output=True, text=True, env=env)


# Field "a" (30x40): cell 3 is classes 0 and 16, cell 8 is class 0. Field "b" (24x24): cell 1 is 18.
CELLS = {"a": {3: [0, 16], 8: [0]}, "b": {1: [18]}}


def field_labels(image_id: str) -> np.ndarray:
    if image_id == "a":
        lab = np.zeros((30, 40), np.uint16)
        lab[2:12, 3:15] = 3
        lab[15:28, 20:37] = 8
    else:
        lab = np.zeros((24, 24), np.uint16)
        lab[4:20, 4:20] = 1
    return lab


@pytest.fixture
def truth_dir(tmp_path) -> Path:
    d = tmp_path / "truth"
    rows = []
    for image_id, cells in CELLS.items():
        write_png(d / f"{image_id}_cell_mask.png", field_labels(image_id))
        rows += [(image_id, cid, "|".join(map(str, cls))) for cid, cls in cells.items()]
    pd.DataFrame(rows, columns=["ID", "cell_id", "Label"]).to_csv(d / "cells.csv", index=False)
    return d


def write_submission(path: Path, scores_for) -> Path:
    """A submission whose cells are the true cells, scored by ``scores_for(image_id, cell_id)``."""
    with SubmissionWriter(path) as w:
        for image_id, cells in CELLS.items():
            lab = field_labels(image_id)
            masks = encode_field(lab)
            ids = sorted(cells)
            scores = np.array([scores_for(image_id, c) for c in ids])
            w.write(image_id, lab.shape[1], lab.shape[0], prediction_string([masks[c] for c in ids], scores, 0.05))
    return path


def perfect_scores(image_id: str, cell_id: int) -> np.ndarray:
    s = np.zeros(19)
    s[CELLS[image_id][cell_id]] = 0.9
    return s


def test_read_truth(truth_dir):
    truth = read_truth(truth_dir, 19)
    assert sorted(truth) == ["a", "b"]
    assert truth["a"].cell_classes == {3: [0, 16], 8: [0]}
    np.testing.assert_array_equal(truth["a"].labels, field_labels("a"))


@pytest.mark.parametrize(
    "edit, reason",
    [
        (lambda df: df[df.cell_id != "8"], "cell 8 of a_cell_mask.png has no row"),
        (lambda df: pd.concat([df, pd.DataFrame([["b", 2, "0"]], columns=df.columns)]), "cell 2 of field b is not in"),
        (lambda df: pd.concat([df, df.iloc[:1]]), "cell 3 of field 'a' is listed twice"),
        (lambda df: pd.concat([df, pd.DataFrame([["c", 1, "0"]], columns=df.columns)]), "has no c_cell_mask.png"),
        (lambda df: df.assign(Label=["0", "19", "18"]), "unknown class id 19"),
    ],
)
def test_read_truth_rejects_inconsistent_folders(truth_dir, edit, reason):
    table = truth_dir / "cells.csv"
    edit(pd.read_csv(table, dtype=str)).to_csv(table, index=False)
    with pytest.raises(InputError, match=reason):
        read_truth(truth_dir, 19)


def test_evaluate_perfect_submission_end_to_end(truth_dir, tmp_path):
    sub = write_submission(tmp_path / "submission.csv", perfect_scores)
    res = run_script("evaluate", "--truth", str(truth_dir), "--submission", str(sub))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert re.fullmatch(r"mAP=\d\.\d{4}", lines[-1])
    assert lines[-1] == "mAP=1.0000"
    row = next(line for line in lines if line.split()[:2] == ["16", "Cytosol"])
    assert row.split()[2:] == ["1.0000", "1", "1"]
    assert next(line for line in lines if line.split()[:1] == ["5"]).split()[-3:] == ["-", "0", "0"]
    res = run_script("check_submission", str(sub))
    assert res.returncode == 0 and res.stdout.strip().endswith("OK, no problems found")


def test_evaluate_partial_credit(truth_dir, tmp_path, capsys):
    def scores(image_id, cell_id):
        s = perfect_scores(image_id, cell_id)
        if image_id == "a" and cell_id == 3:
            s[0] = 0.2  # cell 8 (0.9) outranks it: still AP 1 for class 0
            s[16] = 0.0  # class 16 never predicted: AP 0
        if image_id == "b":
            s[2] = 0.95  # a class absent from the truth: ignored
        return s

    sub = write_submission(tmp_path / "submission.csv", scores)
    assert load_script("evaluate").main(["--truth", str(truth_dir), "--submission", str(sub)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == f"mAP={(1 + 0 + 1) / 3:.4f}"
    assert out[-2].endswith("mean over 3 classes present in the truth")


def test_evaluate_reports_bad_input_in_one_line(truth_dir, tmp_path, capsys):
    sub = write_submission(tmp_path / "submission.csv", perfect_scores)
    text = sub.read_text().replace("a,40,30,", "a,40,31,")
    sub.write_text(text)
    evaluate = load_script("evaluate")
    with pytest.raises(SystemExit) as exc:
        evaluate.main(["--truth", str(truth_dir), "--submission", str(sub)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "field a: submission says 40x31, truth mask is 40x30" in err
    assert len(err.splitlines()) == 1
    with pytest.raises(SystemExit):
        evaluate.main(["--truth", str(tmp_path / "nowhere"), "--submission", str(sub)])
    assert "truth folder not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.main(["--iou-threshold", "1.5"])
    assert "--iou-threshold must be in (0, 1]" in capsys.readouterr().err


def test_check_submission_script_lists_problems(tmp_path):
    sub = write_submission(tmp_path / "submission.csv", perfect_scores)
    lines = sub.read_text().splitlines()
    lines[1] = re.sub(r"^(a,40,30,0 )0\.9 (\S+)", r"\g<1>2 %%%", lines[1])
    sub.write_text("\n".join(lines) + "\n")
    sample = tmp_path / "sample.csv"
    sample.write_text("ID,ImageWidth,ImageHeight,PredictionString\na,40,30,\nb,24,24,\nc,10,10,\n")
    res = run_script("check_submission", str(sub), "--sample-submission", str(sample))
    assert res.returncode == 1
    out = res.stdout.strip().splitlines()
    assert "line 2: prediction 1: confidence 2 is outside [0, 1]" in out
    assert "line 2: prediction 1: mask is not valid base64" in out
    assert "file: missing ID 'c'" in out
    assert out[-1] == f"{sub}: 3 problem(s) on 2 line(s)"


def test_evaluate_refuses_a_zlib_bomb_by_line_with_little_memory(truth_dir, tmp_path, zlib_bomb, run_memory_capped):
    sub = write_submission(tmp_path / "submission.csv", perfect_scores)
    lines = sub.read_text().splitlines()
    lines[1] = re.sub(r"^(a,40,30,0 0\.9 )\S+", lambda m: m.group(1) + zlib_bomb(4096), lines[1])
    sub.write_text("\n".join(lines[:1] + [""] + lines[1:]) + "\n")  # a blank line: the row is on line 3
    res, growth = run_memory_capped(
        "import runpy, cellloc.metrics, cellloc.submission, cellloc.submission_formats",
        f"sys.argv = ['evaluate.py', '--truth', {str(truth_dir)!r}, '--submission', {str(sub)!r}]\n"
        "try:\n"
        "    runpy.run_path('src/evaluate.py', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    print('EXIT', exc.code)\n",
        cap_mib=768,
    )
    assert "EXIT 2" in res.stdout, res.stderr[-2000:]
    [err] = [x for x in res.stderr.splitlines() if x.startswith("error: ")]
    assert err.startswith(f"error: {sub}: line 3: field a: prediction 1: mask decompresses to more than 1390 bytes")
    assert growth < 256, f"peak RSS grew by {growth:.0f} MiB"

"""HPA 2018: the Id,Target reader, full-size fields, and the Id,Predicted submission (write, check, score)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score

from cellloc.classes import HPA_2018
from cellloc.errors import InputError
from cellloc.fieldio import list_fields, read_field, write_png
from cellloc.hpa2018 import (
    check_submission,
    evaluate_submission,
    format_table,
    format_target,
    read_ids,
    read_labels,
    read_submission,
    write_labels,
    write_submission,
)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- labels


def test_read_labels_gives_the_canonical_frame(tmp_path):
    csv = write(tmp_path / "train.csv", "Id,Target\n00070df0-bbc3-11e8-b2bc-ac1f6b6435d0,16 0\nabc,7\nx_y,27  1 3\n")
    df = read_labels(csv)
    assert list(df.columns) == ["ID", "Label", "labels"]
    assert df["ID"].tolist() == ["00070df0-bbc3-11e8-b2bc-ac1f6b6435d0", "abc", "x_y"]
    assert df["Label"].tolist() == ["0|16", "7", "1|3|27"]
    assert df["labels"].tolist() == [[0, 16], [7], [1, 3, 27]]


def test_read_labels_keeps_other_columns_as_strings(tmp_path):
    csv = write(tmp_path / "t.csv", "Id,Target,source\na,1,kaggle\nb,2 3,hpav18\n")
    df = read_labels(csv)
    assert df["source"].tolist() == ["kaggle", "hpav18"]


@pytest.mark.parametrize(
    "text,line,words",
    [
        ("Id,Target\na,16 0\nb,16;0\n", 3, "'16;0' is not a class id"),
        ("Id,Target\na,28\n", 2, "unknown class id 28"),
        ("Id,Target\na,-1\n", 2, "'-1' is not a class id"),
        ("Id,Target\na,3 3\n", 2, "class id 3 given twice"),
        ("Id,Target\na,1\nb,\n", 3, "empty Target"),
        ("Id,Target\na,1\na,2\n", 3, "duplicate Id 'a' (first on line 2)"),
        ("Id,Target\n,1\n", 2, "empty Id"),
        ("Id,Target\na,16,0\n", 2, "expected 2 fields"),
        ("Id,Target\na,1\n\n\nb,x\n", 5, "'x' is not a class id"),  # blank lines skipped but counted
        ("\nId,Target\na,1\n\nb,29\n", 5, "unknown class id 29"),
        ('Id,Target\n"a\nb",1\nc,99\n', 4, "unknown class id 99"),  # a quoted newline is still a line
    ],
)
def test_read_labels_bad_rows_name_file_and_line(tmp_path, text, line, words):
    csv = write(tmp_path / "train.csv", text)
    with pytest.raises(InputError) as err:
        read_labels(csv)
    msg = str(err.value)
    assert msg.startswith(f"{csv}: line {line}: ") and words in msg and "\n" not in msg


@pytest.mark.parametrize(
    "text,words",
    [
        ("", "CSV is empty"),
        ("\n\n", "CSV is empty"),
        ("Id,Target\n", "header but no rows"),
        ("ID,Label\na,1\n", "missing column(s) Id, Target"),
        ("Id\na\n", "missing column(s) Target"),
    ],
)
def test_read_labels_bad_files(tmp_path, text, words):
    csv = write(tmp_path / "train.csv", text)
    with pytest.raises(InputError, match=r"^" + str(csv).replace("\\", "\\\\")) as err:
        read_labels(csv)
    assert words in str(err.value)


def test_read_labels_missing_and_binary_files(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_labels(tmp_path / "nope.csv")
    (tmp_path / "bin.csv").write_bytes(b"Id,Target\n\xff\xfe,1\n")
    with pytest.raises(InputError, match="not UTF-8"):
        read_labels(tmp_path / "bin.csv")


def test_read_labels_accepts_bom_and_crlf(tmp_path):
    (tmp_path / "t.csv").write_bytes("\ufeffId,Target\r\na,5 2\r\n".encode())
    assert read_labels(tmp_path / "t.csv")["Label"].tolist() == ["2|5"]


def test_write_labels_round_trip(tmp_path):
    write_labels(tmp_path / "labels.csv", {"a": [16, 0], "b": [27]})
    assert (tmp_path / "labels.csv").read_text() == "Id,Target\na,0 16\nb,27\n"
    assert read_labels(tmp_path / "labels.csv")["labels"].tolist() == [[0, 16], [27]]
    assert format_target([3, 1, 3]) == "1 3"


# --------------------------------------------------------------------------- full-size fields


@pytest.mark.parametrize("size,dtype", [(2048, np.uint8), (3072, np.uint16)])
def test_full_size_external_fields_read_through_the_flat_layout(tmp_path, size, dtype):
    """HPAv18 external fields: 2048 or 3072 px, 8- or 16-bit, same {Id}_{channel}.png names."""
    image_id = "10580_1610_C1_1"
    rng = np.random.default_rng(size)
    top = np.iinfo(dtype).max
    channels = {}
    for c, name in enumerate(("red", "green", "blue", "yellow")):
        img = np.zeros((size, size), dtype)
        img[:: 64 + c, ::3] = top - c  # sparse stripes keep the PNG small and fast to write
        img[rng.integers(0, size, 50), rng.integers(0, size, 50)] = top // 3
        channels[name] = img
        write_png(tmp_path / f"{image_id}_{name}.png", img)
    assert list_fields(tmp_path).ids == [image_id]
    field = read_field(tmp_path, image_id)
    assert field.shape == (size, size, 4) and field.dtype == dtype
    for c, name in enumerate(("red", "green", "blue", "yellow")):
        np.testing.assert_array_equal(field[..., c], channels[name])


# --------------------------------------------------------------------------- submission


def test_submission_round_trip_with_empty_predictions(tmp_path):
    path = tmp_path / "submission.csv"
    write_submission(path, [("a", [16, 0]), ("b", []), ("c", [27])])
    assert path.read_text() == "Id,Predicted\na,0 16\nb,\nc,27\n"
    assert read_submission(path) == {"a": [0, 16], "b": [], "c": [27]}
    assert check_submission(path, expected_ids=["a", "b", "c"]) == []
    write_submission(path, {"z": [1]})  # a mapping works too, and the file is replaced whole
    assert read_submission(path) == {"z": [1]}
    assert not [p for p in tmp_path.iterdir() if p.name != "submission.csv"]  # no temporary left


def test_check_lists_every_problem_by_line(tmp_path):
    path = write(
        tmp_path / "sub.csv",
        "Id,Predicted\n"
        "a,0 16\n"  # 2 fine
        "b,0 28 x\n"  # 3 unknown id, bad token
        "a,1\n"  # 4 duplicate
        "\n"  # 5 blank, skipped
        "zz,3 3\n"  # 6 unexpected Id and a repeated id
        ",2\n"  # 7 empty Id
        "c,1,2\n",  # 8 too many fields
    )
    problems = check_submission(path, expected_ids=["a", "b", "c", "d", "e"])
    by_line: dict[int, list[str]] = {}
    for line, reason in problems:
        by_line.setdefault(line, []).append(reason)
    assert sorted(by_line) == [0, 3, 4, 6, 7, 8]
    assert any("unknown class id 28" in r for r in by_line[3]) and any("'x' is not a class id" in r for r in by_line[3])
    assert by_line[4] == ["duplicate Id 'a' (first on line 2)"]
    assert any("unexpected Id 'zz'" in r for r in by_line[6]) and any("class id 3 given twice" in r for r in by_line[6])
    assert by_line[7] == ["empty Id"]
    assert any("expected 2 fields" in r for r in by_line[8])
    assert sorted(by_line[0]) == ["missing Id 'd'", "missing Id 'e'"]


def test_check_header_problems_and_many_missing_ids(tmp_path):
    bad_header = write(tmp_path / "h.csv", "Id,Target\na,1\n")
    problems = check_submission(bad_header)
    assert problems[0][0] == 1 and "missing column(s) Predicted" in problems[0][1]
    extra = write(tmp_path / "e.csv", "Id,Predicted,Score\na,1,0.5\n")
    assert check_submission(extra)[0] == (1, "unexpected column(s) Score: expected exactly Id,Predicted")
    empty = write(tmp_path / "n.csv", "Id,Predicted\n")
    problems = check_submission(empty, expected_ids=[f"id{i}" for i in range(30)])
    assert problems[0] == (0, "no rows after the header")
    assert len([p for p in problems if p[1].startswith("missing Id")]) == 20
    assert problems[-1] == (0, "... and 10 more missing Ids (30 in all)")
    with pytest.raises(InputError, match="file not found"):
        check_submission(tmp_path / "nope.csv")
    with pytest.raises(InputError, match=f"{tmp_path}: is a folder, not a CSV file"):
        check_submission(tmp_path)


def test_check_caps_reasons_per_line(tmp_path):
    path = write(tmp_path / "s.csv", "Id,Predicted\na," + " ".join(["x"] * 9) + "\n")
    reasons = [r for _, r in check_submission(path, max_per_line=3)]
    assert len(reasons) == 4 and reasons[-1] == "... and 6 more problems on this line"


def test_read_submission_fails_on_first_problem(tmp_path):
    path = write(tmp_path / "s.csv", "Id,Predicted\na,1\nb,1 40\n")
    with pytest.raises(InputError, match=r"line 3: unknown class id 40 .*check_submission"):
        read_submission(path)


def test_read_ids_of_sample_submission(tmp_path):
    path = write(tmp_path / "sample_submission.csv", "Id,Predicted\nb,0\na,0\n")
    assert read_ids(path) == ["b", "a"]


# --------------------------------------------------------------------------- evaluation


def make_truth(tmp_path: Path, labels: dict[str, list[int]]) -> Path:
    truth = tmp_path / "truth"
    truth.mkdir()
    write_labels(truth / "labels.csv", labels)
    return truth


def test_evaluate_perfect_submission_scores_present_classes_and_zero_for_absent(tmp_path):
    labels = {"a": [0, 16], "b": [0], "c": [25, 2]}
    truth = make_truth(tmp_path, labels)
    write_submission(tmp_path / "sub.csv", labels)
    table, summary = evaluate_submission(truth, tmp_path / "sub.csv")
    assert len(table) == 28
    assert table.loc[[0, 2, 16, 25], "F1"].tolist() == [1.0] * 4
    # the other 24 classes have no positive in truth and none predicted: 0 each, as sklearn's macro F1
    assert summary == f"macro_F1={4 / 28:.4f}"
    assert (table["note"] != "").sum() == 24
    text = format_table(table)
    assert "4 with a positive in the truth; mean F1 over those 1.0000" in text


def test_evaluate_matches_sklearn_macro_f1(tmp_path):
    rng = np.random.default_rng(4)
    ids = [f"img{i}" for i in range(60)]
    truth_m = rng.random((60, 28)) < 0.1
    pred_m = truth_m ^ (rng.random((60, 28)) < 0.08)
    truth_m[:, 27] = False  # a class absent from the truth and the prediction
    pred_m[:, 27] = False
    truth_m[np.arange(60), rng.integers(0, 27, 60)] = True  # every image has a class
    truth = make_truth(tmp_path, {i: np.flatnonzero(r).tolist() for i, r in zip(ids, truth_m)})
    write_submission(tmp_path / "sub.csv", [(i, np.flatnonzero(r).tolist()) for i, r in zip(ids, pred_m)])
    table, summary = evaluate_submission(truth / "labels.csv", tmp_path / "sub.csv")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = f1_score(truth_m, pred_m, average="macro")
    assert summary == f"macro_F1={expected:.4f}"
    assert table["truth"].tolist() == truth_m.sum(0).tolist()
    assert table["predicted"].tolist() == pred_m.sum(0).tolist()


def test_evaluate_refuses_missing_or_extra_ids(tmp_path):
    truth = make_truth(tmp_path, {"a": [1], "b": [2]})
    write_submission(tmp_path / "missing.csv", {"a": [1]})
    with pytest.raises(InputError, match="1 truth Id\\(s\\) missing \\(first 'b'\\)"):
        evaluate_submission(truth, tmp_path / "missing.csv")
    write_submission(tmp_path / "extra.csv", {"a": [1], "b": [], "q": [3]})
    with pytest.raises(InputError, match="1 Id\\(s\\) not in the truth \\(first 'q'\\)"):
        evaluate_submission(truth, tmp_path / "extra.csv")
    assert HPA_2018.num_classes == 28

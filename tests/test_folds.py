"""Folds: no field in two folds, groups kept whole, rare classes reported, seeded, bad input -> one line."""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pandas as pd
import pytest

from cellloc.config import parse_config
from cellloc.fieldio import format_label
from cellloc.folds import (
    METHODS,
    assign_folds,
    balance_report,
    balance_table,
    deviation_floor,
    fill_empty_folds,
    label_combinations,
    split_folds,
)
from cellloc.plots import fold_balance_heatmap
from cellloc.runs.folds import FoldsConfig, make_folds
from gen_folds import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def long_tailed_labels(n: int, n_classes: int = 8, seed: int = 0) -> np.ndarray:
    """(n, C) multi-hot, 1-3 labels per row, class frequencies falling geometrically."""
    rng = np.random.default_rng(seed)
    weights = 0.6 ** np.arange(n_classes)
    keys = np.log(weights) + rng.gumbel(size=(n, n_classes))
    m = rng.integers(1, 4, n)
    return (np.argsort(-keys, axis=1).argsort(axis=1) < m[:, None]).astype(np.uint8)


def write_cells(path, labels: np.ndarray, seed: int = 0, groups: list[str] | None = None) -> pd.DataFrame:
    """A segmentation-style cells CSV: 1-4 cells per field, extra columns to carry through."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, y in enumerate(labels):
        for c in range(int(rng.integers(1, 5))):
            row = {"ID": f"field_{i:03d}", "cell_id": c + 1, "Label": format_label(np.flatnonzero(y)),
                   "area_um2": f"{rng.uniform(50, 400):.3f}", "bbox": f"{c} {c + 9} 20 30"}
            if groups is not None:
                row["antibody"] = groups[i]
            rows.append(row)
    df = pd.DataFrame(rows)
    df.to_csv(path, index=False)
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run gen_folds' main; (exit code, stdout, stderr)."""
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


# --------------------------------------------------------------------------- assignment


@pytest.mark.parametrize("method", METHODS)
def test_every_fold_used_and_ids_in_range(method):
    y = long_tailed_labels(120)
    folds = assign_folds(y, 5, seed=3, method=method)
    assert folds.shape == (120,) and folds.dtype == np.int64
    assert set(folds.tolist()) == set(range(5))


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_folds_other_seed_other_folds(method):
    y = long_tailed_labels(200)
    a = assign_folds(y, 5, seed=7, method=method)
    np.random.seed(123)  # the caller's global state must not matter...
    b = assign_folds(y, 5, seed=7, method=method)
    c = assign_folds(y, 5, seed=8, method=method)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_skmultilearn_leaves_the_global_numpy_stream_alone():
    np.random.seed(5)
    expected = np.random.random(3)
    np.random.seed(5)
    assign_folds(long_tailed_labels(100), 4, seed=1, method="skmultilearn")
    assert np.array_equal(np.random.random(3), expected)


@pytest.mark.parametrize("method", ["skmultilearn", "iterstrat"])
def test_stratified_splitters_balance_better_than_random(method):
    y = long_tailed_labels(600, n_classes=6, seed=1)  # smallest class 45 fields
    strat = balance_report(y, assign_folds(y, 5, 0, method), 5)
    rand = balance_report(y, assign_folds(y, 5, 0, "random"), 5)
    assert strat.mean_dev < 0.5 * rand.mean_dev
    assert strat.max_dev < rand.max_dev


@pytest.mark.parametrize("method", METHODS)
def test_groups_stay_in_one_fold(method):
    rng = np.random.default_rng(2)
    y = long_tailed_labels(150)
    groups = np.array([f"ab{g}" for g in rng.integers(0, 30, 150)])
    split = split_folds(y, 5, 0, method, groups)
    assert split.unit_name == "groups" and split.n_units == len(set(groups))
    folds_per_group = pd.Series(split.folds).groupby(groups).nunique()
    assert folds_per_group.max() == 1
    assert set(split.folds.tolist()) == set(range(5))


def test_single_label_data_uses_stratified_kfold():
    y = np.eye(30, dtype=np.uint8)[np.repeat(np.arange(30), 10)]  # 30 classes x 10 fields
    split = split_folds(y, 5, 0, "iterstrat")
    assert split.method == "stratified" and "single-label" in split.note
    counts = balance_report(y, split.folds, 5).counts
    assert np.all(counts == 2)  # exact: every class 2 fields in every fold
    assert split_folds(y, 5, 0, "random").method == "random"


def test_single_label_with_no_class_reaching_k_keeps_the_requested_splitter():
    y = np.eye(6, dtype=np.uint8)  # 6 classes, one field each
    split = split_folds(y, 3, 0, "iterstrat")
    assert split.method == "iterstrat" and "cannot apply" in split.note
    assert set(split.folds.tolist()) == {0, 1, 2}


def test_fill_empty_folds_moves_the_unit_the_donor_has_in_excess():
    y = np.array([[1, 0], [1, 0], [0, 1], [1, 0]], np.uint8)
    folds, filled = fill_empty_folds(np.array([0, 0, 0, 1]), y, 3)
    assert filled == [2]
    assert folds.tolist()[2] == 0  # the only class-1 unit is not the donor's surplus
    assert sorted(np.bincount(folds, minlength=3).tolist()) == [1, 1, 2]


def test_small_tables_never_leave_a_fold_empty():
    # scikit-multilearn alone leaves folds empty in ~20% of these (few fields per fold).
    rng = np.random.default_rng(1)
    for trial in range(60):
        n = int(rng.integers(2, 10))
        k = int(rng.integers(2, n + 1))
        y = (rng.random((n, 4)) < 0.4).astype(np.uint8)
        y[y.sum(axis=1) == 0, 0] = 1
        for method in METHODS:
            assert set(assign_folds(y, k, trial, method).tolist()) == set(range(k)), (trial, method)


# --------------------------------------------------------------------------- balance report


def test_balance_report_counts_deviation_and_rare_classes():
    # class 0: 6 fields, class 1: 2 fields (rare for k=3), class 2: absent
    y = np.array([[1, 0, 0], [1, 1, 0], [1, 0, 0], [1, 0, 0], [1, 1, 0], [1, 0, 0]], np.uint8)
    folds = np.array([0, 0, 1, 1, 2, 0])
    report = balance_report(y, folds, 3, ["a", "b", "c"], cells_per_field=np.array([1, 2, 3, 4, 5, 6]))
    assert report.counts.tolist() == [[3, 2, 1], [1, 0, 1], [0, 0, 0]]
    assert report.fold_fields.tolist() == [3, 2, 1]
    assert report.fold_cells.tolist() == [9, 7, 5]
    assert report.rel_dev[0] == pytest.approx(0.5)  # |3 - 2| / 2 and |1 - 2| / 2
    assert np.isnan(report.rel_dev[2]) and report.absent == [2]
    assert report.mean_dev == pytest.approx(0.5) and report.worst_class == 0  # only class 0 has >= k fields
    assert len(report.rare) == 1
    rare = report.rare[0]
    assert (rare.name, rare.fields, rare.folds_with, rare.folds_without) == ("b", 2, [0, 2], [1])
    assert report.n_combinations == 2 and report.n_combinations_ge_k == 1  # "0" (4 fields); "0|1" has 2
    assert report.n_combinations_ge_k_everywhere == 0 and report.combination_field_coverage == 0.0
    assert report.missing_combinations == [("0", 4, [2])]
    table = balance_table(report)
    assert table.loc[1, "note"] == "fewer fields than folds; none in fold(s) 1"
    assert table.loc[2, "note"] == "absent"
    assert table[["fold_0", "fold_1", "fold_2"]].to_numpy().tolist() == report.counts.tolist()


def test_label_combination_coverage():
    y = np.array([[1, 1]] * 3 + [[1, 0]] * 3, np.uint8)
    report = balance_report(y, np.array([0, 0, 1, 0, 1, 2]), 3)
    assert report.missing_combinations == [("0|1", 3, [2])]  # "0" is in folds 0, 1, 2
    assert (report.n_combinations_ge_k, report.n_combinations_ge_k_everywhere) == (2, 1)
    assert report.combination_field_coverage == pytest.approx(0.5)


def test_deviation_floor_is_the_rounding_limit():
    # 34 fields in 5 folds: best is 7,7,7,7,6 -> |6 - 6.8| / 6.8; 10 fields: 2 each -> 0
    assert deviation_floor(np.array([34, 10, 2]), 5) == pytest.approx([0.8 / 6.8, 0.0, 1.5])


def test_label_combinations_round_trip_wide_rows():
    rng = np.random.default_rng(0)
    y = (rng.random((50, 1108)) < 0.002).astype(np.uint8)
    y[10] = y[3]
    combos, inverse = label_combinations(y)
    assert np.array_equal(combos[inverse], y)
    assert inverse[10] == inverse[3]
    assert len(combos) == len(np.unique(y, axis=0))


def test_heatmap_writes_png_without_touching_the_backend(tmp_path):
    backend = matplotlib.get_backend()
    small = fold_balance_heatmap(np.array([[3, 2, 1], [1, 0, 1], [0, 0, 0]]), ["a", "b", "c"], tmp_path / "s.png", "t")
    wide = fold_balance_heatmap(np.ones((1108, 5), int), [f"s{i}" for i in range(1108)], tmp_path / "w.png")
    assert small.read_bytes()[:8] == PNG_MAGIC and wide.read_bytes()[:8] == PNG_MAGIC
    assert matplotlib.get_backend() == backend
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.png", "w.png"]  # no temporary files left


# --------------------------------------------------------------------------- files and command line


def test_defaults_match_the_documented_command():
    cfg = parse_config(FoldsConfig, [])
    assert (cfg.cells, cfg.out, cfg.folds, cfg.seed, cfg.method, cfg.task) == (
        "output/synth/cells.csv", "output/synth/folds.csv", 5, 42, "iterstrat", "hpa-sc")
    assert cfg.labels is None and cfg.group_col is None


def test_image_level_tasks_split_their_labels_csv_by_default():
    cfg = parse_config(FoldsConfig, ["--task", "rxrx1"])
    assert (cfg.labels, cfg.out) == ("input/rxrx1/train.csv", "output/rxrx1/folds.csv")


def test_cells_get_their_fields_fold_and_keep_their_columns(tmp_path, capsys):
    cells = write_cells(tmp_path / "cells.csv", long_tailed_labels(40))
    code, out, err = run_main(["--cells", str(tmp_path / "cells.csv"), "--out", str(tmp_path / "f" / "folds.csv"), "--folds", "4"], capsys)
    assert code == 0, err
    folds = pd.read_csv(tmp_path / "f" / "folds.csv", dtype=str, keep_default_na=False)
    assert list(folds.columns) == list(cells.columns) + ["fold"]
    pd.testing.assert_frame_equal(folds[cells.columns], cells)  # untouched, same row order
    assert folds.groupby("ID")["fold"].nunique().max() == 1  # no field in two folds
    assert set(folds["fold"]) == {"0", "1", "2", "3"}
    assert "4 folds over 40 fields" in out and "folds_balance.png" in out
    for name in ("folds_balance.txt", "folds_balance.csv", "folds_balance.png", "folds_config.json"):
        assert (tmp_path / "f" / name).stat().st_size > 0
    assert (tmp_path / "f" / "folds_balance.png").read_bytes()[:8] == PNG_MAGIC
    config = json.loads((tmp_path / "f" / "folds_config.json").read_text())
    assert config["folds"] == 4 and config["method"] == "iterstrat" and config["task"] == "hpa-sc"
    table = pd.read_csv(tmp_path / "f" / "folds_balance.csv")
    assert len(table) == 19 and {"fold_0", "fold_3", "max_rel_dev", "note"} <= set(table.columns)
    assert not [p for p in (tmp_path / "f").iterdir() if p.name.startswith(".")]  # atomic writes left no temp files


def test_rerun_with_other_settings_or_input_stops_unless_asked(tmp_path, capsys):
    """Models are trained on a folds table: a rerun must not move fields between folds silently."""
    cells = tmp_path / "cells.csv"
    write_cells(cells, long_tailed_labels(40))
    argv = ["--cells", str(cells), "--out", str(tmp_path / "f" / "folds.csv"), "--folds", "4"]
    assert run_main(argv, capsys)[0] == 0
    first = (tmp_path / "f" / "folds.csv").read_bytes()
    assert run_main(argv, capsys)[0] == 0  # same settings, same input: the same folds again
    assert (tmp_path / "f" / "folds.csv").read_bytes() == first

    code, out, err = run_main(argv + ["--seed", "7"], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "seed: 42 -> 7" in err and "--overwrite" in err
    write_cells(cells, long_tailed_labels(40, seed=3))  # resegmented: other cells, same options
    code, _, err = run_main(argv, capsys)
    assert code == 2 and "input_sha256" in err
    assert (tmp_path / "f" / "folds.csv").read_bytes() == first  # nothing was touched

    code, _, err = run_main(argv + ["--overwrite"], capsys)
    assert code == 0, err
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("f.replaced-")]
    assert len(aside) == 1 and (aside[0] / "folds.csv").read_bytes() == first
    assert {p.name for p in aside[0].iterdir()} >= {"folds.csv", "folds_balance.png", "folds_config.json"}


def test_row_order_does_not_change_a_fields_fold(tmp_path):
    cells = write_cells(tmp_path / "cells.csv", long_tailed_labels(50))
    cells.sample(frac=1.0, random_state=0).to_csv(tmp_path / "shuffled.csv", index=False)
    per_id = []
    for name in ("cells", "shuffled"):
        make_folds(FoldsConfig(cells=str(tmp_path / f"{name}.csv"), out=str(tmp_path / f"{name}_folds.csv")))
        df = pd.read_csv(tmp_path / f"{name}_folds.csv", dtype=str)
        per_id.append(df.groupby("ID")["fold"].first())
    pd.testing.assert_series_equal(per_id[0], per_id[1])


def test_cells_and_labels_csv_of_the_same_fields_get_the_same_folds(tmp_path):
    y = long_tailed_labels(40)
    cells = write_cells(tmp_path / "cells.csv", y)
    fields = cells.drop_duplicates("ID")[["ID", "Label"]].iloc[::-1]  # another row order too
    fields.to_csv(tmp_path / "train.csv", index=False)
    make_folds(FoldsConfig(cells=str(tmp_path / "cells.csv"), out=str(tmp_path / "a.csv")))
    make_folds(FoldsConfig(labels=str(tmp_path / "train.csv"), out=str(tmp_path / "b.csv")))
    from_cells = pd.read_csv(tmp_path / "a.csv").groupby("ID")["fold"].first()
    from_labels = pd.read_csv(tmp_path / "b.csv").set_index("ID")["fold"].sort_index()
    pd.testing.assert_series_equal(from_cells, from_labels)


def test_existing_fold_column_is_replaced(tmp_path):
    write_cells(tmp_path / "cells.csv", long_tailed_labels(20))
    make_folds(FoldsConfig(cells=str(tmp_path / "cells.csv"), out=str(tmp_path / "a.csv"), folds=3))
    make_folds(FoldsConfig(cells=str(tmp_path / "a.csv"), out=str(tmp_path / "b.csv"), folds=3, seed=1))
    b = pd.read_csv(tmp_path / "b.csv")
    assert list(b.columns).count("fold") == 1


def test_labels_csv_gives_one_row_per_id(tmp_path, capsys):
    y = long_tailed_labels(30)
    pd.DataFrame({"ID": [f"img{i}" for i in range(30)], "Label": [format_label(np.flatnonzero(r)) for r in y]}).to_csv(
        tmp_path / "train.csv", index=False)
    code, out, err = run_main(["--labels", str(tmp_path / "train.csv"), "--out", str(tmp_path / "folds.csv"), "--method", "iterstrat"], capsys)
    assert code == 0, err
    df = pd.read_csv(tmp_path / "folds.csv")
    assert list(df.columns) == ["ID", "Label", "fold"] and len(df) == 30 and df["ID"].is_unique
    assert "30 fields" in out and "cells" not in out.splitlines()[0]


def test_group_column_on_the_command_line(tmp_path, capsys):
    y = long_tailed_labels(60)
    groups = [f"HPA{i // 3:04d}" for i in range(60)]
    write_cells(tmp_path / "cells.csv", y, groups=groups)
    code, _, err = run_main(["--cells", str(tmp_path / "cells.csv"), "--out", str(tmp_path / "folds.csv"), "--group-col", "antibody"], capsys)
    assert code == 0, err
    df = pd.read_csv(tmp_path / "folds.csv")
    assert df.groupby("antibody")["fold"].nunique().max() == 1
    assert "Split 20 groups" in (tmp_path / "folds_balance.txt").read_text()


@pytest.mark.parametrize("method", ["skmultilearn", "iterstrat"])
def test_rare_class_is_named_in_the_report(tmp_path, capsys, method):
    y = long_tailed_labels(50, n_classes=12)
    y[:, 11] = 0
    y[[3, 17], 11] = 1  # Mitotic spindle on 2 fields only, 5 folds
    write_cells(tmp_path / "cells.csv", y)
    code, out, err = run_main(["--cells", str(tmp_path / "cells.csv"), "--out", str(tmp_path / "folds.csv"), "--method", method], capsys)
    assert code == 0, err
    assert "Mitotic spindle (2)" in out
    text = (tmp_path / "folds_balance.txt").read_text()
    line = next(l for l in text.splitlines() if "11 Mitotic spindle:" in l)
    assert "2 field(s) in" in line and "none in fold(s)" in line
    if method == "iterstrat":  # rarest labels first: the two fields go to different folds
        assert "2 field(s) in 2 fold(s)" in line
    table = pd.read_csv(tmp_path / "folds_balance.csv", keep_default_na=False)
    assert table.loc[11, "note"].startswith("fewer fields than folds; none in fold(s)")
    assert table.loc[18, "note"] == "absent"


def test_rxrx1_single_label_choice_is_stated(tmp_path, capsys):
    ids = [f"HEPG2-01_1_B{i:03d}" for i in range(60)]
    labels = [str(i % 12 * 90) for i in range(60)]  # 12 siRNAs out of 1,139, 5 wells each
    # a table already in the project's canonical label form (what segmentation writes)
    pd.DataFrame({"ID": ids, "cell_id": 1, "Label": labels}).to_csv(tmp_path / "rx.csv", index=False)
    code, out, err = run_main(["--task", "rxrx1", "--cells", str(tmp_path / "rx.csv"), "--out", str(tmp_path / "folds.csv")], capsys)
    assert code == 0, err
    assert "splitter stratified" in out
    assert "StratifiedKFold" in (tmp_path / "folds_balance.txt").read_text()


@pytest.mark.parametrize(
    "setup, argv, expected",
    [
        ("cells", ["--cells", "{d}/nope.csv"], "file not found"),
        ("empty", ["--cells", "{d}/cells.csv"], "CSV is empty"),
        ("header", ["--cells", "{d}/cells.csv"], "header but no rows"),
        ("cells", ["--cells", "{d}/cells.csv", "--folds", "1"], "need at least 2 folds"),
        ("cells", ["--cells", "{d}/cells.csv", "--folds", "7"], "more folds than fields (6)"),
        ("cells", ["--cells", "{d}/cells.csv", "--group-col", "antibody", "--folds", "4"], "more folds than groups (3)"),
        ("cells", ["--cells", "{d}/cells.csv", "--seed", "-1"], "seed -1 out of range"),
        ("cells", ["--cells", "{d}/cells.csv", "--group-col", "plate"], "missing column(s) plate"),
        ("nolabel", ["--cells", "{d}/cells.csv"], "missing column(s) Label"),
        ("unknown", ["--cells", "{d}/cells.csv"], "unknown class id 19"),
        ("unknown", ["--cells", "{d}/cells.csv", "--task", "hpa-2018"], None),  # 19 is valid in HPA-2018
        ("malformed", ["--cells", "{d}/cells.csv"], "malformed label '0;16'"),
        ("mixed", ["--cells", "{d}/cells.csv"], "a field's cells must share one Label"),
        ("mixedgroup", ["--cells", "{d}/cells.csv", "--group-col", "antibody"], "a field's cells must share one antibody"),
        ("emptyid", ["--cells", "{d}/cells.csv"], "line 3: empty ID"),
        ("labels_noid", ["--labels", "{d}/train.csv"], "missing column(s) ID"),
        ("labels_dup", ["--labels", "{d}/train.csv"], "duplicate ID 'a'"),
        ("labels_bad", ["--labels", "{d}/train.csv"], "line 3: unknown class id 42"),
        ("labels_header", ["--labels", "{d}/train.csv"], "header but no rows"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, setup, argv, expected):
    cells = pd.DataFrame({
        "ID": ["a", "a", "b", "c", "d", "e", "f"],
        "cell_id": ["1", "2", "1", "1", "1", "1", "1"],
        "Label": ["0|16", "16|0", "13", "0", "2", "18", "16"],
        "antibody": ["x", "x", "x", "y", "y", "z", "z"],
    })
    labels = pd.DataFrame({"ID": ["a", "b", "c"], "Label": ["0", "16", "1"]})
    path = tmp_path / "cells.csv"
    if setup == "empty":
        path.write_text("")
    elif setup == "header":
        path.write_text("ID,cell_id,Label\n")
    elif setup == "nolabel":
        cells.drop(columns="Label").to_csv(path, index=False)
    elif setup == "unknown":
        cells.assign(Label=cells.Label.replace({"13": "13|19"})).to_csv(path, index=False)
    elif setup == "malformed":
        cells.assign(Label=cells.Label.replace({"0": "0;16"})).to_csv(path, index=False)
    elif setup == "mixed":
        cells.assign(Label=["0|16", "0", "13", "0", "2", "18", "16"]).to_csv(path, index=False)
    elif setup == "mixedgroup":
        cells.assign(antibody=["x", "w", "x", "y", "y", "z", "z"]).to_csv(path, index=False)
    elif setup == "emptyid":
        cells.assign(ID=["a", "", "b", "c", "d", "e", "f"]).to_csv(path, index=False)
    elif setup == "labels_noid":
        labels.rename(columns={"ID": "Id"}).to_csv(tmp_path / "train.csv", index=False)
    elif setup == "labels_dup":
        labels.assign(ID=["a", "a", "b"]).to_csv(tmp_path / "train.csv", index=False)
    elif setup == "labels_bad":
        labels.assign(Label=["0", "42", "1"]).to_csv(tmp_path / "train.csv", index=False)
    elif setup == "labels_header":
        (tmp_path / "train.csv").write_text("ID,Label\n")
    else:
        cells.to_csv(path, index=False)
    argv = [a.format(d=tmp_path) for a in argv] + ["--out", str(tmp_path / "out" / "folds.csv")]
    code, out, err = run_main(argv, capsys)
    if expected is None:
        assert code == 0, err
        return
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert expected in err
    assert not (tmp_path / "out" / "folds.csv").exists()


def rxrx1_train_csv(path, experiments: dict[str, int], sirnas: int = 8) -> None:
    """An RxRx1 train.csv: every experiment holds every siRNA once (4 plates of sirnas/4)."""
    rows = []
    for ct, n in experiments.items():
        for e in range(1, n + 1):
            for s in range(sirnas):
                rows.append({"id_code": f"{ct}-{e:02d}_{s % 4 + 1}_B{s + 2:02d}", "experiment": f"{ct}-{e:02d}",
                             "plate": s % 4 + 1, "well": f"B{s + 2:02d}", "sirna": s})
    pd.DataFrame(rows).to_csv(path, index=False)


def test_rxrx1_folds_hold_whole_experiments_of_every_cell_type(tmp_path, capsys):
    rxrx1_train_csv(tmp_path / "train.csv", {"HEPG2": 2, "HUVEC": 2, "RPE": 2, "U2OS": 2})
    code, out, err = run_main(["--task", "rxrx1", "--labels", str(tmp_path / "train.csv"), "--out",
                               str(tmp_path / "folds.csv"), "--folds", "2"], capsys)
    assert code == 0, err
    df = pd.read_csv(tmp_path / "folds.csv")
    assert df.groupby("experiment")["fold"].nunique().max() == 1  # the task's default: experiments stay whole
    per_fold = df.drop_duplicates("experiment").groupby("fold")["cell_type"].apply(sorted)
    assert per_fold.tolist() == [["HEPG2", "HUVEC", "RPE", "U2OS"]] * 2  # and every cell type in every fold
    config = json.loads((tmp_path / "folds_config.json").read_text())
    assert (config["group_col"], config["stratify_col"]) == ("experiment", "cell_type")
    # without the strata the split only sees the siRNAs, which every experiment holds alike
    code, _, _ = run_main(["--task", "rxrx1", "--labels", str(tmp_path / "train.csv"), "--out",
                           str(tmp_path / "plain.csv"), "--folds", "4", "--stratify-col", ""], capsys)
    assert code == 0 and json.loads((tmp_path / "plain_config.json").read_text())["stratify_col"] is None


def test_groups_from_a_second_csv_keep_an_hpa2018_protein_in_one_fold(tmp_path, capsys):
    """HPA-2018's train.csv has only Id,Target; its images' proteins come from another table."""
    y = long_tailed_labels(60)[:, :28]
    ids = [f"id{i:03d}" for i in range(60)]
    pd.DataFrame({"Id": ids, "Target": [" ".join(map(str, np.flatnonzero(r))) or "0" for r in y]}).to_csv(
        tmp_path / "train.csv", index=False)
    pd.DataFrame({"Id": ids[::-1], "protein": [f"p{(59 - i) // 3}" for i in range(60)]}).to_csv(
        tmp_path / "images.csv", index=False)
    argv = ["--task", "hpa-2018", "--labels", str(tmp_path / "train.csv"), "--out", str(tmp_path / "folds.csv"),
            "--groups", str(tmp_path / "images.csv"), "--group-col", "protein"]
    code, _, err = run_main(argv, capsys)
    assert code == 0, err
    df = pd.read_csv(tmp_path / "folds.csv", dtype=str)
    assert list(df.columns) == ["ID", "Label", "protein", "fold"]
    assert df.set_index("ID").loc["id004", "protein"] == "p1"  # matched by Id, not by row order
    assert df.groupby("protein")["fold"].nunique().max() == 1
    assert "Split 20 groups" in (tmp_path / "folds_balance.txt").read_text()
    pd.DataFrame({"Id": ids[:-1], "protein": "p"}).to_csv(tmp_path / "short.csv", index=False)
    code, _, err = run_main(argv[:-4] + ["--groups", str(tmp_path / "short.csv"), "--group-col", "protein"], capsys)
    assert code == 2 and "no protein for 1 of 60 samples (first 'id059')" in err
    code, _, err = run_main(argv[:-2], capsys)  # --groups without --group-col
    assert code == 2 and "--groups needs" in err

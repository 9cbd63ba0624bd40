"""--teacher certain: a teacher trained on the fields whose label is certain (at most one class besides Negative)
softens the targets of the cells of fields naming several classes, which it never saw."""

import dataclasses
import json
import os

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_cell_config

from cellloc.data import label_matrix, write_synthetic_cells
from cellloc.errors import InputError
from cellloc.fieldio import multihot
from cellloc.runs.train import TrainConfig, cell_samples, format_summary, train_fold
from cellloc.teacher import (TEACHER_PREDICTIONS, at_least_one_posterior, certain_cells, classes_named, field_levels,
                             known_classes, level_to_share, named_besides_negative, shown_share, taught_targets, teacher_epochs,
                             why_no_teacher)

NEG = 18


def _labels(*rows: tuple[int, ...]) -> np.ndarray:
    """Field labels, one row per cell, each row the classes its field names."""
    return multihot([list(r) for r in rows], 19).astype(np.float32)


def test_certain_cells_are_of_fields_naming_at_most_one_class_besides_negative():
    labels = _labels((NEG,), (3,), (3, NEG), (3, 7), (3, 7, NEG), (0, 1, 2))
    assert classes_named(labels, NEG).tolist() == [0, 1, 1, 2, 2, 3]
    assert certain_cells(labels, NEG).tolist() == [True, True, True, False, False, False]
    assert certain_cells(_labels((NEG,), (3, NEG)), None).tolist() == [True, False]  # a task without Negative


def test_taught_cells_keep_their_fields_classes_scaled_by_the_prediction_and_nothing_else():
    labels = _labels((3, 7), (3,))
    preds = np.full((2, 19), 0.9)
    preds[0, 3], preds[0, 7] = 0.2, 1.0
    out = taught_targets(labels, preds, np.array([True, False]), weight=0.5)
    np.testing.assert_allclose(out[0, [3, 7]], [0.6, 1.0])
    assert out[0].sum() == pytest.approx(1.6)  # never a class the field lacks, whatever the teacher says
    assert np.array_equal(out[1], labels[1])  # an untaught cell keeps its field's label


def test_the_posterior_tells_a_cell_the_classes_its_teacher_sees_none_of_the_others_in():
    labels = _labels((3, 7), (3, 7), (3, 1, NEG), (3,))
    preds = np.full((4, 19), 0.05)
    preds[0, 3], preds[0, 7] = 0.9, 0.1  # sees 3, not 7
    preds[1, 3], preds[1, 7] = 0.1, 0.1  # sees neither: shows one of them all the same, each alike
    preds[2, 3], preds[2, 1] = 0.0, 0.3  # 1 unjudged: told 1 where 3 is absent, whatever it predicted of 1
    known = np.zeros(19, bool)
    known[[3, 7]] = True
    out = at_least_one_posterior(labels, preds, known, prior=0.6, negative=NEG)
    np.testing.assert_allclose(out[0, [3, 7]], [0.9 / (1 - 0.1 * 0.9), 0.1 / (1 - 0.1 * 0.9)])
    np.testing.assert_allclose(out[1, [3, 7]], [0.1 / 0.19, 0.1 / 0.19])
    np.testing.assert_allclose(out[2, [3, 1]], [0.0, 1.0])
    assert out[3, 3] == pytest.approx(1.0)  # a one-class field: a cell that shows one of its classes shows that one
    changed = np.zeros((4, 19), bool)
    changed[:, [1, 3, 7]] = _labels((3, 7), (3, 7), (3, 1), (3,))[:, [1, 3, 7]] > 0
    assert np.array_equal(out[~changed], preds[~changed])  # Negative and the classes the field lacks are kept
    two_unjudged = at_least_one_posterior(_labels((1, 6)), np.zeros((1, 19)), known, prior=0.6, negative=NEG)
    np.testing.assert_allclose(two_unjudged[0, [1, 6]], 0.6 / (1 - 0.4**2))  # given one shows: 0.6 / 0.84 each


def test_levelling_sets_each_fields_mean_of_its_classes_to_the_share_and_keeps_their_ranking():
    rng = np.random.default_rng(0)
    chances = rng.uniform(0.01, 0.4, (12, 19))
    chances[0, 0], chances[1, 0] = 0.0, 1.0  # a teacher sure either way still moves with its field
    fields = np.repeat(["a", "b", "c"], 4)
    named = np.zeros((12, 19), bool)
    named[:4, [0, 6]] = True  # field a names two classes, b one, c none
    named[4:8, 2] = True
    out = level_to_share(chances, fields, named, share=0.7)
    for rows, k in ((slice(0, 4), 0), (slice(0, 4), 6), (slice(4, 8), 2)):
        assert out[rows, k].mean() == pytest.approx(0.7, abs=1e-6)
        assert np.array_equal(np.argsort(out[rows, k]), np.argsort(chances[rows, k]))  # the ranking within the field
    np.testing.assert_array_equal(out[~named], chances[~named])  # nothing else moves
    named[3, 0] = False  # a row its field's class is not named for keeps its chance, and the others level alone
    partly = level_to_share(chances, fields, named, share=0.7)
    assert partly[3, 0] == chances[3, 0] and partly[:3, 0].mean() == pytest.approx(0.7, abs=1e-6)
    assert np.all((out >= 0) & (out <= 1))


def test_levelling_takes_each_fields_own_level_where_it_is_given_per_row():
    rng = np.random.default_rng(1)
    chances = rng.uniform(0.05, 0.6, (8, 19))
    fields = np.repeat(["a", "b"], 4)
    named = np.zeros((8, 19), bool)
    named[:, [3, 7]] = True
    out = level_to_share(chances, fields, named, share=np.repeat([0.6, 0.9], 4))
    for rows, level in ((slice(0, 4), 0.6), (slice(4, 8), 0.9)):
        for k in (3, 7):
            assert out[rows, k].mean() == pytest.approx(level, abs=1e-6)
            assert np.array_equal(np.argsort(out[rows, k]), np.argsort(chances[rows, k]))


def test_a_fields_own_level_follows_how_many_of_its_cells_show_protein_and_how_many_classes_it_names():
    def level(classes: tuple[int, ...], shows: list[float]) -> float:
        labels = _labels(*[classes] * len(shows))
        return float(field_levels(labels, np.array(shows), np.array(["f"] * len(shows)), NEG)[0])

    # a cell showing one class of two with chance q shows protein with 1 - (1 - q)^2 and a given class given that
    # with q / (1 - (1 - q)^2): 60 of 100 cells showing protein say q = 0.37, so 0.37 / 0.6 = 0.61
    assert level((2, 5, NEG), [1.0] * 60 + [0.0] * 40) == pytest.approx(0.368 / 0.6, abs=0.01)
    assert level((2, 5, NEG), [1.0] * 95 + [0.0] * 5) == pytest.approx(0.776 / 0.95, abs=0.01)
    # three classes: fewer cells need each of them for as many to show protein
    assert level((2, 5, 9, NEG), [1.0] * 60 + [0.0] * 40) < level((2, 5, NEG), [1.0] * 60 + [0.0] * 40)
    # no Negative named: every cell shows protein (their shows are not read); the more cells, the surer of a high q
    few, many = level((2, 5), [0.0] * 4), level((2, 5), [0.0] * 40)
    assert 0.75 < few < many < 1
    labels = np.concatenate([_labels(*[(2, 5)] * 3), _labels(*[(4,)] * 2), _labels(*[(4, NEG)] * 2)])
    out = field_levels(labels, None, np.array(list("aaabbcc")), NEG)
    assert np.isnan(out[3:]).all() and np.ptp(out[:3]) == 0  # only fields naming several, one level each


def test_known_classes_are_the_classes_of_enough_certain_cells():
    labels = _labels(*[(3,)] * 10, *[(7, NEG)] * 9, *[(1, 3)] * 50)
    certain = certain_cells(labels, NEG)
    assert np.flatnonzero(known_classes(labels, certain)).tolist() == [3]  # 7: 9 certain cells; 1: none
    assert np.flatnonzero(known_classes(labels, certain, min_cells=9)).tolist() == [3, 7, NEG]


def test_shown_share_counts_the_single_class_fields_cells_that_show_it():
    labels = _labels((3,), (3,), (7, NEG), (7, NEG), (NEG,), (3, 7))
    shows = np.array([0.1, 0.2, 0.9, 0.3, 0.0, 0.5])  # a field lacking Negative: every cell shows, whatever q says
    assert shown_share(labels, shows, NEG) == pytest.approx((1 + 1 + 0.9 + 0.3) / 4)
    assert np.isnan(shown_share(_labels((NEG,), (3, 7)), np.ones(2), NEG))


def test_the_teacher_trains_half_the_epochs_unless_told():
    assert [teacher_epochs(e) for e in (1, 2, 9, 10)] == [1, 1, 5, 5]
    assert teacher_epochs(10, asked=7) == 7


def test_why_no_teacher_names_what_is_missing():
    assert "nothing to teach" in why_no_teacher(_labels(*[(3,)] * 100), NEG)
    assert "only 10 training cells" in why_no_teacher(_labels(*[(3,)] * 10, *[(3, 7)] * 90), NEG)
    assert why_no_teacher(_labels(*[(3,)] * 64, (3, 7)), NEG) == ""


@pytest.fixture(scope="module")
def cells_csv(tmp_path_factory):
    return write_synthetic_cells(tmp_path_factory.mktemp("cells"), n_fields=40, cells_per_field=6, n_folds=3, seed=2,
                                 negative_share=0.15)


def _cfg(csv, out, **kw) -> TrainConfig:
    return tiny_cell_config(csv, out, **{"teacher": "certain", "negative_split": "none", "bn_recalibrate": 16, **kw})


def test_train_fields_certain_trains_on_the_certain_fields_only(cells_csv, tmp_path):
    sets = cell_samples(_cfg(cells_csv, tmp_path, teacher="none", train_fields="certain"))
    named = classes_named(label_matrix(sets.train, "weak", 19), NEG)
    everything = cell_samples(_cfg(cells_csv, tmp_path, teacher="none"))
    assert named.max() <= 1 and 0 < len(sets.train) < len(everything.train)
    assert len(sets.valid) == len(everything.valid)  # validation keeps every field of the fold


def test_a_run_trains_its_teacher_first_and_trains_on_its_predictions(cells_csv, tmp_path):
    run = train_fold(_cfg(cells_csv, tmp_path, run_name="student"))
    teacher_dir = tmp_path / "student-teacher" / "fold0"
    saved = json.loads((teacher_dir / "config.json").read_text())
    assert (saved["train_fields"], saved["teacher"]) == ("certain", "none")  # its config re-runs it
    record = json.loads((run.run_dir / "teacher.json").read_text())
    assert record["taught"] and record["run_dir"] == str(teacher_dir) and record["weight"] == 1.0

    sets = cell_samples(_cfg(cells_csv, tmp_path, run_name="student", resume=True))
    weak = label_matrix(sets.train, "weak", 19)
    taught = ~certain_cells(weak, NEG)
    preds = pd.read_csv(teacher_dir / TEACHER_PREDICTIONS)
    assert len(preds) == taught.sum() == record["taught_cells"]  # exactly the cells of fields naming several
    assert set(preds["ID"]) == set(sets.train.loc[taught, "ID"])
    assert record["certain_cells"] == (~taught).sum()
    p = sets.train[taught].astype({"cell_id": int}).merge(preds, on=["ID", "cell_id"])[[f"p{k}" for k in range(19)]].to_numpy()
    # by default the chance of each class given that the cell shows one of its field's, each field's level of each
    # class set to the shown share, the whole target taken from it (the weight levelled was measured with)
    assert record["targets"] == "levelled" and record["shown_share_from"] == "fallback"  # no negative split here
    known = known_classes(weak, ~taught)
    posterior = at_least_one_posterior(weak[taught], p, known, record["shown_share"], NEG)
    fields_classes = named_besides_negative(weak[taught], NEG)
    level = level_to_share(posterior, sets.train.loc[taught, "ID"].to_numpy(), fields_classes, record["shown_share"])
    np.testing.assert_allclose(sets.y_train[taught], weak[taught] * level, atol=1e-6)
    assert np.array_equal(sets.y_train[~taught], weak[~taught])
    assert "levelled" in format_summary(run)
    # the other targets take half the target from the teacher, the weight they were measured with
    as_posterior = cell_samples(_cfg(cells_csv, tmp_path, run_name="student", resume=True, teacher_targets="posterior"))
    np.testing.assert_allclose(as_posterior.y_train[taught], weak[taught] * (0.5 + 0.5 * posterior), atol=1e-6)
    assert as_posterior.teacher["targets"] == "posterior" and as_posterior.teacher["weight"] == 0.5
    as_predicted = cell_samples(_cfg(cells_csv, tmp_path, run_name="student", resume=True, teacher_targets="prediction"))
    np.testing.assert_allclose(as_predicted.y_train[taught], weak[taught] * (0.5 + 0.5 * p), atol=1e-6)
    own = cell_samples(_cfg(cells_csv, tmp_path, run_name="student", resume=True, teacher_targets="field-levelled"))
    ids = sets.train.loc[taught, "ID"].to_numpy()
    levels = field_levels(weak, None, sets.train["ID"].to_numpy(), NEG)[taught]
    np.testing.assert_allclose(own.y_train[taught], weak[taught] * level_to_share(posterior, ids, fields_classes, levels),
                               atol=1e-6)
    assert own.teacher["targets"] == "field-levelled" and own.teacher["weight"] == 1.0
    assert own.teacher["field_levels"][0] <= own.teacher["levelled_target"] <= own.teacher["field_levels"][1]
    halfway = cell_samples(_cfg(cells_csv, tmp_path, run_name="student", resume=True, teacher_weight=0.5))
    np.testing.assert_allclose(halfway.y_train[taught], weak[taught] * (0.5 + 0.5 * level), atol=1e-6)
    assert f"taught {record['taught_cells']} cells of {record['taught_fields']} fields" in format_summary(run)

    (teacher_dir / TEACHER_PREDICTIONS).write_text("ID,cell_id\nx,1\n")  # damaged by hand: one line naming it
    with pytest.raises(InputError, match=f"{TEACHER_PREDICTIONS}: .*missing") as exc:
        cell_samples(_cfg(cells_csv, tmp_path, run_name="student", resume=True))
    assert "\n" not in str(exc.value)


def test_resume_reuses_a_finished_teacher_and_overwrite_trains_it_again(cells_csv, tmp_path):
    cfg = _cfg(cells_csv, tmp_path, run_name="r")
    train_fold(cfg)
    teacher_dir = tmp_path / "r-teacher" / "fold0"
    made = (teacher_dir / "best.pt").stat().st_mtime_ns, (teacher_dir / TEACHER_PREDICTIONS).stat().st_mtime_ns
    # stopped after its teacher finished, before the run itself began: --resume goes on from there
    for f in (tmp_path / "r" / "fold0").iterdir():
        f.unlink()
    with pytest.raises(InputError, match="holds a training run"):
        train_fold(cfg)  # a fresh run never trains over a teacher
    train_fold(_cfg(cells_csv, tmp_path, run_name="r", resume=True))
    assert ((teacher_dir / "best.pt").stat().st_mtime_ns, (teacher_dir / TEACHER_PREDICTIONS).stat().st_mtime_ns) == made
    assert (tmp_path / "r" / "fold0" / "best.pt").exists()
    with pytest.raises(InputError, match="teacher_weight is 0.8 but the saved run used 1.0"):
        train_fold(_cfg(cells_csv, tmp_path, run_name="r", resume=True, teacher_weight=0.8))
    train_fold(_cfg(cells_csv, tmp_path, run_name="r", overwrite=True))
    assert [p.name for p in (tmp_path / "r-teacher").glob("fold0.replaced-*")]  # the old teacher kept aside
    assert (teacher_dir / "best.pt").stat().st_mtime_ns != made[0]


def test_a_run_saved_before_teacher_targets_existed_resumes_only_with_what_it_used(cells_csv, tmp_path):
    from cellloc.config import config_dict
    from cellloc.runs.train import _check_resume_config

    saved = tmp_path / "config.json"
    for teacher in ("certain", "none"):
        old = config_dict(_cfg(cells_csv, tmp_path, teacher=teacher, teacher_weight=0.5))  # that time's default weight
        saved.write_text(json.dumps({k: v for k, v in old.items() if k != "teacher_targets"}))
        now = _cfg(cells_csv, tmp_path, teacher=teacher, resume=True)
        if teacher == "none":  # nothing to tell apart without a teacher: today's defaults resume it
            assert _check_resume_config(now, saved).teacher == "none"
            continue
        with pytest.raises(InputError, match="teacher_targets is 'levelled' but the saved run used 'prediction'"):
            _check_resume_config(now, saved)
        asked = _cfg(cells_csv, tmp_path, teacher=teacher, resume=True, teacher_targets="prediction")
        resumed = _check_resume_config(asked, saved)  # naming the targets brings the weight they were measured with
        assert (resumed.teacher_targets, resumed.teacher_weight) == ("prediction", 0.5)


def test_a_run_saved_with_the_earlier_default_targets_resumes_by_naming_them(cells_csv, tmp_path):
    from cellloc.config import config_dict
    from cellloc.runs.train import _check_resume_config

    saved = tmp_path / "config.json"
    saved.write_text(json.dumps(config_dict(_cfg(cells_csv, tmp_path, teacher_targets="posterior"))))
    assert json.loads(saved.read_text())["teacher_weight"] == 0.5  # saved as resolved: the config says what it used
    with pytest.raises(InputError, match="teacher_targets is 'levelled' but the saved run used 'posterior'"):
        _check_resume_config(_cfg(cells_csv, tmp_path, resume=True), saved)
    resumed = _check_resume_config(_cfg(cells_csv, tmp_path, resume=True, teacher_targets="posterior"), saved)
    assert (resumed.teacher_targets, resumed.teacher_weight) == ("posterior", 0.5)


def test_a_teacher_is_the_same_run_whatever_its_students_targets_weight_and_start(cells_csv, tmp_path):
    from cellloc.runs.teacher import teacher_config

    plain = teacher_config(_cfg(cells_csv, tmp_path))
    other = teacher_config(_cfg(cells_csv, tmp_path, teacher_targets="posterior", teacher_weight=0.3,
                                student_init="scratch"))
    assert plain == other and (plain.teacher, plain.teacher_targets, plain.teacher_weight) == ("none", "levelled", 1.0)


def test_a_student_starts_from_its_teachers_weights_unless_told_to_start_from_scratch(cells_csv, tmp_path, monkeypatch):
    import torch

    import cellloc.runs.train as train_run
    from cellloc.torchfile import load_checkpoint

    started = {}

    def recording(cfg, net, teacher=None):
        line = init_weights(cfg, net, teacher)
        started[cfg.run_name] = {k: v.detach().clone() for k, v in net.state_dict().items()}
        return line

    init_weights = train_run.init_weights
    monkeypatch.setattr(train_run, "init_weights", recording)
    run = train_fold(_cfg(cells_csv, tmp_path, run_name="w"))  # the default
    teacher_dir = tmp_path / "w-teacher" / "fold0"
    taught = load_checkpoint(teacher_dir / "best.pt")
    assert set(started) == {"w"} and started["w"].keys() == taught.keys()
    assert all(torch.equal(started["w"][k], taught[k]) for k in taught)  # every weight and statistic of the teacher
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert summary["init_from"].startswith(f"--student-init teacher {teacher_dir}: ")
    assert json.loads((run.run_dir / "config.json").read_text())["student_init"] == "teacher"

    scratch = train_fold(_cfg(cells_csv, tmp_path, run_name="s", student_init="scratch"))
    assert "s" not in started and json.loads((scratch.run_dir / "summary.json").read_text())["init_from"] is None
    # without a teacher there is nothing to start from: the run starts as --pretrained says
    alone = train_fold(_cfg(cells_csv, tmp_path, run_name="n", teacher="none"))
    assert "n" not in started and json.loads((alone.run_dir / "summary.json").read_text())["init_from"] is None


def test_a_run_saved_before_student_init_existed_started_from_scratch(cells_csv, tmp_path):
    from cellloc.config import config_dict
    from cellloc.runs.train import _check_resume_config

    saved = tmp_path / "config.json"
    for teacher in ("certain", "none"):
        old = config_dict(_cfg(cells_csv, tmp_path, teacher=teacher))
        saved.write_text(json.dumps({k: v for k, v in old.items() if k != "student_init"}))
        now = _cfg(cells_csv, tmp_path, teacher=teacher, resume=True)
        if teacher == "none":  # without a teacher the student's start is --pretrained's either way
            assert _check_resume_config(now, saved).teacher == "none"
            continue
        with pytest.raises(InputError, match="student_init is 'teacher' but the saved run used 'scratch'"):
            _check_resume_config(now, saved)
        asked = _cfg(cells_csv, tmp_path, teacher=teacher, resume=True, student_init="scratch")
        assert _check_resume_config(asked, saved).student_init == "scratch"


def test_resume_of_a_run_stopped_while_its_teacher_trained_continues_the_teacher(cells_csv, tmp_path):
    from cellloc.runs.teacher import teacher_config

    cfg = _cfg(cells_csv, tmp_path, run_name="k", teacher_epochs=2)
    train_fold(dataclasses.replace(teacher_config(cfg), epochs=1))  # stopped after one of its two epochs
    run = train_fold(_cfg(cells_csv, tmp_path, run_name="k", teacher_epochs=2, resume=True))
    history = pd.read_csv(tmp_path / "k-teacher" / "fold0" / "metrics.csv")
    assert history["epoch"].tolist() == [0, 1] and run.epochs_run == 1
    assert os.path.exists(tmp_path / "k-teacher" / "fold0" / TEACHER_PREDICTIONS)


def test_auto_trains_on_the_field_labels_where_no_teacher_can_be_trained_and_certain_stops(tmp_path):
    csv = write_synthetic_cells(tmp_path / "few", n_fields=8, cells_per_field=4, n_folds=2, seed=1)
    with pytest.raises(InputError, match="--teacher certain: only .* training cells of fields naming at most one"):
        cell_samples(_cfg(csv, tmp_path))
    sets = cell_samples(_cfg(csv, tmp_path, teacher="auto"))
    assert sets.teacher is not None and sets.teacher["taught"] is False
    assert np.array_equal(sets.y_train, label_matrix(sets.train, "weak", 19))
    assert not (tmp_path / "effb2-teacher").exists()


@pytest.mark.parametrize(("kw", "message"), [
    ({"soft_targets": "x.csv"}, "teacher and soft_targets both soften"),
    ({"label_source": "true"}, "teacher teaches the cells of fields naming several classes"),
    ({"teacher_weight": 1.5}, "teacher_weight must be in"),
    ({"teacher_weight": -0.5}, "teacher_weight must be in"),
    ({"teacher_epochs": 2, "warmup_epochs": 3, "epochs": 5}, "warmup_epochs must be below the teacher's epochs (2)"),
    ({"warmup_epochs": 3, "epochs": 5}, "warmup_epochs must be below the teacher's epochs (3)"),
    ({"teacher": "best"}, "teacher must be one of auto, certain, none"),
    ({"student_init": "imagenet"}, "student_init must be one of teacher, scratch"),
])
def test_bad_teacher_settings_are_one_line_errors(kw, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(**{"teacher": "certain", **kw})


@pytest.mark.parametrize(("task", "level", "expected"), [("hpa-sc", "cell", "auto"), ("rxrx1", "", "none"),
                                                         ("hpa-2018", "", "none")])
def test_the_default_teaches_where_it_applies(task, level, expected):
    assert TrainConfig(task=task, level=level).teacher == expected


def test_ctrl_c_names_the_last_pt_that_resume_continues_from(cells_csv, tmp_path, monkeypatch, capsys):
    """Stopped while the teacher trained, the epochs to resume are the teacher's; once the run trained, the run's."""
    import cellloc.runs.train as train_run
    from cellloc.runs.teacher import teacher_config
    from test_evaluate_cli import load_script

    argv = ["--folds-csv", str(cells_csv), "--out-dir", str(tmp_path), "--run-name", "c", "--fold", "0"]
    cfg = _cfg(cells_csv, tmp_path, run_name="c")
    teacher_last, run_last = teacher_config(cfg).run_dir / "last.pt", cfg.run_dir / "last.pt"

    def stopped_after(written):
        def train_fold(cfg, command=None):
            for i, path in enumerate(written):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"epochs")
                os.utime(path, ns=(10**18 + i, 10**18 + i))  # written in this order
            raise KeyboardInterrupt
        return train_fold

    for written, named in (([], None), ([teacher_last], teacher_last), ([teacher_last, run_last], run_last)):
        monkeypatch.setattr(train_run, "train_fold", stopped_after(written))
        with pytest.raises(SystemExit) as stop:
            load_script("train").main(argv)
        err = capsys.readouterr().err
        assert stop.value.code == 130
        assert (f"interrupted: finished epochs are in {named}; add --resume" in err if named
                else "interrupted before an epoch finished" in err)
    # without a teacher, a teacher folder left by an earlier run is not where --resume goes on
    monkeypatch.setattr(train_run, "train_fold", stopped_after([run_last, teacher_last]))
    with pytest.raises(SystemExit):
        load_script("train").main([*argv, "--teacher", "none"])
    assert f"interrupted: finished epochs are in {run_last}; add --resume" in capsys.readouterr().err

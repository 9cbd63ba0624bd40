"""--relabel-after N: after N epochs the student judges the cells its teacher taught, every class judged, and those
cells train on its judgement from then on; a run resumed after that epoch trains on the same targets."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_cell_config, torchrun_train

from cellloc.data import label_matrix
from cellloc.engine import Callback
from cellloc.errors import InputError
from cellloc.fieldio import multihot
from cellloc.runs.relabel import RELABEL_PREDICTIONS
from cellloc.runs.train import TrainConfig, cell_samples, train_fold
from cellloc.teacher import at_least_one_posterior, certain_cells, judged_targets, known_classes, level_to_share, named_besides_negative

NEG = 18


@pytest.fixture(scope="module")
def cells_csv(tmp_path_factory):
    from cellloc.data import write_synthetic_cells

    return write_synthetic_cells(tmp_path_factory.mktemp("cells"), n_fields=40, cells_per_field=6, n_folds=3, seed=2,
                                 negative_share=0.15)


def _cfg(csv, out, **kw) -> TrainConfig:
    return tiny_cell_config(csv, out, **{"teacher": "certain", "negative_split": "none", "bn_recalibrate": 16,
                                         "epochs": 3, "relabel_after": 1, **kw})


def test_a_judge_of_every_class_gives_the_classes_the_teacher_could_not_judge_their_contrast():
    labels = multihot([[3, 7], [3, 7], [3, 7], [3]], 19).astype(np.float32)
    taught = np.array([True, True, True, False])
    fields = np.array(["a", "a", "a", "b"])
    preds = np.full((4, 19), 0.1)
    preds[:3, 7] = [0.9, 0.5, 0.1]  # the judge ranks the field's cells for class 7
    teacher_view = known_classes(labels, ~taught)  # class 7 is in no certain field: the teacher's rule cannot judge it
    assert not teacher_view[7]
    blind = judged_targets("levelled", labels, preds, taught, fields, teacher_view, 0.7, NEG, 1.0)
    judged = judged_targets("levelled", labels, preds, taught, fields, np.ones(19, bool), 0.7, NEG, 1.0)
    assert np.ptp(blind[:3, 7]) < np.ptp(judged[:3, 7])  # without the judge's view of 7 its cells stay close
    assert judged[0, 7] > judged[1, 7] > judged[2, 7]  # the judge's ranking kept
    assert judged[:3, 7].mean() == pytest.approx(0.7, abs=1e-6)  # at the share
    assert np.array_equal(judged[3], labels[3])  # a certain field's cell keeps its label
    assert not judged[:, [0, 1, 2]].any()  # never a class the field lacks


def test_the_student_judges_its_taught_cells_after_its_nth_epoch_and_trains_on_that(cells_csv, tmp_path, capsys):
    run = train_fold(_cfg(cells_csv, tmp_path, run_name="s"))
    assert "after epoch 1 the student judged its" in capsys.readouterr().out
    assert json.loads((run.run_dir / "summary.json").read_text())["relabelled_after"] == 1
    sets = cell_samples(_cfg(cells_csv, tmp_path, run_name="s", resume=True))
    weak = label_matrix(sets.train, "weak", 19)
    taught = ~certain_cells(weak, NEG)
    table = pd.read_csv(run.run_dir / RELABEL_PREDICTIONS)
    assert len(table) == taught.sum() and set(table["ID"]) == set(sets.train.loc[taught, "ID"])
    p = sets.train[taught].astype({"cell_id": int}).merge(table, on=["ID", "cell_id"])[[f"p{k}" for k in range(19)]]
    share = sets.teacher["shown_share"]
    # the teacher's rule (the chance given one shows, levelled at the share) on the student's predictions, every
    # class judged
    chance = at_least_one_posterior(weak[taught], p.to_numpy(), np.ones(19, bool), share, NEG)
    fields_classes = named_besides_negative(weak[taught], NEG)
    level = level_to_share(chance, sets.train.loc[taught, "ID"].to_numpy(), fields_classes, share)
    targets = sets.relabel.new_targets(table, run.run_dir / RELABEL_PREDICTIONS)
    np.testing.assert_allclose(targets[taught], weak[taught] * level, atol=1e-4)
    assert np.array_equal(targets[~taught], sets.y_train[~taught])  # the certain fields' cells keep their targets
    assert not np.allclose(targets[taught], sets.y_train[taught])  # the taught ones do not keep the teacher's


class _StopAfter(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, tez_trainer, **kwargs) -> None:
        if int(tez_trainer.current_epoch) + 1 == self.epoch:
            raise KeyboardInterrupt


def test_a_run_stopped_after_its_relabelling_resumes_on_the_same_judgement(cells_csv, tmp_path):
    cfg = _cfg(cells_csv, tmp_path, run_name="k")
    with pytest.raises(KeyboardInterrupt):
        train_fold(cfg, callbacks=[_StopAfter(2)])
    saved = cfg.run_dir / RELABEL_PREDICTIONS
    made = saved.stat().st_mtime_ns, saved.read_bytes()
    run = train_fold(_cfg(cells_csv, tmp_path, run_name="k", resume=True))
    assert run.epochs_run == 3 and (saved.stat().st_mtime_ns, saved.read_bytes()) == made  # not judged again

    with pytest.raises(KeyboardInterrupt):
        train_fold(_cfg(cells_csv, tmp_path, run_name="k", overwrite=True), callbacks=[_StopAfter(2)])
    saved.unlink()  # lost by hand: the judgement the last epochs trained on cannot be rebuilt
    with pytest.raises(InputError, match=f"{RELABEL_PREDICTIONS}: not found") as exc:
        train_fold(_cfg(cells_csv, tmp_path, run_name="k", resume=True))
    assert "\n" not in str(exc.value)
    with pytest.raises(InputError, match="relabel_after is 2 but the saved run used 1"):
        train_fold(_cfg(cells_csv, tmp_path, run_name="k", resume=True, relabel_after=2))


@pytest.mark.parametrize(("kw", "message"), [
    ({"relabel_after": 3}, "relabel_after must be in 0..epochs - 1 (2; or -1: half the epochs)"),
    ({"relabel_after": -2}, "relabel_after must be in 0..epochs - 1 (2; or -1: half the epochs)"),
    ({"teacher": "none"}, "relabel_after rejudges the cells a teacher taught"),
])
def test_bad_relabel_settings_are_one_line_errors(kw, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(**{"teacher": "certain", "epochs": 3, "relabel_after": 1, **kw})


def test_by_default_the_student_judges_after_half_its_epochs_where_a_teacher_teaches(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert TrainConfig(teacher="certain", epochs=6).relabel_after == 3  # the demo's 6 epochs
    assert TrainConfig(teacher="certain", epochs=5).relabel_after == 2
    assert TrainConfig(teacher="certain", epochs=1).relabel_after == 0  # no epoch left to train on its judgement
    assert TrainConfig(teacher="none", epochs=6).relabel_after == 0
    assert TrainConfig(teacher="certain", epochs=6, relabel_after=0).relabel_after == 0  # off when asked
    monkeypatch.setenv("WORLD_SIZE", "2")  # accelerate launch: rank 0 judges and the other ranks take its targets
    assert TrainConfig(teacher="certain", epochs=6).relabel_after == 3


def test_under_two_processes_rank0_judges_and_every_rank_trains_on_its_judgement(cells_csv, tmp_path):
    """torchrun with 2 CPU ranks (gloo) and the default --device (auto: the CPU here): callbacks run on rank 0 alone,
    so the other rank would keep its teacher's targets; rank 0 hands them over and checks every rank holds the same
    (the sums of their targets gathered)."""
    args = [f"--folds-csv={cells_csv}", f"--out-dir={tmp_path}", "--model=resnet18", "--image-size=32", "--epochs=2",
            "--batch-size=4", "--pretrained=none", "--num-workers=0", "--teacher=certain",
            "--negative-split=none", "--bn-recalibrate=16", "--stats-samples=8"]
    proc = torchrun_train(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "after epoch 1 the student judged its" in proc.stdout  # the default: half of 2 epochs
    assert proc.stdout.count("relabel: the 2 processes train on the student's judgement") == 1
    run = tmp_path / "effb2" / "fold0"
    assert json.loads((run / "config.json").read_text())["relabel_after"] == 1
    assert (run / RELABEL_PREDICTIONS).is_file() and len(pd.read_csv(run / "metrics.csv")) == 2

"""training.py and src/train.py: runs on tiny synthetic crops (EfficientNet-B0, 32 px, CPU)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import torchrun_train

from cellloc.classifier import load_classifier
from cellloc.config import parse_config
from cellloc.data import preprocess_crop, load_crop, read_cells, write_synthetic_cells
from cellloc.engine import Callback
from cellloc.errors import InputError
from cellloc.models import create_model
from cellloc.runs.train import TrainConfig, mixed_precision, train_fold

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cells_csv(tmp_path_factory) -> Path:
    """6 fields x 4 cells in 3 folds: 16 training and 8 validation cells per fold."""
    return write_synthetic_cells(tmp_path_factory.mktemp("cells"), n_fields=6, cells_per_field=4, n_folds=3, seed=3)


def tiny(cells_csv: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        folds_csv=str(cells_csv), out_dir=str(out), model="efficientnet-b0", pretrained="none", image_size=32,
        batch_size=8, epochs=2, num_workers=0, lr=3e-3, device="cpu", stats_samples=8,
    )
    return TrainConfig(**{**base, **kw})


class Interrupt(Callback):
    """Ctrl-C right after ``epoch`` has been recorded (last.pt written)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, tez_trainer, **kwargs):
        if tez_trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt


class Snapshot(Callback):
    """Keeps the backbone weights and the metrics dict as they are when training starts."""

    def on_train_start(self, tez_trainer, **kwargs):
        self.weights = {k: v.clone() for k, v in tez_trainer.net_state_dict().items()}
        self.metrics = {k: dict(v) for k, v in tez_trainer.metrics.items()}


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epochs", "0"], "epochs must be >= 1, got 0"),
        (["--batch-size", "1"], "batch_size must be >= 2"),
        (["--lr", "-0.1"], "lr must be a positive number"),
        (["--lr", "nan"], "lr must be a positive number"),
        (["--image-size", "8"], "image_size must be in 32..2048"),
        (["--tta", "3"], "tta must be one of 1, 2, 4, 8"),
        (["--warmup-epochs", "10", "--epochs", "5"], "warmup_epochs must be in [0, epochs)"),
        (["--mean", "0.1", "0.2", "--std", "1", "1"], "mean/std need 4 values"),
        (["--mean", "0.1", "0.2", "0.3", "0.4"], "mean and std need the same length"),
        (["--fold", "-1"], "fold must be >= 0"),
        (["--run-name", "a/b"], "run_name must be a plain folder name"),
        (["--aug-gain", "1.5"], "aug_gain must be in [0, 1)"),
        (["--model", "resnet9"], "unknown model 'resnet9'; known: efficientnet-b0"),
        (["--pretrained", "yes"], "pretrained must be none or imagenet"),
        (["--label-source", "cells"], "label_source must be weak or true"),
        (["--monitor", "f1"], "monitor must be one of loss, last, macro_ap, macro_f1 for multilabel task hpa-sc"),
        (["--monitor", "accuracy"], "monitor must be one of loss, last, macro_ap, macro_f1"),
        (["--soft-weight", "1.5"], "soft_weight must be in [0, 1]"),
        (["--soft-targets", "x", "--label-source", "true"], "soft_targets refine the weak labels"),
        (["--bootstrap", "1.5"], "bootstrap must be in [0, 1]"),
        (["--ema", "1"], "ema must be in [0, 1)"),
        (["--bootstrap", "0.5", "--bootstrap-start", "-1"], "bootstrap_start must be >= 0"),
        (["--bootstrap", "0.5", "--label-source", "true"], "bootstrap refines weak labels of a multilabel task"),
        (["--bootstrap", "0.5", "--level", "image"], "bootstrap refines weak labels of a multilabel task"),
        (["--bootstrap", "0.5", "--image-head", "mean"], "bootstrap is for the cell head alone"),
        (["--field-top", "0"], "field_top must be in (0, 1]"),
        (["--field-top", "0.7", "--field-top-start", "-1"], "field_top_start must be >= 0"),
        (["--field-top", "0.7", "--label-source", "true"], "field_top refines weak labels of a multilabel task"),
        (["--field-top", "0.7", "--bootstrap", "0.5"], "field_top and bootstrap both rewrite the targets"),
        (["--field-top", "0.7", "--image-head", "mean"], "field_top is for the cell head alone"),
        (["--negative-split", "always"], "negative_split must be one of auto, intensity, none"),
        (["--negative-split", "intensity", "--label-source", "true"], "negative_split splits weak labels"),
        (["--negative-split", "intensity", "--task", "rxrx1"], "negative_split splits weak labels of a task with a Negative"),
        (["--level", "image", "--image-head", "max"], "image_head is for cell-level training"),
        (["--level", "image", "--cell-weights", "drop"], "cell_weights is for cell-level training"),
        (["--image-head", "mean", "--cells-per-field", "64"], "cells_per_field must be in 1..batch_size (32)"),
        (["--image-loss-weight", "-1"], "image_loss_weight must be >= 0"),
        (["--image-head", "max", "--balance-power", "1"], "cannot be combined with balance_power"),
        (["--device", "tpu"], "device must be auto, cpu or cuda"),
        (["--optimizer", "lamb"], "optimizer must be one of adam, adamw, nadam, sgd"),
        (["--schedule", "step"], "schedule must be one of constant, cosine, exponential, onecycle"),
        (["--loss", "ce"], "loss ce does not fit multilabel task hpa-sc"),
        (["--loss", "hinge"], "loss must be one of bce, ce, focal"),
        (["--label-smoothing", "1"], "label_smoothing must be in [0, 1)"),
        (["--momentum-range", "0.95", "0.85"], "momentum_range must be two values low <= high"),
        (["--level", "tile"], "level must be one of cell, image"),
        (["--level", "image", "--label-source", "true"], "label_source true needs cell-level training"),
        (["--image-size", "64", "--field-resize", "32"], "field_resize must be in image_size..8192"),
        (["--tiles", "2"], "tiles must be >= 1, and 1 unless --field-resize is larger"),
    ],
)
def test_bad_config_values_are_one_line_errors(argv, message):
    with pytest.raises(InputError) as exc:
        parse_config(TrainConfig, argv)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_script_prints_one_line_and_exits_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    for argv, message in (
        (["--epochs", "0"], "error: epochs must be >= 1, got 0"),
        (["--model", "resnet9"], "error: unknown model 'resnet9'"),
        (["--folds-csv", str(tmp_path / "none.csv")], "none.csv: file not found"),
    ):
        proc = subprocess.run([sys.executable, str(ROOT / "src" / "train.py"), *argv], capture_output=True, text=True,
                              env=env, cwd=tmp_path)
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0]


def test_missing_fold_and_true_labels_are_one_line_errors(cells_csv, tmp_path):
    with pytest.raises(InputError, match=r"fold 7 is not in the cells table \(folds: 0, 1, 2\)"):
        train_fold(tiny(cells_csv, tmp_path, fold=7))
    df = pd.read_csv(cells_csv, dtype=str, keep_default_na=False).drop(columns=["TrueLabel"])
    no_truth = cells_csv.parent / "no_truth.csv"
    df.to_csv(no_truth, index=False)
    with pytest.raises(InputError, match="needs a TrueLabel column"):
        train_fold(tiny(no_truth, tmp_path, label_source="true"))


# --------------------------------------------------------------------------- training runs


def test_two_step_run_lowers_the_loss_on_a_fixed_batch(cells_csv, tmp_path):
    cfg = tiny(cells_csv, tmp_path, epochs=2, batch_size=16, aug_gain=0.0)  # 16 cells: 1 step per epoch
    snap = Snapshot()
    train_fold(cfg, callbacks=[snap])
    hist = pd.read_csv(cfg.run_dir / "metrics.csv")
    assert len(hist) == 2
    cells = read_cells(cells_csv, 19)
    train = cells[cells["fold"] != cfg.fold]
    saved = json.loads((cfg.run_dir / "recipe.json").read_text())
    x = torch.stack([torch.from_numpy(preprocess_crop(load_crop(p), 32, saved["mean"], saved["std"])) for p in train["crop_path"]])
    y = torch.from_numpy(np.stack([np.isin(np.arange(19), w) for w in train["weak"]]).astype(np.float32))

    def loss_with(weights):
        net = create_model("efficientnet-b0", 4, 19, "none", image_size=32)
        net.load_state_dict(weights)
        net.train()  # batch statistics: the loss the optimizer saw
        with torch.no_grad():
            return float(torch.nn.functional.binary_cross_entropy_with_logits(net(x), y))

    before = loss_with(snap.weights)
    after = loss_with(torch.load(cfg.run_dir / "last.pt", weights_only=True)["model"])
    assert after < before - 0.01, (before, after)


class ThreadsSeen(Callback):
    """Records PyTorch's intra-op thread count when training starts."""

    def on_train_start(self, tez_trainer, **kwargs):
        self.threads = torch.get_num_threads()


def test_thread_option_reaches_torch_for_training(cells_csv, tmp_path):
    seen, before = ThreadsSeen(), torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        train_fold(tiny(cells_csv, tmp_path, epochs=1, threads=1), callbacks=[seen])
        assert seen.threads == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("on_cuda, amp, cpu_bf16, native, expected", [
    (True, True, "auto", True, "fp16"), (True, False, "on", True, "no"),  # --cpu-bf16 is for CPUs only
    (False, True, "auto", True, "bf16"), (False, True, "auto", False, "no"),  # auto: only where bf16 is native
    (False, False, "on", False, "bf16"), (False, False, "off", True, "no"),
])
def test_the_precision_a_run_trains_in(on_cuda, amp, cpu_bf16, native, expected):
    assert mixed_precision(on_cuda, amp, cpu_bf16, native) == expected


class ActivationDtypes(Callback):
    """Records the dtype of the backbone's first convolution output in training steps (not in the
    BatchNorm recalibration, which runs in float32)."""

    def on_train_start(self, tez_trainer, **kwargs):
        self.seen: set[torch.dtype] = set()
        self.stepping = False
        first = next(m for m in tez_trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
        first.register_forward_hook(lambda module, args, out: self.seen.add(out.dtype) if self.stepping else None)

    def on_train_step_start(self, tez_trainer, **kwargs):
        self.stepping = True

    def on_train_step_end(self, tez_trainer, **kwargs):
        self.stepping = False


@pytest.mark.parametrize("cpu_bf16, dtype, precision", [("on", torch.bfloat16, "bf16"), ("off", torch.float32, "no")])
def test_cpu_bf16_autocasts_training_and_keeps_float32_weights(cells_csv, tmp_path, cpu_bf16, dtype, precision):
    seen = ActivationDtypes()
    cfg = tiny(cells_csv, tmp_path, epochs=1, cpu_bf16=cpu_bf16)
    result = train_fold(cfg, callbacks=[seen])
    assert seen.seen == {dtype}
    assert json.loads((cfg.run_dir / "summary.json").read_text())["mixed_precision"] == precision
    weights = torch.load(cfg.run_dir / "best.pt", weights_only=True)
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float32}
    assert 0 <= result.macro_ap_weak <= 1


def test_run_folder_outputs_and_inference_api(cells_csv, tmp_path):
    cfg = tiny(cells_csv, tmp_path, epochs=1, tta=2)
    result = train_fold(cfg)
    run = cfg.run_dir
    for name in ("config.json", "recipe.json", "metrics.csv", "curves.png", "best.pt", "last.pt", "val_predictions.csv",
                 "scores.csv", "summary.json"):
        assert (run / name).is_file(), name
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = torch.load(run / "best.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in best.values())  # plain state_dict
    last = torch.load(run / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "early_stopping", "history", "rng"} <= set(last)
    assert last["epoch"] == 1
    preds = pd.read_csv(run / "val_predictions.csv")
    assert list(preds.columns) == ["ID", "cell_id"] + [f"p{k}" for k in range(19)]
    assert len(preds) == result.n_valid == 8
    scores = pd.read_csv(run / "scores.csv")
    assert {"ap_weak", "ap_true", "prevalence_weak", "prevalence_true", "f1_weak"} <= set(scores.columns)
    assert scores.iloc[-1]["ap_true"] == pytest.approx(result.macro_ap_true)
    metrics = pd.read_csv(run / "metrics.csv")
    assert {"train_loss", "valid_loss", "valid_macro_ap", "valid_macro_f1", "valid_macro_ap_true", "ap_0", "lr"} <= set(metrics)
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"] == "efficientnet-b0" and saved["task"] == "hpa-sc" and saved["mean"] == []
    recipe = json.loads((run / "recipe.json").read_text())
    assert (recipe["task"], recipe["level"], recipe["kind"], recipe["num_classes"], recipe["in_chans"]) == (
        "hpa-sc", "cell", "multilabel", 19, 4)
    assert len(recipe["mean"]) == 4 and recipe["input"]["kind"] == "cell_crop" and recipe["thresholds"] is None
    assert result.metrics["macro_ap"] == pytest.approx(result.macro_ap_weak)
    # the inference stage's API reproduces the validation predictions
    model = load_classifier(run)
    cells = read_cells(cells_csv, 19)
    valid = cells[cells["fold"] == cfg.fold]
    probs = model.predict([load_crop(p) for p in valid["crop_path"]], tta=2, batch_size=3)
    np.testing.assert_allclose(probs, preds[[f"p{k}" for k in range(19)]].to_numpy(), atol=1e-5)
    np.testing.assert_allclose(model.predict(list(valid["crop_path"]), tta=2), probs, atol=1e-6)  # paths work too
    assert model.predict([], tta=8).shape == (0, 19)
    with pytest.raises(InputError, match="tta must be one of"):
        model.predict(list(valid["crop_path"]), tta=3)


def test_best_weights_carry_batchnorm_statistics_of_themselves(cells_csv, tmp_path):
    """Recalibrated before each validation: best.pt's running statistics are those of its own weights.

    Recomputing them from the same training crops changes nothing; without recalibration
    (``--bn-recalibrate 0``) they are the lagging moving averages, far from that.
    """
    from cellloc.models import recalibrate_batchnorm

    def saved_and_recomputed(cfg: TrainConfig):
        train_fold(cfg)
        model = load_classifier(cfg.run_dir)
        cells = read_cells(cells_csv, 19)
        train = cells[cells["fold"] != cfg.fold]
        x = torch.from_numpy(np.concatenate([model.view.predict_views(load_crop(p)) for p in train["crop_path"]]))
        bn = [m for m in model.net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        saved = [m.running_var.clone() for m in bn]
        recalibrate_batchnorm(model.net, [x[k:k + 16] for k in range(0, len(x), 16)])
        return saved, [m.running_var for m in bn]

    saved, again = saved_and_recomputed(tiny(cells_csv, tmp_path, epochs=1, run_name="recal"))
    for a, b in zip(saved, again):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    saved, again = saved_and_recomputed(tiny(cells_csv, tmp_path, epochs=1, run_name="lagging", bn_recalibrate=0))
    assert max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(saved, again)) > 0.5


def test_interim_validations_recalibrate_on_fewer_samples_and_the_saved_weights_are_the_same(cells_csv, tmp_path, monkeypatch):
    """--monitor last: epochs before the last recompute BatchNorm statistics over --bn-recalibrate-interim samples
    (the curves only); the last epoch, whose weights are saved, over all of them, so best.pt is the same as when every
    epoch used them all."""
    import cellloc.runs.train as train_run

    seen: list[int] = []
    real = train_run.recalibrate_batchnorm
    monkeypatch.setattr(train_run, "recalibrate_batchnorm", lambda net, batches: seen.append(real(net, batches)) or seen[-1])
    few = tiny(cells_csv, tmp_path, epochs=3, monitor="last", bn_recalibrate_interim=5, run_name="few")
    train_fold(few)
    n_train = len(read_cells(cells_csv, 19).query(f"fold != {few.fold}"))
    assert n_train > 5 and seen == [5, 5, n_train]
    seen.clear()
    every = tiny(cells_csv, tmp_path, epochs=3, monitor="last", bn_recalibrate_interim=0, run_name="every")
    train_fold(every)
    assert seen == [n_train] * 3
    a, b = (torch.load(c.run_dir / "best.pt", map_location="cpu") for c in (few, every))
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    seen.clear()
    train_fold(tiny(cells_csv, tmp_path, epochs=2, bn_recalibrate_interim=5, run_name="by_loss"))  # best.pt any epoch
    assert seen == [n_train] * 2


def test_saved_config_reruns_the_run(cells_csv, tmp_path):
    """``train.py --config <run>/config.json`` trains the same model again (a new run name aside)."""
    first = tiny(cells_csv, tmp_path, epochs=1)
    train_fold(first)
    again = parse_config(TrainConfig, ["--config", str(first.run_dir / "config.json"), "--run-name", "again"])
    assert dataclasses.replace(again, run_name=first.run_name) == first
    train_fold(again)
    a, b = (pd.read_csv(c.run_dir / "val_predictions.csv") for c in (first, again))
    pd.testing.assert_frame_equal(a, b)


def test_resume_continues_from_the_saved_epoch_and_matches_an_uninterrupted_run(cells_csv, tmp_path):
    cfg = tiny(cells_csv, tmp_path, epochs=3, run_name="cut", batch_size=8)
    with pytest.raises(KeyboardInterrupt):
        train_fold(cfg, callbacks=[Interrupt(epoch=0)])
    assert torch.load(cfg.run_dir / "last.pt", weights_only=True)["epoch"] == 1
    first = pd.read_csv(cfg.run_dir / "metrics.csv")
    assert list(first["epoch"]) == [0]

    snap = Snapshot()
    resumed = train_fold(tiny(cells_csv, tmp_path, epochs=3, run_name="cut", resume=True), callbacks=[snap])
    hist = pd.read_csv(cfg.run_dir / "metrics.csv")
    assert list(hist["epoch"]) == [0, 1, 2]
    pd.testing.assert_frame_equal(hist.iloc[:1], first)  # epoch 0 is not retrained
    assert resumed.epochs_run == 3

    whole = tiny(cells_csv, tmp_path, epochs=3, run_name="whole", batch_size=8)
    train_fold(whole)
    a = torch.load(cfg.run_dir / "last.pt", weights_only=True)["model"]
    b = torch.load(whole.run_dir / "last.pt", weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    whole_hist = pd.read_csv(whole.run_dir / "metrics.csv")
    np.testing.assert_allclose(hist["train_loss"], whole_hist["train_loss"], rtol=1e-4)

    with pytest.raises(InputError, match="--resume: lr is 0.1 but the saved run used 0.003"):
        train_fold(tiny(cells_csv, tmp_path, epochs=3, run_name="cut", resume=True, lr=0.1))
    with pytest.raises(InputError, match="nothing to resume"):
        train_fold(tiny(cells_csv, tmp_path, run_name="never", resume=True))


def test_weight_average_is_validated_and_saved_and_a_cut_run_resumes_it(cells_csv, tmp_path):
    """--ema: best.pt holds the average (BatchNorm recomputed for it), last.pt the live weights and the average;
    a run cut after its first epoch ends where an uninterrupted one does, average included."""
    kw = dict(epochs=3, monitor="last", ema=0.5)
    cut = tiny(cells_csv, tmp_path, run_name="cut", **kw)
    with pytest.raises(KeyboardInterrupt):
        train_fold(cut, callbacks=[Interrupt(epoch=0)])
    train_fold(tiny(cells_csv, tmp_path, run_name="cut", resume=True, **kw))
    whole = tiny(cells_csv, tmp_path, run_name="whole", **kw)
    train_fold(whole)
    plain = tiny(cells_csv, tmp_path, run_name="plain", epochs=3, monitor="last")
    train_fold(plain)

    last, resumed = (torch.load(c.run_dir / "last.pt", weights_only=True) for c in (whole, cut))
    assert last["average"]["updates"] == 3 * 2  # 16 training cells in batches of 8, 3 epochs
    for a, b in zip(resumed["average"]["shadow"], last["average"]["shadow"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for k in last["model"]:
        torch.testing.assert_close(resumed["model"][k], last["model"][k], rtol=1e-4, atol=1e-5, msg=k)
    assert torch.load(plain.run_dir / "last.pt", weights_only=True)["average"] is None

    best = torch.load(whole.run_dir / "best.pt", weights_only=True)
    correction = 1 - 0.5 ** last["average"]["updates"]
    for name, shadow in zip(last["average"]["names"], last["average"]["shadow"]):
        torch.testing.assert_close(best[name], shadow / correction, msg=name)
    moved = [k for k in last["average"]["names"] if not torch.equal(best[k], last["model"][k])]
    assert moved, "the saved weights are the live ones, not their average"
    plain_last = torch.load(plain.run_dir / "last.pt", weights_only=True)["model"]
    for k in last["average"]["names"]:  # the average only watches: the live weights train as they would without it
        torch.testing.assert_close(last["model"][k], plain_last[k], rtol=1e-4, atol=1e-5, msg=k)


def test_two_folds_in_one_process_do_not_share_metric_history(cells_csv, tmp_path):
    snaps = [Snapshot(), Snapshot()]
    r0 = train_fold(tiny(cells_csv, tmp_path, fold=0, epochs=2), callbacks=[snaps[0]])
    r1 = train_fold(tiny(cells_csv, tmp_path, fold=1, epochs=1), callbacks=[snaps[1]])
    assert snaps[1].metrics == {"train": {}, "valid": {}, "test": {}}
    h0 = pd.read_csv(r0.run_dir / "metrics.csv")
    h1 = pd.read_csv(r1.run_dir / "metrics.csv")
    assert list(h0["epoch"]) == [0, 1] and list(h1["epoch"]) == [0]
    assert h1["valid_loss"][0] not in set(h0["valid_loss"])


def test_true_label_training_drops_unmatched_cells(cells_csv, tmp_path):
    cells = read_cells(cells_csv, 19)
    train = cells[cells["fold"] != 0]
    result = train_fold(tiny(cells_csv, tmp_path, label_source="true", epochs=1, monitor="macro_ap"))
    assert result.n_train == sum(len(t) > 0 for t in train["true"])
    hist = pd.read_csv(result.run_dir / "metrics.csv")
    assert "valid_macro_ap_weak" in hist  # the other label source is reported per epoch too


def test_two_processes_stop_early_together_and_rank0_scores(cells_csv, tmp_path):
    """torchrun with 2 CPU ranks (gloo): sharded batches, gathered validation, the early-stop
    flag broadcast from rank 0 (without it rank 1 waits forever), one writer."""
    args = [f"--folds-csv={cells_csv}", f"--out-dir={tmp_path}", "--model=efficientnet-b0", "--image-size=32",
            "--epochs=5", "--batch-size=4", "--pretrained=none", "--num-workers=0", "--patience=1", "--lr=1e-9", "--min-lr=0",
            "--device=cpu"]
    proc = torchrun_train(args, tmp_path, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("run: ") == 1 and "stopped early" in proc.stdout  # only rank 0 reports
    hist = pd.read_csv(tmp_path / "effb2" / "fold0" / "metrics.csv")
    assert len(hist) < 5  # lr ~ 0: the loss stops improving and patience 1 ends the run early
    assert (tmp_path / "effb2" / "fold0" / "scores.csv").exists()


# --------------------------------------------------------------------------- a trained model is never lost


def test_a_finished_run_is_not_replaced_without_overwrite(cells_csv, tmp_path):
    cfg = tiny(cells_csv, tmp_path, epochs=1)
    train_fold(cfg)
    best = (cfg.run_dir / "best.pt").read_bytes()
    with pytest.raises(InputError) as err:
        train_fold(tiny(cells_csv, tmp_path, epochs=1, lr=1e-2))
    msg = str(err.value)
    assert msg.startswith(f"{cfg.run_dir}: holds a training run (best.pt, config.json, curves.png, last.pt, ...); "
                          "add --resume to continue it, --overwrite to start over") and "\n" not in msg
    assert (cfg.run_dir / "best.pt").read_bytes() == best
    result = train_fold(tiny(cells_csv, tmp_path, epochs=1, lr=1e-2, overwrite=True))
    assert result.replaced.parent == cfg.run_dir.resolve().parent and result.replaced.name.startswith("fold0.replaced-")
    assert (result.replaced / "best.pt").read_bytes() == best  # the old model, intact
    assert (cfg.run_dir / "best.pt").read_bytes() != best
    assert "overwrite" not in json.loads((cfg.run_dir / "config.json").read_text())
    with pytest.raises(InputError, match="give one of them"):
        train_fold(tiny(cells_csv, tmp_path, resume=True, overwrite=True))


def test_a_copied_run_folder_resumes(cells_csv, tmp_path):
    cfg = tiny(cells_csv, tmp_path / "a", epochs=2, run_name="orig")
    with pytest.raises(KeyboardInterrupt):
        train_fold(cfg, callbacks=[Interrupt(epoch=0)])
    copy = tmp_path / "b" / "copy" / "fold0"
    import shutil

    shutil.copytree(cfg.run_dir, copy)
    resumed = train_fold(tiny(cells_csv, tmp_path / "b", epochs=2, run_name="copy", resume=True))
    assert resumed.run_dir == copy and resumed.epochs_run == 2
    assert list(pd.read_csv(copy / "metrics.csv")["epoch"]) == [0, 1]
    assert list(pd.read_csv(cfg.run_dir / "metrics.csv")["epoch"]) == [0]  # the original is untouched


def test_resume_on_a_regenerated_folds_table_stops_instead_of_mixing_two_splits(cells_csv, tmp_path):
    folds = cells_csv.with_name("regenerated_folds.csv")  # beside the crops it names
    folds.write_bytes(cells_csv.read_bytes())
    cfg = tiny(folds, tmp_path, epochs=2)
    with pytest.raises(KeyboardInterrupt):
        train_fold(cfg, callbacks=[Interrupt(epoch=0)])
    table = pd.read_csv(folds)
    fields = sorted(table["ID"].unique())
    table["fold"] = table["ID"].map({f: (k + 1) % 3 for k, f in enumerate(fields)})  # gen_folds with another seed
    table.to_csv(folds, index=False)
    with pytest.raises(InputError) as err:
        train_fold(tiny(folds, tmp_path, epochs=2, resume=True))
    assert str(err.value).startswith(f"--resume: {cfg.run_dir} was trained on other samples or labels of fold 0 (")
    assert "add --overwrite to start over" in str(err.value) and "\n" not in str(err.value)
    assert list(pd.read_csv(cfg.run_dir / "metrics.csv")["epoch"]) == [0]  # nothing was trained on the new split
    folds.write_bytes(cells_csv.read_bytes())  # the table it started with: resumes
    assert train_fold(tiny(folds, tmp_path, epochs=2, resume=True)).epochs_run == 2


def test_bad_input_moves_nothing_aside_and_an_unwritable_folder_is_one_line(cells_csv, tmp_path):
    cfg = tiny(cells_csv, tmp_path, epochs=1)
    train_fold(cfg)
    with pytest.raises(InputError, match="none.csv: file not found"):
        train_fold(tiny(tmp_path / "none.csv", tmp_path, epochs=1, overwrite=True))
    assert (cfg.run_dir / "best.pt").is_file() and not list(tmp_path.glob("*/*.replaced-*"))
    (tmp_path / "blocked").write_text("a file where the models folder should be")
    with pytest.raises(OSError) as err:
        train_fold(tiny(cells_csv, tmp_path / "blocked", epochs=1))
    assert str(tmp_path / "blocked") in str(err.value.filename)


def test_two_trainings_of_one_fold_at_once(cells_csv, tmp_path):
    from test_run_state import hold_lock

    cfg = tiny(cells_csv, tmp_path, epochs=1)
    holder = hold_lock(cfg.run_dir)
    try:
        with pytest.raises(InputError, match=rf"{cfg.run_dir}: another run is writing to this folder \(pid {holder.pid}\)"):
            train_fold(cfg)
    finally:
        holder.kill()
        holder.wait()
    assert not (cfg.run_dir / "config.json").exists()


def test_a_corrupt_crop_met_by_a_dataloader_worker_is_one_short_line(tmp_path):
    folds = write_synthetic_cells(tmp_path / "cells", n_fields=6, cells_per_field=4, n_folds=3, seed=3)
    cells = read_cells(folds, 19)
    bad = Path(cells[cells["fold"] != 0]["crop_path"].iloc[3])
    bad.write_bytes(b"\x93NUMPY this crop was cut short")
    cfg = tiny(folds, tmp_path / "models", epochs=1, num_workers=1, mean=[0.1] * 4, std=[0.2] * 4)
    with pytest.raises(InputError) as err:
        train_fold(cfg)
    msg = str(err.value)
    assert msg.startswith(f"{bad}: cannot read crop (") and len(msg) < 300 and "Traceback" not in msg


# --------------------------------------------------------------------------- weak-label options


def _with_geometry(cells_csv: Path) -> Path:
    """The tiny table with what cell weights need: per-field areas (one small cell), edge flags, nuclei."""
    df = pd.read_csv(cells_csv, dtype=str, keep_default_na=False)
    k = df["cell_id"].astype(int)
    df["area"] = np.where(k == 1, 200, 1000)  # cell 1 of each field: a fifth of the median
    df["edge"] = np.where(k == 2, "True", "False")
    df["nucleus_area"] = np.where(k == 3, 0, 150)
    out = cells_csv.parent / "with_geometry.csv"
    df.to_csv(out, index=False)
    return out


def test_monitor_last_keeps_the_last_epoch(cells_csv, tmp_path):
    result = train_fold(tiny(cells_csv, tmp_path, epochs=3, monitor="last", patience=1, lr=0.5))
    hist = pd.read_csv(result.run_dir / "metrics.csv")
    assert result.epochs_run == 3 and result.best_epoch == 2 and hist["best"].all()  # never stops, always saves


def test_soft_targets_from_out_of_fold_predictions(cells_csv, tmp_path):
    """Every fold trained on field labels; then a fold retrained on their held-out predictions."""
    for k in range(3):
        train_fold(tiny(cells_csv, tmp_path, fold=k, epochs=1, run_name="oof"))
    oof = pd.concat([pd.read_csv(tmp_path / "oof" / f"fold{k}" / "val_predictions.csv") for k in range(3)])
    assert len(oof) == 24  # every cell predicted once, by the fold that did not train on it
    cfg = tiny(cells_csv, tmp_path, epochs=1, run_name="soft", soft_targets=str(tmp_path / "oof"), soft_weight=0.5)
    from cellloc.runs.train import cell_samples

    sets = cell_samples(cfg)
    weak = np.stack([np.isin(np.arange(19), w) for w in sets.train["weak"]]).astype(np.float32)
    key = sets.train[["ID", "cell_id"]].astype({"cell_id": int})
    pred = key.merge(oof, on=["ID", "cell_id"])[[f"p{k}" for k in range(19)]].to_numpy()
    np.testing.assert_allclose(sets.y_train, weak * (0.5 + 0.5 * pred), atol=1e-5)
    assert (sets.y_train[weak == 0] == 0).all()  # never a class the field lacks
    assert train_fold(cfg).n_train == 16
    partial = tmp_path / "partial.csv"
    oof.iloc[:5].to_csv(partial, index=False)
    with pytest.raises(InputError, match="no prediction of 1[0-9] of 16 training cells"):
        train_fold(tiny(cells_csv, tmp_path, epochs=1, run_name="p", soft_targets=str(partial)))
    (tmp_path / "untrained").mkdir()
    with pytest.raises(InputError, match="no fold.*val_predictions.csv"):
        train_fold(tiny(cells_csv, tmp_path, epochs=1, run_name="p", soft_targets=str(tmp_path / "untrained")))


@pytest.mark.parametrize(("option", "other"), [("bootstrap", 0.8), ("field_top", 0.7)])
def test_target_refiners_train_on_field_labels_first_then_on_refined_targets(cells_csv, tmp_path, option, other):
    """--bootstrap (the model's own scores mixed in) and --field-top (each field class kept on the field's cells
    scored highest for it): the warm-up epoch matches plain training; afterwards the targets of a class a cell seems
    not to show are lower, and so is the loss. A run cut after its first refined epoch resumes as if it never stopped
    (--field-top's remembered scores included), and only with the same setting."""
    refine = {option: 0.5, f"{option}_start": 1, "batch_size": 4}  # 4 batches an epoch: a field's cells come apart
    plain = train_fold(tiny(cells_csv, tmp_path, epochs=3, run_name="plain", batch_size=4))
    refined = train_fold(tiny(cells_csv, tmp_path, epochs=3, run_name="refined", **refine))
    a, b = (pd.read_csv(r.run_dir / "metrics.csv") for r in (plain, refined))
    assert a["train_loss"][0] == pytest.approx(b["train_loss"][0], rel=1e-5)
    assert b["train_loss"][1] < a["train_loss"][1]
    cut = tiny(cells_csv, tmp_path, epochs=3, run_name="cut", **refine)
    with pytest.raises(KeyboardInterrupt):
        train_fold(cut, callbacks=[Interrupt(epoch=1)])
    train_fold(tiny(cells_csv, tmp_path, epochs=3, run_name="cut", resume=True, **refine))
    np.testing.assert_allclose(pd.read_csv(cut.run_dir / "metrics.csv")["train_loss"], b["train_loss"], rtol=1e-4)
    with pytest.raises(InputError, match=f"--resume: {option} is {other} but the saved run used 0.5"):
        train_fold(tiny(cells_csv, tmp_path, epochs=3, run_name="cut", resume=True, **{**refine, option: other}))


def test_field_top_remembers_every_training_cells_score_in_last_pt(cells_csv, tmp_path):
    run = train_fold(tiny(cells_csv, tmp_path, epochs=2, run_name="top", field_top=0.5, field_top_start=1))
    memory = torch.load(run.run_dir / "last.pt", weights_only=True)["loss"]["_extra_state"]["memory"]
    assert memory.shape == (16, 19) and not memory.isnan().any()
    plain = train_fold(tiny(cells_csv, tmp_path, epochs=1, run_name="plain"))
    assert torch.load(plain.run_dir / "last.pt", weights_only=True)["loss"] is None  # a loss with nothing to keep


def test_cell_weights_drop_and_weight(cells_csv, tmp_path):
    table = _with_geometry(cells_csv)
    from cellloc.runs.train import cell_samples

    dropped = cell_samples(tiny(table, tmp_path, cell_weights="drop"))
    assert sorted(set(dropped.train["cell_id"].astype(int))) == [4]  # small, edge-cut and nucleus-less cells left out
    weighted = cell_samples(tiny(table, tmp_path, cell_weights="weight"))
    w = dict(zip(weighted.train["cell_id"].astype(int), weighted.train_extras["weight"]))
    assert w == {1: pytest.approx(0.2), 2: 0.5, 3: 0.0, 4: 1.0}
    assert train_fold(tiny(table, tmp_path, cell_weights="weight", epochs=1)).n_train == 16


@pytest.mark.parametrize("pool", ["mean", "max", "attention"])
def test_image_head_trains_and_folds_load_as_cell_models(cells_csv, tmp_path, pool):
    cfg = tiny(cells_csv, tmp_path, epochs=2, image_head=pool, cells_per_field=4, batch_size=8, run_name=pool)
    result = train_fold(cfg)
    assert result.epochs_run == 2 and np.isfinite(pd.read_csv(cfg.run_dir / "metrics.csv")["train_loss"]).all()
    last = torch.load(cfg.run_dir / "last.pt", weights_only=True)
    assert "fc.weight" in last["heads"] and ("attention.weight" in last["heads"]) == (pool == "attention")
    model = load_classifier(cfg.run_dir)  # best.pt holds the backbone only
    preds = pd.read_csv(cfg.run_dir / "val_predictions.csv")
    cells = read_cells(cells_csv, 19)
    probs = model.predict(list(cells[cells["fold"] == 0]["crop_path"]))
    np.testing.assert_allclose(probs, preds[[f"p{k}" for k in range(19)]].to_numpy(), atol=1e-5)


def test_image_head_run_resumes_like_an_uninterrupted_one(cells_csv, tmp_path):
    kw = dict(epochs=2, image_head="attention", cells_per_field=4, batch_size=8)
    with pytest.raises(KeyboardInterrupt):
        train_fold(tiny(cells_csv, tmp_path, run_name="cut", **kw), callbacks=[Interrupt(epoch=0)])
    train_fold(tiny(cells_csv, tmp_path, run_name="cut", resume=True, **kw))
    train_fold(tiny(cells_csv, tmp_path, run_name="whole", **kw))
    a, b = (torch.load(tmp_path / r / "fold0" / "last.pt", weights_only=True) for r in ("cut", "whole"))
    for part in ("model", "heads"):
        for k in a[part]:
            torch.testing.assert_close(a[part][k], b[part][k], rtol=1e-4, atol=1e-5, msg=f"{part} {k}")


def test_a_finished_run_leaves_no_loader_workers_behind(cells_csv, tmp_path):
    """Loader workers end with each epoch: idle ones kept alive for the next epoch were reaped whenever the garbage
    collector met their loader, and their shutdown then stalled that moment (a teacher's stalled its student's start)."""
    import multiprocessing

    train_fold(tiny(cells_csv, tmp_path, epochs=2, num_workers=2, bn_recalibrate=0))
    assert multiprocessing.active_children() == []

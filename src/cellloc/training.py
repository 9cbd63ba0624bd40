"""Stage 3: train one fold's cell classifier and score it honestly.

``train_fold(TrainConfig(fold=K))`` trains an EfficientNet (efficientnet-pytorch) on the cell
crops of every fold but K with BCE-with-logits, AdamW/Adam and a cosine learning rate (optional
linear warmup), with Tez as the loop (see :mod:`cellloc.engine`) and early stopping on the
validation loss or macro AP. Training labels are the field's weak labels by default (every
cell inherits its field's ``Label``, as in HPA); ``label_source="true"`` trains on the per-cell
``TrueLabel`` of generated data instead.

After training, the best epoch's weights predict every cell of fold K and are scored per class
against the weak labels *and* the true per-cell labels, when the table has them: weak-label AP
rewards predicting a field's classes on every one of its cells, which is what the competition
metric punishes, so only the true-label number says how good the per-cell model is.

A run folder ``<out_dir>/<run_name>/fold<K>/`` holds: ``config.json`` (the resolved config,
channel statistics included), ``metrics.csv`` + ``curves.png`` (per epoch), ``best.pt`` (plain
state_dict of the best epoch), ``last.pt`` (weights, optimizer, scheduler, epoch, early-stopping
state and history: what ``--resume`` needs), ``val_predictions.csv`` (ID, cell_id, p0..p18),
``scores.csv`` (per-class AP/F1 vs weak and true labels) and ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.special import expit
from torch import nn
from torch.utils.data import DataLoader

from .config import opt, save_config
from .data import (
    CellCropDataset,
    EpochSampler,
    build_augment,
    channel_stats,
    check_crops_exist,
    label_matrix,
    load_crop,
    read_cells,
)
from .engine import Callback, CellTez, EarlyStopping, TezConfig, TezModule, load_plain, save_plain
from .errors import InputError
from .fieldio import write_csv, write_json
from .metrics import nanmean, per_class_ap, per_class_f1, score_table
from .inference_model import TTA_CHOICES, load_model, predict_crops
from .models import PRETRAINED_CHOICES, create_model, model_names
from .plots_training import plot_training_curves
from .tasks import DEFAULT_TASK, TASKS, Task, get_task

# Fields that may differ between a run and its --resume (everything else must match).
RESUMABLE_CHANGES = frozenset({"epochs", "patience", "num_workers", "device", "resume", "tta", "amp", "channels_last"})


@dataclass
class TrainConfig:
    """Everything one training run used; saved as ``config.json`` in the run folder."""

    task: str = opt(DEFAULT_TASK, "task (names channels, classes, level, loss and metrics)", choices=TASKS.names())
    folds_csv: str = opt("", "cells table (ID, cell_id, Label, crop, fold[, TrueLabel]) (default: output/<data_name>/folds.csv)")
    fold: int = opt(0, "validation fold K; all other folds train")
    out_dir: str = opt("models", "runs go to OUT_DIR/RUN_NAME/fold<K>/")
    run_name: str = opt("effb2", "name of this run's folder under OUT_DIR")
    model: str = opt("efficientnet-b2", "backbone: efficientnet-b0 ... efficientnet-b7 (efficientnet-pytorch)")
    pretrained: str = opt("imagenet", "initial weights: imagenet (URL + checksum into the cache) or none (offline)")
    weights_dir: str = opt("", "folder of ImageNet weight files (default $CELLLOC_IMAGENET_DIR or ~/.cache/cellloc/imagenet)")
    image_size: int = opt(260, "crops are padded to square and resized to this many pixels")
    label_source: str = opt("weak", "training labels: weak (the field's Label) or true (the cell's TrueLabel)")
    epochs: int = opt(10, "maximum epochs (early stopping may end sooner)")
    batch_size: int = opt(32, "training batch size (validation uses twice this)")
    lr: float = opt(1e-3, "peak learning rate")
    optimizer: str = opt("adamw", "optimizer: adamw or adam")
    weight_decay: float = opt(1e-2, "weight decay (not applied to biases and norm layers)")
    warmup_epochs: float = opt(0.0, "linear warmup length in epochs before the cosine decay (0 = none)")
    min_lr: float = opt(1e-6, "learning rate at the end of the cosine")
    monitor: str = opt("loss", "early-stopping metric on the validation fold: loss or macro_ap")
    patience: int = opt(3, "epochs without improvement before stopping")
    grad_accum: int = opt(1, "gradient accumulation steps")
    clip_grad: float = opt(0.0, "gradient norm clip (0 = off)")
    aug_gain: float = opt(0.1, "per-channel intensity gain range +-; 0 disables the intensity augmentation")
    num_workers: int = opt(2, "DataLoader worker processes")
    device: str = opt("auto", "auto (CUDA when present), cpu or cuda")
    amp: bool = opt(True, "fp16 mixed precision on CUDA (ignored on CPU)")
    channels_last: bool = opt(True, "channels_last memory format on CUDA (ignored on CPU)")
    seed: int = opt(42, "seed for weights, data order and augmentation")
    limit: int = opt(0, "use at most this many training and this many validation cells (0 = all; smoke runs)")
    resume: bool = opt(False, "continue from the run folder's last.pt")
    tta: int = opt(1, "dihedral views averaged when predicting the validation fold (1, 2, 4, 8)")
    mean: list[float] = opt([], "per-channel mean after /dtype-max (default: measured on training crops)")
    std: list[float] = opt([], "per-channel std after /dtype-max (default: measured on training crops)")
    stats_samples: int = opt(256, "training crops sampled to measure mean/std")

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise InputError(msg)

        self.folds_csv = self.folds_csv or str(Path("output") / get_task(self.task).data_name / "folds.csv")
        need(self.fold >= 0, f"fold must be >= 0, got {self.fold}")
        need(bool(self.run_name) and "/" not in self.run_name and self.run_name not in (".", ".."),
             f"run_name must be a plain folder name, got {self.run_name!r}")
        need(self.model in model_names(), f"unknown model {self.model!r}; known: {', '.join(model_names())}")
        need(self.pretrained in PRETRAINED_CHOICES, f"pretrained must be none or imagenet, got {self.pretrained!r}")
        need(32 <= self.image_size <= 2048, f"image_size must be in 32..2048, got {self.image_size}")
        need(self.label_source in ("weak", "true"), f"label_source must be weak or true, got {self.label_source!r}")
        need(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        need(self.batch_size >= 2, f"batch_size must be >= 2 (batch norm needs 2 samples), got {self.batch_size}")
        need(math.isfinite(self.lr) and self.lr > 0, f"lr must be a positive number, got {self.lr}")
        need(self.optimizer in ("adamw", "adam"), f"optimizer must be adamw or adam, got {self.optimizer!r}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(0 <= self.warmup_epochs < self.epochs, f"warmup_epochs must be in [0, epochs), got {self.warmup_epochs}")
        need(0 <= self.min_lr <= self.lr, f"min_lr must be in [0, lr], got {self.min_lr}")
        need(self.monitor in ("loss", "macro_ap"), f"monitor must be loss or macro_ap, got {self.monitor!r}")
        need(self.patience >= 1, f"patience must be >= 1, got {self.patience}")
        need(self.grad_accum >= 1, f"grad_accum must be >= 1, got {self.grad_accum}")
        need(self.clip_grad >= 0, f"clip_grad must be >= 0, got {self.clip_grad}")
        need(0 <= self.aug_gain < 1, f"aug_gain must be in [0, 1), got {self.aug_gain}")
        need(self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}")
        need(self.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, got {self.device!r}")
        need(self.limit >= 0, f"limit must be >= 0, got {self.limit}")
        need(self.tta in TTA_CHOICES, f"tta must be one of 1, 2, 4, 8, got {self.tta}")
        need(self.stats_samples >= 1, f"stats_samples must be >= 1, got {self.stats_samples}")
        need(len(self.mean) == len(self.std), f"mean and std need the same length, got {len(self.mean)} and {len(self.std)}")
        if self.mean:
            need(len(self.mean) == self.in_chans, f"mean/std need {self.in_chans} values (one per channel), got {len(self.mean)}")
            need(all(s > 0 for s in self.std), f"std values must be > 0, got {self.std}")

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.run_name / f"fold{self.fold}"

    @property
    def task_record(self) -> Task:
        return get_task(self.task)

    @property
    def in_chans(self) -> int:
        """Channels per input: the task's channel files."""
        return len(self.task_record.channels)

    @property
    def num_classes(self) -> int:
        return self.task_record.num_classes


@dataclass
class TrainResult:
    """What a finished fold reports; the same numbers are in the run folder's files."""

    run_dir: Path
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    n_train: int
    n_valid: int
    macro_ap_weak: float
    macro_ap_true: float | None
    baseline_ap_weak: float
    baseline_ap_true: float | None
    seconds: float
    scores: pd.DataFrame


# --------------------------------------------------------------------------- helpers


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def split_cells(cells: pd.DataFrame, fold: int, limit: int = 0, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, valid) cells for validation fold ``fold``; ``limit`` keeps a seeded random subset of each."""
    folds = sorted(cells["fold"].unique())
    if fold not in folds:
        raise InputError(f"fold {fold} is not in the cells table (folds: {', '.join(map(str, folds))})")
    train = cells[cells["fold"] != fold]
    valid = cells[cells["fold"] == fold]
    if train.empty:
        raise InputError(f"no training cells: every cell is in fold {fold}")
    if limit:
        train = train.sample(n=min(limit, len(train)), random_state=seed).sort_index()
        valid = valid.sample(n=min(limit, len(valid)), random_state=seed + 1).sort_index()
    return train.reset_index(drop=True), valid.reset_index(drop=True)


def warmup_cosine(step: int, total: int, warmup: int, floor: float) -> float:
    """LR multiplier at optimizer step ``step``: linear warmup to 1, then cosine down to ``floor``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(total - warmup, 1)
    t = min(max(step - warmup, 0) / span, 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def make_optimizer_factory(cfg: TrainConfig, optimizer_steps_per_epoch: int):
    """``net -> (optimizer, LambdaLR)`` for tez: no weight decay on biases/norms; warmup + cosine per step."""

    def factory(net: nn.Module):
        decay, no_decay = [], []
        for p in net.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        optimizer = opt_cls(groups, lr=cfg.lr)
        total = optimizer_steps_per_epoch * cfg.epochs
        warmup = int(round(cfg.warmup_epochs * optimizer_steps_per_epoch))
        floor = cfg.min_lr / cfg.lr
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, warmup, floor))
        return optimizer, scheduler

    return factory


def _resolve_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("device cuda requested but torch sees no CUDA device (use --device cpu)")
    return torch.device("cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


def _check_resume_config(cfg: TrainConfig, saved_path: Path) -> TrainConfig:
    """The saved config, with the fields allowed to change taken from ``cfg``; one-line error otherwise."""
    if not saved_path.exists():
        raise InputError(f"{saved_path}: not found; nothing to resume")
    saved = json.loads(saved_path.read_text())
    saved.pop("_config", None)
    for f in dataclasses.fields(TrainConfig):
        if f.name in RESUMABLE_CHANGES or f.name not in saved:
            continue
        mine = getattr(cfg, f.name)
        if f.name in ("mean", "std") and not mine:
            continue
        if mine != saved[f.name] and not (isinstance(mine, float) and math.isclose(mine, float(saved[f.name]))):
            raise InputError(
                f"--resume: {f.name} is {mine!r} but the saved run used {saved[f.name]!r}; "
                "use the same settings or another --run-name"
            )
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    merged = {k: v for k, v in saved.items() if k in names}
    merged.update({k: getattr(cfg, k) for k in RESUMABLE_CHANGES})
    return TrainConfig(**merged)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RunRecorder(Callback):
    """After every epoch: one row in ``metrics.csv``, ``curves.png`` redrawn, ``last.pt`` saved.

    Runs after :class:`EarlyStopping` in the callback list, so the row knows whether this epoch
    became the best and ``last.pt`` carries the updated early-stopping state.
    """

    def __init__(self, run_dir: Path, n_train: int, early: EarlyStopping, history: list[dict], title: str) -> None:
        self.run_dir = run_dir
        self.n_train = n_train
        self.early = early
        self.history = history
        self.title = title
        self._t0 = self._t_train = 0.0

    def on_epoch_start(self, tez_trainer, **kwargs) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, tez_trainer, **kwargs) -> None:
        self._t_train = time.perf_counter() - self._t0

    def on_epoch_end(self, tez_trainer, **kwargs) -> None:
        epoch = int(tez_trainer.current_epoch)
        valid = tez_trainer.metrics["valid"]
        row: dict[str, Any] = {
            "epoch": epoch,
            "lr": float(tez_trainer.optimizer.param_groups[0]["lr"]),
            "train_loss": float(tez_trainer.metrics["train"]["loss"]),
        }
        for k, v in valid.items():
            if k not in ("epoch", "steps"):
                row[f"valid_{k}"] = float(v)
        row["best"] = self.early.best_epoch == epoch
        for k, v in enumerate(tez_trainer.valid_extra.get("ap", [])):
            row[f"ap_{k}"] = float(v)
        row["train_seconds"] = round(self._t_train, 3)
        row["epoch_seconds"] = round(time.perf_counter() - self._t0, 3)
        row["train_cells_per_s"] = round(self.n_train / max(self._t_train, 1e-9), 2)
        self.history.append(row)
        history = pd.DataFrame(self.history)
        write_csv(self.run_dir / "metrics.csv", history)
        plot_training_curves(history, self.run_dir / "curves.png", self.title)
        stopped = tez_trainer.model_state.value == "end"
        state = tez_trainer.training_state()
        state.update(
            epoch=epoch + 1,
            stopped=bool(stopped),
            early_stopping=self.early.state_dict(),
            history=self.history,
            rng=_rng_state(),
        )
        save_plain(state, self.run_dir / "last.pt")


# --------------------------------------------------------------------------- the run


def train_fold(cfg: TrainConfig, callbacks: Sequence[Callback] = (), command: str | None = None) -> TrainResult | None:
    """Train fold ``cfg.fold`` (or continue it with ``cfg.resume``), then predict and score its cells.

    ``callbacks`` are extra tez callbacks run after the built-in ones (loggers, notebooks).
    Returns a :class:`TrainResult`; every number is also written to the run folder. Under
    ``accelerate launch`` only rank 0 scores and writes; the other ranks return ``None``.
    """
    t_start = time.perf_counter()
    run_dir = cfg.run_dir
    state: dict[str, Any] | None = None
    if cfg.resume:
        cfg = _check_resume_config(cfg, run_dir / "config.json")
        state = load_plain(run_dir / "last.pt")
    seed_everything(cfg.seed)

    cells = read_cells(cfg.folds_csv, cfg.num_classes)
    train_cells, valid_cells = split_cells(cells, cfg.fold, cfg.limit, cfg.seed)
    if cfg.label_source == "true":
        if "true" not in cells.columns:
            raise InputError(f"{cfg.folds_csv}: --label-source true needs a TrueLabel column")
        train_cells = train_cells[[len(t) > 0 for t in train_cells["true"]]].reset_index(drop=True)
    if len(train_cells) < 2:
        raise InputError(f"only {len(train_cells)} training cell(s) for fold {cfg.fold}; need at least 2")
    check_crops_exist(list(train_cells["crop_path"]) + list(valid_cells["crop_path"]))
    y_train = label_matrix(train_cells, cfg.label_source, cfg.num_classes)
    y_valid = label_matrix(valid_cells, cfg.label_source, cfg.num_classes)
    y_valid_weak = label_matrix(valid_cells, "weak", cfg.num_classes)
    y_valid_true = label_matrix(valid_cells, "true", cfg.num_classes) if "true" in valid_cells.columns else None
    if cfg.monitor == "macro_ap" and not y_valid.any():
        raise InputError(f"fold {cfg.fold} has no positive labels: monitor macro_ap is undefined (use --monitor loss)")

    # the backbone first: a missing ImageNet file fails before anything is written
    net = _build_net(cfg, pretrained="none" if state else cfg.pretrained)
    if state:
        net.load_state_dict(state["model"])

    if not cfg.mean:
        rng = np.random.default_rng(cfg.seed)
        pick = rng.choice(len(train_cells), size=min(cfg.stats_samples, len(train_cells)), replace=False)
        mean, std = channel_stats([load_crop(train_cells["crop_path"][i], cfg.in_chans) for i in pick], cfg.image_size)
        cfg = dataclasses.replace(cfg, mean=mean, std=std)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.json")

    device = _resolve_device(cfg.device)
    on_cuda = device.type == "cuda"
    batch_size = min(cfg.batch_size, len(train_cells))
    train_ds = CellCropDataset(
        train_cells["crop_path"], y_train, cfg.image_size, cfg.mean, cfg.std, build_augment(cfg.aug_gain), cfg.in_chans
    )
    valid_ds = CellCropDataset(valid_cells["crop_path"], y_valid, cfg.image_size, cfg.mean, cfg.std, None, cfg.in_chans)
    sampler = EpochSampler(len(train_ds), cfg.seed)
    loader_kw = {"num_workers": cfg.num_workers, "pin_memory": on_cuda, "persistent_workers": cfg.num_workers > 0}
    train_loader = DataLoader(train_ds, batch_size=batch_size, sampler=sampler, drop_last=True, **loader_kw)
    valid_loader = DataLoader(valid_ds, batch_size=2 * cfg.batch_size, shuffle=False, **loader_kw) if len(valid_ds) else None
    if valid_loader is None:
        raise InputError(f"fold {cfg.fold} has no cells to validate on")

    world = int(os.environ.get("WORLD_SIZE", "1"))  # set by accelerate launch; batches are sharded over ranks
    steps_per_epoch = math.ceil(math.ceil(len(train_loader) / world) / cfg.grad_accum)
    module = TezModule(net, nn.BCEWithLogitsLoss(), make_optimizer_factory(cfg, steps_per_epoch), on_cuda and cfg.channels_last)

    def epoch_metrics(logits: np.ndarray, targets: np.ndarray, index: np.ndarray):
        probs = expit(logits)  # overflow-free sigmoid
        ap = per_class_ap(probs, targets)
        shown = {"macro_ap": nanmean(ap), "macro_f1": nanmean(per_class_f1(probs, targets))}
        other = y_valid_true if cfg.label_source == "weak" else y_valid_weak
        if other is not None:
            shown[f"macro_ap_{'true' if cfg.label_source == 'weak' else 'weak'}"] = nanmean(per_class_ap(probs, other[index]))
        return shown, {"ap": ap}

    trainer = CellTez(
        module,
        device=cfg.device,
        mixed_precision="fp16" if on_cuda and cfg.amp else "no",
        epoch_metrics=epoch_metrics,
        resume_state=state,
    )
    early = EarlyStopping(
        f"valid_{cfg.monitor}", run_dir / "best.pt", patience=cfg.patience, mode="min" if cfg.monitor == "loss" else "max"
    )
    history: list[dict] = []
    start_epoch = 0
    if state:
        early.load_state_dict(state["early_stopping"])
        history = list(state["history"])
        start_epoch = int(state["epoch"])
        write_csv(run_dir / "metrics.csv", pd.DataFrame(history))
    title = f"{cfg.run_name} fold {cfg.fold}: {cfg.model}, {cfg.image_size}px, {cfg.label_source} labels"
    recorder = RunRecorder(run_dir, len(train_ds) // batch_size * batch_size, early, history, title)
    trainer.current_epoch = start_epoch
    remaining = cfg.epochs - start_epoch
    stopped = bool(state and state.get("stopped"))
    if remaining > 0 and not stopped:
        if state:
            _set_rng_state(state["rng"])
        tez_config = TezConfig(
            device=str(device),
            training_batch_size=batch_size,
            validation_batch_size=2 * cfg.batch_size,
            epochs=remaining,
            gradient_accumulation_steps=cfg.grad_accum,
            clip_grad_norm=cfg.clip_grad if cfg.clip_grad > 0 else -1,
            num_jobs=cfg.num_workers,
            step_scheduler_after="batch",
            pin_memory=on_cuda,
        )
        trainer.fit(
            train_ds,
            valid_ds,
            config=tez_config,
            train_loader=train_loader,
            valid_loader=valid_loader,
            callbacks=[early, recorder, *callbacks],
        )
        stopped = trainer.model_state.value == "end"
    trainer.wait_for_everyone()
    if not trainer.is_main_process():
        return None  # under accelerate launch, rank 0 predicts, scores and writes

    # Honest scoring: the best epoch's weights on every validation cell, against weak and true labels.
    model = load_model(run_dir, device=device)
    probs = predict_crops(model, list(valid_cells["crop_path"]), tta=cfg.tta, batch_size=2 * cfg.batch_size,
                          num_workers=cfg.num_workers)
    names = cfg.task_record.label_set.names
    preds = pd.DataFrame(probs, columns=[f"p{k}" for k in range(cfg.num_classes)])
    preds.insert(0, "cell_id", valid_cells["cell_id"].to_numpy())
    preds.insert(0, "ID", valid_cells["ID"].to_numpy())
    write_csv(run_dir / "val_predictions.csv", preds)
    scores = score_table(probs, y_valid_weak, y_valid_true, names)
    write_csv(run_dir / "scores.csv", scores)

    macro = scores.iloc[-1]
    history_df = pd.DataFrame(history)
    best_epoch = int(early.best_epoch) if early.best_epoch is not None else int(history_df["epoch"].iloc[-1])
    result = TrainResult(
        run_dir=run_dir,
        best_epoch=best_epoch,
        epochs_run=len(history),
        stopped_early=stopped and len(history) < cfg.epochs,
        n_train=len(train_cells),
        n_valid=len(valid_cells),
        macro_ap_weak=float(macro["ap_weak"]),
        macro_ap_true=float(macro["ap_true"]) if y_valid_true is not None else None,
        baseline_ap_weak=float(macro["prevalence_weak"]),
        baseline_ap_true=float(macro["prevalence_true"]) if y_valid_true is not None else None,
        seconds=round(time.perf_counter() - t_start, 2),
        scores=scores,
    )
    summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(result).items() if k != "scores"}
    summary.update(
        device=str(device),
        amp=bool(on_cuda and cfg.amp),
        channels_last=bool(on_cuda and cfg.channels_last),
        unmatched_valid_cells=int(sum(len(t) == 0 for t in valid_cells["true"])) if y_valid_true is not None else None,
        command=command,
        versions={"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                  "tez": __import__("tez").__version__},
    )
    write_json(run_dir / "summary.json", summary)
    return result


def _build_net(cfg: TrainConfig, pretrained: str) -> nn.Module:
    return create_model(cfg.model, cfg.in_chans, cfg.num_classes, pretrained, image_size=cfg.image_size,
                        cache_dir=cfg.weights_dir or None)


def format_summary(result: TrainResult) -> str:
    """A few lines for the terminal: where the run is and how it scored."""
    true = (
        f"macro AP vs TRUE cell labels {result.macro_ap_true:.4f} (label-frequency baseline {result.baseline_ap_true:.4f})"
        if result.macro_ap_true is not None
        else "no TrueLabel column: true-label AP not available"
    )
    return "\n".join(
        [
            f"run: {result.run_dir}  ({result.n_train} training / {result.n_valid} validation cells, "
            f"{result.epochs_run} epochs, best {result.best_epoch}{', stopped early' if result.stopped_early else ''}, "
            f"{result.seconds:.0f} s)",
            f"validation: {true}",
            f"            macro AP vs weak field labels {result.macro_ap_weak:.4f} (baseline {result.baseline_ap_weak:.4f})",
        ]
    )


__all__ = [
    "RunRecorder",
    "TrainConfig",
    "TrainResult",
    "format_summary",
    "make_optimizer_factory",
    "per_class_ap",
    "per_class_f1",
    "score_table",
    "seed_everything",
    "split_cells",
    "train_fold",
    "warmup_cosine",
]

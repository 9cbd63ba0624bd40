"""Stage 3: train one fold's classifier (cell crops or whole fields) and score it honestly.

``train_fold(TrainConfig(fold=K))`` trains an EfficientNet (efficientnet-pytorch) on every fold
but K, with Tez as the loop (see :mod:`cellloc.engine`), and picks the best epoch by the
validation loss or any of the task's metrics (``--monitor``). What it trains on is the task's
*level* (``--level`` overrides it): ``cell`` trains on the crops of a segmented cells table,
``image`` on whole fields read through the task's layout (resized, or random crops of a larger
resize; each labelled sample's fields, e.g. RxRx1's two sites, are samples of its label). The
loss, optimizer and schedule are chosen by name (:mod:`cellloc.losses`, :mod:`cellloc.optim`);
outputs are sigmoid per class for multilabel tasks and softmax for multiclass ones.
``--balance-power`` draws each epoch's samples by the rarity of their rarest class
(:mod:`cellloc.sampling`); ``--cache-mb`` keeps image models' decoded, resized fields in RAM,
filled before the first epoch (:mod:`cellloc.field_cache`; the predictions are the same).

Cell models train on the field's weak labels by default (every cell inherits its field's
``Label``, as in HPA); ``label_source="true"`` trains on the per-cell ``TrueLabel`` of generated
data instead. After training, the best epoch's weights predict every validation sample and are
scored: cell models per class against the weak labels *and* the true per-cell labels, when the
table has them (weak-label AP rewards predicting a field's classes on every one of its cells,
which is what the competition metric punishes, so only the true-label number says how good the
per-cell model is); image models against their labels with the task's metrics, a sample's
fields averaged.

A run folder ``<out_dir>/<run_name>/fold<K>/`` holds: ``config.json`` (the config as run, every
default resolved: ``python src/train.py --config .../config.json`` runs it again),
``recipe.json`` (what inference needs: task, model, input recipe, channel statistics; see
:mod:`cellloc.classifier`), ``metrics.csv`` + ``curves.png`` (per epoch), ``best.pt`` (plain
state_dict of the best epoch), ``last.pt`` (weights, optimizer, scheduler, epoch, early-stopping
state and history: what ``--resume`` needs), ``val_predictions.csv``, ``scores.csv`` and
``summary.json``; cell models on field labels add ``negative_split.json`` and ``teacher.json``
(what ``--negative-split`` fit and ``--teacher`` taught, or why not). ``--teacher certain`` (``auto``
by default where it applies) first trains a teacher run of the same recipe on the certain fields
into ``<run_name>-teacher/fold<K>/`` (:mod:`cellloc.runs.teacher`); after half its epochs the student
judges the cells its teacher taught itself and adds ``student_predictions.csv`` (``--relabel-after``,
:mod:`cellloc.runs.relabel`).

A trained model is never lost: a run without ``--resume`` on a folder that holds a run stops
with one line; ``--resume`` continues it (with the same settings; the folder's location may
differ, so a copied run folder resumes too), and ``--overwrite`` moves the old run into
``fold<K>.replaced-<time>`` beside it first. The folder is locked while a run trains in it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
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
from torch.utils.data import DataLoader, Subset

from ..classifier import RECIPE_FILE, TTA_CHOICES, Recipe, load_classifier
from ..config import load_config, opt, save_config
from ..data import (
    ChainedFields,
    CropFiles,
    EpochSampler,
    FieldBatchSampler,
    FieldFiles,
    InputKind,
    SampleDataset,
    build_augment,
    channel_stats,
    check_crops_exist,
    expand_to_fields,
    label_matrix,
    make_input,
    predictions_for,
    read_cells,
    read_samples,
    read_soft_targets,
    soft_targets,
    table_cell_weights,
)
from ..engine import Callback, CellTez, EarlyStopping, TezConfig, TezModule, load_plain, save_plain
from ..errors import InputError
from ..field_cache import CachedFields, FieldCache
from ..field_top import FieldTopTargets
from ..fieldio import dataset_root, multihot, write_csv, write_json
from ..layouts import LAYOUTS
from ..losses import LOSSES, Bootstrapped, create_loss
from ..metrics import METRICS, compute_metrics, metrics_for, multiclass_table, nanmean, per_class_ap, score_table, to_probabilities
from ..models import PRETRAINED_CHOICES, create_model, model_names, recalibrate_batchnorm
from ..negative_split import (NEGATIVE_SPLITS, certain_fields, fit_shows_protein, protein_levels, split_negative,
                              too_few_certain)
from ..optim import OPTIMIZERS, SCHEDULES, ScheduleParams, make_optimizer, make_schedule
from ..plate_assignment import sample_probabilities
from ..plate_norm import NORMALISATIONS, field_normaliser
from ..plots_training import plot_training_curves
from ..registry import Registry
from ..run_state import existing_outputs, folder_lock, move_aside
from ..runtime import cpu_has_native_bf16, set_torch_threads
from ..sampling import BalancedEpochSampler, class_balanced_weights
from ..tasks import DEFAULT_TASK, LEVELS, TASKS, Task, get_task
from ..teacher import (LEVELLED, STUDENT_INITS, TEACHER_PREDICTIONS, TEACHER_TARGETS, TEACHER_WEIGHTS, TEACHERS,
                       certain_cells, teacher_epochs)
from ..torchfile import load_checkpoint
from ..transfer import transfer_state
from ..two_head import TwoHeadModule
from .relabel import RELABEL_PREDICTIONS, Relabel, StudentRelabel, default_relabel_after, restore
from .segment import SegmentRunConfig

# Fields that may differ between a run and its --resume (everything else must match): how long and
# where it runs, and where the run folder is (a copied or moved run folder resumes).
RESUMABLE_CHANGES = frozenset({"epochs", "patience", "num_workers", "threads", "device", "resume", "tta", "tiles", "amp",
                               "cpu_bf16", "channels_last", "cache_mb", "out_dir", "run_name", "weights_dir", "overwrite",
                               "bn_recalibrate_interim"})
# Everything training writes in a fold folder (what --overwrite moves aside).
TRAIN_OUTPUTS = ("config.json", RECIPE_FILE, "metrics.csv", "curves.png", "best.pt", "last.pt", "val_predictions.csv",
                 "scores.csv", "summary.json", "negative_split.json", "teacher.json", TEACHER_PREDICTIONS,
                 RELABEL_PREDICTIONS)


def default_run_name(task: Task, level: str) -> str:
    """``effb2`` for HPA single-cell cell models; the task and a non-default level are appended otherwise."""
    name = "effb2" if task.name == DEFAULT_TASK else f"effb2_{task.name}"
    return name if level == task.level else f"{name}_{level}"


@dataclass
class TrainConfig:
    """Everything one training run used; saved as ``config.json`` in the run folder."""

    task: str = opt(DEFAULT_TASK, "task (names channels, classes, level, loss and metrics)", choices=TASKS.names())
    level: str = opt("", "what the model sees: cell (crops of a cells table) or image (whole fields); default: the task's")
    folds_csv: str = opt("", "table with folds: cells (ID, cell_id, Label, crop, fold[, TrueLabel]) for cell models; "
                         "samples (ID, Label, fold) or cells for image models (default: output/<data_name>/folds.csv)")
    input: str = opt("", "image models: folder of the fields in the task's layout (default: input/<data_name>/train)")
    fold: int = opt(0, "validation fold K; all other folds train")
    out_dir: str = opt("models", "runs go to OUT_DIR/RUN_NAME/fold<K>/")
    run_name: str = opt("", "name of this run's folder under OUT_DIR (default: effb2 for hpa-sc cell models, "
                        "else with the task and level appended, e.g. effb2_image, effb2_rxrx1)")
    model: str = opt("efficientnet-b2", "backbone: a name in cellloc.models.model_names() (efficientnet-b0..b7, resnet18, resnet50, densenet121, se-resnext50-32x4d, se-resnext101-32x4d)")
    pretrained: str = opt("imagenet", "initial weights: imagenet (URL + checksum into the cache) or none (offline)")
    weights_dir: str = opt("", "folder of ImageNet weight files (default $CELLLOC_IMAGENET_DIR or ~/.cache/cellloc/imagenet)")
    image_size: int = opt(260, "network input side in pixels: crops (and fields) are padded to square and resized to it")
    field_resize: int = opt(0, "image models: fields are resized to this side first, then crops of --image-size are "
                            "taken (random in training, --tiles at prediction); 0 = --image-size (the whole field)")
    tiles: int = opt(1, "image models with --field-resize > --image-size: tiles x tiles crops averaged at prediction")
    normalise: str = opt("", "image models: per-field intensity normalisation before the network: none, site (each "
                         "field by its own statistics), experiment, plate, experiment-controls or plate-controls (by the "
                         "pixel_stats.csv beside the input folder: all wells, or the negative controls); "
                         "default: the task's (rxrx1: plate, else none)")
    channels: list[str] = opt([], "image models: only these of the task's channels, in this order (e.g. w1 w2 w3 w4 w5: "
                              "RxRx1 without w6); recorded in recipe.json, so prediction reads the same (default: all)")
    site: int = opt(0, "image models whose samples have several fields (RxRx1's sites 1 and 2): only fields of this "
                    "site, in training and validation (0: every site)")
    subset: list[str] = opt([], "keep only the samples whose COLUMN (of the folds table) is one of the values: "
                            "COLUMN=V1,V2 (e.g. well_type=negative_control,positive_control or cell_type=HEPG2); "
                            "several filters all apply, to --extra-train too")
    extra_train: str = opt("", "image models: a table of more training samples (ID, Label, fold = -1, metadata; what "
                           "pseudo_labels.py writes) added to the training side of the fold; never validated on")
    extra_input: str = opt("", "folder of --extra-train's fields (default: test beside --input)")
    init_from: str = opt("", "start from another run's weights instead of --pretrained: a run folder (its fold<K>) or a "
                         "fold folder; same backbone; the stem follows --channels and the head the class count")
    label_source: str = opt("weak", "cell models' training labels: weak (the field's Label) or true (the cell's TrueLabel)")
    soft_targets: str = opt("", "cell models on weak labels: a run folder whose fold*/val_predictions.csv hold an "
                            "out-of-fold prediction of every training cell (or one such CSV); a cell's target becomes "
                            "its field's label times (1 - w + w * prediction), w = --soft-weight: never a class its "
                            "field lacks")
    soft_weight: float = opt(1.0, "--soft-targets: share of the target taken from the prediction (0: the field labels)")
    bootstrap: float = opt(0.0, "cell models on weak labels: after --bootstrap-start epochs, a cell's training target "
                           "becomes its field's label times (1 - w + w * the model's own current score), w = this; "
                           "no second model (0: off)")
    bootstrap_start: int = opt(2, "--bootstrap: epochs of plain field labels first (the early scores are noise)")
    field_top: float = opt(1.0, "cell models on weak labels: after --field-top-start epochs, each class a field names "
                           "is trained only on this share of its cells, those the model scores highest for it (the "
                           "others are not trained on that class); a class the field lacks stays 0 (1: off)")
    field_top_start: int = opt(2, "--field-top: epochs of plain field labels first (the early scores are noise)")
    negative_split: str = opt("auto", "cell models on weak labels of a task with a Negative class: intensity (a cell of "
                              "a field labelled Negative and other classes is told Negative or the others by how likely "
                              "its protein channel shows protein, a logistic model fit on the cells of fields labelled "
                              "Negative alone and of fields without Negative; docs/cellgap.md round 10), none, or auto "
                              "(intensity where it applies and the training cells hold at least 5 of each such kind)")
    teacher: str = opt("auto", "cell models on weak labels of a multilabel task: certain (first train a teacher, the "
                       "same recipe on the training cells of fields naming at most one class besides Negative, into "
                       "<run_name>-teacher/fold<K>; then each cell of a field naming several trains on its field's "
                       "label times (1 - w + w * the teacher's prediction), w = --teacher-weight; docs/cellgap.md round "
                       "11), none, or auto (certain where it applies and the training cells hold fields naming several "
                       "classes and at least 64 cells of fields naming at most one)", choices=list(TEACHERS))
    teacher_targets: str = opt("levelled", "--teacher: what a taught cell learns from the teacher: posterior (the "
                               "chance the cell shows each of its field's classes given that it shows one, from the "
                               "teacher's predictions of the classes it trained on and the certain fields' share of "
                               "cells showing their class for the others; docs/cellgap.md round 13), levelled (that "
                               "chance with each field's mean of each of its classes set to that share, the ranking of "
                               "its cells kept; round 14, the default), field-levelled (each field levelled to its "
                               "own share, from how many classes it names and how many of its cells show protein; "
                               "round 21) or prediction (as they are, round 11)",
                               choices=list(TEACHER_TARGETS))
    teacher_weight: float = opt(-1.0, "--teacher: share of a taught cell's target taken from those targets (-1: the one "
                                "each was measured with, 1 for the levelled ones, 0.5 for the others)")
    teacher_epochs: int = opt(0, "--teacher: the teacher's epochs (0: half of --epochs, rounded up; as good as all of "
                              "them on the demo's fields)")
    student_init: str = opt("teacher", "--teacher: where the student's weights start once a teacher taught it: teacher "
                            "(its trained weights; docs/cellgap.md round 16) or scratch (--pretrained or --init-from, "
                            "as the teacher started)", choices=list(STUDENT_INITS))
    relabel_after: int = opt(-1, "--teacher: after this many of its epochs the student predicts its taught cells (those "
                             "of fields naming several classes) and they train on its judgement from then on, every "
                             "class judged by the --teacher-targets rule (-1: half of --epochs, rounded down, where a "
                             "teacher teaches; 0: never; docs/cellgap.md rounds 19 and 20)")
    train_fields: str = opt("all", "cell models: train on the cells of all fields, or only of the certain ones (fields "
                            "naming at most one class besides Negative: what --teacher trains on)",
                            choices=["all", "certain"])
    cell_weights: str = opt("none", "cell models: none; weight (each cell's loss times min(1, area / its field's median), "
                            "halved for edge-cut cells, 0 without a nucleus); drop (leave out edge-cut cells, cells "
                            "under half their field's median area and cells without a nucleus)",
                            choices=["none", "weight", "drop"])
    image_head: str = opt("none", "cell models: none, or a second head on the pooled features of a field's cells "
                          "(mean, max or attention) trained on the field's labels beside the cell head; batches "
                          "then hold the cells of a few fields", choices=["none", "mean", "max", "attention"])
    image_loss_weight: float = opt(1.0, "--image-head: weight of the image head's loss (the cell head's is 1)")
    cells_per_field: int = opt(8, "--image-head: at most this many cells of one field per batch (batch_size / this "
                               "fields per batch)")
    epochs: int = opt(10, "maximum epochs (early stopping may end sooner)")
    batch_size: int = opt(32, "training batch size (validation uses twice this)")
    loss: str = opt("", "loss: bce, focal or ce (softmax cross-entropy; one class per sample); default: the task's")
    focal_gamma: float = opt(2.0, "focal loss: gamma (0 = bce)")
    label_smoothing: float = opt(0.0, "ce loss: label smoothing eps (the target becomes (1 - eps) * onehot + eps / C)")
    optimizer: str = opt("adamw", "optimizer: adam, adamw, nadam or sgd (Nesterov momentum)")
    lr: float = opt(1e-3, "peak learning rate")
    weight_decay: float = opt(1e-2, "weight decay (not applied to biases and norm layers)")
    momentum: float = opt(0.9, "SGD momentum; beta1 of the Adam family")
    schedule: str = opt("cosine", "learning-rate schedule: cosine (with --warmup-epochs), onecycle, exponential or constant")
    warmup_epochs: float = opt(0.0, "cosine: linear warmup length in epochs before the decay (0 = none)")
    min_lr: float = opt(1e-6, "cosine and onecycle: learning rate at the end")
    start_lr: float = opt(0.0, "onecycle: learning rate at the start (0 = lr / 25)")
    warmup_share: float = opt(0.3, "onecycle: share of the steps spent rising to lr")
    momentum_range: list[float] = opt([0.85, 0.95], "onecycle: momentum (beta1) low and high; it falls while lr rises")
    lr_decay: float = opt(0.9, "exponential: learning-rate factor per epoch")
    monitor: str = opt("loss", "what picks the best epoch and stops early: loss or a metric of the task's kind "
                       "(macro_ap, macro_f1; accuracy, top5_accuracy, ...), or last (keep the last epoch, no early stop: "
                       "a schedule that decays to --min-lr usually ends best, and the weak-label loss of a cell model "
                       "does not track its per-cell quality)")
    patience: int = opt(3, "epochs without improvement before stopping")
    bn_recalibrate: int = opt(2048, "before each validation, BatchNorm statistics are recomputed with the current weights "
                              "over this many training samples (unaugmented; 0: keep the running averages, which lag "
                              "the weights and make a short run answer every input alike)")
    bn_recalibrate_interim: int = opt(128, "with --monitor last, the validations before the last epoch recompute "
                                      "them over only this many of those samples: they only draw the curves, and the "
                                      "saved weights still get the full count (0: the full count every epoch)")
    ema: float = opt(0.0, "exponential moving average of the weights, decay per optimiser step (e.g. 0.99: a time "
                     "constant of about 100 steps); the average is validated and saved, BatchNorm recalibrated for it "
                     "(--bn-recalibrate), the live weights go on training (0: off)")
    grad_accum: int = opt(1, "gradient accumulation steps")
    clip_grad: float = opt(0.0, "gradient norm clip (0 = off)")
    aug_gain: float = opt(0.1, "per-channel intensity gain range +-; 0 disables the intensity augmentation")
    balance_power: float = opt(0.0, "class-balanced sampling: each epoch draws its samples with replacement, weighted by "
                               "(samples of their rarest class)^-POWER; 0 = plain shuffle, 0.5 = square root, 1 = classes alike")
    cache_mb: int = opt(0, "image models: MiB of RAM for decoded, resized fields, filled before the first epoch "
                        "(0 = off); epochs then skip PNG decoding and resizing for the fields that fit")
    num_workers: int = opt(2, "DataLoader worker processes")
    threads: int = opt(0, "intra-op threads on the CPU (0: $CELLLOC_THREADS, else $OMP_NUM_THREADS, else every CPU "
                       "this process may use)")
    device: str = opt("auto", "auto (CUDA when present), cpu or cuda")
    amp: bool = opt(True, "fp16 mixed precision on CUDA (ignored on CPU)")
    cpu_bf16: str = opt("off", "bfloat16 autocast of the forward passes when training on a CPU: off, on, or auto (on "
                        "where the CPU computes bf16 natively, AMX or AVX512-BF16); weights, optimiser and saved files "
                        "stay float32. Alone 1.28x faster here; two bf16 trainings at once ran 11-17x slower per "
                        "step (bench/bench_cpu_bf16.py)", choices=["off", "on", "auto"])
    channels_last: bool = opt(True, "channels_last memory format on CUDA (ignored on CPU)")
    seed: int = opt(42, "seed for weights, data order and augmentation")
    limit: int = opt(0, "use at most this many training and this many validation samples (0 = all; smoke runs)")
    resume: bool = opt(False, "continue from the run folder's last.pt")
    overwrite: bool = opt(False, "start over in a folder that holds a run: move it to fold<K>.replaced-<time> first",
                          saved=False)
    tta: int = opt(1, "dihedral views averaged when predicting the validation fold (1, 2, 4, 8)")
    mean: list[float] = opt([], "per-channel mean after /dtype-max (default: measured on training samples)")
    std: list[float] = opt([], "per-channel std after /dtype-max (default: measured on training samples)")
    stats_samples: int = opt(256, "training samples drawn to measure mean/std")

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise InputError(msg)

        task = get_task(self.task)
        self.level = self.level or task.level
        need(self.level in LEVELS, f"level must be one of {', '.join(LEVELS)}, got {self.level!r}")
        self.folds_csv = self.folds_csv or str(Path("output") / task.data_name / "folds.csv")
        self.input = self.input or (str(task.data_dir("train")) if self.level == "image" else "")
        self.run_name = self.run_name or default_run_name(task, self.level)
        self.loss = self.loss or task.loss
        self.field_resize = self.field_resize or self.image_size
        self.normalise = self.normalise or (task.normalise if self.level == "image" else "none")
        need(self.fold >= 0, f"fold must be >= 0, got {self.fold}")
        need("/" not in self.run_name and self.run_name not in (".", ".."),
             f"run_name must be a plain folder name, got {self.run_name!r}")
        need(self.model in model_names(), f"unknown model {self.model!r}; known: {', '.join(model_names())}")
        need(self.pretrained in PRETRAINED_CHOICES, f"pretrained must be none or imagenet, got {self.pretrained!r}")
        need(32 <= self.image_size <= 2048, f"image_size must be in 32..2048, got {self.image_size}")
        need(self.image_size <= self.field_resize <= 8192, f"field_resize must be in image_size..8192, got {self.field_resize}")
        need(self.tiles >= 1 and (self.tiles == 1 or self.field_resize > self.image_size),
             f"tiles must be >= 1, and 1 unless --field-resize is larger than --image-size; got {self.tiles}")
        need(self.normalise in NORMALISATIONS, f"normalise must be one of {', '.join(NORMALISATIONS)}, got {self.normalise!r}")
        need(self.normalise == "none" or self.level == "image", "normalise applies to image models (whole fields)")
        unknown = [c for c in self.channels if c not in task.channels]
        need(not unknown, f"channels: {', '.join(unknown)} are not channels of task {task.name} ({', '.join(task.channels)})")
        need(len(set(self.channels)) == len(self.channels), f"channels: {' '.join(self.channels)} names one twice")
        need(not self.channels or self.level == "image", "channels selects whole-field channels: it needs an image-level model")
        need(self.site >= 0, f"site must be >= 0, got {self.site}")
        need(self.site == 0 or self.level == "image", "site selects fields: it needs an image-level model")
        for rule in self.subset:
            col, _, values = rule.partition("=")
            need(bool(col.strip()) and bool(values.strip()), f"subset: {rule!r} is not COLUMN=V1,V2")
        need(not self.extra_train or self.level == "image", "extra_train adds whole fields: it needs an image-level model")
        self.extra_input = self.extra_input or (str(Path(self.input).parent / "test") if self.extra_train else "")
        need(self.label_source in ("weak", "true"), f"label_source must be weak or true, got {self.label_source!r}")
        need(self.label_source == "weak" or self.level == "cell", "label_source true needs cell-level training (per-cell truth)")
        cell_only = {"soft_targets": bool(self.soft_targets), "cell_weights": self.cell_weights != "none",
                     "image_head": self.image_head != "none"}
        for name, used in cell_only.items():
            need(not used or self.level == "cell", f"{name} is for cell-level training")
        need(not self.soft_targets or self.label_source == "weak", "soft_targets refine the weak labels: use label_source weak")
        need(0 <= self.soft_weight <= 1, f"soft_weight must be in [0, 1], got {self.soft_weight}")
        need(0 <= self.bootstrap <= 1, f"bootstrap must be in [0, 1], got {self.bootstrap}")
        need(self.bootstrap_start >= 0, f"bootstrap_start must be >= 0, got {self.bootstrap_start}")
        need(not self.bootstrap or (self.level == "cell" and self.label_source == "weak" and task.kind == "multilabel"),
             "bootstrap refines weak labels of a multilabel task: it needs cell-level training with label_source weak")
        need(not self.bootstrap or self.image_head == "none", "bootstrap is for the cell head alone: use image_head none")
        need(0 < self.field_top <= 1, f"field_top must be in (0, 1], got {self.field_top}")
        need(self.field_top_start >= 0, f"field_top_start must be >= 0, got {self.field_top_start}")
        need(self.field_top == 1 or (self.level == "cell" and self.label_source == "weak" and task.kind == "multilabel"),
             "field_top refines weak labels of a multilabel task: it needs cell-level training with label_source weak")
        need(self.field_top == 1 or not self.bootstrap, "field_top and bootstrap both rewrite the targets: use one")
        need(self.field_top == 1 or self.image_head == "none", "field_top is for the cell head alone: use image_head none")
        splits = self.level == "cell" and self.label_source == "weak" and task.label_set.negative is not None \
            and bool(task.protein_channel)
        need(self.negative_split in NEGATIVE_SPLITS, f"negative_split must be one of {', '.join(NEGATIVE_SPLITS)}, "
             f"got {self.negative_split!r}")
        self.negative_split = "none" if self.negative_split == "auto" and not splits else self.negative_split
        need(self.negative_split in ("none", "auto") or splits,
             "negative_split splits weak labels of a task with a Negative class and a protein channel: it needs "
             "cell-level training with label_source weak")
        need(self.teacher in TEACHERS, f"teacher must be one of {', '.join(TEACHERS)}, got {self.teacher!r}")
        need(self.train_fields in ("all", "certain"), f"train_fields must be all or certain, got {self.train_fields!r}")
        teaches = self.level == "cell" and self.label_source == "weak" and task.kind == "multilabel"
        # auto: not beside --soft-targets, which already soften the targets by another model's predictions
        self.teacher = "none" if self.teacher == "auto" and (not teaches or self.soft_targets) else self.teacher
        need(self.teacher in ("none", "auto") or teaches,
             "teacher teaches the cells of fields naming several classes of a multilabel task: it needs cell-level "
             "training with label_source weak")
        need(self.teacher == "none" or not self.soft_targets, "teacher and soft_targets both soften the targets by "
             "another model's predictions: use one (or --teacher none)")
        need(self.teacher_targets in TEACHER_TARGETS,
             f"teacher_targets must be one of {', '.join(TEACHER_TARGETS)}, got {self.teacher_targets!r}")
        if self.teacher_weight == -1:  # saved resolved, so a run's config says the weight it trained with
            self.teacher_weight = TEACHER_WEIGHTS[self.teacher_targets]
        need(0 <= self.teacher_weight <= 1, f"teacher_weight must be in [0, 1] (or -1: the targets' own), got "
             f"{self.teacher_weight}")
        need(self.student_init in STUDENT_INITS,
             f"student_init must be one of {', '.join(STUDENT_INITS)}, got {self.student_init!r}")
        need(self.teacher_epochs >= 0, f"teacher_epochs must be >= 0 (0: half of --epochs), got {self.teacher_epochs}")
        rejudges = self.teacher != "none" and self.image_head == "none"  # a teacher's taught cells, one target each
        if self.relabel_after == -1:  # saved resolved, so a run's config says after which epoch its student judged
            self.relabel_after = default_relabel_after(self.epochs, rejudges)
        need(0 <= self.relabel_after < self.epochs or self.relabel_after == 0,
             f"relabel_after must be in 0..epochs - 1 ({self.epochs - 1}; or -1: half the epochs): the epochs after "
             f"it train on the student's judgement; got {self.relabel_after}")
        need(self.relabel_after == 0 or rejudges,
             "relabel_after rejudges the cells a teacher taught: it needs --teacher (and no --image-head)")
        need(self.train_fields == "all" or self.level == "cell", "train_fields certain selects cells: it needs "
             "cell-level training")
        need(self.image_head == "none" or self.balance_power == 0,
             "image_head batches whole fields' cells: it cannot be combined with balance_power")
        need(self.image_loss_weight >= 0, f"image_loss_weight must be >= 0, got {self.image_loss_weight}")
        need(self.cells_per_field >= 1 and (self.image_head == "none" or self.cells_per_field <= self.batch_size),
             f"cells_per_field must be in 1..batch_size ({self.batch_size}), got {self.cells_per_field}")
        need(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        need(self.batch_size >= 2, f"batch_size must be >= 2 (batch norm needs 2 samples), got {self.batch_size}")
        need(math.isfinite(self.lr) and self.lr > 0, f"lr must be a positive number, got {self.lr}")
        need(self.loss in LOSSES.names(), f"loss must be one of {', '.join(LOSSES.names())}, got {self.loss!r}")
        need(task.kind in LOSSES[self.loss].kinds, f"loss {self.loss} does not fit {task.kind} task {task.name}")
        need(self.focal_gamma >= 0, f"focal_gamma must be >= 0, got {self.focal_gamma}")
        need(0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        need(self.optimizer in OPTIMIZERS.names(), f"optimizer must be one of {', '.join(OPTIMIZERS.names())}, got {self.optimizer!r}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        need(self.schedule in SCHEDULES.names(), f"schedule must be one of {', '.join(SCHEDULES.names())}, got {self.schedule!r}")
        need(0 <= self.warmup_epochs < self.epochs, f"warmup_epochs must be in [0, epochs), got {self.warmup_epochs}")
        need(self.warmup_epochs < teacher_epochs(self.epochs, self.teacher_epochs) or self.teacher == "none",
             f"warmup_epochs must be below the teacher's epochs ({teacher_epochs(self.epochs, self.teacher_epochs)}), "
             f"got {self.warmup_epochs}")
        need(0 <= self.min_lr <= self.lr, f"min_lr must be in [0, lr], got {self.min_lr}")
        need(0 <= self.start_lr <= self.lr, f"start_lr must be in [0, lr], got {self.start_lr}")
        need(0 < self.warmup_share < 1, f"warmup_share must be in (0, 1), got {self.warmup_share}")
        need(len(self.momentum_range) == 2 and 0 <= self.momentum_range[0] <= self.momentum_range[1] < 1,
             f"momentum_range must be two values low <= high in [0, 1), got {self.momentum_range}")
        need(0 < self.lr_decay <= 1, f"lr_decay must be in (0, 1], got {self.lr_decay}")
        monitors = ["loss", "last", *metrics_for(task.kind)]
        need(self.monitor in monitors, f"monitor must be one of {', '.join(monitors)} for {task.kind} task {task.name}, "
                                       f"got {self.monitor!r}")
        need(self.patience >= 1, f"patience must be >= 1, got {self.patience}")
        need(self.bn_recalibrate >= 0 and self.bn_recalibrate_interim >= 0,
             f"bn_recalibrate and bn_recalibrate_interim must be >= 0, got {self.bn_recalibrate}, {self.bn_recalibrate_interim}")
        need(0 <= self.ema < 1, f"ema must be in [0, 1) (a decay per optimiser step; 0: off), got {self.ema}")
        need(self.grad_accum >= 1, f"grad_accum must be >= 1, got {self.grad_accum}")
        need(self.clip_grad >= 0, f"clip_grad must be >= 0, got {self.clip_grad}")
        need(0 <= self.aug_gain < 1, f"aug_gain must be in [0, 1), got {self.aug_gain}")
        need(0 <= self.balance_power <= 2, f"balance_power must be in [0, 2], got {self.balance_power}")
        need(self.cache_mb >= 0, f"cache_mb must be >= 0, got {self.cache_mb}")
        need(self.cache_mb == 0 or self.level == "image", "cache_mb caches whole fields: it needs an image-level model")
        need(self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}")
        need(self.threads >= 0, f"threads must be >= 0, got {self.threads}")
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
    def channel_names(self) -> tuple[str, ...]:
        """The channel files the model reads, in input order: ``--channels`` or the task's."""
        return tuple(self.channels) or self.task_record.channels

    @property
    def in_chans(self) -> int:
        """Channels per input."""
        return len(self.channel_names)

    @property
    def num_classes(self) -> int:
        return self.task_record.num_classes

    @property
    def metric_names(self) -> list[str]:
        """The task's metrics, and the monitored one if it is not among them."""
        names = list(self.task_record.metrics)
        return names + [self.monitor] if self.monitor not in ("loss", "last", *names) else names


@dataclass
class TrainResult:
    """What a finished fold reports; the same numbers are in the run folder's files."""

    run_dir: Path
    level: str
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    n_train: int
    n_valid: int
    metrics: dict[str, float]  # the task's metrics on the validation fold, the headline first
    baselines: dict[str, float]  # what a constant guess (the label frequencies) scores on each
    macro_ap_weak: float | None  # multilabel: per-class AP vs the labels trained on (weak for cells)
    macro_ap_true: float | None  # cell models on generated data: vs the true per-cell labels
    baseline_ap_weak: float | None
    baseline_ap_true: float | None
    seconds: float
    scores: pd.DataFrame
    replaced: Path | None = None  # where --overwrite moved the folder's previous run
    negative_split: dict[str, Any] | None = None  # --negative-split: what it fit and split (or why not)
    teacher: dict[str, Any] | None = None  # --teacher: the teacher run and what it taught (or why not)


# --------------------------------------------------------------------------- helpers


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def split_cells(cells: pd.DataFrame, fold: int, limit: int = 0, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, valid) rows for validation fold ``fold``; ``limit`` keeps a seeded random subset of each."""
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


@dataclass
class SampleSets:
    """A fold's training and validation samples at one level, with what reads them and their targets."""

    train: pd.DataFrame  # one row per training sample (a cell, or a field)
    valid: pd.DataFrame
    train_reader: Sequence[np.ndarray]
    valid_reader: Sequence[np.ndarray]
    y_train: np.ndarray  # (n, C) float32 targets of the label source trained on
    y_valid: np.ndarray
    y_valid_true: np.ndarray | None  # cell models on generated data: the true per-cell labels
    input: dict[str, Any]  # the recipe's "input" entry
    key: list[str]  # the columns naming a validation row in val_predictions.csv
    cached: int = 0  # fields held in memory (--cache-mb)
    train_extras: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # per training sample: weight, group, ...
    negative_split: dict[str, Any] | None = None  # --negative-split: what it fit and split (or why not)
    teacher: dict[str, Any] | None = None  # --teacher: the teacher run and what it taught (or why not)
    relabel: Relabel | None = None  # --relabel-after: the taught cells the student judges, and their targets then

    def fingerprint(self) -> str:
        """SHA-256 of which samples train and validate, and their targets: what a --resume must find unchanged
        (a folds table regenerated with another seed, or other labels, would mix two splits in one model)."""
        digest = hashlib.sha256()
        for rows, y in ((self.train, self.y_train), (self.valid, self.y_valid)):
            keys = rows[[c for c in self.key if c in rows.columns]].astype(str).agg("/".join, axis=1)
            digest.update("\n".join(keys).encode())
            digest.update(np.ascontiguousarray(y, np.float32).tobytes())
            digest.update(b"--")
        return digest.hexdigest()


def cell_samples(cfg: TrainConfig) -> SampleSets:
    """Cell crops of the folds table, with the segmentation that made them (its segment_config.json)."""
    cells = read_cells(cfg.folds_csv, cfg.num_classes)
    if cfg.subset:
        cells = select_subset(cells, cfg.subset, cfg.folds_csv)
    train, valid = split_cells(cells, cfg.fold, cfg.limit, cfg.seed)
    if cfg.label_source == "true":
        if "true" not in cells.columns:
            raise InputError(f"{cfg.folds_csv}: --label-source true needs a TrueLabel column")
        train = train[[len(t) > 0 for t in train["true"]]].reset_index(drop=True)
    if cfg.train_fields == "certain":
        train = train[certain_cells(label_matrix(train, "weak", cfg.num_classes), cfg.task_record.label_set.negative)]
        if len(train) < 2:
            raise InputError(f"{cfg.folds_csv}: --train-fields certain leaves {len(train)} training cells of fold "
                             f"{cfg.fold} (fields naming at most one class besides Negative)")
        train = train.reset_index(drop=True)
    weights = table_cell_weights(train) if cfg.cell_weights == "weight" else None
    if cfg.cell_weights == "drop":
        keep = table_cell_weights(train, edge_weight=0.0) >= 0.5
        if keep.sum() < 2:
            raise InputError(f"{cfg.folds_csv}: --cell-weights drop leaves {int(keep.sum())} training cells")
        train, weights = train[keep].reset_index(drop=True), None
    check_crops_exist(list(train["crop_path"]) + list(valid["crop_path"]))
    seg_path = Path(cfg.folds_csv).parent / "segment_config.json"
    recipe_input: dict[str, Any] = {"kind": "cell_crop", "crop_size": None, "crop_mask": None, "segment": None}
    if seg_path.is_file():
        seg = load_config(SegmentRunConfig, seg_path)
        if seg.task != cfg.task:
            raise InputError(f"{seg_path}: crops of task {seg.task}, but this run is for task {cfg.task}")
        recipe_input = seg.recipe_input()
    labels = label_matrix(train, cfg.label_source, cfg.num_classes)
    y_train = labels
    if cfg.soft_targets:
        y_train = soft_targets(y_train, _predictions_of(train, cfg), cfg.soft_weight)
    shows, split = None, None
    if cfg.negative_split != "none":  # the config allows it with label_source weak only: labels are the field's
        shows, split = _fit_negative_split(cfg, train, labels, recipe_input)
    negative = cfg.task_record.label_set.negative

    def split_shown(y: np.ndarray) -> np.ndarray:
        """Both are products: the split scales taught targets (the teacher's or the student's) as it scales field labels."""
        return y if shows is None else split_negative(y, labels, shows, int(negative))  # type: ignore[arg-type]

    taught, rejudge = None, None
    if cfg.teacher != "none":  # the config allows it with label_source weak only: labels are the field's
        from .teacher import teach  # it trains a run of this module's own train_fold

        y_train, taught, rejudge = teach(cfg, train, labels, shows)
    y_train = split_shown(y_train)
    relabel = None
    if cfg.relabel_after and rejudge is not None:  # the student's judgement, through the same split as the teacher's
        relabel = Relabel(train[["ID", "cell_id"]].reset_index(drop=True),
                          np.flatnonzero(~certain_cells(labels, negative)), lambda p: split_shown(rejudge(p)),
                          cfg.num_classes)
    extras: dict[str, np.ndarray] = {}
    if weights is not None:
        extras["weight"] = weights.astype(np.float32)
    if cfg.image_head != "none" or cfg.field_top < 1:
        extras["group"] = pd.factorize(train["ID"])[0].astype(np.int64)
    if cfg.image_head != "none":
        extras["image_targets"] = label_matrix(train, "weak", cfg.num_classes)
    return SampleSets(
        train, valid, CropFiles(train["crop_path"], cfg.in_chans), CropFiles(valid["crop_path"], cfg.in_chans),
        y_train, label_matrix(valid, cfg.label_source, cfg.num_classes),
        label_matrix(valid, "true", cfg.num_classes) if "true" in valid.columns else None,
        recipe_input, ["ID", "cell_id"], train_extras=extras, negative_split=split, teacher=taught, relabel=relabel,
    )


def _fit_negative_split(cfg: TrainConfig, train: pd.DataFrame, weak: np.ndarray,
                        recipe_input: dict[str, Any]) -> tuple[np.ndarray | None, dict[str, Any] | None]:
    """``--negative-split``: each training cell's P(it shows protein) (None where nothing is split), and a record of
    the split (the fitted model, what it was fit on, what it splits; or why ``auto`` does not split) for the run
    folder. ``weak`` are the cells' field labels, which say which fields are mixed. Without mixed fields there is
    nothing to split and no record."""
    task = cfg.task_record
    negative = int(task.label_set.negative)  # type: ignore[arg-type]  # checked by the config
    mixed = certain_fields(weak, negative)[2]
    if not mixed.any():
        return None, None
    unfit = too_few_certain(weak, negative)
    if unfit and cfg.negative_split == "auto":
        return None, {"split": False, "why": unfit, "mixed_cells": int(mixed.sum())}
    if recipe_input.get("crop_mask") not in (None, "cell"):
        raise InputError(f"{cfg.folds_csv}: --negative-split intensity reads the protein inside each cell, but these "
                         f"crops were cut with --crop-mask {recipe_input['crop_mask']} (neighbours' pixels kept); "
                         "segment with --crop-mask cell, or use --negative-split none")
    levels = protein_levels(CropFiles(train["crop_path"], cfg.in_chans), task.channels.index(task.protein_channel))
    model = fit_shows_protein(levels, weak, negative)
    shows = model(levels)
    record = {"split": True, **dataclasses.asdict(model), "mixed_cells": int(mixed.sum()),
              "mixed_fields": int(train.loc[mixed, "ID"].nunique()),
              "mean_shows_protein": round(float(shows[mixed].mean()), 4)}
    return shows, record


def _predictions_of(cells: pd.DataFrame, cfg: TrainConfig) -> np.ndarray:
    """(N, C) the ``--soft-targets`` prediction of each cell of ``cells`` (one-line error for a cell without one)."""
    preds = predictions_for(cells, read_soft_targets(cfg.soft_targets, cfg.num_classes), cfg.num_classes)
    missing = np.isnan(preds[:, 0])
    if missing.any():
        first = cells[missing].iloc[0]
        raise InputError(f"{cfg.soft_targets}: no prediction of {int(missing.sum())} of {len(cells)} training cells "
                         f"(first: {first['ID']} cell {first['cell_id']}); train every fold first")
    return preds


def select_subset(samples: pd.DataFrame, rules: Sequence[str], where: str) -> pd.DataFrame:
    """The rows of ``samples`` whose column is one of the listed values, for every ``COLUMN=V1,V2`` rule."""
    keep = np.ones(len(samples), bool)
    for rule in rules:
        col, _, values = rule.partition("=")
        col = col.strip()
        if col not in samples.columns:
            raise InputError(f"{where}: --subset {rule}: no column {col} (has: "
                             f"{', '.join(c for c in samples.columns if c not in ('weak', 'true'))})")
        keep &= samples[col].astype(str).str.strip().isin([v.strip() for v in values.split(",")]).to_numpy()
    if not keep.any():
        raise InputError(f"{where}: no sample matches --subset {' '.join(rules)}")
    return samples[keep].reset_index(drop=True)


def select_site(fields: pd.DataFrame, layout: str, site: int, where: str) -> pd.DataFrame:
    """The rows of one site (field ids ``{sample}_s{site}``, RxRx1's layout); every row when ``site`` is 0."""
    if not site:
        return fields
    if all(LAYOUTS[layout].sample_of(f) == f for f in fields["field_id"]):
        raise InputError(f"{where}: --site {site}: the {layout} layout has one field per sample")
    kept = fields[fields["field_id"].str.endswith(f"_s{site}")].reset_index(drop=True)
    if kept.empty:
        raise InputError(f"{where}: no field of site {site}")
    return kept


def extra_training_fields(cfg: TrainConfig, known: set[str]) -> pd.DataFrame:
    """``--extra-train``'s samples expanded to their fields in ``--extra-input`` (empty without one).

    The table has the folds-table columns with fold ``-1`` (what ``pseudo_labels.py`` writes); a
    sample that is also in the folds table is an error (it would be trained on twice, or validated
    on after training).
    """
    if not cfg.extra_train:
        return pd.DataFrame()
    task = cfg.task_record
    extra = read_samples(cfg.extra_train, cfg.num_classes)
    if (extra["fold"] != -1).any():
        raise InputError(f"{cfg.extra_train}: extra training samples have fold -1 (they are never validated on)")
    both = sorted(set(extra["ID"]) & known)
    if both:
        raise InputError(f"{cfg.extra_train}: sample {both[0]!r} is in the folds table {cfg.folds_csv} too")
    if cfg.subset:
        extra = select_subset(extra, cfg.subset, cfg.extra_train)
    fields = expand_to_fields(extra, task.layout, cfg.extra_input, cfg.channel_names)
    return select_site(fields, task.layout, cfg.site, cfg.extra_input)


def image_samples(cfg: TrainConfig) -> SampleSets:
    """Whole fields of the labelled samples (a cells table is collapsed to its fields), read through the layout.

    ``--subset`` filters the samples, ``--site`` their fields; ``--extra-train`` samples (their
    fields in ``--extra-input``) join the training side.
    """
    task = cfg.task_record
    channels = cfg.channel_names
    samples = read_samples(cfg.folds_csv, cfg.num_classes)
    if cfg.subset:
        samples = select_subset(samples, cfg.subset, cfg.folds_csv)
    train, valid = split_cells(samples, cfg.fold, cfg.limit, cfg.seed)
    train, valid = (select_site(expand_to_fields(t, task.layout, cfg.input, channels), task.layout, cfg.site, cfg.input)
                    for t in (train, valid))
    extra = extra_training_fields(cfg, set(samples["ID"]))

    normaliser = field_normaliser(dataset_root(cfg.input), cfg.normalise, channels)
    cache = FieldCache(cfg.cache_mb << 20)

    def reader(rows: pd.DataFrame, key: str, more: pd.DataFrame = pd.DataFrame()) -> Sequence[np.ndarray]:
        # the cache keeps fields as training sees them: normalised, then padded square and resized
        files: Sequence[np.ndarray] = FieldFiles(task.layout, cfg.input, rows["field_id"], channels, normaliser)
        if len(more):
            files = ChainedFields([files, FieldFiles(task.layout, cfg.extra_input, more["field_id"], channels, normaliser)])
        return CachedFields(files, cfg.field_resize, cache, key) if cfg.cache_mb else files

    train_reader, valid_reader = reader(train, "train", extra), reader(valid, "valid")
    if len(extra):
        train = pd.concat([train, extra], ignore_index=True)
    # filled here, in the training process: DataLoader workers forked later share the arrays
    cached = sum(r.preload(max(1, cfg.num_workers)) for r in (train_reader, valid_reader)) if cfg.cache_mb else 0
    y_train, y_valid = (multihot(list(t["weak"]), cfg.num_classes).astype(np.float32) for t in (train, valid))
    recipe_input = {"kind": "field", "resize": cfg.field_resize, "tiles": cfg.tiles, "normalise": cfg.normalise}
    if cfg.channels:
        recipe_input["channels"] = list(channels)
    return SampleSets(train, valid, train_reader, valid_reader, y_train, y_valid, None, recipe_input, ["ID"], cached)


LEVEL_SAMPLES: Registry = Registry("level")
LEVEL_SAMPLES["cell"] = cell_samples
LEVEL_SAMPLES["image"] = image_samples


def make_sampler(cfg: TrainConfig, y_train: np.ndarray) -> EpochSampler:
    """The epoch sampler: a seeded shuffle, or class-balanced draws with ``--balance-power`` > 0."""
    if cfg.balance_power > 0:
        return BalancedEpochSampler(class_balanced_weights(y_train > 0, cfg.balance_power), cfg.seed)
    return EpochSampler(len(y_train), cfg.seed)


def make_optimizer_factory(cfg: TrainConfig, optimizer_steps_per_epoch: int):
    """``net -> (optimizer, scheduler)`` for tez, by the names in ``cfg`` (schedules step per optimizer step)."""

    def factory(net: torch.nn.Module):
        optimizer = make_optimizer(cfg.optimizer, net, cfg.lr, cfg.weight_decay, cfg.momentum)
        params = ScheduleParams(
            total_steps=optimizer_steps_per_epoch * cfg.epochs, steps_per_epoch=optimizer_steps_per_epoch,
            warmup_steps=int(round(cfg.warmup_epochs * optimizer_steps_per_epoch)), min_lr=cfg.min_lr,
            start_lr=cfg.start_lr, warmup_share=cfg.warmup_share,
            momentum_range=(cfg.momentum_range[0], cfg.momentum_range[1]), lr_decay=cfg.lr_decay,
        )
        return optimizer, make_schedule(cfg.schedule, optimizer, params)

    return factory


def mixed_precision(on_cuda: bool, amp: bool, cpu_bf16: str, native_bf16: bool | None = None) -> str:
    """What the accelerator autocasts to: fp16 on CUDA with --amp; on a CPU bf16 when --cpu-bf16 is
    on, or auto and the CPU computes bf16 natively (``native_bf16``, probed when None); else no.

    bf16 on the CPU trained the demo's ResNet-18 1.28x faster on this machine's AMX cores, but two
    such processes at once (more threads than cores) stepped 11-17x slower, where float32 pairs only
    share the cores (``bench/bench_cpu_bf16.py``), so it is asked for, never the default. Without
    native bf16 it is emulated and slower: ``auto`` turns it on only where it is native."""
    if on_cuda:
        return "fp16" if amp else "no"
    if cpu_bf16 == "on":
        return "bf16"
    if cpu_bf16 == "auto":
        return "bf16" if (cpu_has_native_bf16() if native_bf16 is None else native_bf16) else "no"
    return "no"


def _resolve_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("device cuda requested but torch sees no CUDA device (use --device cpu)")
    return torch.device("cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


# settings added after runs were saved without them: the value those runs trained with, so that resuming one
# keeps it (or says that the run used another) instead of continuing with today's default
SAVED_BEFORE = {"teacher_targets": "prediction", "student_init": "scratch", "relabel_after": 0}


def _check_resume_config(cfg: TrainConfig, saved_path: Path) -> TrainConfig:
    """The saved config, with the fields allowed to change taken from ``cfg``; one-line error otherwise."""
    if not saved_path.exists():
        raise InputError(f"{saved_path}: not found; nothing to resume")
    saved = {**SAVED_BEFORE, **json.loads(saved_path.read_text())}
    saved.pop("_config", None)
    for f in dataclasses.fields(TrainConfig):
        if f.name in RESUMABLE_CHANGES or f.name not in saved:
            continue
        if f.name in ("teacher_targets", "teacher_weight", "student_init", "relabel_after") and "none" in (saved.get("teacher"), cfg.teacher):
            continue  # without a teacher they change nothing
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

    def __init__(self, run_dir: Path, n_train: int, early: EarlyStopping, history: list[dict], title: str,
                 samples_sha256: str = "") -> None:
        self.run_dir = run_dir
        self.samples_sha256 = samples_sha256
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
            samples_sha256=self.samples_sha256,
        )
        save_plain(state, self.run_dir / "last.pt")


class BatchNormRecalibration(Callback):
    """Before each validation, BatchNorm statistics recomputed with the current weights
    (:func:`cellloc.models.recalibrate_batchnorm`) over a fixed, seeded pick of training samples.

    The validation scores, the early-stopping choice and the saved ``best.pt`` then all describe
    the weights as they are, not the lagging running averages. Runs where tez runs callbacks (the
    local main process); under DDP the other ranks receive its buffers with the next forward.
    """

    def __init__(self, dataset: SampleDataset, samples: int, batch_size: int, seed: int, num_workers: int = 0,
                 interim: int = 0, last_epoch: int | None = None) -> None:
        n = len(dataset)
        pick = np.sort(np.random.default_rng([seed, 2]).choice(n, size=min(samples, n), replace=False))
        self.dataset, self.indices, self.batch_size = dataset, pick.tolist(), max(2, batch_size)
        self.num_workers = num_workers
        # Before ``last_epoch`` (0-based; None: every epoch counts) a seeded part of the pick: those validations
        # only draw the curves (--monitor last), while the recalibration is a sixth of a 64 px epoch's work.
        few = last_epoch is not None and 0 < interim < len(pick)
        self.interim = np.sort(np.random.default_rng([seed, 3]).choice(pick, size=interim, replace=False)).tolist() \
            if few else self.indices
        self.last_epoch = last_epoch

    def indices_for(self, epoch: int) -> list[int]:
        """The training samples the statistics are recomputed from before validating ``epoch`` (0-based)."""
        return self.indices if self.last_epoch is None or epoch >= self.last_epoch else self.interim

    def on_valid_epoch_start(self, tez_trainer, **kwargs) -> None:
        module = tez_trainer.unwrapped()
        net = getattr(module, "net", module)
        device = next(net.parameters()).device
        loader = DataLoader(Subset(self.dataset, self.indices_for(int(tez_trainer.current_epoch))),
                            batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)
        batches = (b["image"].to(device) for b in loader if len(b["image"]) >= 2)  # batch norm needs 2 samples
        recalibrate_batchnorm(net, batches)
        net.eval()  # tez sets eval right after the callbacks; so does this, whatever the order


# --------------------------------------------------------------------------- the run


def _measured_stats(cfg: TrainConfig, sets: SampleSets, view_size: int) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of up to ``stats_samples`` training samples (seeded pick)."""
    rng = np.random.default_rng(cfg.seed)
    n = len(sets.train_reader)
    pick = rng.choice(n, size=min(cfg.stats_samples, n), replace=False)
    return channel_stats([sets.train_reader[int(i)] for i in pick], view_size)


def train_fold(cfg: TrainConfig, callbacks: Sequence[Callback] = (), command: str | None = None) -> TrainResult | None:
    """Train fold ``cfg.fold`` (or continue it with ``cfg.resume``), then predict and score its samples.

    ``callbacks`` are extra tez callbacks run after the built-in ones (loggers, notebooks).
    Returns a :class:`TrainResult`; every number is also written to the run folder. Under
    ``accelerate launch`` only rank 0 scores and writes; the other ranks return ``None``.
    """
    if cfg.resume and cfg.overwrite:
        raise InputError("--resume continues the run in the folder, --overwrite starts over: give one of them")
    if cfg.resume and not (cfg.run_dir / "config.json").exists() and not _teacher_started(cfg):
        raise InputError(f"{cfg.run_dir / 'config.json'}: not found; nothing to resume")
    rank0 = int(os.environ.get("RANK", "0")) == 0  # under accelerate launch only rank 0 locks and moves
    with contextlib.ExitStack() as held:  # the folder's lock, taken just before the first write
        return _train_fold(cfg, callbacks, command, rank0, held)


def _teacher_started(cfg: TrainConfig) -> bool:
    """Whether ``cfg``'s teacher run (``--teacher``) has begun: a ``--resume`` then has something to continue."""
    from .teacher import teacher_run_dir  # it derives the teacher's run from this module's TrainConfig

    run = teacher_run_dir(cfg)
    return run is not None and (run / "config.json").exists()


def _start_afresh(cfg: TrainConfig, move: bool) -> Path | None:
    """A run without --resume: refuse a folder holding a run, or (``--overwrite`` and ``move``) move that run aside.

    Rank 0's job alone under ``accelerate launch``: the other ranks would see rank 0's new files."""
    present = existing_outputs(cfg.run_dir, TRAIN_OUTPUTS)
    if not present or (cfg.overwrite and not move):
        return None
    if not cfg.overwrite:
        names = ", ".join(p.name for p in present[:4]) + (", ..." if len(present) > 4 else "")
        raise InputError(
            f"{cfg.run_dir}: holds a training run ({names}); add --resume to continue it, --overwrite to start over "
            f"(the old run is moved to {cfg.run_dir.name}.replaced-<time>), or choose another --run-name"
        )
    return move_aside(cfg.run_dir, present)


def _train_fold(cfg: TrainConfig, callbacks: Sequence[Callback], command: str | None, rank0: bool,
                held: contextlib.ExitStack) -> TrainResult | None:
    t_start = time.perf_counter()
    run_dir = cfg.run_dir
    state: dict[str, Any] | None = None
    recipe: Recipe | None = None
    replaced = None
    # --resume of a run stopped while its teacher trained: the teacher resumes, this run starts
    resuming = cfg.resume and (run_dir / "config.json").exists()
    if resuming:
        cfg = _check_resume_config(cfg, run_dir / "config.json")
        state = load_plain(run_dir / "last.pt")
        recipe = Recipe.read(run_dir / RECIPE_FILE)
    elif rank0:
        _start_afresh(cfg, move=False)  # refuse a taken folder before any work
    seed_everything(cfg.seed)
    task = cfg.task_record

    sets = LEVEL_SAMPLES[cfg.level](cfg)
    if len(sets.train) < 2:
        raise InputError(f"only {len(sets.train)} training sample(s) for fold {cfg.fold}; need at least 2")
    if len(sets.valid) == 0:
        raise InputError(f"fold {cfg.fold} has no samples to validate on")
    samples_sha = sets.fingerprint()
    if state is not None and state.get("samples_sha256", samples_sha) != samples_sha:
        raise InputError(f"--resume: {run_dir} was trained on other samples or labels of fold {cfg.fold} "
                         f"({len(sets.train)} training / {len(sets.valid)} validation now; was {cfg.folds_csv} "
                         "regenerated?); resume with the folds table it started with, or add --overwrite to start over")
    if cfg.monitor not in ("loss", "last") and task.kind == "multilabel" and not sets.y_valid.any():
        raise InputError(f"fold {cfg.fold} has no positive labels: monitor {cfg.monitor} is undefined (use --monitor loss)")

    # the backbone first: a missing ImageNet file fails before anything is written
    taught = sets.teacher is not None and bool(sets.teacher.get("taught"))
    from_teacher = cfg.student_init == "teacher" and taught
    net = _build_net(cfg, pretrained="none" if state or cfg.init_from or from_teacher else cfg.pretrained)
    init = None
    if state:
        net.load_state_dict(state["model"])
    elif from_teacher:
        init = init_weights(cfg, net, Path(sets.teacher["run_dir"]))
    elif cfg.init_from:
        init = init_weights(cfg, net)

    if recipe is None:
        stats_size = make_input(sets.input, cfg.image_size, [0.0] * cfg.in_chans, [1.0] * cfg.in_chans).stats_size
        mean, std = (cfg.mean, cfg.std) if cfg.mean else _measured_stats(cfg, sets, stats_size)
        recipe = Recipe(task=task.name, level=cfg.level, model=cfg.model, in_chans=cfg.in_chans,
                        num_classes=cfg.num_classes, image_size=cfg.image_size, mean=list(mean), std=list(std),
                        kind=task.kind, input=sets.input)
    # Every input checked: lock the folder, and only now move an old run aside (--overwrite). Rank 0
    # alone writes (the other ranks would otherwise write the files rank 0 is about to look for).
    if rank0:
        held.enter_context(folder_lock(run_dir))
        if not resuming:
            replaced = _start_afresh(cfg, move=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.json")
        write_json(run_dir / RECIPE_FILE, recipe.to_dict())
        if sets.negative_split is not None:
            write_json(run_dir / "negative_split.json", sets.negative_split)
        if sets.teacher is not None:
            write_json(run_dir / "teacher.json", sets.teacher)
    view: InputKind = make_input(recipe.input, recipe.image_size, recipe.mean, recipe.std)

    device = _resolve_device(cfg.device)
    on_cuda = device.type == "cuda"
    if not on_cuda:
        set_torch_threads(cfg.threads)
    batch_size = min(cfg.batch_size, len(sets.train))
    train_ds = SampleDataset(sets.train_reader, sets.y_train, view, build_augment(cfg.aug_gain), sets.train_extras)
    valid_ds = SampleDataset(sets.valid_reader, sets.y_valid, view, None)
    if sets.relabel is not None and state and int(state["epoch"]) >= cfg.relabel_after:
        restore(sets.relabel, train_ds, run_dir)  # stopped after its relabelling epoch: the same targets again
    # Workers end with each epoch: kept alive idle, they were only reaped when the garbage collector met their
    # loader, and that shutdown stalled whatever ran then for seconds (a teacher's, its student's start by ~20 s).
    loader_kw = {"num_workers": cfg.num_workers, "pin_memory": on_cuda, "persistent_workers": False}
    if cfg.image_head != "none":  # whole fields' cells per batch
        fields_per_batch = max(1, batch_size // cfg.cells_per_field)
        batches = FieldBatchSampler(sets.train_extras["group"], cfg.cells_per_field, fields_per_batch, cfg.seed)
        train_loader = DataLoader(train_ds, batch_sampler=batches, **loader_kw)
    else:
        sampler = make_sampler(cfg, sets.y_train)
        train_loader = DataLoader(train_ds, batch_size=batch_size, sampler=sampler, drop_last=True, **loader_kw)
    valid_loader = DataLoader(valid_ds, batch_size=2 * cfg.batch_size, shuffle=False, **loader_kw)

    world = int(os.environ.get("WORLD_SIZE", "1"))  # set by accelerate launch; batches are sharded over ranks
    batches_per_epoch = math.ceil(len(train_loader) / world)
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum)
    loss_fn = create_loss(cfg.loss, task.kind, cfg.focal_gamma, cfg.label_smoothing)
    batches_done = (int(state["epoch"]) if state else 0) * batches_per_epoch  # a resumed run's warm-ups go on
    if cfg.bootstrap:
        loss_fn = Bootstrapped(loss_fn, cfg.bootstrap, cfg.bootstrap_start * batches_per_epoch, batches_done)
    if cfg.field_top < 1:
        loss_fn = FieldTopTargets(loss_fn, sets.train_extras["group"], cfg.num_classes, cfg.field_top,
                                  cfg.field_top_start * batches_per_epoch, batches_done)
    if state and state.get("loss"):  # what the training state keeps of a loss (--field-top's remembered scores)
        loss_fn.load_state_dict(state["loss"])
    factory = make_optimizer_factory(cfg, steps_per_epoch)
    if cfg.image_head != "none":
        module: TezModule = TwoHeadModule(net, loss_fn, factory, cfg.num_classes, cfg.image_head, cfg.image_loss_weight,
                                          on_cuda and cfg.channels_last)
        if state and state.get("heads"):
            module.image_head.load_state_dict(state["heads"])
    else:
        module = TezModule(net, loss_fn, factory, on_cuda and cfg.channels_last)
    other = ("true", sets.y_valid_true) if cfg.label_source == "weak" else ("weak", label_matrix(sets.valid, "weak", cfg.num_classes))

    def epoch_metrics(logits: np.ndarray, targets: np.ndarray, index: np.ndarray):
        probs = to_probabilities(logits, task.kind)
        shown = compute_metrics(cfg.metric_names, probs, targets)
        extra: dict[str, Any] = {}
        if task.kind == "multilabel":
            extra["ap"] = per_class_ap(probs, targets)
            if other[1] is not None:
                shown[f"macro_ap_{other[0]}"] = nanmean(per_class_ap(probs, other[1][index]))
        return shown, extra

    precision = mixed_precision(on_cuda, cfg.amp, cfg.cpu_bf16)
    trainer = CellTez(
        module,
        device=cfg.device,
        mixed_precision=precision,
        epoch_metrics=epoch_metrics,
        resume_state=state,
        average_decay=cfg.ema,
    )
    early = EarlyStopping(
        f"valid_{'loss' if cfg.monitor == 'last' else cfg.monitor}", run_dir / "best.pt", patience=cfg.patience,
        mode="max" if cfg.monitor not in ("loss", "last") else "min", keep_last=cfg.monitor == "last",
    )
    history: list[dict] = []
    start_epoch = 0
    if state:
        early.load_state_dict(state["early_stopping"])
        history = list(state["history"])
        start_epoch = int(state["epoch"])
        if rank0:
            write_csv(run_dir / "metrics.csv", pd.DataFrame(history))
    what = "fields" if cfg.level == "image" else f"{cfg.label_source} labels"
    title = f"{cfg.run_name} fold {cfg.fold}: {cfg.model}, {cfg.image_size}px, {what}"
    seen = len(train_ds) if cfg.image_head != "none" else len(train_ds) // batch_size * batch_size  # cells per epoch
    recorder = RunRecorder(run_dir, seen, early, history, title, samples_sha)
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
        recalibrate = [BatchNormRecalibration(SampleDataset(sets.train_reader, None, view), cfg.bn_recalibrate,
                                              2 * cfg.batch_size, cfg.seed, cfg.num_workers, cfg.bn_recalibrate_interim,
                                              cfg.epochs - 1 if cfg.monitor == "last" else None)] if cfg.bn_recalibrate else []
        relabelling = [StudentRelabel(sets.relabel, train_ds, SampleDataset(sets.train_reader, None, view),
                                      cfg.relabel_after, run_dir, 2 * cfg.batch_size, cfg.num_workers)] \
            if sets.relabel is not None else []
        trainer.fit(
            train_ds,
            valid_ds,
            config=tez_config,
            train_loader=train_loader,
            valid_loader=valid_loader,
            callbacks=[*recalibrate, *relabelling, early, recorder, *callbacks],
        )
        stopped = trainer.model_state.value == "end"
    trainer.wait_for_everyone()
    if not trainer.is_main_process():
        return None  # under accelerate launch, rank 0 predicts, scores and writes

    # Honest scoring: the best epoch's weights on every validation sample.
    model = load_classifier(run_dir, device=device, threads=cfg.threads)
    probs = model.predict(sets.valid_reader, tta=cfg.tta, batch_size=2 * cfg.batch_size, num_workers=cfg.num_workers)
    scored = score_fold(cfg, sets, probs)

    history_df = pd.DataFrame(history)
    best_epoch = int(early.best_epoch) if early.best_epoch is not None else int(history_df["epoch"].iloc[-1])
    result = TrainResult(
        run_dir=run_dir,
        level=cfg.level,
        best_epoch=best_epoch,
        epochs_run=len(history),
        stopped_early=stopped and len(history) < cfg.epochs,
        n_train=len(sets.train),
        n_valid=len(sets.valid),
        seconds=round(time.perf_counter() - t_start, 2),
        **scored,
    )
    result.replaced = replaced
    result.negative_split = sets.negative_split
    result.teacher = sets.teacher
    summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(result).items() if k != "scores"}
    summary.update(
        task=task.name,
        device=str(device),
        amp=precision == "fp16",  # fp16 autocast: CUDA with --amp
        mixed_precision=precision,
        channels_last=bool(on_cuda and cfg.channels_last),
        unmatched_valid_cells=int(sum(len(t) == 0 for t in sets.valid["true"])) if sets.y_valid_true is not None else None,
        cached_fields=sets.cached,
        init_from=init,
        relabelled_after=cfg.relabel_after if sets.relabel is not None else 0,
        command=command,
        versions={"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                  "tez": __import__("tez").__version__},
    )
    write_json(run_dir / "summary.json", summary)
    return result


def score_fold(cfg: TrainConfig, sets: SampleSets, probs: np.ndarray) -> dict[str, Any]:
    """Write ``val_predictions.csv`` and ``scores.csv`` of a fold; return the :class:`TrainResult` score fields.

    An image model's fields are averaged per labelled sample first (RxRx1's two sites: the
    softmax of their mean logits). Scores
    sit next to what a constant guess (the validation label frequencies) gets.
    """
    task = cfg.task_record
    rows, y, y_true = sets.valid, sets.y_valid, sets.y_valid_true
    if cfg.level == "image":
        _, probs = sample_probabilities(probs, list(rows["ID"]), task.kind)
        first = ~rows["ID"].duplicated().to_numpy()
        rows, y = rows[first].reset_index(drop=True), y[first]
    names = task.label_set.names
    if task.kind == "multilabel":
        preds = pd.DataFrame(np.round(probs, 5), columns=[f"p{k}" for k in range(cfg.num_classes)])
        # trained on true labels, the "weak" columns still mean the field labels
        weak = label_matrix(rows, "weak", cfg.num_classes) if cfg.level == "cell" and cfg.label_source != "weak" else y
        scores = score_table(probs, weak, y_true, names)
        macro = scores.iloc[-1]
    else:
        top = np.argsort(-probs, axis=1)[:, :5]
        preds = pd.DataFrame({"Label": rows["Label"].to_numpy()})
        for k in range(top.shape[1]):
            preds[f"top{k + 1}"] = top[:, k]
            preds[f"p_top{k + 1}"] = np.round(probs[np.arange(len(probs)), top[:, k]], 5)
        scores = multiclass_table(probs, y, cfg.metric_names)
    for col in reversed(sets.key):
        preds.insert(0, col, rows[col].to_numpy())
    write_csv(cfg.run_dir / "val_predictions.csv", preds)
    write_csv(cfg.run_dir / "scores.csv", scores)
    prior = np.broadcast_to(y.mean(axis=0, keepdims=True), y.shape)
    multilabel = task.kind == "multilabel"
    return {
        "metrics": compute_metrics(cfg.metric_names, probs, y),
        "baselines": compute_metrics(cfg.metric_names, prior, y),
        "macro_ap_weak": float(macro["ap_weak"]) if multilabel else None,
        "macro_ap_true": float(macro["ap_true"]) if multilabel and y_true is not None else None,
        "baseline_ap_weak": float(macro["prevalence_weak"]) if multilabel else None,
        "baseline_ap_true": float(macro["prevalence_true"]) if multilabel and y_true is not None else None,
        "scores": scores,
    }


def init_source(cfg: TrainConfig) -> Path:
    """The fold folder ``--init-from`` names: ``RUN/fold<K>`` of this run's fold, or ``RUN`` itself."""
    run = Path(cfg.init_from)
    for folder in (run / f"fold{cfg.fold}", run):
        if (folder / "best.pt").is_file() and (folder / RECIPE_FILE).is_file():
            return folder
    raise InputError(f"--init-from {run}: neither {run / f'fold{cfg.fold}'} nor {run} holds a trained fold "
                     f"(best.pt and {RECIPE_FILE})")


def init_weights(cfg: TrainConfig, net: torch.nn.Module, teacher: Path | None = None) -> str:
    """Load ``--init-from``'s weights, or the ``teacher`` fold folder's (``--student-init teacher``), into ``net``
    (:func:`cellloc.transfer.transfer_state`); returns what was done."""
    source, what = (init_source(cfg), "--init-from") if teacher is None else (teacher, "--student-init teacher")
    recipe = Recipe.read(source / RECIPE_FILE)
    if recipe.model != cfg.model:
        raise InputError(f"{what} {source}: a {recipe.model} model, but this run trains {cfg.model} "
                         f"(pass --model {recipe.model})")
    state, report = transfer_state(load_checkpoint(source / "best.pt"), net.state_dict(), recipe.channels,
                                   cfg.channel_names, recipe.num_classes, cfg.num_classes, f"{what} {source}")
    net.load_state_dict(state)
    line = f"{source}: {report.line()}"  # --init-from's summary line as it always read; the teacher's says what it is
    return line if teacher is None else f"{what} {line}"


def _build_net(cfg: TrainConfig, pretrained: str) -> torch.nn.Module:
    return create_model(cfg.model, cfg.in_chans, cfg.num_classes, pretrained, image_size=cfg.image_size,
                        cache_dir=cfg.weights_dir or None)


def format_summary(result: TrainResult) -> str:
    """A few lines for the terminal: where the run is and how it scored."""
    unit = "fields" if result.level == "image" else "cells"
    lines = [
        f"run: {result.run_dir}  ({result.n_train} training / {result.n_valid} validation {unit}, "
        f"{result.epochs_run} epochs, best {result.best_epoch}{', stopped early' if result.stopped_early else ''}, "
        f"{result.seconds:.0f} s)",
    ]
    if result.level == "cell" and result.macro_ap_weak is not None:
        true = (
            f"macro AP vs TRUE cell labels {result.macro_ap_true:.4f} (label-frequency baseline {result.baseline_ap_true:.4f})"
            if result.macro_ap_true is not None
            else "no TrueLabel column: true-label AP not available"
        )
        lines += [f"validation: {true}",
                  f"            macro AP vs weak field labels {result.macro_ap_weak:.4f} (baseline {result.baseline_ap_weak:.4f})"]
    else:
        lines += [f"validation: {METRICS[name].label} {value:.4f} (label-frequency baseline {result.baselines[name]:.4f})"
                  for name, value in result.metrics.items()]
    n = result.negative_split
    if n is not None and not n["split"]:
        lines.append(f"negative split: not made, {n['why']}; the {n['mixed_cells']} cells of fields labelled Negative "
                     "and other classes trained on their field's label")
    elif n is not None:
        lines.append(f"negative split: {n['mixed_cells']} cells of {n['mixed_fields']} fields labelled Negative and other "
                     f"classes told apart by their protein channel (fit on {n['cells_negative']} cells of fields labelled "
                     f"Negative alone and {n['cells_showing']} of fields without it; mean P(shows protein) "
                     f"{n['mean_shows_protein']:.2f})")
    t = result.teacher
    if t is not None and not t["taught"]:
        lines.append(f"teacher: none, {t['why']}; every cell trained on its field's label")
    elif t is not None:
        lines.append(f"teacher: {t['run_dir']} ({t['certain_cells']} cells of fields naming at most one class besides "
                     f"Negative, {t['epochs']} epochs) taught {t['taught_cells']} cells of {t['taught_fields']} fields "
                     f"naming several (weight {t['weight']}; mean prediction of their field's classes "
                     f"{t['mean_prediction']:.2f}{_posterior_note(t)})")
    if result.replaced is not None:
        lines.append(f"the folder's previous run was moved to {result.replaced} (delete it when not needed)")
    return "\n".join(lines)


def _posterior_note(t: dict[str, Any]) -> str:
    """The summary's words on ``--teacher-targets posterior`` of teacher record ``t`` ('' for plain predictions)."""
    if t.get("targets") not in ("posterior", *LEVELLED):
        return ""
    unjudged = ", ".join(t["unjudged_classes"]) or "none"
    levelled = f", {t['levelled_target']:.2f} levelled" if "levelled_target" in t else ""
    return (f", {t['mean_target']:.2f} as the chance given one shows{levelled}; classes it could not judge: "
            f"{unjudged}, given {t['shown_share']:.2f} ({t['shown_share_from']})")


__all__ = [
    "LEVEL_SAMPLES",
    "RunRecorder",
    "TrainConfig",
    "TrainResult",
    "default_run_name",
    "format_summary",
    "make_optimizer_factory",
    "score_fold",
    "seed_everything",
    "split_cells",
    "train_fold",
]

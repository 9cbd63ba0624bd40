"""``train.py --teacher certain``: train the teacher run, then soften the taught cells' targets by its predictions.

The teacher is an ordinary run of the student's recipe in ``<out_dir>/<run_name>-teacher/fold<K>/``
(its config.json re-runs it), trained with ``--train-fields certain`` and ``--teacher none``. Beside
its usual files it keeps ``teacher_predictions.csv``: its prediction of each training cell of the
fields naming several classes, which it never trained on. The teacher follows the student: a
fresh student trains a fresh teacher (and stops with one line if the teacher's folder holds a
run), ``--overwrite`` retrains it (its old run moved aside), ``--resume`` reuses a finished teacher
of the same settings as it is and continues an unfinished one.
"""

from __future__ import annotations

import dataclasses
import os
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from ..classifier import load_classifier
from ..data import CropFiles, predictions_for, read_soft_targets
from ..errors import InputError
from ..fieldio import write_csv
from ..teacher import (FALLBACK_SHOWN_SHARE, LEVELLED, TEACHER_PREDICTIONS, TEACHER_SUFFIX, at_least_one_posterior,
                       certain_cells, field_levels, judged_targets, known_classes, shown_share, teacher_epochs,
                       why_no_teacher)
from .train import TrainConfig, _check_resume_config, _resolve_device, format_summary, seed_everything, train_fold


def teacher_config(cfg: TrainConfig) -> TrainConfig:
    """The teacher run of student ``cfg``: its recipe on the certain fields' cells, in ``<run_name>-teacher``."""
    return dataclasses.replace(cfg, run_name=f"{cfg.run_name}{TEACHER_SUFFIX}", teacher="none", train_fields="certain",
                               epochs=teacher_epochs(cfg.epochs, cfg.teacher_epochs), teacher_epochs=0, resume=False,
                               student_init=TrainConfig.student_init, relabel_after=0,
                               teacher_targets=TrainConfig.teacher_targets, teacher_weight=TrainConfig.teacher_weight)


def teacher_run_dir(cfg: TrainConfig) -> Path | None:
    """The run folder of student ``cfg``'s teacher; None with ``--teacher none``."""
    return None if cfg.teacher == "none" else teacher_config(cfg).run_dir


def latest_checkpoint(cfg: TrainConfig) -> Path | None:
    """The ``last.pt`` that ``--resume`` continues from after an interruption: the student's, or its teacher's
    when the teacher wrote one later (the teacher was training); None when no epoch finished."""
    runs = [cfg.run_dir, teacher_run_dir(cfg)]
    saved = [run / "last.pt" for run in runs if run is not None and (run / "last.pt").is_file()]
    return max(saved, key=lambda p: p.stat().st_mtime_ns) if saved else None


def teach(cfg: TrainConfig, train: pd.DataFrame, labels: np.ndarray,
          shows: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, Any], Callable[[np.ndarray], np.ndarray] | None]:
    """(targets, record, rejudge) for the training cells ``train`` with field ``labels`` (N, C) of student ``cfg``.

    Trains (or reuses) the teacher run and softens the cells of the fields naming several classes by its
    predictions (``--teacher-targets``); ``auto`` keeps the field labels where no teacher can be trained and
    records why. ``shows`` (N,), the negative split's P(the cell shows protein), measures the share of a field's
    cells showing its class that the posterior gives the classes the teacher did not train on. ``rejudge`` maps
    another judge's predictions (N, C) to targets by the same rule with every class judged: what the student's
    own relabelling (``--relabel-after``) trains on; None where nothing was taught.
    """
    negative = cfg.task_record.label_set.negative
    why = why_no_teacher(labels, negative)
    if why and cfg.teacher == "auto":
        return labels, {"taught": False, "why": why}, None
    if why:
        raise InputError(f"{cfg.folds_csv}: --teacher certain: {why}; use --teacher none")
    taught = ~certain_cells(labels, negative)
    tcfg = _run_teacher(cfg)
    preds = _taught_predictions(cfg, tcfg, train[taught])
    seed_everything(cfg.seed)  # the student starts alike whether its teacher trained just now or was reused
    p = predictions_for(train, preds, cfg.num_classes)
    missing = np.isnan(p[:, 0]) & taught
    if missing.any():
        raise InputError(f"{tcfg.run_dir / TEACHER_PREDICTIONS}: no prediction of {int(missing.sum())} taught cells; "
                         "was the folds table regenerated? add --overwrite to train the teacher again")
    named = labels[taught] > 0
    record = {"taught": True, "run_dir": str(tcfg.run_dir), "epochs": tcfg.epochs, "weight": cfg.teacher_weight,
              "certain_cells": int((~taught).sum()), "taught_cells": int(taught.sum()),
              "taught_fields": int(train.loc[taught, "ID"].nunique()),
              "mean_prediction": round(float(p[taught][named].mean()), 4), "targets": cfg.teacher_targets}
    known, share, judged = _judged(cfg, labels, ~taught, shows)
    rule, fields, w = cfg.teacher_targets, train["ID"].to_numpy(), cfg.teacher_weight
    levels = field_levels(labels, shows, fields, negative) if rule == "field-levelled" else None
    targets = judged_targets(rule, labels, p, taught, fields, known, share, negative, w, levels)
    if rule in ("posterior", *LEVELLED):
        chance = at_least_one_posterior(labels, p, known, share, negative)
        record.update(judged, mean_target=round(float(chance[taught][named].mean()), 4))
    if rule == "levelled":  # each taught field's mean of each of its classes, set to the share
        record.update(levelled_target=round(share, 4))
    if levels is not None:  # each taught field's own level: its mean over the taught fields
        by_field = pd.Series(levels[taught]).groupby(fields[taught]).first()
        record.update(levelled_target=round(float(by_field.mean()), 4),
                      field_levels=[round(float(by_field.min()), 4), round(float(by_field.max()), 4)])
    everything = np.ones(cfg.num_classes, bool)
    return targets, record, partial(judged_targets, rule, labels, taught=taught, fields=fields, known=everything,
                                    share=share, negative=negative, weight=w, levels=levels)


def _judged(cfg: TrainConfig, labels: np.ndarray, certain: np.ndarray,
            shows: np.ndarray | None) -> tuple[np.ndarray, float, dict[str, Any]]:
    """(known, share, record) of ``--teacher-targets posterior``: the classes the teacher trained on enough certain
    cells of, the share of a certain field's cells that show its class (measured from ``shows``, else the fallback)
    that the others are given, and a record of both."""
    label_set = cfg.task_record.label_set
    negative = label_set.negative
    known = known_classes(labels, certain)
    share = shown_share(labels, shows, negative) if shows is not None and negative is not None else float("nan")
    measured = bool(np.isfinite(share))
    prior = share if measured else FALLBACK_SHOWN_SHARE
    unknown = [label_set.names[k] for k in np.flatnonzero(~known) if k != negative and labels[~certain, k].any()]
    return known, prior, {"shown_share": round(prior, 4), "shown_share_from": "negative split" if measured else "fallback",
                          "unjudged_classes": unknown}


def _run_teacher(cfg: TrainConfig) -> TrainConfig:
    """Train the teacher of ``cfg`` as its ``--resume`` / ``--overwrite`` say; its config, run folder resolved."""
    tcfg = teacher_config(cfg)
    saved = tcfg.run_dir / "config.json"
    if cfg.resume and saved.exists():
        tcfg = _check_resume_config(dataclasses.replace(tcfg, resume=True), saved)
        if (tcfg.run_dir / "summary.json").exists() and (tcfg.run_dir / TEACHER_PREDICTIONS).exists():
            return tcfg  # finished, with the same settings: reused as it is
    print(f"teacher: training {tcfg.run_dir} on the fields naming at most one class besides Negative", flush=True)
    result = train_fold(tcfg, command=None)
    if result is not None:
        print("teacher " + format_summary(result), flush=True)
    (tcfg.run_dir / TEACHER_PREDICTIONS).unlink(missing_ok=True)  # a retrained teacher predicts afresh
    return tcfg


def _taught_predictions(cfg: TrainConfig, tcfg: TrainConfig, cells: pd.DataFrame) -> pd.DataFrame:
    """The teacher's predictions of ``cells`` (``ID, cell_id, p0..``), made once and kept in its run folder.

    Rank 0 writes them; under ``accelerate launch`` the other ranks wait for it at a barrier and read the
    file, so every rank (and a later ``--resume``) trains on the same numbers."""
    path = tcfg.run_dir / TEACHER_PREDICTIONS
    if int(os.environ.get("RANK", "0")) == 0 and not path.exists():
        model = load_classifier(tcfg.run_dir, device=_resolve_device(cfg.device), threads=cfg.threads)
        probs = model.predict(CropFiles(cells["crop_path"], cfg.in_chans), tta=cfg.tta, batch_size=2 * cfg.batch_size,
                              num_workers=cfg.num_workers)
        table = cells[["ID", "cell_id"]].reset_index(drop=True).assign(cell_id=cells["cell_id"].astype(int).to_numpy())
        table = pd.concat([table, pd.DataFrame(probs, columns=[f"p{k}" for k in range(cfg.num_classes)])], axis=1)
        write_csv(path, table.round(6))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return read_soft_targets(path, cfg.num_classes)


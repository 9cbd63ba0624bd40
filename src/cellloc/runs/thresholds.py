"""Decision thresholds of a multilabel image-level run, fitted on its out-of-fold predictions.

Each trained fold wrote ``val_predictions.csv`` (``ID, p0 .. p{C-1}``): the best epoch's
probabilities for the samples of the fold it did not train on. Together the folds score every
training sample once, by a model that never saw it: the out-of-fold (OOF) predictions. Their
truth is the ``Label`` column of the folds table the run trained from (its ``config.json``).

:func:`fit_run` fits :func:`cellloc.thresholds.fit_thresholds` (or records the share rule) on
them, writes ``thresholds.json`` and ``thresholds.csv`` in the run folder and sets the
``"thresholds"`` entry of every fold's ``recipe.json``, which ``predict.py`` applies.
 A recipe's thresholds are part of a trained
model (predict.py applies them), so a fit never silently replaces thresholds fitted otherwise:
it stops with one line naming what would change, and ``--overwrite`` replaces them after keeping
the old ones in ``thresholds.replaced-<time>.json``. A rerun with the same settings on the same
predictions writes the same values, and a run killed between recipes completes on a rerun.
:func:`compare_rules` scores the rules on held-out samples with known truth (a test split's
``scores.csv`` from ``predict.py`` and ``truth/labels.csv``): 0.5, the global threshold, the
fitted per-class thresholds and the 2018 winner's share rule.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..classifier import RECIPE_FILE, Recipe, fold_dirs
from ..config import opt
from ..data import read_samples
from ..errors import InputError
from ..fieldio import multihot, read_csv, write_csv, write_json
from ..labels import read_task_labels
from ..run_state import folder_lock, settings_changes
from ..tasks import DEFAULT_TASK, TASKS, Task, get_task
from ..thresholds import (
    Thresholds,
    apply_thresholds,
    f1_per_class,
    fit_thresholds,
    macro_f1,
    predict_labels,
    share_thresholds,
)
from .train import default_run_name

KEEP_TOP = {"auto": "auto", "yes": True, "no": False}


@dataclass
class ThresholdsConfig:
    """Options of ``python src/fit_thresholds.py``."""

    models: str = opt("", "image-level multilabel run folder; its fold*/val_predictions.csv are the out-of-fold "
                      "predictions (default: the default run of --task, e.g. models/effb2_hpa-2018)")
    task: str = opt("hpa-2018", "task (names the default run folder; the run's recipe must agree)", choices=TASKS.names())
    folds: list[int] = opt([], "use only these folds' predictions (default: every trained fold of the run)")
    method: str = opt("f1", "f1: per-class thresholds that maximise each class's F1 on the OOF predictions; "
                      "share: at prediction, each class takes its OOF label share of the images (the 2018 winner's rule)",
                      choices=["f1", "share"])
    min_positives: int = opt(5, "f1: a class with fewer OOF positives takes the prior threshold")
    shrink: float = opt(30.0, "f1: pull toward the prior with weight n / (n + SHRINK) for n positives (0 = none)")
    fallback: str = opt("share", "f1: the prior: share (as many predicted as the class has) or global", choices=["share", "global"])
    keep_top: str = opt("auto", "keep each image's top class positive: auto (when it helps on the OOF predictions), yes, no",
                        choices=list(KEEP_TOP))
    scores: str = opt("", "also compare the rules on held-out samples: predict.py's scores.csv (ID, p0 ..)")
    truth: str = opt("", "the held-out samples' labels: a truth folder (labels.csv inside) or the labels CSV")
    overwrite: bool = opt(False, "replace thresholds fitted otherwise that the recipes already hold (the old ones are "
                          "kept in thresholds.replaced-<time>.json)", saved=False)

    def __post_init__(self) -> None:
        if self.min_positives < 0 or self.shrink < 0:
            raise ValueError("--min-positives and --shrink must be >= 0")
        if bool(self.scores) != bool(self.truth):
            raise ValueError("--scores and --truth go together")
        if not self.models:
            task = get_task(self.task or DEFAULT_TASK)
            self.models = str(Path("models") / default_run_name(task, task.level))


@dataclass
class OutOfFold:
    """A run's out-of-fold predictions with their truth."""

    task: Task
    ids: list[str]
    probs: np.ndarray  # (N, C) float64
    truth: np.ndarray  # (N, C) bool
    folds: list[int]  # the folds whose predictions these are
    n_folds: int  # folds in the folds table
    fold_dirs: list[Path]


def probability_columns(df: pd.DataFrame, num_classes: int, path: Path) -> np.ndarray:
    """(N, C) float64 of a frame's ``p0 .. p{C-1}`` columns; one-line errors for missing or bad values."""
    cols = [f"p{k}" for k in range(num_classes)]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing probability column(s) {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    try:
        probs = df[cols].astype(np.float64).to_numpy()
    except ValueError as exc:
        raise InputError(f"{path}: a probability is not a number ({exc})") from None
    if not np.all((probs >= 0) & (probs <= 1)):
        raise InputError(f"{path}: probabilities must lie in [0, 1]")
    return probs


def read_oof(models: str | Path, folds: Sequence[int] = ()) -> OutOfFold:
    """Every trained fold's (or ``folds``') ``val_predictions.csv`` and the truth from the folds table it trained on."""
    dirs = fold_dirs(models, folds)
    recipes = [Recipe.read(d / RECIPE_FILE) for d in dirs]
    task = recipes[0].task_record
    if any(r.task != task.name for r in recipes):
        raise InputError(f"{models}: folds of different tasks ({', '.join(sorted({r.task for r in recipes}))})")
    if recipes[0].kind != "multilabel" or recipes[0].level != "image":
        raise InputError(f"{models}: thresholds are fitted for image-level multilabel runs; this is a "
                         f"{recipes[0].level}-level {recipes[0].kind} run of {task.name}")
    tables = {json.loads((d / "config.json").read_text()).get("folds_csv", "") for d in dirs}
    if len(tables) != 1:
        raise InputError(f"{models}: folds trained from different folds tables ({', '.join(sorted(tables))})")
    samples = read_samples(tables.pop(), task.num_classes)
    label_of = dict(zip(samples["ID"], samples["weak"]))
    ids: list[str] = []
    probs = []
    for d in dirs:
        path = d / "val_predictions.csv"
        df = read_csv(path, ("ID",))
        probs.append(probability_columns(df, task.num_classes, path))
        ids += df["ID"].tolist()
    seen = pd.Series(ids)
    if seen.duplicated().any():
        raise InputError(f"{models}: sample {seen[seen.duplicated()].iloc[0]!r} is predicted by two folds")
    unknown = [i for i in ids if i not in label_of]
    if unknown:
        raise InputError(f"{models}: sample {unknown[0]!r} of the predictions is not in the folds table")
    truth = multihot([label_of[i] for i in ids], task.num_classes).astype(bool)
    return OutOfFold(task, ids, np.concatenate(probs), truth, [int(d.name[4:]) for d in dirs],
                     int(samples["fold"].nunique()), dirs)


def fit_run(cfg: ThresholdsConfig) -> tuple[Thresholds, OutOfFold, pd.DataFrame, Path | None]:
    """Fit on a run's OOF predictions; write ``thresholds.json``/``.csv`` and every fold's recipe entry.

    Returns the thresholds, the OOF predictions, the per-class table and, when ``--overwrite``
    replaced thresholds fitted otherwise, the file the old ones were kept in. Raises
    :class:`InputError` before writing anything when a fold's recipe holds other thresholds
    and ``cfg.overwrite`` is not set (see the module docstring).
    """
    run = Path(cfg.models)
    oof = read_oof(cfg.models, cfg.folds)  # before the lock: a mistyped --models makes no folder
    with folder_lock(run):
        if cfg.method == "share":
            shares = oof.truth.mean(0)
            th = share_thresholds(oof.probs, shares, KEEP_TOP[cfg.keep_top] is not False)
            th.n_positives = oof.truth.sum(0).astype(np.int64)
        else:
            th = fit_thresholds(oof.probs, oof.truth, cfg.min_positives, cfg.shrink, KEEP_TOP[cfg.keep_top],
                                fallback=cfg.fallback)
        table = threshold_table(oof, th)
        new = _plain(th.to_dict())
        kept = _keep_or_refuse(run, oof.fold_dirs, new, cfg.overwrite)
        data = dict(new, fitted_on={"folds": oof.folds, "of_folds": oof.n_folds, "samples": len(oof.ids)})
        write_json(run / "thresholds.json", data)  # first: a rerun after a kill among the recipes sees this fit
        write_csv(run / "thresholds.csv", table)
        for d in oof.fold_dirs:
            recipe = Recipe.read(d / RECIPE_FILE)
            recipe.thresholds = new
            write_json(d / RECIPE_FILE, recipe.to_dict())
    return th, oof, table, kept


def _plain(data: dict) -> dict:
    """As the dict reads back from JSON (what a recipe holds)."""
    return json.loads(json.dumps(data))


def _keep_or_refuse(run: Path, dirs: Sequence[Path], new: dict, overwrite: bool) -> Path | None:
    """Refuse (or with ``overwrite`` back up) thresholds in ``dirs``' recipes that differ from ``new``.

    Recipes holding ``new`` already, or none, are fine; so are other thresholds when the run's
    ``thresholds.json`` is this very fit (a run killed while writing the recipes, rerun).
    """
    held = {d.name: Recipe.read(d / RECIPE_FILE).thresholds for d in dirs}
    other = {name: t for name, t in held.items() if t is not None and t != new}
    if not other:
        return None
    record = run / "thresholds.json"
    previous = None
    if record.is_file():
        try:
            previous = json.loads(record.read_text())
        except ValueError:
            previous = None
    if isinstance(previous, dict) and {k: v for k, v in previous.items() if k != "fitted_on"} == new:
        return None
    name, old = next(iter(other.items()))
    if not overwrite:
        changes = settings_changes(old, new)
        shown = "; ".join(changes[:4]) + (f"; and {len(changes) - 4} more" if len(changes) > 4 else "")
        raise InputError(f"{run / name / RECIPE_FILE}: holds thresholds fitted otherwise ({shown}); add --overwrite to "
                         "replace them in every fold's recipe (the old ones are kept in thresholds.replaced-<time>.json)")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    backup = run / f"thresholds.replaced-{stamp}.json"
    k = 1
    while backup.exists():
        k += 1
        backup = run / f"thresholds.replaced-{stamp}-{k}.json"
    write_json(backup, {"thresholds.json": previous, "recipes": held})
    return backup


def threshold_table(oof: OutOfFold, th: Thresholds) -> pd.DataFrame:
    """Per class: OOF positives, fitted optimum, threshold applied, OOF F1 at 0.5 and with it."""
    names = oof.task.label_set.names
    applied = predict_labels(oof.probs, th)
    per_class = th.for_classes(len(names))
    return pd.DataFrame({
        "class": np.arange(len(names)), "name": list(names), "positives": oof.truth.sum(0),
        "fitted": th.fitted if th.fitted.size else np.full(len(names), np.nan),
        "threshold": np.round(per_class, 4) if th.method != "share" else np.nan,
        "f1_at_0.5": f1_per_class(apply_thresholds(oof.probs, 0.5), oof.truth),
        "f1": f1_per_class(applied, oof.truth),
    })


def read_heldout(scores: str | Path, truth: str | Path, task: Task) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, (N, C) probabilities, (N, C) truth) of held-out samples: predict.py's scores.csv and a labels CSV."""
    scores, truth = Path(scores), Path(truth)
    labels_path = truth / "labels.csv" if truth.is_dir() else truth
    labels = read_task_labels(labels_path, task)
    df = read_csv(scores, ("ID",))
    probs = probability_columns(df, task.num_classes, scores)
    label_of = dict(zip(labels["ID"], labels["labels"]))
    missing = [i for i in df["ID"] if i not in label_of]
    if missing:
        raise InputError(f"{scores}: sample {missing[0]!r} has no label in {labels_path}")
    if len(df) != len(labels):
        raise InputError(f"{scores}: {len(df)} samples scored, but {labels_path} has {len(labels)}")
    y = multihot([label_of[i] for i in df["ID"]], task.num_classes).astype(bool)
    return df["ID"].tolist(), probs, y


def compare_rules(th: Thresholds, oof: OutOfFold, probs: np.ndarray, truth: np.ndarray) -> pd.DataFrame:
    """Held-out macro F1 of each decision rule; ``fitted`` is what the submission uses.

    ``macro_F1`` averages all classes (absent and unpredicted ones count 0, as the competition's
    scikit-learn macro F1); ``macro_F1_present`` only those with a positive in this truth.
    """
    present = truth.any(0)
    rules = {
        "at_0.5": ("0.5 for every class", apply_thresholds(probs, 0.5)),
        "global": (f"{th.global_threshold:.2f} for every class", apply_thresholds(probs, th.global_threshold)),
        "share": ("each class takes its OOF share of the images, top class kept",
                  predict_labels(probs, share_thresholds(probs, oof.truth.mean(0), keep_top=True))),
        "fitted": (f"{th.method}: the run's thresholds{', top class kept' if th.keep_top else ''}", predict_labels(probs, th)),
    }
    rows = []
    for name, (what, pred) in rules.items():
        f1 = f1_per_class(pred, truth)
        rows.append({"rule": name, "what": what, "macro_F1": macro_f1(pred, truth),
                     "macro_F1_present": float(f1[present].mean()) if present.any() else float("nan")})
    return pd.DataFrame(rows)

"""The run report: one HTML page with the pictures a person checks a training run by.

    build_report(ReportConfig(run_dir="models/effb2"))   # -> models/effb2/report/report.html + PNGs

Sections: a summary of every fold, segmentation overlays (generated fields and the real sample
field), fold balance, training curves per fold, per-class AP against true and weak labels with
the label-frequency baseline, the highest-scored correct and wrong cells of each class, and the
submission's competition mAP when a truth folder exists. A missing piece (no folds, a fold not
trained, no test predictions, no truth) does not stop the report: its section says what is
missing and which command makes it. Only a run folder without any fold is an error.

Pictures are written first and ``report.html`` last, each atomically, so the page never links a
half-written picture. The page itself is assembled by :mod:`cellloc.report_page`.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image as PILImage
from sklearn.metrics import average_precision_score

from ..config import load_config, opt
from ..data import load_crop, read_cells, read_samples
from ..errors import InputError
from ..fieldio import dataset_root, find_mask, multihot, read_csv, read_mask, write_bytes, write_png
from ..plots import fold_balance_heatmap, save_figure
from ..plots_report import ap_bars_figure
from ..plots_training import plot_training_curves
from ..render import composite_rgb, overlay_thumbnail
from ..report_page import Gallery, Heading, Image, Note, Pre, Section, Table, Text, image_sources, render_page
from ..submission_formats import FORMATS
from ..tasks import DEFAULT_TASK, TASKS, Task, get_task
from .folds import output_paths
from .segment import SegmentRunConfig


@dataclass
class ReportConfig:
    """Options of ``python src/report.py``."""

    run_dir: str = opt("models/effb2", "training run folder, with fold<K>/ subfolders from src/train.py")
    task: str = opt("", "task (default: the one the run was trained for; given, it must match)", choices=["", *TASKS.names()])
    seg: str = opt("output/synth", "segmentation output of the training fields (masks/, cells.csv, folds.csv)")
    sample: str = opt("output/sample", "segmentation output of the real sample field; shown when present")
    predictions: str = opt("output/synth_test", "test prediction folder (submission.csv, predict_config.json)")
    truth: str = opt("", "truth folder to score the submission (default: truth/ beside the predicted fields, if any)")
    out: str = opt("", "report folder (default: RUN_DIR/report)")
    fields: int = opt(3, "generated fields shown as overlays")
    examples: int = opt(4, "cells shown per class for each kind (true positives, false positives)")
    max_side: int = opt(640, "longest side of an overlay picture, pixels")
    screenshot: str = opt("", "also save a picture of the page's top here (needs Chromium), e.g. docs/report.png")

    def __post_init__(self) -> None:
        if self.fields < 0 or self.examples < 0:
            raise ValueError(f"--fields and --examples must be >= 0, got {self.fields} and {self.examples}")
        if self.max_side < 64:
            raise ValueError(f"--max-side must be >= 64, got {self.max_side}")

    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path(self.run_dir) / "report"


@dataclass
class Run:
    """A training run folder: its folds and what their files say."""

    root: Path
    folds: dict[int, Path]  # fold id -> fold<K>/ folder
    config: dict  # config.json of the first fold that has one ({} if none has)
    task: Task  # what the run was trained for

    @property
    def names(self) -> tuple[str, ...]:
        """Class names."""
        return self.task.label_set.names

    @property
    def level(self) -> str:
        """What the run's models classify: cell or image."""
        return self.config.get("level", self.task.level)

    def fold_json(self, fold: int, name: str) -> dict | None:
        return read_json(self.folds[fold] / name)

    def config_path(self, fold: int) -> Path | None:
        """The fold's own config.json, else the first other fold's (a new fold repeats its settings)."""
        for k in (fold, *self.folds):
            if k in self.folds and (self.folds[k] / "config.json").is_file():
                return self.folds[k] / "config.json"
        return None


@dataclass
class ReportResult:
    page: Path
    images: int
    notes: list[tuple[str, str]] = field(default_factory=list)  # (section title, what is missing)


# --------------------------------------------------------------------------- pure helpers


def top_examples(scores: np.ndarray, positive: np.ndarray, known: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows to show for one class: (true positives, false positives), ``n`` each, highest score first.

    ``scores``: (N,) the class's score per cell; ``positive``: (N,) bool, the cell has the class;
    ``known``: (N,) bool, the cell's truth is known (a segmented cell that matched no true cell
    is neither right nor wrong). Ties keep row order.
    """
    order = np.argsort(-np.asarray(scores, float), kind="stable")
    positive, known = np.asarray(positive, bool)[order], np.asarray(known, bool)[order]
    return order[positive & known][:n], order[~positive & known][:n]


def spread_pick(items: Sequence[str], n: int) -> list[str]:
    """``n`` items evenly spread over ``items`` (all of them when there are at most ``n``)."""
    if n >= len(items):
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, n).round().astype(int)] if n else []


def label_names(label: str, names: Sequence[str]) -> str:
    """``"0|16"`` -> ``"Nucleoplasm, Cytosol"`` (unknown ids are kept as numbers)."""
    ids = [p for p in str(label).split("|") if p.strip().isdigit()]
    return ", ".join(names[int(i)] if int(i) < len(names) else i for i in ids) or "none"


# --------------------------------------------------------------------------- file helpers


def read_json(path: Path) -> dict | None:
    """A JSON object from ``path``, or None when it is missing or unreadable (the report goes on)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_png(path: Path) -> bool:
    """Whether ``path`` is a complete, decodable PNG (a copied picture must show)."""
    try:
        with PILImage.open(path) as img:
            img.verify()
            return img.format == "PNG"
    except (OSError, ValueError, SyntaxError):
        return False


def find_run(run_dir: str | Path, task: str = "") -> Run:
    """The run's fold folders (``fold<K>/``) and its task; a missing folder or one without folds is an
    :class:`InputError`, and so is a ``task`` other than the one the run recorded."""
    root = Path(run_dir)
    if not root.is_dir():
        raise InputError(f"{root}: run folder not found (train one with python src/train.py --fold 0)")
    folds = {int(d.name[4:]): d for d in root.iterdir() if d.is_dir() and re.fullmatch(r"fold\d+", d.name)}
    if not folds:
        raise InputError(f"{root}: no fold folders (fold<K>/) in the run; train one with "
                         f"python src/train.py --fold 0 --out-dir {root.parent} --run-name {root.name}")
    folds = dict(sorted(folds.items()))
    config = next((c for c in (read_json(d / "config.json") for d in folds.values()) if c), {})
    recorded = config.get("task", task or DEFAULT_TASK)
    if task and task != recorded:
        raise InputError(f"{root}: trained for task {recorded}, not {task}; drop --task or pass --task {recorded}")
    return Run(root, folds, config, get_task(recorded))


def fold_names(folds: Sequence[int]) -> str:
    """``fold 3``, ``folds 1-9`` or ``folds 1, 3, 5`` (sorted, distinct fold numbers)."""
    if len(folds) == 1:
        return f"fold {folds[0]}"
    consecutive = list(folds) == list(range(folds[0], folds[-1] + 1))
    return f"folds {folds[0]}-{folds[-1]}" if consecutive and len(folds) > 2 else "folds " + ", ".join(map(str, folds))


def train_command(run: Run, fold: int, resume: bool = False) -> str:
    """The command that trains (or resumes) ``fold`` with the settings the run's folds used: its saved config."""
    path = run.config_path(fold)
    if path is None:
        args = ["python", "src/train.py", "--task", run.task.name, "--fold", str(fold),
                "--out-dir", str(run.root.parent), "--run-name", run.root.name]
    else:
        args = ["python", "src/train.py", "--config", str(path)] + (["--fold", str(fold)] if path.parent.name != f"fold{fold}" else [])
    return shlex.join(args + (["--resume"] if resume else []))


def folds_csv_path(cfg: ReportConfig, run: Run) -> Path:
    """The cells table the run trained on (its config's ``folds_csv``) if it exists, else SEG/folds.csv."""
    recorded = Path(run.config.get("folds_csv", ""))
    return recorded if run.config.get("folds_csv") and recorded.is_file() else Path(cfg.seg) / "folds.csv"


def segment_run_config(seg_dir: Path, task: Task) -> SegmentRunConfig:
    """The config that made a segmentation output (its segment_config.json), else the task's defaults there."""
    try:
        return load_config(SegmentRunConfig, seg_dir / "segment_config.json")
    except (OSError, ValueError, TypeError, KeyError):
        return SegmentRunConfig(task=task.name, out=str(seg_dir))


def segment_command(seg_dir: Path, overlay: bool = False) -> str:
    """The ``src/segment.py`` command that remakes a segmentation output: its saved config, when there is one."""
    saved = seg_dir / "segment_config.json"
    if saved.is_file():
        args = ["python", "src/segment.py", "--config", str(saved)]
    else:
        args = ["python", "src/segment.py", "--input", "FIELDS_FOLDER", "--out", str(seg_dir)]
    return shlex.join(args + (["--overlay"] if overlay else []))


class Assets:
    """Writes the report's pictures under ``out`` and hands back their paths relative to the page."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def array(self, name: str, rgb: np.ndarray) -> str:
        write_png(self.out / name, rgb)
        return name

    def figure(self, name: str, fig) -> str:
        save_figure(fig, self.out / name)
        return name

    def copy(self, name: str, src: Path) -> str:
        write_bytes(self.out / name, src.read_bytes())
        return name


# --------------------------------------------------------------------------- sections


def mask_file(seg_dir: Path, image_id: str, kind: str) -> Path:
    """``masks/{ID}_{kind}_mask.png`` or ``.npz`` (``--mask-format npz``); the PNG name when neither exists."""
    stem = f"{image_id}_{kind}_mask"
    return find_mask(seg_dir / "masks", stem) or seg_dir / "masks" / f"{stem}.png"


def field_overlays(seg_dir: Path, ids: Sequence[str], rows: pd.DataFrame, task: Task, max_side: int,
                   assets: Assets, prefix: str, width: int) -> list[Image | Note]:
    """Overlay pictures of some fields of a segmentation output, from its fields and masks.

    The fields are read from the ``input`` recorded in its segment_config.json; when they are
    gone, the output's own ``overlays/{ID}.png`` (``--overlay``) is used instead, if any.
    """
    seg_cfg = segment_run_config(seg_dir, task)
    channels = seg_cfg.channel_names
    out: list[Image | Note] = []
    for i, image_id in enumerate(ids, 1):
        cells = rows[rows["ID"] == image_id]
        caption = f"{image_id}: {len(cells)} cells; field labels: {label_names(cells['Label'].iloc[0], task.label_set.names)}"
        if "TrueLabel" in cells:
            caption += f"; {(cells['TrueLabel'] != '').mean():.0%} of cells match a true cell"
        name = f"{prefix}_{i}.png"
        try:
            image = seg_cfg.layout.read_field(seg_cfg.input, image_id, channels)
            masks = [read_mask(mask_file(seg_dir, image_id, kind)) for kind in ("cell", "nucleus")]
            out.append(Image(assets.array(name, overlay_thumbnail(image, masks[0], masks[1], channels, max_side)), caption, width))
        except InputError as exc:
            saved = seg_dir / "overlays" / f"{image_id}.png"
            if saved.is_file() and is_png(saved):
                rgb = cv2.cvtColor(cv2.imread(str(saved), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                scale = min(1.0, max_side / max(rgb.shape[:2]))
                if scale < 1:
                    rgb = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
                out.append(Image(assets.array(name, rgb), caption + " (saved overlay)", width))
            else:
                out.append(Note(f"overlay of {image_id} in {seg_dir}: {exc}", segment_command(seg_dir, overlay=True)))
    return out


def overlays_section(cfg: ReportConfig, run: Run, assets: Assets) -> Section:
    sec = Section("overlays", "Segmentation overlays")
    sec.add(Text("Cell outlines (white) and nucleus outlines (cyan) on the colour composite "
                 "(red: microtubules, green: the protein, blue: nuclei, yellow: endoplasmic reticulum). "
                 "Click a picture for its full size."))
    for title, folder, default, n, prefix, width, command in (
        ("Generated training fields", Path(cfg.seg), "output/synth", cfg.fields, "overlay", 360,
         "python src/segment.py --input input/synth/train"),
        ("The real sample field", Path(cfg.sample), "output/sample", max(cfg.fields, 1), "sample", 560,
         "python src/segment.py --input input/sample --overlay"),
    ):
        if n == 0:
            continue
        sec.add(Heading(f"{title} ({folder})"))
        if folder != Path(default):
            command += f" --out {folder}"
        table = folder / "cells.csv"
        if not table.is_file():
            sec.add(Note(f"no segmentation output at {folder} (no cells.csv)", command))
            continue
        try:
            rows = read_csv(table, ("ID", "cell_id", "Label"))
        except InputError as exc:
            sec.add(Note(str(exc), command))
            continue
        ids = spread_pick(sorted(rows["ID"].unique()), n)
        sec.add(*field_overlays(folder, ids, rows, run.task, cfg.max_side, assets, prefix, width))
    return sec


def load_folds(folds_csv: Path, run: Run) -> tuple[pd.DataFrame | None, Note | None]:
    """(the table with folds the run trained on, None), or (None, a note saying why there is none and how to make it).

    Cell runs read a cells table (crops and labels per cell), image runs a samples table.
    """
    command = f"python src/gen_folds.py --task {run.task.name} --cells {folds_csv.parent / 'cells.csv'} --out {folds_csv}"
    if not folds_csv.is_file():
        return None, Note(f"no folds table at {folds_csv}", command)
    try:
        read = read_cells if run.level == "cell" else read_samples
        return read(folds_csv, run.task.num_classes), None
    except InputError as exc:
        return None, Note(str(exc), command)


def folds_section(run: Run, table: pd.DataFrame | None, why: Note | None, folds_csv: Path, assets: Assets) -> Section:
    sec = Section("folds", "Fold balance")
    paths = output_paths(folds_csv)
    if table is None:
        return sec.add(why or Note(f"no folds table at {folds_csv}"))
    per_fold = table.groupby("fold").agg(fields=("ID", "nunique"), cells=("ID", "size")).reset_index()
    sec.add(Text(f"{folds_csv}: {table['ID'].nunique()} fields, {len(table)} cells in {len(per_fold)} folds "
                 "(folds are assigned per field, so no field's cells are on both sides of a split)."))
    sec.add(Table(["fold", "fields", "cells", "trained"],
                  [[int(r.fold), int(r.fields), int(r.cells), "yes" if int(r.fold) in run.folds else "no"]
                   for r in per_fold.itertuples()]))
    caption = "share of each class's fields per fold (white: the ideal 1/k; red: too many; blue: too few)"
    if paths["png"].is_file() and is_png(paths["png"]):
        sec.add(Image(assets.copy("fold_balance.png", paths["png"]), caption, 640))
    elif paths["csv"].is_file():
        balance = pd.read_csv(paths["csv"])
        counts = balance[[c for c in balance.columns if re.fullmatch(r"fold_\d+", c)]].to_numpy()
        fig_path = assets.out / "fold_balance.png"
        fold_balance_heatmap(counts, list(balance["class_name"]), fig_path, title=f"{paths['csv']} (redrawn)")
        sec.add(Image(fig_path.name, caption, 640))
    else:
        sec.add(Note(f"no balance report beside {folds_csv}",
                     f"python src/gen_folds.py --cells {folds_csv.parent / 'cells.csv'} --out {folds_csv}"))
    if paths["txt"].is_file():
        text = paths["txt"].read_text(errors="replace").split("Per-class counts")[0].strip()
        sec.add(Pre(text))
    return sec


def training_section(run: Run, table_folds: Sequence[int], assets: Assets) -> Section:
    sec = Section("training", "Training curves")
    sec.add(Text("Loss, validation scores and learning rate per epoch; the dotted line marks the best epoch, "
                 "whose weights (best.pt) are scored below."))
    untrained = sorted(set(table_folds) - set(run.folds))
    if untrained:  # one note for all of them: a demo that trains fold 0 of 10 is not nine missing pieces
        more = " (and --fold K for the others)" if len(untrained) > 1 else ""
        sec.add(Note(f"{fold_names(untrained)} {'is' if len(untrained) == 1 else 'are'} not trained",
                     train_command(run, untrained[0]) + more))
    for k in sorted(run.folds):
        d = run.folds[k]
        metrics = d / "metrics.csv"
        if not metrics.is_file():
            sec.add(Note(f"fold {k} ({d}) has no metrics.csv: no epoch finished",
                         train_command(run, k, resume=(d / "last.pt").is_file())))
            continue
        history = pd.read_csv(metrics)
        best = history.loc[history["best"].astype(str) == "True", "epoch"] if "best" in history else pd.Series(dtype=int)
        caption = f"fold {k}: {len(history)} epoch(s)" + (f", best epoch {int(best.iloc[-1])}" if len(best) else "")
        name = f"curves_fold{k}.png"
        if (d / "curves.png").is_file() and is_png(d / "curves.png"):
            sec.add(Image(assets.copy(name, d / "curves.png"), caption, 1000))
        elif len(history):
            plot_training_curves(history, assets.out / name, f"{run.root.name} fold {k} (redrawn from metrics.csv)")
            sec.add(Image(name, caption, 1000))
        else:
            sec.add(Note(f"fold {k}: {metrics} has no epochs", train_command(run, k, resume=True)))
    return sec


def scores_section(run: Run, assets: Assets) -> Section:
    sec = Section("scores", "Per-class AP")
    sec.add(Text("AP of the best epoch on its validation fold, per class. Against the weak field labels every cell "
                 "inherits its field's classes, so weak-label AP rewards what the competition punishes; AP against "
                 "the true cell labels is the per-cell score. The tick on each bar is the class's prevalence: the AP "
                 "a constant score gets."))
    for k, d in run.folds.items():
        path = d / "scores.csv"
        if not path.is_file():
            sec.add(Note(f"fold {k} has no scores.csv (written when training ends)",
                         train_command(run, k, resume=(d / "last.pt").is_file())))
            continue
        if run.task.kind == "multiclass":  # one row per metric, no per-class AP
            scores = pd.read_csv(path)
            sec.add(Table(list(scores.columns), scores.to_numpy().tolist(), caption=f"fold {k}"))
            continue
        scores = pd.read_csv(path, dtype={"class": str})
        try:
            fig = ap_bars_figure(scores, f"{run.root.name} fold {k}: per-class AP on its validation cells")
        except (ValueError, KeyError) as exc:
            sec.add(Note(f"{path}: {exc}", train_command(run, k, resume=True)))
            continue
        sec.add(Image(assets.figure(f"ap_fold{k}.png", fig), f"fold {k}", 640))
    return sec


def _predictions(run: Run, sec: Section) -> pd.DataFrame | None:
    """Every fold's val_predictions.csv stacked (out-of-fold scores), with a ``fold`` column."""
    frames = []
    for k, d in run.folds.items():
        path = d / "val_predictions.csv"
        if path.is_file():
            frames.append(pd.read_csv(path, dtype={"ID": str}).assign(fold=k))
        else:
            sec.add(Note(f"fold {k} has no val_predictions.csv (written when training ends)",
                         train_command(run, k, resume=(d / "last.pt").is_file())))
    return pd.concat(frames, ignore_index=True) if frames else None


def cell_tiles(cells: pd.DataFrame, rows: Sequence[int], scores: np.ndarray, source: str, channels: Sequence[str],
               assets: Assets, stem: str) -> tuple[list[Image], list[str]]:
    """(one captioned tile per cell of ``rows`` whose crop exists, the crop files that do not)."""
    tiles, missing = [], []
    for i, r in enumerate(rows, 1):
        row = cells.iloc[int(r)]
        try:
            crop = load_crop(row["crop_path"])
        except InputError:
            missing.append(str(row["crop_path"]))
            continue
        src = assets.array(f"cells/{stem}{i}.png", composite_rgb(crop, channels[: crop.shape[2]]))
        labels = "|".join(map(str, row[source])) or "-"
        where = f"{row['ID']} cell {row['cell_id']} (fold {row['fold']})"
        tiles.append(Image(src, f"{scores[int(r)]:.3f} · {labels}", tooltip=where))
    return tiles, missing


def examples_section(run: Run, table: pd.DataFrame | None, why: Note | None, folds_csv: Path, n: int,
                     assets: Assets) -> Section:
    sec = Section("examples", "Correct and wrong cells per class")
    if run.level != "cell":
        return sec.add(Text(f"An {run.level}-level run scores whole fields; examples of cells are shown for cell models."))
    if table is None:
        why = why or Note(f"no folds table at {folds_csv}")
        return sec.add(Note(f"{why.text}: the cells' crops and labels are unknown", why.command))
    preds = _predictions(run, sec)
    if preds is None or n == 0:
        return sec
    cells = table.assign(cell_id=table["cell_id"].astype(int))
    joined = preds.merge(cells.drop(columns=["fold"]), on=["ID", "cell_id"], how="inner")
    if len(joined) < len(preds):
        sec.add(Note(f"{len(preds) - len(joined)} of {len(preds)} predicted cells are not in {folds_csv} "
                     "(was the table rebuilt after training?)", train_command(run, min(run.folds))))
    if joined.empty:
        return sec
    source = "true" if "true" in joined.columns else "weak"
    known = np.array([len(x) > 0 for x in joined[source]])
    truth = multihot(list(joined[source]), len(run.names)).astype(bool)
    probs = joined[[f"p{c}" for c in range(len(run.names))]].to_numpy(float)
    if source == "true":
        judged = "the true cell labels (TrueLabel)" + (
            f"; {int((~known).sum())} cells that matched no true cell are left out" if (~known).any() else "")
    else:
        judged = "the weak field labels (the table has no TrueLabel column)"
    sec.add(Text(f"{len(joined)} validation cells of {joined['fold'].nunique()} fold(s), each scored by the model that "
                 f"did not train on it; right and wrong are judged against {judged}. For each class with a positive "
                 f"cell: the {n} highest-scored cells that have it, and the {n} highest-scored cells that do not (its "
                 "worst false positives). Captions: the class score, then the cell's labels. Each crop is "
                 "contrast-stretched on its own."))
    channels = segment_run_config(folds_csv.parent, run.task).channel_names
    missing: list[str] = []
    absent = []
    for c, name in enumerate(run.names):
        pos = truth[:, c] & known
        if not pos.any():
            absent.append(str(c))
            continue
        ap = average_precision_score(pos[known], probs[known, c])
        sec.add(Heading(f"{c} {name}: {int(pos.sum())} positive cells, AP {ap:.3f}"))
        right, wrong = top_examples(probs[:, c], truth[:, c], known, n)
        for label, rows, tag in (("correct: has the class", right, "tp"), ("wrong: does not have it", wrong, "fp")):
            tiles, lost = cell_tiles(joined, rows, probs[:, c], source, channels, assets, f"c{c:02d}_{tag}")
            missing += lost
            if tiles:
                sec.add(Gallery(tiles, label))
    if absent:
        sec.add(Text(f"Classes with no positive validation cell (not shown): {', '.join(absent)}."))
    if missing:
        sec.add(Note(f"{len(missing)} crop file(s) not found, e.g. {missing[0]}", segment_command(folds_csv.parent)))
    return sec


def truth_folder(cfg: ReportConfig, predict_cfg: dict | None) -> Path | None:
    """The truth folder: --truth, else truth/ beside the predicted fields (as make_data.py writes it)."""
    if cfg.truth:
        return Path(cfg.truth)
    if predict_cfg and predict_cfg.get("input"):
        cand = dataset_root(predict_cfg["input"]) / "truth"
        if cand.is_dir():
            return cand
    return None


def submission_section(cfg: ReportConfig, run: Run) -> tuple[Section, tuple[str, float] | None]:
    sec = Section("submission", "Test submission")
    pred = Path(cfg.predictions)
    sub = pred / "submission.csv"
    predict_cfg = read_json(pred / "predict_config.json")
    if not sub.is_file():
        return sec.add(Note(f"no test predictions at {sub}",
                            f"python src/predict.py --input input/{pred.name}/test --models {run.root} --out {pred}")), None
    if predict_cfg and Path(predict_cfg.get("models", "")).resolve() != run.root.resolve():
        sec.add(Text(f"Note: {sub} was made by the models in {predict_cfg.get('models')}, not by {run.root}."))
    truth_dir = truth_folder(cfg, predict_cfg)
    if truth_dir is None:
        return sec.add(Note(f"no truth folder for the fields of {sub}, so it is not scored here (pass --truth; "
                            "Kaggle scores real test sets)", f"python src/evaluate.py --truth TRUTH --submission {sub}")), None
    evaluate = f"python src/evaluate.py --task {run.task.name} --truth {truth_dir} --submission {sub}"
    try:
        table, summary = FORMATS[run.task.submission].evaluate(truth_dir, sub, run.task)
    except (InputError, ValueError) as exc:
        return sec.add(Note(f"cannot score {sub} against {truth_dir}: {exc}", evaluate)), None
    *lines, last = summary.splitlines()
    metric, _, value = last.partition("=")
    sec.add(Text(f"The {run.task.name} competition metric of {sub} against {truth_dir} ({evaluate}): "
                 + "; ".join(lines + [last]) + "."))
    sec.add(Table(list(table.columns), table.to_numpy().tolist(), caption=f"{last} ('-': undefined, e.g. no true cell of the class)"))
    return sec, (metric, float(value))


def summary_section(run: Run, headline: tuple[str, float] | None, others: Sequence[Section]) -> Section:
    sec = Section("summary", "Summary")
    c = run.config
    if c:
        trained_on = f"{c.get('label_source')} labels of the cells in" if run.level == "cell" else "whole fields of"
        sec.add(Text(f"Task {run.task.name}, {run.level}-level: {c.get('model')} at {c.get('image_size')} px, trained on "
                     f"{trained_on} {c.get('folds_csv')}, up to {c.get('epochs')} epochs ({c.get('optimizer')} lr {c.get('lr')}, "
                     f"{c.get('schedule')} schedule, {c.get('loss')} loss, batch {c.get('batch_size')}); config: "
                     f"{run.config_path(min(run.folds))}."))
    cell_ap = run.level == "cell" and run.task.kind == "multilabel"
    names = ["macro_ap_true", "baseline_ap_true", "macro_ap_weak", "baseline_ap_weak"] if cell_ap else \
        [m for name in run.task.metrics for m in (name, f"baseline {name}")]
    rows = []
    for k in run.folds:
        s = run.fold_json(k, "summary.json")
        if s is None:
            rows.append([k, "unfinished", *[None] * (len(names) + 4)])
            continue
        if cell_ap:
            values = [s.get(n) for n in names]
        else:
            values = [v for name in run.task.metrics
                      for v in ((s.get("metrics") or {}).get(name), (s.get("baselines") or {}).get(name))]
        rows.append([k, s.get("epochs_run"), s.get("best_epoch"), s.get("n_train"), s.get("n_valid"), *values,
                     round(float(s.get("seconds", float("nan"))) / 60, 1)])
    unit = "cells" if run.level == "cell" else "fields"
    header = ["macro AP true", "baseline", "macro AP weak", "baseline"] if cell_ap else \
        [h for name in run.task.metrics for h in (name, "baseline")]
    sec.add(Table(["fold", "epochs", "best epoch", f"train {unit}", f"valid {unit}", *header, "minutes"], rows,
                  caption="validation fold scores (baseline: what a constant label-frequency guess gets)"))
    if headline is not None:
        sec.add(Text(f"Test submission: competition {headline[0]} {headline[1]:.4f} (see the last section)."))
    missing = [[s.title, n.text] for s in others for n in s.notes]
    if missing:
        sec.add(Text("Missing pieces (each section says which command makes it):"), Table(["section", "missing piece"], missing))
    return sec


# --------------------------------------------------------------------------- the page


def build_report(cfg: ReportConfig, command: str = "") -> ReportResult:
    """Write ``report.html`` and its pictures to ``cfg.out_dir()``; see the module docstring."""
    run = find_run(cfg.run_dir, cfg.task)
    out = cfg.out_dir()
    assets = Assets(out)
    folds_csv = folds_csv_path(cfg, run)
    table, why = load_folds(folds_csv, run)
    table_folds = sorted(table["fold"].unique().tolist()) if table is not None else []

    submission, headline = submission_section(cfg, run)
    sections = [
        overlays_section(cfg, run, assets),
        folds_section(run, table, why, folds_csv, assets),
        training_section(run, table_folds, assets),
        scores_section(run, assets),
        examples_section(run, table, why, folds_csv, cfg.examples, assets),
        submission,
    ]
    sections.insert(0, summary_section(run, headline, sections))
    stamp = time.strftime("%Y-%m-%d %H:%M")
    subtitle = f"{len(run.folds)} fold(s): {', '.join(map(str, run.folds))}; made {stamp}"
    subtitle += f" by {command}" if command else ""
    page = render_page(f"Run report: {run.root}", subtitle, sections)
    write_bytes(out / "report.html", page.encode("utf-8"))
    notes = [(s.title, n.text) for s in sections[1:] for n in s.notes]
    return ReportResult(out / "report.html", len(image_sources(page)), notes)

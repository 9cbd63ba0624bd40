"""``train.py --relabel-after N``: after N of its epochs the student judges its taught cells itself.

The teacher learned each class from the certain fields only, so it cannot judge the classes those
fields do not show (on the demo's fields Endoplasmic reticulum and Mitotic spindle) and ranks the
others from few fields. The student by then has learned every class from every field naming it, and
ranks a field's cells better than its teacher did (15 of 18 classes after 3 of its 6 epochs on the demo's
fields; docs/cellgap.md rounds 14 and 19). After its N-th epoch it predicts the training cells of the
fields naming several classes, and those cells train from then on on the targets the teacher's rule
(``--teacher-targets``) makes of the student's predictions, every class judged; every other cell
keeps its target. The predictions are kept in the run folder (``student_predictions.csv``), so a
run resumed after that epoch trains on the same targets. Measured after 3 of 6 epochs: +0.003 on every one
of five training seeds of the demo's fields (0.918 of the true-label ceiling against 0.912) and +0.002 over
the demo's five seeds (higher on four), for one prediction pass; so by default (-1) it judges after half the
student's epochs (docs/cellgap.md rounds 19 and 20). Under ``accelerate launch`` rank 0 judges (callbacks run
there) and every other rank takes its new targets before the next epoch (:meth:`StudentRelabel.sync_ranks`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Subset

from ..data import SampleDataset, predictions_for, read_soft_targets
from ..engine import Callback
from ..errors import InputError
from ..fieldio import write_csv

RELABEL_PREDICTIONS = "student_predictions.csv"  # in the student's run folder: its own judgement of its taught cells


@dataclass
class Relabel:
    """Which training rows the student judges, and what every training row trains on given those judgements."""

    cells: pd.DataFrame  # the training rows (ID, cell_id): predictions are matched to them by these
    rows: np.ndarray  # (M,) indices of the rows it judges: the cells of fields naming several classes
    targets: Callable[[np.ndarray], np.ndarray]  # (N, C) predictions (only ``rows`` read) -> (N, C) training targets
    num_classes: int

    def table(self, probs: np.ndarray) -> pd.DataFrame:
        """``ID, cell_id, p0..`` of the judged rows, rounded as saved (the live run trains on what a resume reads)."""
        keys = self.cells.iloc[self.rows][["ID", "cell_id"]].reset_index(drop=True)
        keys = keys.assign(cell_id=keys["cell_id"].astype(int))
        columns = pd.DataFrame(np.asarray(probs, np.float64), columns=[f"p{k}" for k in range(self.num_classes)])
        return pd.concat([keys, columns], axis=1).round(6)

    def new_targets(self, table: pd.DataFrame, where: Path) -> np.ndarray:
        """(N, C) float32 training targets from a :meth:`table` of the judged rows (one-line error if one is missing)."""
        p = predictions_for(self.cells, table, self.num_classes)
        if np.isnan(p[self.rows, 0]).any():
            raise InputError(f"{where}: no prediction of {int(np.isnan(p[self.rows, 0]).sum())} taught cells; "
                             "was the folds table regenerated? add --overwrite to start over")
        return np.asarray(self.targets(np.nan_to_num(p, nan=0.0)), np.float32)


def predict_rows(net: torch.nn.Module, dataset: SampleDataset, rows: np.ndarray, batch_size: int,
                 num_workers: int = 0) -> np.ndarray:
    """(M, C) sigmoid probabilities of ``net`` for the unaugmented views of ``dataset[rows]``, in eval mode."""
    device = next(net.parameters()).device
    loader = DataLoader(Subset(dataset, [int(i) for i in rows]), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers)
    was_training = net.training
    net.eval()
    out = []
    with torch.inference_mode():
        for batch in loader:
            out.append(torch.sigmoid(net(batch["image"].to(device)).float()).cpu().numpy())
    net.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def restore(relabel: Relabel, dataset: SampleDataset, run_dir: Path) -> None:
    """A run resumed after its relabelling epoch: its training targets again from the saved judgements."""
    path = run_dir / RELABEL_PREDICTIONS
    if not path.is_file():
        raise InputError(f"{path}: not found, but the run was stopped after its --relabel-after epoch; "
                         "add --overwrite to start over")
    dataset.targets = relabel.new_targets(read_soft_targets(path, relabel.num_classes), path)


def default_relabel_after(epochs: int, teaches: bool) -> int:
    """``--relabel-after -1``: half the student's ``epochs``, rounded down (3 of the demo's 6), where a teacher
    ``teaches``; else 0 (never)."""
    return epochs // 2 if teaches else 0


class StudentRelabel(Callback):
    """At the end of epoch ``after`` (1-based), after validation (BatchNorm recalibrated, the weights a checkpoint
    would hold): predict the judged rows, save them, and set the training dataset's targets from them.

    Under ``accelerate launch`` tez runs callbacks on rank 0 alone, which judges and writes; :meth:`sync_ranks`
    then hands its targets to the other ranks, whose training datasets hold the same rows in the same order."""

    def __init__(self, relabel: Relabel, train_ds: SampleDataset, view_ds: SampleDataset, after: int, run_dir: Path,
                 batch_size: int, num_workers: int = 0) -> None:
        self.relabel, self.train_ds, self.view_ds = relabel, train_ds, view_ds
        self.after, self.run_dir = after, run_dir
        self.batch_size, self.num_workers = batch_size, num_workers

    def on_epoch_end(self, tez_trainer, **kwargs) -> None:
        if int(tez_trainer.current_epoch) + 1 != self.after:
            return
        module = tez_trainer.unwrapped()
        probs = predict_rows(getattr(module, "net", module), self.view_ds, self.relabel.rows, self.batch_size,
                             self.num_workers)
        table = self.relabel.table(probs)
        path = self.run_dir / RELABEL_PREDICTIONS
        write_csv(path, table)  # before last.pt records this epoch: a resume finds it
        self.train_ds.targets = self.relabel.new_targets(table, path)
        print(f"relabel: after epoch {self.after} the student judged its {len(self.relabel.rows)} taught cells; "
              f"they train on its judgement from now on ({path.name})", flush=True)

    def sync_ranks(self, tez_trainer) -> None:
        """Every rank, after the epoch's callbacks: at epoch ``after`` rank 0's new targets replace each rank's
        (the others still hold the teacher's), and rank 0 checks every rank now holds the same."""
        if int(tez_trainer.current_epoch) + 1 != self.after:
            return
        self.train_ds.targets = tez_trainer.from_main(np.asarray(self.train_ds.targets, np.float32))
        sums = tez_trainer.gathered(float(np.asarray(self.train_ds.targets, np.float64).sum()))
        if tez_trainer.is_main_process():
            if len(set(sums)) != 1:
                raise RuntimeError(f"relabel: the {len(sums)} ranks hold different targets after the broadcast "
                                   f"(sums {sums})")
            print(f"relabel: the {len(sums)} processes train on the student's judgement", flush=True)


__all__ = ["RELABEL_PREDICTIONS", "Relabel", "StudentRelabel", "default_relabel_after", "predict_rows", "restore"]

"""Issue 16 study: which confidence picks RxRx1 pseudo-labels that are right, scored on generated truth.

    python bench/study_pseudo_labels.py output/rxrx1_recipe_s0/all_sirnas=input/rxrx1_recipe_s0 \
        output/rxrx1_recipe_s0/plain=input/rxrx1_recipe_s0 ...

Each argument is a plate-assigned prediction folder of a test split (``predict.py
--plate-assignment``) and the dataset folder it predicted (its ``train.csv`` gives the plate
groups, its ``truth/labels.csv`` the true siRNAs). For each folder and each confidence of
``pseudo_labels.py --confidence`` (plate, probability) it prints the precision of the most
confident 10%, 25% and 50% of the submitted wells and how many reach 0.5, against the truth.
That is what a pseudo-label rule has to get right; the truth is read here only, never by
``pseudo_labels.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cellloc.plate_assignment import plate_confidence  # noqa: E402
from cellloc.runs.predict import per_sample, read_field_scores  # noqa: E402
from cellloc.rxrx1 import parse_id_code, plate_groups_of  # noqa: E402
from cellloc.tasks import get_task  # noqa: E402

SHARES = (0.1, 0.25, 0.5)


def confidences(folder: Path, dataset: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(right: (N,) bool per submitted well, {confidence name: (N,) float}) of one prediction folder."""
    ids, probs = read_field_scores(folder)
    samples, well_probs = per_sample(ids, probs, get_task("rxrx1"))
    submitted = pd.read_csv(folder / "submission.csv").set_index("id_code")["sirna"]
    keep = [i for i, s in enumerate(samples) if s in submitted.index]  # the treatment wells
    samples, well_probs = [samples[i] for i in keep], well_probs[keep]
    labels = submitted.loc[samples].to_numpy()
    truth = pd.read_csv(dataset / "truth" / "labels.csv").set_index("id_code")["sirna"]
    right = labels == truth.loc[samples].to_numpy()
    plates = [parse_id_code(s)[:2] for s in samples]
    log_probs = np.log(np.clip(well_probs, 1e-38, None))
    return right, {"plate": plate_confidence(log_probs, plates, plate_groups_of(dataset / "train.csv"), labels),
                   "probability": well_probs[np.arange(len(labels)), labels]}


def main(argv: list[str]) -> None:
    if not argv or any("=" not in a for a in argv):
        raise SystemExit(__doc__)
    for arg in argv:
        folder, dataset = (Path(p) for p in arg.split("=", 1))
        right, conf = confidences(folder, dataset)
        parts = [f"{folder}: {len(right)} wells, accuracy {right.mean():.3f}"]
        for name, c in conf.items():
            order = np.argsort(-c, kind="stable")
            tops = " ".join(f"top{round(q * 100)}%={right[order[:int(np.ceil(q * len(order)))]].mean():.2f}"
                            for q in SHARES)
            sure = c >= 0.5
            parts.append(f"{name}: {tops} >=0.5: {int(sure.sum())}"
                         + (f" ({right[sure].mean():.2f})" if sure.any() else ""))
        print(" | ".join(parts), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

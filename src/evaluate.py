"""Score a submission against a truth folder with the competition metric (mAP at mask IoU 0.6).

    python src/evaluate.py --truth input/synth_test/truth --submission output/synth_test/submission.csv

Prints one row per class (id, name, AP, true cells, detections; AP is ``-`` for a class with
no true cell, which the mean leaves out) and, last, ``mAP=0.xxxx``.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

from cellloc.classes import LABEL_SETS, get_label_set
from cellloc.config import opt, parse_config
from cellloc.errors import InputError, exit_on_input_error
from cellloc.metrics import competition_map, read_truth
from cellloc.submission import parse_submission


@dataclass
class EvaluateConfig:
    truth: str = opt("input/synth_test/truth", "truth folder: {ID}_cell_mask.png per field and cells.csv (ID,cell_id,Label)")
    submission: str = opt("output/synth_test/submission.csv", "submission CSV (ID,ImageWidth,ImageHeight,PredictionString)")
    iou_threshold: float = opt(0.6, "mask IoU a detection needs with a true cell of its class")
    label_set: str = opt("hpa19", "label set of the class ids", choices=list(LABEL_SETS))

    def __post_init__(self) -> None:
        if not 0.0 < self.iou_threshold <= 1.0:
            raise ValueError(f"--iou-threshold must be in (0, 1], got {self.iou_threshold}")


def format_table(result: dict, names: tuple[str, ...]) -> str:
    """Per-class AP table as fixed-width text."""
    width = max(len(n) for n in names)
    rows = [f"{'class':>5}  {'name':<{width}}  {'AP':>6}  {'truth':>6}  {'pred':>6}"]
    for c, name in enumerate(names):
        ap = float(result["ap"][c])
        ap_text = "-" if math.isnan(ap) else f"{ap:.4f}"
        rows.append(f"{c:>5}  {name:<{width}}  {ap_text:>6}  {result['n_truth'][c]:>6}  {result['n_pred'][c]:>6}")
    return "\n".join(rows)


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(EvaluateConfig, argv, __doc__.splitlines()[0])
    label_set = get_label_set(cfg.label_set)
    truth = read_truth(cfg.truth, label_set.num_classes)
    predictions = parse_submission(cfg.submission, label_set.num_classes)
    try:
        result = competition_map(truth, predictions, cfg.iou_threshold, label_set.num_classes)
    except ValueError as exc:
        raise InputError(f"{cfg.submission}: {exc}") from None
    missing = len(set(truth) - set(predictions))
    if missing:
        print(f"warning: {missing} of {len(truth)} truth fields have no row in the submission (scored as no detections)", file=sys.stderr)
    print(format_table(result, label_set.names))
    scored = int((result["n_truth"] > 0).sum())
    print(f"{len(truth)} fields, {int(result['n_truth'].sum())} (cell, class) truths, mean over {scored} classes present in the truth")
    print(f"mAP={result['map']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

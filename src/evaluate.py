"""Score a submission against a truth folder with its task's competition metric.

    python src/evaluate.py --truth input/synth_test/truth --submission output/synth_test/submission.csv
    python src/evaluate.py --task rxrx1          # input/rxrx1/truth against output/rxrx1/submission.csv

Prints the per-class (or per-group) score table and, last, ``<metric>=0.xxxx``: HPA single-cell
``mAP=`` (competition mAP at mask IoU 0.6; AP is ``-`` for a class with no true cell, which the
mean leaves out), HPA-2018 ``macro_F1=``, RxRx1 ``accuracy=``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from cellloc.config import opt, parse_config
from cellloc.errors import exit_on_input_error
from cellloc.submission_formats import FORMATS
from cellloc.tasks import DEFAULT_TASK, TASKS, get_task


@dataclass
class EvaluateConfig:
    task: str = opt(DEFAULT_TASK, "task of the submission (names its format and classes)", choices=TASKS.names())
    truth: str = opt("", "truth folder (default: the task's generated test data, input/<data_name>_test/truth; "
                     "hpa-sc: {ID}_cell_mask.png and cells.csv)")
    submission: str = opt("", "submission CSV (default: output/<data_name>_test/submission.csv; rxrx1: output/rxrx1/...)")
    iou_threshold: float = opt(0.6, "hpa-sc: mask IoU a detection needs with a true cell of its class")

    def __post_init__(self) -> None:
        if not 0.0 < self.iou_threshold <= 1.0:
            raise ValueError(f"--iou-threshold must be in (0, 1], got {self.iou_threshold}")
        task = get_task(self.task)
        self.truth = self.truth or str(task.truth_dir())
        self.submission = self.submission or str(task.submission_path())


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(EvaluateConfig, argv, __doc__.splitlines()[0])
    task = get_task(cfg.task)
    fmt = FORMATS[task.submission]
    table, summary = fmt.evaluate(cfg.truth, cfg.submission, task, iou_threshold=cfg.iou_threshold)
    print(fmt.show(table))
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

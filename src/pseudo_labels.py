"""Pseudo-labels: a prediction folder's confident test wells as extra training samples.

    python src/pseudo_labels.py --predictions output/stage2 --input input/rxrx1/test --threshold 0.5
    python src/train.py --config configs/rxrx1/stage3_pseudo.yaml --extra-train output/stage2/pseudo_labels.csv

Each submitted well whose confidence is at least --threshold (then the --top-share most
confident per cell type) becomes a row ID,Label,...,fold=-1; the test split's control wells join
with the labels its controls CSV gives. The confidence (--confidence plate, the default) is the
probability that the well's plate holds its siRNA's group times the well's probability of that
siRNA within the group: at 0.5 a kept well is more likely right than wrong. Only the predictions,
the test CSVs and the training labels (for the plate groups) are read: the true test labels
(truth/) never are.
"""

from __future__ import annotations

from cellloc.config import parse_config
from cellloc.errors import exit_on_input_error
from cellloc.runs.ensemble import PseudoConfig, run_pseudo_labels


@exit_on_input_error
def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(PseudoConfig, argv, __doc__.splitlines()[0])
    table, scored = run_pseudo_labels(cfg)
    predicted = int((table["source"] == "predicted").sum())
    print(f"{cfg.out}: {predicted} of {scored} predicted wells at {cfg.confidence} confidence >= {cfg.threshold}"
          f"{f' (top {cfg.top_share:.0%} per cell type)' if cfg.top_share < 1 else ''}, "
          f"{len(table) - predicted} given control wells")


if __name__ == "__main__":
    main()

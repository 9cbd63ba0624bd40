"""Stage 1: fields -> cell and nucleus masks, per-cell crops and a cells CSV with weak labels.

    python src/segment.py                                  # the embedded generated data
    python src/segment.py --input input/sample --overlay   # the real sample field
    python src/segment.py --input /data/hpa/train --workers 2 --crop-size 260
    python src/segment.py --backend hpa --device cuda --batch-size 4 --weights-dir ~/hpa_weights
    python src/segment.py --input /data/hpa/train --executor dask --workers 2      # a local Dask cluster
    python src/segment.py --input /shared/hpa/train --out /shared/out --executor dask --address scheduler.json

Whatever the executor, workers write each field's files (atomically) and this process writes
the tables, in field order: the outputs are byte-identical to a serial run's.

Per-field failures are listed in failures.csv; the run goes on and exits 1 at the end if any
field failed; bad input or a problem with the output folder (unwritable, full) exits 2 at once.
Rerunning with the same settings skips finished fields; with other settings it stops and says
what changed (add --overwrite to start over: the old outputs are moved to <out>.replaced-<time>).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tqdm import tqdm

from cellloc.config import parse_config
from cellloc.errors import exit_on_input_error
from cellloc.runs.segment import SegmentRunConfig, plan, run_segmentation
from cellloc.runtime import runtime_line
from cellloc.segmentation.scale import describe_pixel_sizes


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(SegmentRunConfig, argv, __doc__)
    ids, bad, stray = plan(cfg)
    if cfg.backend == "hpa":
        print(runtime_line(cfg.runtime, cfg.device), flush=True)
    for name in stray:
        print(f"warning: {Path(cfg.input) / name}: not a known channel file; ignored", file=sys.stderr)
    with tqdm(total=len(ids), desc="segment", unit="field", disable=None) as bar:
        summary = run_segmentation(cfg, bar.update)
    cells = summary.cells
    out = cfg.out_dir()
    if summary.start is not None and summary.start.message(out):
        print(summary.start.message(out), file=sys.stderr)
    if summary.unlabelled:
        shown = ", ".join(summary.unlabelled[:5]) + (" ..." if len(summary.unlabelled) > 5 else "")
        print(f"warning: {len(summary.unlabelled)} field(s) have no row in {cfg.labels_path()} ({shown}): "
              "their cells get an empty Label, and gen_folds refuses them", file=sys.stderr)
    print(f"{out}: {summary.done} fields segmented, {summary.skipped} already done, {len(summary.failed)} failed; "
          f"{len(cells)} cells in {out / 'cells.csv'} ({summary.seconds:.1f}s)")
    if summary.pixel_sizes:
        print(describe_pixel_sizes(summary.pixel_sizes, "field"))
    if "TrueLabel" in cells and len(cells):
        matched = (cells["TrueLabel"] != "").mean()
        print(f"{matched:.1%} of segmented cells match a true cell at IoU >= 0.5")
    for image_id, reason in summary.failed:
        print(f"failed: {image_id}: {reason}", file=sys.stderr)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

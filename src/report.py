"""Stage 5: one HTML page to check a training run by eye, with its pictures beside it.

    python src/report.py models/effb2                  # -> models/effb2/report/report.html
    python src/report.py models/effb2 --seg output/hpa --predictions output/hpa_test --out /tmp/report
    python src/report.py models/effb2 --screenshot docs/report.png   # also a picture of the page (Chromium)

Sections: a summary per fold, segmentation overlays (generated fields and the real sample field),
fold balance, training curves, per-class AP vs true and weak labels, the highest-scored correct
and wrong cells per class, and the submission's mAP when a truth folder exists. A missing piece
is named in its section with the command that makes it; a run folder without folds is an error.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cellloc.config import parse_config
from cellloc.errors import exit_on_input_error
from cellloc.runs.report import ReportConfig, build_report


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(ReportConfig, argv, __doc__.split("\n\n")[0], positional=("run_dir",))
    command = shlex.join(["python", "src/report.py", *(sys.argv[1:] if argv is None else argv)])
    result = build_report(cfg, command)
    print(f"{result.page}: {result.images} pictures, {len(result.notes)} missing piece(s)")
    for section, text in result.notes:
        print(f"  missing ({section}): {text}")
    if cfg.screenshot:
        from cellloc.browser import screenshot

        shot = screenshot(result.page, cfg.screenshot, width=600, colours=256)
        print(f"{shot}: picture of the page's top ({shot.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

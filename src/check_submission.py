"""Check a submission CSV before uploading it: every malformed row, value and mask, by line.

    python src/check_submission.py output/synth_test/submission.csv [--sample-submission CSV]
    python src/check_submission.py --task rxrx1     # output/rxrx1/submission.csv

Prints ``line N: reason`` per problem (``file: reason`` for IDs missing from the sample
submission), then a summary; exits 1 when anything is wrong, 0 when the file is valid.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from cellloc.config import opt, parse_config
from cellloc.errors import exit_on_input_error
from cellloc.submission_formats import FORMATS
from cellloc.tasks import DEFAULT_TASK, TASKS, get_task


@dataclass
class CheckConfig:
    file: str = opt("", "submission CSV to check (default: the task's, output/<data_name>_test/submission.csv)")
    task: str = opt(DEFAULT_TASK, "task of the submission (names its format and valid classes)", choices=TASKS.names())
    sample_submission: str | None = opt(None, "sample submission CSV: its IDs must all be present (hpa-sc: with its sizes)")
    max_per_line: int = opt(5, "list at most this many problems per line")


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(CheckConfig, argv, __doc__.splitlines()[0], positional=("file",))
    task = get_task(cfg.task)
    cfg.file = cfg.file or str(task.submission_path())
    fmt = FORMATS[task.submission]
    expected = fmt.read_expected(Path(cfg.sample_submission)) if cfg.sample_submission else None
    problems = fmt.check(cfg.file, task, expected, max_per_line=cfg.max_per_line)
    for line, reason in problems:
        print(f"line {line}: {reason}" if line > 0 else f"file: {reason}")
    if problems:
        lines = len({line for line, _ in problems})
        print(f"{cfg.file}: {len(problems)} problem(s) on {lines} line(s)")
        return 1
    print(f"{cfg.file}: OK, no problems found")
    return 0


if __name__ == "__main__":
    sys.exit(main())

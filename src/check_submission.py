"""Check a submission CSV before uploading it: every malformed row, triple and mask, by line.

    python src/check_submission.py output/synth_test/submission.csv [--sample-submission CSV]

Prints ``line N: reason`` per problem (``file: reason`` for IDs missing from the sample
submission), then a summary; exits 1 when anything is wrong, 0 when the file is valid.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from cellloc.classes import LABEL_SETS, get_label_set
from cellloc.config import opt, parse_config
from cellloc.errors import exit_on_input_error
from cellloc.submission import check_submission, read_sample_submission


@dataclass
class CheckConfig:
    file: str = opt("output/synth_test/submission.csv", "submission CSV to check")
    sample_submission: str | None = opt(None, "sample submission CSV: its IDs must all be present, with its sizes")
    label_set: str = opt("hpa19", "label set naming the valid class ids", choices=list(LABEL_SETS))
    max_per_line: int = opt(5, "list at most this many problems per line")


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(CheckConfig, argv, __doc__.splitlines()[0], positional=("file",))
    sizes = read_sample_submission(cfg.sample_submission) if cfg.sample_submission else None
    problems = check_submission(
        cfg.file,
        expected_ids=None if sizes is None else list(sizes),
        sizes=sizes,
        num_classes=get_label_set(cfg.label_set).num_classes,
        max_per_line=cfg.max_per_line,
    )
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

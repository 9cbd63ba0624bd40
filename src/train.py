"""Stage 3: train one fold's classifier (Tez + EfficientNet) on cell crops or whole fields, then score it.

    python src/train.py --fold 0                       # output/synth/folds.csv -> models/effb2/fold0/
    python src/train.py --fold 0 --epochs 3 --image-size 64 --pretrained none   # CPU smoke run
    python src/train.py --fold 0 --resume              # continue from models/effb2/fold0/last.pt
    python src/train.py --config models/effb2/fold0/config.json --fold 1       # fold 0's settings, fold 1
    python src/train.py --fold 0 --level image --image-size 256                 # HPA image model -> models/effb2_image
    python src/train.py --fold 0 --teacher none        # no teacher run (models/effb2-teacher/fold0) first
    python src/train.py --task rxrx1 --fold 0 --loss ce --label-smoothing 0.1 --schedule onecycle
    accelerate launch --multi_gpu --num_processes 2 src/train.py --fold 0       # several GPUs

Every option is a field of ``cellloc.runs.train.TrainConfig``; the resolved config is written to
the run folder as config.json (a valid --config), the model's inference recipe as recipe.json.
"""

from __future__ import annotations

import shlex
import sys

from cellloc.config import parse_config
from cellloc.errors import exit_on_input_error


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    from cellloc.runs.teacher import latest_checkpoint
    from cellloc.runs.train import TrainConfig, format_summary, train_fold

    cfg = parse_config(TrainConfig, argv, description=__doc__.split("\n\n")[0])
    command = shlex.join(["python", "src/train.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        result = train_fold(cfg, command=command)
    except KeyboardInterrupt:
        kept = latest_checkpoint(cfg)
        print(f"interrupted: finished epochs are in {kept}; add --resume to continue" if kept else
              "interrupted before an epoch finished: nothing to resume", file=sys.stderr)
        raise SystemExit(130) from None
    if result is not None:  # None on the non-zero ranks of accelerate launch
        print(format_summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

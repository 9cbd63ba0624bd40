"""Stage 4: per-cell predictions for a folder of test fields, written as a Kaggle submission.

    python src/predict.py                                   # input/synth_test/test with models/effb2
    python src/predict.py --input /data/hpa/test --models models/effb2 --tta 4 --top-k 6
    python src/predict.py --masks output/synth_test/masks   # reuse masks from segment.py

Every fold model found under --models (fold*/best.pt) is averaged; cells are segmented and
cropped with the training crops' own settings (their segment_config.json); cell scores are
blended with the field's mean cell score (--blend); Negative is raised to min(1 - p) over the
other classes. Output: output/<name>/submission.csv (atomic, resumable) and cell_scores/{ID}.csv.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tqdm import tqdm

from cellloc.config import parse_config, save_config
from cellloc.errors import exit_on_input_error
from cellloc.layouts import LAYOUTS
from cellloc.predict_run import PredictConfig, load_ensemble, run_predict


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(PredictConfig, argv, __doc__)
    fns, spec, names = load_ensemble(cfg)
    cfg = cfg.resolved(spec.task)
    n = len(LAYOUTS[spec.task.layout].list_fields(cfg.input, spec.channels).ids)
    n = min(n, cfg.limit) if cfg.limit else n
    out = cfg.out_dir()
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "predict_config.json")
    with tqdm(total=n, desc=f"predict ({', '.join(names)})", unit="field") as bar:
        res = run_predict(cfg, spec, fns, bar.update)
    print(f"{res['submission']}: {res['done']} fields predicted, {res['skipped']} already done, "
          f"{len(res['failed'])} failed; {res['cells']} cells, {len(fns)} model(s), {res['seconds']:.1f}s")
    for image_id, reason in res["failed"]:
        print(f"failed: {image_id}: {reason}", file=sys.stderr)
    return 1 if res["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Stage 4: predict a folder of test fields with a trained run, written as the task's submission.

    python src/predict.py                                   # input/synth_test/test with models/effb2
    python src/predict.py --input /data/hpa/test --models models/effb2 --tta 4 --top-k 6
    python src/predict.py --masks output/synth_test/masks   # reuse masks from segment.py
    python src/predict.py --blend image --image-models models/effb2_image  # cell x image model's field score
    python src/predict.py --models models/effb2_rxrx1       # an image-level task: whole fields
    python src/predict.py --executor dask --workers 2       # fields on a local Dask cluster
    python src/predict.py --models models/effb2_hpa-2018 --executor process --workers 2   # image models: chunks of --chunk fields

Every fold model found under --models (fold*/best.pt) is averaged. Cell models: cells are
segmented and cropped with the training crops' own settings (the model's recipe.json); cell
scores are blended with the field's score (--blend: the mean cell score, or with --blend image
--image-models an image-level model's); Negative scores the chance that the cell shows none of
the other classes (--negative). Output: output/<name>/submission.csv (atomic, resumable) and
cell_scores/{ID}.csv, or scores.csv for image-level models. With --executor process|dask each
worker loads the models once and writes the fields' cell scores (image models: each chunk's
field_scores/part*.npz); this process writes the submission and the tables in field order, so
the files are the same as a serial run's.

Fields that fail are listed in predict_failures.csv and the run exits 1 at the end; bad input or
an unwritable output folder exits 2 at once. A rerun with the same models and settings resumes;
with others it stops and says what changed. To start a prediction over, add --overwrite (the old
outputs are moved to <out>.replaced-<time>) or choose another --out.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tqdm import tqdm

from cellloc.config import parse_config
from cellloc.errors import exit_on_input_error
from cellloc.runs.predict import PredictConfig, field_ids, load_predictor, run_predict
from cellloc.runtime import runtime_line


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(PredictConfig, argv, __doc__)
    print(runtime_line(cfg.runtime, cfg.device), flush=True)
    predictor = load_predictor(cfg)
    cfg = cfg.resolved(predictor.task)
    n = len(field_ids(cfg, predictor.task)[0])
    with tqdm(total=n, desc=f"predict ({', '.join(predictor.names)})", unit="field", disable=None) as bar:
        res = run_predict(cfg, predictor, bar.update)
    if res.start is not None and res.start.message(cfg.out_dir()):
        print(res.start.message(cfg.out_dir()), file=sys.stderr)
    cells = f"{res.cells} cells, " if res.cells else ""
    print(f"{res.submission}: {res.done} fields predicted, {res.skipped} already done, "
          f"{len(res.failed)} failed; {cells}{len(predictor.model.members)} model(s), {res.seconds:.1f}s")
    for image_id, reason in res.failed:
        print(f"failed: {image_id}: {reason}", file=sys.stderr)
    return 1 if res.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

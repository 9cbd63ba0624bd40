"""Run the whole pipeline on a task's generated data, stage by stage, printing each score.

    python src/demo.py            # HPA single-cell, small sizes: a few minutes on 2 CPU cores
    python src/demo.py --fields 200 --size 1024   # a bigger run
    python src/demo.py --task hpa-2018            # an image-level task: folds, train, predict, score
    python src/demo.py --task rxrx1               # unseen experiments: per-plate normalisation, plate assignment;
                                                  # ends with accuracy=0.xxxx on the test experiments

Each stage is the same command a user would type; this script only chains them.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cellloc.config import opt, parse_config  # noqa: E402
from cellloc.errors import exit_on_input_error  # noqa: E402
from cellloc.runs.train import default_run_name  # noqa: E402
from cellloc.tasks import DEFAULT_TASK, TASKS, get_task  # noqa: E402


@dataclass
class DemoConfig:
    task: str = opt(DEFAULT_TASK, "task whose generated data to run", choices=TASKS.names())
    fields: int = opt(40, "training fields to generate")
    test_fields: int = opt(12, "held-out test fields to generate")
    size: int = opt(0, "field size in pixels (default: 512; rxrx1: 256)")
    crop_size: int = opt(64, "hpa-sc: cell crop size in pixels, also the network input (the paper recipe: 260)")
    image_size: int = opt(64, "image-level tasks: network input size in pixels")
    epochs: int = opt(0, "training epochs of the fold-0 model (default: 3; rxrx1: 8)")
    sirnas: int = opt(32, "rxrx1: treatment siRNAs of the generated design (4 plate groups)")
    seed: int = opt(0, "rxrx1: seed of the generated design and of training")
    normalise: str = opt("plate", "rxrx1: per-field normalisation the model is trained with (none, site, experiment, "
                         "plate, experiment-controls, plate-controls)")


def run(title: str, args: list[str], capture: bool = False) -> str:
    """Run one stage as a subprocess from the repository root; stop the demo if it fails.

    With ``capture`` its standard output is shown and also returned (the score stages).
    """
    print(f"\n=== {title}: python {' '.join(args)}", flush=True)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE if capture else None, text=True)
    if capture:
        print(done.stdout, end="", flush=True)
    if done.returncode != 0:
        raise SystemExit(f"demo: stage '{title}' failed (exit {done.returncode})")
    print(f"=== {title}: done in {time.perf_counter() - t0:.0f}s", flush=True)
    return done.stdout or ""


def hpa_single_cell(a: DemoConfig) -> None:
    """Segment, crop and classify cells; the submission is scored per cell against the generated truth."""
    size = str(a.size or 512)
    run("data", ["src/make_data.py", "--fields", str(a.fields), "--size", size])
    run("test data", ["src/make_data.py", "--name", "synth_test", "--split", "test", "--seed", "1",
                      "--fields", str(a.test_fields), "--size", size])
    run("segmentation score (generated fields with truth)", ["src/score_segmentation.py", "input/synth"])
    run("segment training fields", ["src/segment.py", "--input", "input/synth/train", "--crop-size", str(a.crop_size)])
    run("segment the real sample field", ["src/segment.py", "--input", "input/sample", "--overlay"])
    run("folds", ["src/gen_folds.py", "--folds", "5", "--seed", "42"])
    run("train fold 0 (CPU-sized: small crops, no ImageNet weights)",
        ["src/train.py", "--fold", "0", "--epochs", str(a.epochs or 3), "--image-size", str(a.crop_size), "--pretrained", "none"])
    run("predict the held-out test fields", ["src/predict.py", "--input", "input/synth_test/test"])
    run("run report", ["src/report.py", "models/effb2"])
    run("check the submission", ["src/check_submission.py", "output/synth_test/submission.csv"])
    run("score the submission (competition metric, per-cell truth)",
        ["src/evaluate.py", "--truth", "input/synth_test/truth", "--submission", "output/synth_test/submission.csv"])


def image_task(a: DemoConfig) -> None:
    """The stages of an image-level task: no segmentation, whole fields classified."""
    task = get_task(a.task)
    test = task.test_data_name
    seed = "0" if test == task.data_name else "1"  # one design holding both splits (rxrx1) keeps its seed
    models = f"models/{default_run_name(task, task.level)}"
    size = str(a.size or 512)
    run("data", ["src/make_data.py", "--task", a.task, "--fields", str(a.fields), "--size", size])
    run("test data", ["src/make_data.py", "--task", a.task, "--name", test, "--split", "test", "--seed", seed,
                      "--fields", str(a.test_fields), "--size", size])
    run("folds", ["src/gen_folds.py", "--task", a.task, "--folds", "5", "--seed", "42"])
    run("train fold 0 on whole fields (CPU-sized: small input, no ImageNet weights)",
        ["src/train.py", "--task", a.task, "--fold", "0", "--epochs", str(a.epochs or 3), "--image-size", str(a.image_size),
         "--pretrained", "none"])
    run("predict the held-out test fields", ["src/predict.py", "--models", models, "--input", f"input/{test}/test"])
    run("run report", ["src/report.py", models, "--predictions", f"output/{test}"])
    run("check the submission", ["src/check_submission.py", f"output/{test}/submission.csv", "--task", a.task])
    run("score the submission (competition metric)", ["src/evaluate.py", "--task", a.task])


def rxrx1(a: DemoConfig) -> str:
    """RxRx1 on a generated design: train on some experiments, score on unseen ones (other batches).

    Data in ``input/rxrx1_demo_s<seed>`` (both splits of one design; ``truth/labels.csv`` holds the
    test wells' siRNAs), the model in ``models/rxrx1_demo_s<seed>_<normalise>``, submissions in
    ``output/`` under the same name. Each field is standardised by its plate's pixel statistics
    (``--normalise``, the task's default); the submission is scored twice, each well on its own
    and with plate-aware assignment, and the demo ends with the latter's accuracy.
    """
    name = f"rxrx1_demo_s{a.seed}"
    run_name = f"{name}_{a.normalise}"
    data, models, out = f"input/{name}", f"models/{run_name}", f"output/{run_name}"
    design = ["--task", "rxrx1", "--name", name, "--size", str(a.size or 256), "--seed", str(a.seed),
              "--workers", "2", "--options", f"sirnas={a.sirnas}"]
    run("data: training experiments (2 per cell type)", ["src/make_data.py", *design])
    run("data: test experiments (1 per cell type, other batches)", ["src/make_data.py", *design, "--split", "test"])
    run("folds (whole experiments, every cell type in every fold)",
        ["src/gen_folds.py", "--task", "rxrx1", "--labels", f"{data}/train.csv", "--out", f"{out}/folds.csv",
         "--folds", "4"])
    run("train fold 0 on whole 6-channel fields, standardised per plate (CPU-sized, no ImageNet weights)",
        ["src/train.py", "--task", "rxrx1", "--folds-csv", f"{out}/folds.csv", "--input", f"{data}/train",
         "--out-dir", "models", "--run-name", run_name, "--fold", "0", "--model", "efficientnet-b0", "--normalise", a.normalise,
         "--pretrained", "none", "--image-size", str(a.image_size), "--epochs", str(a.epochs or 8),
         "--batch-size", "32", "--lr", "2e-3", "--schedule", "onecycle", "--label-smoothing", "0.1",
         "--monitor", "accuracy", "--patience", "8", "--num-workers", "1", "--seed", str(a.seed)])
    run("predict the test experiments, each well on its own (sites averaged)",
        ["src/predict.py", "--models", models, "--input", f"{data}/test", "--out", f"{out}/per_well"])
    run("score it", ["src/evaluate.py", "--task", "rxrx1", "--truth", f"{data}/truth",
                     "--submission", f"{out}/per_well/submission.csv"])
    run("predict again with plate-aware assignment (each plate: one siRNA group, each siRNA once)",
        ["src/predict.py", "--models", models, "--input", f"{data}/test", "--out", out, "--plate-assignment"])
    run("check the submission", ["src/check_submission.py", f"{out}/submission.csv", "--task", "rxrx1",
                                 "--sample-submission", f"{data}/sample_submission.csv"])
    scored = run("score the submission (accuracy on unseen experiments)",
                 ["src/evaluate.py", "--task", "rxrx1", "--truth", f"{data}/truth", "--submission", f"{out}/submission.csv"],
                 capture=True)
    return scored.strip().splitlines()[-1]


# A task's demo; image-level tasks without their own run the generic one. Each may return its headline line.
DEMOS: dict[str, Callable[[DemoConfig], str | None]] = {"hpa-sc": hpa_single_cell, "rxrx1": rxrx1}


@exit_on_input_error
def main(argv: list[str] | None = None) -> None:
    a = parse_config(DemoConfig, argv, __doc__.splitlines()[0])
    t0 = time.perf_counter()
    headline = DEMOS.get(a.task, image_task)(a)
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f}s")
    if headline:
        print(headline)  # the score last, where a script reading the demo looks for it


if __name__ == "__main__":
    main()

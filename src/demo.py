"""Run the whole pipeline on a task's generated data, stage by stage, printing each score.

    python src/demo.py            # HPA single-cell, small sizes: a few minutes on 2 CPU cores
    python src/demo.py --fields 200 --size 1024   # a bigger run
    python src/demo.py --task rxrx1               # an image-level task: folds, train, predict, score

Each stage is the same command a user would type; this script only chains them.
"""

from __future__ import annotations

import subprocess
import sys
import time
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
    size: int = opt(512, "field size in pixels")
    crop_size: int = opt(64, "hpa-sc: cell crop size in pixels, also the network input (the paper recipe: 260)")
    image_size: int = opt(64, "image-level tasks: network input size in pixels")
    epochs: int = opt(3, "training epochs of the fold-0 model")


def run(title: str, args: list[str]) -> None:
    """Run one stage as a subprocess from the repository root; stop the demo if it fails."""
    print(f"\n=== {title}: python {' '.join(args)}", flush=True)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, *args], cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"demo: stage '{title}' failed (exit {done.returncode})")
    print(f"=== {title}: done in {time.perf_counter() - t0:.0f}s", flush=True)


def hpa_single_cell(a: DemoConfig) -> None:
    """Segment, crop and classify cells; the submission is scored per cell against the generated truth."""
    run("data", ["src/make_data.py", "--fields", str(a.fields), "--size", str(a.size)])
    run("test data", ["src/make_data.py", "--name", "synth_test", "--split", "test", "--seed", "1",
                      "--fields", str(a.test_fields), "--size", str(a.size)])
    run("segmentation score (generated fields with truth)", ["src/score_segmentation.py", "input/synth"])
    run("segment training fields", ["src/segment.py", "--input", "input/synth/train", "--crop-size", str(a.crop_size)])
    run("segment the real sample field", ["src/segment.py", "--input", "input/sample", "--overlay"])
    run("folds", ["src/gen_folds.py", "--folds", "5", "--seed", "42"])
    run("train fold 0 (CPU-sized: small crops, no ImageNet weights)",
        ["src/train.py", "--fold", "0", "--epochs", str(a.epochs), "--image-size", str(a.crop_size), "--pretrained", "none"])
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
    run("data", ["src/make_data.py", "--task", a.task, "--fields", str(a.fields), "--size", str(a.size)])
    run("test data", ["src/make_data.py", "--task", a.task, "--name", test, "--split", "test", "--seed", seed,
                      "--fields", str(a.test_fields), "--size", str(a.size)])
    run("folds", ["src/gen_folds.py", "--task", a.task, "--folds", "5", "--seed", "42"])
    run("train fold 0 on whole fields (CPU-sized: small input, no ImageNet weights)",
        ["src/train.py", "--task", a.task, "--fold", "0", "--epochs", str(a.epochs), "--image-size", str(a.image_size),
         "--pretrained", "none"])
    run("predict the held-out test fields", ["src/predict.py", "--models", models, "--input", f"input/{test}/test"])
    run("run report", ["src/report.py", models, "--predictions", f"output/{test}"])
    run("check the submission", ["src/check_submission.py", f"output/{test}/submission.csv", "--task", a.task])
    run("score the submission (competition metric)", ["src/evaluate.py", "--task", a.task])


@exit_on_input_error
def main(argv: list[str] | None = None) -> None:
    a = parse_config(DemoConfig, argv, __doc__.splitlines()[0])
    t0 = time.perf_counter()
    (hpa_single_cell if get_task(a.task).level == "cell" else image_task)(a)
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()

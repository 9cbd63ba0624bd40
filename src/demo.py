"""Run the whole pipeline on a task's generated data, stage by stage, printing each score.

    python src/demo.py            # HPA single-cell, small sizes: a few minutes on 2 CPU cores
    python src/demo.py --fields 200 --size 1024   # a bigger run
    python src/demo.py --task rxrx1               # an image-level task: folds, train, predict, score
    python src/demo.py --task hpa-2018            # every fold, per-class thresholds on the OOF predictions;
                                                  # ends with macro_F1_at_0.5= and macro_F1= (the fitted thresholds)

Each stage is the same command a user would type; this script only chains them. The stages
that make results (segment, train, fit_thresholds, predict) run with --overwrite, so a rerun with other options
starts them over: each moves its previous outputs to <folder>.replaced-<time> and says so.
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
from cellloc.errors import InputError, exit_on_input_error  # noqa: E402
from cellloc.runs.train import default_run_name  # noqa: E402
from cellloc.tasks import DEFAULT_TASK, TASKS, get_task  # noqa: E402


# Each task's demo sizes (a 0 on the command line takes these): CPU-sized, a few minutes on 2 cores.
DEMO_DEFAULTS: dict[str, dict[str, int]] = {
    "hpa-sc": {"fields": 40, "test_fields": 12, "size": 512, "image_size": 64, "epochs": 10, "folds": 1},
    "rxrx1": {"fields": 40, "test_fields": 12, "size": 512, "image_size": 64, "epochs": 3, "folds": 1},
    "hpa-2018": {"fields": 300, "test_fields": 120, "size": 256, "image_size": 128, "epochs": 10, "folds": 3},
}


@dataclass
class DemoConfig:
    task: str = opt(DEFAULT_TASK, "task whose generated data to run", choices=TASKS.names())
    fields: int = opt(0, "training fields to generate (0: the task's demo size, see DEMO_DEFAULTS)")
    test_fields: int = opt(0, "held-out test fields to generate (0: the task's)")
    size: int = opt(0, "field size in pixels (0: the task's; hpa-2018 256, the others 512)")
    crop_size: int = opt(64, "hpa-sc: cell crop size in pixels, also the network input (the paper recipe: 260)")
    image_size: int = opt(0, "image-level tasks: network input size in pixels (0: the task's; hpa-2018 128, rxrx1 64)")
    epochs: int = opt(0, "training epochs per fold model (0: the task's; hpa-sc and hpa-2018 10, rxrx1 3)")
    folds: int = opt(0, "hpa-2018: folds, every one trained, so thresholds fit on out-of-fold predictions (0: 3)")
    seed: int = opt(0, "hpa-2018: seed S draws training data with seed 2S, test data with 2S+1, and seeds training with 42+S")

    def __post_init__(self) -> None:
        for key, value in DEMO_DEFAULTS.get(self.task, DEMO_DEFAULTS[DEFAULT_TASK]).items():
            if getattr(self, key) == 0:
                setattr(self, key, value)
        if min(self.fields, self.test_fields, self.size, self.image_size, self.epochs, self.folds) < 1:
            raise ValueError("sizes, epochs and folds must be >= 1")


def run(title: str, args: list[str], capture: bool = False) -> list[str]:
    """Run one stage as a subprocess from the repository root; stop the demo if it fails.

    With ``capture`` its standard output is shown as it comes and also returned, line by line.
    """
    print(f"\n=== {title}: python {' '.join(args)}", flush=True)
    t0 = time.perf_counter()
    lines: list[str] = []
    if capture:
        with subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE, text=True) as proc:
            for line in proc.stdout:  # type: ignore[union-attr]
                print(line, end="", flush=True)
                lines.append(line.rstrip("\n"))
        code = proc.returncode
    else:
        code = subprocess.run([sys.executable, *args], cwd=REPO).returncode
    if code != 0:
        raise SystemExit(f"demo: stage '{title}' failed (exit {code})")
    print(f"=== {title}: done in {time.perf_counter() - t0:.0f}s", flush=True)
    return lines


def last_value(lines: list[str], key: str) -> str:
    """The value of the last ``key=value`` line of a stage's output."""
    found = [line.split("=", 1)[1] for line in lines if line.startswith(f"{key}=")]
    if not found:
        raise SystemExit(f"demo: expected a line {key}=... in the stage's output")
    return found[-1]


def hpa_single_cell(a: DemoConfig) -> list[str]:
    """Segment, crop and classify cells; the submission is scored per cell against the generated truth."""
    run("data", ["src/make_data.py", "--fields", str(a.fields), "--size", str(a.size)])
    run("test data", ["src/make_data.py", "--name", "synth_test", "--split", "test", "--seed", "1",
                      "--fields", str(a.test_fields), "--size", str(a.size)])
    run("segmentation score (generated fields with truth)", ["src/score_segmentation.py", "input/synth"])
    run("segment training fields", ["src/segment.py", "--input", "input/synth/train", "--crop-size", str(a.crop_size),
                                    "--overwrite"])
    run("segment the real sample field", ["src/segment.py", "--input", "input/sample", "--overlay"])
    run("folds", ["src/gen_folds.py", "--folds", "5", "--seed", "42"])
    # EfficientNet-B0 for 10 epochs, keeping the last: at the same data about twice the test mAP of
    # B2 for 3 epochs, on true and on image labels alike, for twice its CPU time (docs/cellgap.md)
    run("train fold 0 (CPU-sized: EfficientNet-B0 on small crops, no ImageNet weights)",
        ["src/train.py", "--fold", "0", "--epochs", str(a.epochs), "--image-size", str(a.crop_size), "--pretrained", "none",
         "--model", "efficientnet-b0", "--monitor", "last", "--overwrite"])
    run("predict the held-out test fields", ["src/predict.py", "--input", "input/synth_test/test", "--overwrite"])
    run("run report", ["src/report.py", "models/effb2"])
    run("check the submission", ["src/check_submission.py", "output/synth_test/submission.csv"])
    run("score the submission (competition metric, per-cell truth)",
        ["src/evaluate.py", "--truth", "input/synth_test/truth", "--submission", "output/synth_test/submission.csv"])
    return []


def image_task(a: DemoConfig) -> list[str]:
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
         "--pretrained", "none", "--overwrite"])
    run("predict the held-out test fields", ["src/predict.py", "--models", models, "--input", f"input/{test}/test",
                                             "--overwrite"])
    run("run report", ["src/report.py", models, "--predictions", f"output/{test}"])
    run("check the submission", ["src/check_submission.py", f"output/{test}/submission.csv", "--task", a.task])
    run("score the submission (competition metric)", ["src/evaluate.py", "--task", a.task])
    return []


def hpa2018(a: DemoConfig) -> list[str]:
    """Every fold trained (whole fields, class-balanced sampling, fields cached in RAM), per-class
    thresholds fitted on the out-of-fold predictions, the held-out test split scored at 0.5, at the
    global threshold, with the winner's share rule and with the fitted thresholds (the submission)."""
    task = get_task("hpa-2018")
    data, test = f"input/{task.data_name}", f"input/{task.test_data_name}"
    models, out = f"models/{default_run_name(task, task.level)}", f"output/{task.test_data_name}"
    size = ["--size", str(a.size), "--workers", "2"]
    run("data", ["src/make_data.py", "--task", task.name, "--seed", str(2 * a.seed), "--fields", str(a.fields), *size])
    run("test data", ["src/make_data.py", "--task", task.name, "--name", task.test_data_name, "--split", "test",
                      "--seed", str(2 * a.seed + 1), "--fields", str(a.test_fields), *size])
    run("folds (each protein's images in one fold)",
        ["src/gen_folds.py", "--task", task.name, "--folds", str(a.folds), "--seed", "42",
         "--groups", f"{data}/truth/images.csv", "--group-col", "protein"])
    for fold in range(a.folds):
        run(f"train fold {fold} of {a.folds} on whole fields (CPU-sized: EfficientNet-B0, no ImageNet weights)",
            ["src/train.py", "--task", task.name, "--fold", str(fold), "--epochs", str(a.epochs),
             "--image-size", str(a.image_size), "--model", "efficientnet-b0", "--pretrained", "none",
             "--batch-size", "16", "--lr", "0.003", "--balance-power", "0.5", "--cache-mb", "256",
             "--num-workers", "0", "--patience", str(a.epochs), "--seed", str(42 + a.seed), "--overwrite"])
    folds = ["--folds", *map(str, range(a.folds))]  # the folds of this run, whatever an earlier one left
    run("fit per-class thresholds on the out-of-fold predictions",
        ["src/fit_thresholds.py", "--task", task.name, *folds, "--overwrite"])
    run("predict the held-out test fields",
        ["src/predict.py", "--models", models, "--input", f"{test}/test", *folds, "--overwrite"])
    run("check the submission", ["src/check_submission.py", f"{out}/submission.csv", "--task", task.name])
    compared = run("held-out macro F1 of each threshold rule",
                   ["src/fit_thresholds.py", "--task", task.name, *folds, "--scores", f"{out}/scores.csv",
                    "--truth", f"{test}/truth"],
                   capture=True)
    scored = run("score the submission (competition metric: macro F1 over the 28 classes)",
                 ["src/evaluate.py", "--task", task.name], capture=True)
    return [f"macro_F1_at_0.5={last_value(compared, 'macro_F1_at_0.5')}",
            f"macro_F1_global={last_value(compared, 'macro_F1_global')}",
            f"macro_F1={last_value(scored, 'macro_F1')}"]


# The demo of each task; it returns the lines printed last (the scores a reader looks for).
DEMOS: dict[str, Callable[[DemoConfig], list[str]]] = {"hpa-sc": hpa_single_cell, "rxrx1": image_task, "hpa-2018": hpa2018}


@exit_on_input_error
def main(argv: list[str] | None = None) -> None:
    a = parse_config(DemoConfig, argv, __doc__.splitlines()[0])
    t0 = time.perf_counter()
    if a.task not in DEMOS:
        raise InputError(f"no demo for task {a.task}; known: {', '.join(DEMOS)}")
    tail = DEMOS[a.task](a)
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f}s")
    for line in tail:
        print(line)


if __name__ == "__main__":
    main()

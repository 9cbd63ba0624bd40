"""Run the whole pipeline on a task's generated data, stage by stage, printing each score.

    python src/demo.py            # HPA single-cell, small sizes: a few minutes on 2 CPU cores
    python src/demo.py --fields 200 --size 1024   # a bigger run
    python src/demo.py --task rxrx1               # unseen experiments: per-plate normalisation, plate assignment;
                                                  # ends with accuracy=0.xxxx on the test experiments
    python src/demo.py --task rxrx1 --recipe full # the training recipe: controls -> all siRNAs -> pseudo-labels,
                                                  # channel subsets, per-cell-type; one step=<name> line per stage
    python src/demo.py --task hpa-2018            # every fold, per-class thresholds on the OOF predictions;
                                                  # ends with macro_F1_at_0.5= and macro_F1= (the fitted thresholds)

Each stage is the same command a user would type; this script only chains them. The stages
that make results (segment, train, fit_thresholds, predict) run with --overwrite, so a rerun with other options
starts them over: each moves its previous outputs to <folder>.replaced-<time> and says so.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cellloc.config import opt, parse_config  # noqa: E402
from cellloc.errors import InputError, exit_on_input_error  # noqa: E402
from cellloc.runs.train import default_run_name  # noqa: E402
from cellloc.runtime import THREADS_ENV  # noqa: E402
from cellloc.synth import CLASS_DRAWS  # noqa: E402
from cellloc.tasks import DEFAULT_TASK, TASKS, get_task  # noqa: E402
from cellloc.teacher import STUDENT_INITS, TEACHERS  # noqa: E402

T = TypeVar("T")

# Processes drawing the generated fields (make_data.py --workers): a field is a pure function of the seed and its
# index, so any count gives the same files; two matches the 2-core machine the demo's times are measured on.
DATA_WORKERS = "2"
# Processes segmenting and predicting the hpa-sc fields (segment.py / predict.py --workers): the same files as one
# (checked on the demo's fields), in 10 s instead of 16 and 26 instead of 30 on that machine (bench/bench_field_workers.py).
FIELD_WORKERS = "2"


# Each task's demo sizes (a 0 on the command line takes these): CPU-sized, a few minutes on 2 cores.
DEMO_DEFAULTS: dict[str, dict[str, int]] = {
    # hpa-sc: 200 training fields, fold 0 of 10 validating (about 180 train), 6 epochs (ResNet-18, class-balanced; its
    # teacher 3), one view per test cell (8 gave +0.005 for 5x the prediction's CPU), 200 test fields. 200 fields for 6
    # epochs against 120 for 10, the same 675 training batches and demo time: test mAP +0.027 over the demo's five
    # seeds and +0.025 over five training seeds on seed 0's fields, higher on each (docs/cellgap.md, "Round 18"): more
    # fields naming one class teach the teacher more classes.
    "hpa-sc": {"fields": 200, "test_fields": 200, "size": 512, "image_size": 64, "epochs": 6, "folds": 10, "tta": 1},
    # rxrx1: the generated design fixes the fields (--sirnas); folds split the training experiments.
    # 128 px fields seen at 64 px: the same view as 256 px fields at 64 px for half the drawing time.
    "rxrx1": {"size": 128, "image_size": 64, "epochs": 12, "folds": 4, "sirnas": 32},
    "hpa-2018": {"fields": 300, "test_fields": 120, "size": 256, "image_size": 128, "epochs": 8, "folds": 3},
}

# The recipe demo's own design and sizes (with --recipe full, a 0 on the command line takes these): 16
# treatment siRNAs (4 per plate), 128 px fields seen at 64 px; at 32 px or with 2 epochs stage I
# stays at chance on the control wells. CPU-sized: about 15 minutes on the shared 2-core machine.
RECIPE_DESIGN: dict[str, int] = {"sirnas": 16, "size": 128, "image_size": 64}


def task_defaults(key: str) -> str:
    """One size's demo default per task, for the help texts: ``hpa-sc 8, rxrx1 12, hpa-2018 8``."""
    return ", ".join(f"{task} {sizes[key]}" for task, sizes in DEMO_DEFAULTS.items() if key in sizes)


@dataclass
class DemoConfig:
    task: str = opt(DEFAULT_TASK, "task whose generated data to run", choices=TASKS.names())
    fields: int = opt(0, "training fields to generate (0: the task's demo size, see DEMO_DEFAULTS; rxrx1: set by --sirnas)")
    test_fields: int = opt(0, "held-out test fields to generate (0: the task's)")
    size: int = opt(0, f"field size in pixels (0: the task's; {task_defaults('size')})")
    crop_size: int = opt(64, "hpa-sc: cell crop size in pixels, also the network input (the paper recipe: 260)")
    image_size: int = opt(0, "image-level tasks: network input size in pixels (0: the task's; hpa-2018 128, rxrx1 64)")
    epochs: int = opt(0, f"training epochs per fold model (0: the task's; {task_defaults('epochs')})")
    folds: int = opt(0, f"folds (0: the task's; {task_defaults('folds')}); hpa-sc: of the training fields, fold 0 "
                     "validates and the others train; rxrx1: of the training experiments, fold 0 trained; hpa-2018: "
                     "every one trained, so thresholds fit on out-of-fold predictions")
    seed: int = opt(0, "hpa-sc and hpa-2018: seed S draws training data with seed 2S, test data with 2S+1, and seeds "
                    "training with 42+S; rxrx1: seed of the generated design and of training")
    test_seed: int = opt(-1, "hpa-sc and hpa-2018: generator seed of the held-out test fields (-1: 2S+1, the test "
                         "fields change with --seed; a fixed value scores every seed on the same fields)")
    sirnas: int = opt(0, "rxrx1: treatment siRNAs of the generated design (4 plate groups; 0: 32, with --recipe full 16)")
    normalise: str = opt("plate", "rxrx1: per-field normalisation the model is trained with (none, site, experiment, "
                         "plate, experiment-controls, plate-controls)")
    recipe: str = opt("", "rxrx1: full runs the training recipe of configs/rxrx1/ (stages I-III, channel-subset "
                      "ensemble, per-cell-type fine-tuning) after a plain model, each scored on the test experiments",
                      choices=["", "full"])
    tta: int = opt(0, "hpa-sc: dihedral views of each cell averaged at prediction (predict.py --tta 1, 2, 4 or 8; "
                   "0: the task's, 1)", choices=[0, 1, 2, 4, 8])
    class_draw: str = opt("stratified", "hpa-sc: how the generated fields' classes are drawn (make_data.py --options "
                          "class_draw=...; balanced scored no narrower a spread between seeds, docs/cellgap.md Round 7)",
                          choices=list(CLASS_DRAWS))
    ema: float = opt(0.0, "hpa-sc: exponential moving average of the weights, decay per optimiser step (train.py "
                     "--ema; 0: off; 0.99 scored lower on the demo's fields, docs/cellgap.md Round 8)")
    teacher: str = opt("auto", "hpa-sc: train.py --teacher: auto or certain (first a teacher on the fields naming at "
                       "most one class, for half the epochs; its predictions soften the targets of the cells of fields "
                       "naming several; docs/cellgap.md Round 11) or none", choices=list(TEACHERS))
    student_init: str = opt("teacher", "hpa-sc: train.py --student-init: with a teacher, start the run from its "
                            "trained weights (teacher; docs/cellgap.md Round 16) or as the teacher started (scratch)",
                            choices=list(STUDENT_INITS))
    relabel_after: int = opt(-1, "hpa-sc: train.py --relabel-after: with a teacher, the student judges its taught cells "
                             "after this many epochs (-1: half of them; 0: never; docs/cellgap.md Round 20)")
    balance_power: float = opt(0.5, "hpa-sc and hpa-2018: class-balanced sampling of training (train.py "
                               "--balance-power: 0 the real shares, 0.5 square-root balancing, 1 every class equally "
                               "often)")

    def __post_init__(self) -> None:
        defaults = DEMO_DEFAULTS.get(self.task, DEMO_DEFAULTS[DEFAULT_TASK])
        if self.recipe:
            defaults = {**defaults, **RECIPE_DESIGN}
        for key, value in defaults.items():
            if getattr(self, key) == 0:
                setattr(self, key, value)
        if min(getattr(self, key) for key in defaults) < 1:
            raise ValueError("sizes, epochs and folds must be >= 1")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must be in [0, 1) (a decay per optimiser step; 0: off), got {self.ema}")
        if self.relabel_after < -1:
            raise ValueError(f"relabel_after must be >= 0 (or -1: half the epochs), got {self.relabel_after}")
        if self.test_seed < -1:
            raise ValueError(f"test_seed must be >= 0 (or -1: 2 x seed + 1), got {self.test_seed}")
        if self.test_seed == self.train_data_seed and self.task != "rxrx1":
            raise ValueError(f"test_seed {self.test_seed} draws the training fields (seed {self.seed} trains on 2 x seed): "
                             "the test fields must differ")

    @property
    def train_data_seed(self) -> int:
        """Generator seed of the training fields (hpa-sc, hpa-2018): 2S, even, so 2S + 1 never repeats one."""
        return 2 * self.seed

    @property
    def test_data_seed(self) -> int:
        """Generator seed of the test fields: --test-seed, else 2S + 1 (never a training seed, 2S)."""
        return self.test_seed if self.test_seed >= 0 else self.train_data_seed + 1


def run(title: str, args: list[str], capture: bool = False, log: str | Path | None = None) -> list[str]:
    """Run one stage as a subprocess from the repository root; stop the demo if it fails.

    With ``capture`` its standard output is shown as it comes and also returned, line by line.
    Stages run unbuffered (``-u``): in a pipe or a log file a stage's epochs and fields then
    appear as they finish, not all at once when it exits.
    With ``log`` (stages run side by side, see :func:`in_parallel`) its output goes to that file,
    single-threaded, and only its start and end are shown (the file's end too if it fails).
    """
    print(f"\n=== {title}: python {' '.join(args)}", flush=True)
    t0 = time.perf_counter()
    lines: list[str] = []
    if log is not None:
        Path(REPO, log).parent.mkdir(parents=True, exist_ok=True)
        with open(Path(REPO, log), "w") as f:
            code = subprocess.run([sys.executable, "-u", *args], cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                  env={**os.environ, "OMP_NUM_THREADS": "1", THREADS_ENV: "1"}).returncode
        if code != 0:
            print("".join(Path(REPO, log).read_text().splitlines(keepends=True)[-15:]), flush=True)
    elif capture:
        with subprocess.Popen([sys.executable, "-u", *args], cwd=REPO, stdout=subprocess.PIPE, text=True) as proc:
            for line in proc.stdout:  # type: ignore[union-attr]
                print(line, end="", flush=True)
                lines.append(line.rstrip("\n"))
        code = proc.returncode
    else:
        code = subprocess.run([sys.executable, "-u", *args], cwd=REPO).returncode
    if code != 0:
        raise SystemExit(f"demo: stage '{title}' failed (exit {code})")
    print(f"=== {title}: done in {time.perf_counter() - t0:.0f}s{f' (output: {log})' if log else ''}", flush=True)
    return lines


def in_parallel(jobs: list[Callable[[], T]], workers: int) -> list[T]:
    """Run independent chains of stages ``workers`` at a time (each stage one single-threaded process,
    so two fill a 2-core machine); results in the order of ``jobs``. The first failure stops the demo."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return [f.result() for f in [pool.submit(job) for job in jobs]]


def last_value(lines: list[str], key: str) -> str:
    """The value of the last ``key=value`` line of a stage's output."""
    found = [line.split("=", 1)[1] for line in lines if line.startswith(f"{key}=")]
    if not found:
        raise SystemExit(f"demo: expected a line {key}=... in the stage's output")
    return found[-1]


def hpa_single_cell(a: DemoConfig) -> list[str]:
    """Segment, crop and classify cells; the submission is scored per cell against the generated truth."""
    draw = ["--options", f"class_draw={a.class_draw}"]
    run("data", ["src/make_data.py", "--seed", str(a.train_data_seed), "--fields", str(a.fields), "--size", str(a.size),
                 "--workers", DATA_WORKERS, *draw])
    run("test data", ["src/make_data.py", "--name", "synth_test", "--split", "test", "--seed", str(a.test_data_seed),
                      "--fields", str(a.test_fields), "--size", str(a.size), "--workers", DATA_WORKERS, *draw])
    run("segment training fields", ["src/segment.py", "--input", "input/synth/train", "--crop-size", str(a.crop_size),
                                    "--workers", FIELD_WORKERS, "--overwrite"])
    run("segmentation score (generated fields with truth)", ["src/score_segmentation.py", "input/synth", "--masks",
                                                             "output/synth/masks"])
    run("segment the real sample field", ["src/segment.py", "--input", "input/sample", "--overlay"])
    run("folds", ["src/gen_folds.py", "--folds", str(a.folds), "--seed", "42", "--overwrite"])
    # ResNet-18 from scratch, keeping the last epoch, class-balanced draws, three times the fields of
    # the earlier demo for fewer epochs (docs/cellgap.md, "Round 2"): on the same 80 fields and seed,
    # test mAP 0.30 against EfficientNet-B0's 0.26 for two thirds of its CPU; the balancing lifts the
    # rare classes (in 1-3 of 40 fields), and more fields show them in more contexts
    run("train fold 0 (CPU-sized: ResNet-18 on small crops, no ImageNet weights)",
        ["src/train.py", "--fold", "0", "--epochs", str(a.epochs), "--image-size", str(a.crop_size), "--pretrained", "none",
         "--model", "resnet18", "--monitor", "last", "--balance-power", str(a.balance_power),
         "--seed", str(42 + a.seed), "--ema", str(a.ema), "--teacher", a.teacher,
         "--student-init", a.student_init, "--relabel-after", str(a.relabel_after), "--overwrite"])
    run("predict the held-out test fields", ["src/predict.py", "--input", "input/synth_test/test", "--tta", str(a.tta),
                                             "--workers", FIELD_WORKERS, "--overwrite"])
    run("run report", ["src/report.py", "models/effb2"])
    run("check the submission", ["src/check_submission.py", "output/synth_test/submission.csv"])
    scored = run("score the submission (competition metric, per-cell truth)",
                 ["src/evaluate.py", "--truth", "input/synth_test/truth", "--submission",
                  "output/synth_test/submission.csv"], capture=True)
    return [f"mAP={last_value(scored, 'mAP')}"]


def rxrx1(a: DemoConfig) -> list[str]:
    """RxRx1 on a generated design: train on some experiments, score on unseen ones (other batches).

    Data in ``input/rxrx1_demo_s<seed>`` (both splits of one design; ``truth/labels.csv`` holds the
    test wells' siRNAs), the model in ``models/rxrx1_demo_s<seed>_<normalise>``, submissions in
    ``output/`` under the same name. Each field is standardised by its plate's pixel statistics
    (``--normalise``, the task's default); the submission is scored twice, each well on its own
    and with plate-aware assignment, and the demo ends with the latter's accuracy.
    """
    if a.recipe:
        return rxrx1_recipe(a)
    name = f"rxrx1_demo_s{a.seed}"
    run_name = f"{name}_{a.normalise}"
    data, models, out = f"input/{name}", f"models/{run_name}", f"output/{run_name}"
    design = ["--task", "rxrx1", "--name", name, "--size", str(a.size), "--seed", str(a.seed),
              "--workers", DATA_WORKERS, "--options", f"sirnas={a.sirnas}"]
    run("data: training experiments (2 per cell type)", ["src/make_data.py", *design])
    run("data: test experiments (1 per cell type, other batches)", ["src/make_data.py", *design, "--split", "test"])
    run("folds (whole experiments, every cell type in every fold)",
        ["src/gen_folds.py", "--task", "rxrx1", "--labels", f"{data}/train.csv", "--out", f"{out}/folds.csv",
         "--folds", str(a.folds), "--overwrite"])
    # ResNet-18 from scratch: on these 384 fields EfficientNet-B0 stayed near chance for 20 epochs
    # (validation accuracy 0.03-0.09) where ResNet-18 reached 0.20 in 12, for less CPU per image.
    # No per-channel gain augmentation (--aug-gain 0): after normalisation the siRNAs differ mostly
    # in how bright each stain is, and a random +-10% gain per channel blurs exactly that (same
    # seed and data, after 5 of 12 epochs: validation loss 3.46, accuracy 0.25 without; 3.82, 0.16 with)
    run(f"train fold 0 on whole 6-channel fields, normalised: {a.normalise} (CPU-sized, no ImageNet weights)",
        ["src/train.py", "--task", "rxrx1", "--folds-csv", f"{out}/folds.csv", "--input", f"{data}/train",
         "--out-dir", "models", "--run-name", run_name, "--fold", "0", "--model", "resnet18", "--normalise", a.normalise,
         "--pretrained", "none", "--image-size", str(a.image_size), "--epochs", str(a.epochs),
         "--batch-size", "16", "--lr", "1e-3", "--schedule", "onecycle", "--label-smoothing", "0.1",
         "--aug-gain", "0", "--monitor", "accuracy", "--patience", str(a.epochs), "--cache-mb", "256", "--num-workers", "1",
         "--seed", str(a.seed), "--overwrite"])
    run("predict the test experiments, each well on its own (sites averaged)",
        ["src/predict.py", "--models", models, "--input", f"{data}/test", "--out", f"{out}/per_well", "--overwrite"])
    per_well = run("score it", ["src/evaluate.py", "--task", "rxrx1", "--truth", f"{data}/truth",
                                "--submission", f"{out}/per_well/submission.csv"], capture=True)
    run("predict again with plate-aware assignment (each plate: one siRNA group, each siRNA once)",
        ["src/predict.py", "--models", models, "--input", f"{data}/test", "--out", out, "--plate-assignment",
         "--overwrite"])
    run("check the submission", ["src/check_submission.py", f"{out}/submission.csv", "--task", "rxrx1",
                                 "--sample-submission", f"{data}/sample_submission.csv"])
    scored = run("score the submission (accuracy on unseen experiments)",
                 ["src/evaluate.py", "--task", "rxrx1", "--truth", f"{data}/truth", "--submission", f"{out}/submission.csv"],
                 capture=True)
    return [f"accuracy_per_well={last_value(per_well, 'accuracy')}", f"accuracy={last_value(scored, 'accuracy')}"]


# Epochs per stage (the configs' own are for full-size data on a GPU). The plain model sees about as
# many training fields as stages I and II together (stage I: the 5 control wells of each 9-well plate).
RECIPE_EPOCHS = {"plain": 6, "controls": 4, "all_sirnas": 4, "pseudo": 2, "channel_subsets": 1, "cell_types": 2}
# Stage III keeps the test wells whose plate confidence (P(plate's siRNA group) * P(siRNA | group),
# pseudo_labels.py --confidence plate) is at least this: more likely right than wrong.
PSEUDO_THRESHOLD = 0.5
# Independent stages (the plain model beside stages I -> II; the ten fine-tunes from stage III) run
# this many at a time, each single-threaded: the 2-core machine the demo is sized for.
RECIPE_PARALLEL = 2


def pseudo_label_precision(table_csv: Path, truth_csv: Path) -> tuple[int, float]:
    """(kept test wells, share of them whose pseudo-label is their true siRNA): the demo scores its
    pseudo-labels against ``truth/`` after they are made; training never reads that file."""
    import pandas as pd

    table = pd.read_csv(table_csv, dtype={"Label": str})
    predicted = table[table["source"] == "predicted"]
    if predicted.empty:
        return 0, float("nan")
    truth = pd.read_csv(truth_csv).set_index("id_code")["sirna"]
    right = predicted["Label"].astype(int).to_numpy() == truth.loc[predicted["ID"]].to_numpy()
    return len(predicted), float(right.mean())


def rxrx1_recipe(a: DemoConfig) -> list[str]:
    """The RxRx1 training recipe (issue 16) on a generated design of its own, fold 0.

    A plain model (all wells, from scratch, as many passes over them as stages I and II
    together) is the baseline. Stage I trains on the control wells (scored on the held-out
    training experiments' controls: test controls are given, not predicted); II on every well
    from I's weights; III adds the test wells stage II is sure of (pseudo_labels.py: predicted
    labels, never truth/; the demo scores their precision against truth/ afterwards) and the
    given test controls, from II's weights. From III: one model per 5-of-6 channels, their saved
    test scores averaged (ensemble.py); one model per cell type, merged by cell type. The final
    submission averages those two. Every test score is plate-assigned and on the test
    experiments, whose true labels no stage trains on.
    """
    from cellloc.rxrx1 import evaluate_submission

    name = f"rxrx1_recipe_s{a.seed}"
    data, tag = f"input/{name}", name
    out = f"output/{tag}"
    cfgs = "configs/rxrx1"
    design = ["--task", "rxrx1", "--name", name, "--size", str(a.size), "--seed", str(a.seed),
              "--workers", DATA_WORKERS, "--options", f"sirnas={a.sirnas}"]
    run("data: training experiments (2 per cell type)", ["src/make_data.py", *design])
    run("data: test experiments (1 per cell type, other batches)", ["src/make_data.py", *design, "--split", "test"])
    run("folds of every training well, controls included (whole experiments, every cell type in every fold)",
        ["src/gen_folds.py", "--task", "rxrx1", "--labels", f"{data}/train.csv", "--more-labels",
         f"{data}/train_controls.csv", "--out", f"{out}/folds.csv", "--folds", str(a.folds), "--overwrite"])
    # --bn-recalibrate 256: BatchNorm statistics from half the training fields before each validation; --num-workers 0:
    # the fields are cached in RAM, a loader process only adds start-up time on 2 cores
    common = ["--folds-csv", f"{out}/folds.csv", "--input", f"{data}/train", "--out-dir", "models", "--fold", "0",
              "--model", "efficientnet-b0", "--pretrained", "none", "--image-size", str(a.image_size),
              "--normalise", a.normalise, "--batch-size", "32", "--cache-mb", "256", "--num-workers", "0",
              "--bn-recalibrate", "256", "--seed", str(a.seed)]
    test = ["--input", f"{data}/test", "--plate-assignment"]
    truth = Path(REPO) / data / "truth"
    logs = f"{out}/logs"
    lines: list[str] = []

    def train(step: str, config: str, *args: str) -> str:
        epochs = str(RECIPE_EPOCHS[step.split(":")[0]])
        run_name = f"{tag}_{step.replace(':', '_')}"
        run(f"train {step}", ["src/train.py", "--config", f"{cfgs}/{config}", *common, "--run-name", run_name,
                              "--epochs", epochs, "--patience", epochs, "--overwrite", *args],
            log=f"{logs}/train_{step.replace(':', '_')}.log")
        return f"models/{run_name}"

    def score(step: str, folder: str) -> str:
        table, summary = evaluate_submission(truth, Path(REPO) / folder / "submission.csv")
        print(table.to_string(index=False))
        lines.append(f"step={step} {summary}")
        print(lines[-1], flush=True)
        return folder

    def predict(step: str, models: str) -> str:
        folder = f"{out}/{step.replace(':', '_')}"
        run(f"predict {step}", ["src/predict.py", "--models", models, "--out", folder, "--overwrite", *test],
            log=f"{logs}/predict_{step.replace(':', '_')}.log")
        return folder

    lr = ["--lr", "2e-3"]  # from scratch on CPU-sized data: the plain demo's rate

    def stages_one_two() -> tuple[str, str, str]:
        stage1 = train("controls", "stage1_controls.yaml", *lr)
        stage2 = train("all_sirnas", "stage2_all.yaml", *lr, "--init-from", stage1)
        return stage1, stage2, predict("all_sirnas", stage2)

    # the plain model and stages I -> II do not depend on each other: side by side
    pred_plain, (stage1, stage2, pred2) = in_parallel(
        [lambda: predict("plain", train("plain", "stage2_all.yaml", *lr)), stages_one_two], RECIPE_PARALLEL)
    score("plain", pred_plain)
    summary = json.loads((Path(REPO) / stage1 / "fold0" / "summary.json").read_text())
    lines.append(f"step=controls accuracy={summary['metrics']['accuracy']:.4f}")
    print(f"{lines[-1]}  (control wells of the held-out training experiments)", flush=True)
    score("all_sirnas", pred2)
    run("pseudo-labels: the test wells stage II is sure of (predicted labels) and the given test controls",
        ["src/pseudo_labels.py", "--predictions", pred2, "--input", f"{data}/test", "--confidence", "plate",
         "--threshold", str(PSEUDO_THRESHOLD)])
    kept, precision = pseudo_label_precision(Path(REPO) / pred2 / "pseudo_labels.csv", truth / "labels.csv")
    wells = sum(1 for _ in open(Path(REPO) / pred2 / "submission.csv")) - 1
    pseudo_line = f"pseudo_labels={kept}/{wells} precision={precision:.4f}" if kept else f"pseudo_labels=0/{wells}"
    print(f"{pseudo_line}  (scored against truth/ here; training never reads it)", flush=True)
    stage3 = train("pseudo", "stage3_pseudo.yaml", "--init-from", stage2, "--extra-train", f"{pred2}/pseudo_labels.csv")
    score("pseudo", predict("pseudo", stage3))
    # from stage III, ten independent fine-tunes: one per 5-of-6 stains, one per cell type
    channels = ["w1", "w2", "w3", "w4", "w5", "w6"]

    def subset_model(drop: str) -> Callable[[], str]:
        keep = [c for c in channels if c != drop]
        return lambda: predict(f"no_{drop}", train(f"channel_subsets:no_{drop}", "channel_subset.yaml",
                                                   "--init-from", stage3, "--channels", *keep))

    # 8 training experiments in 4 folds: fold 0 holds two cell types' experiments only. A cell type
    # it lacks validates on the first fold that has it, from stage III's fold-0 weights, which
    # trained on that fold: its validation is reported, not used (the last epoch is kept).
    import pandas as pd

    folds_of = pd.read_csv(Path(REPO) / out / "folds.csv").groupby("cell_type")["fold"].agg(lambda f: sorted(set(f)))

    def cell_type_model(cell_type: str) -> Callable[[], str]:
        step = f"cell_types:{cell_type}"
        fold = 0 if 0 in folds_of[cell_type] else folds_of[cell_type][0]
        where = [] if fold == 0 else ["--fold", str(fold), "--monitor", "last"]
        return lambda: f"{cell_type}={predict(step, train(step, 'cell_type.yaml', '--init-from', f'{stage3}/fold0', '--subset', f'cell_type={cell_type}', *where))}"

    cell_types = ("HEPG2", "HUVEC", "RPE", "U2OS")
    folders = in_parallel([*map(subset_model, channels), *map(cell_type_model, cell_types)], RECIPE_PARALLEL)
    subsets, per_type = folders[:len(channels)], folders[len(channels):]
    run("ensemble of the six channel-subset models (mean of logits)",
        ["src/ensemble.py", "--predictions", *subsets, "--out", f"{out}/channel_subsets", *test])
    score("channel_subsets", f"{out}/channel_subsets")
    run("merge the per-cell-type models (each well scored by its cell type's model)",
        ["src/ensemble.py", "--predictions", *per_type, "--by", "cell_type", "--out", f"{out}/cell_types", *test])
    score("cell_types", f"{out}/cell_types")
    run("final: the channel-subset ensemble and the per-cell-type merge averaged",
        ["src/ensemble.py", "--predictions", f"{out}/channel_subsets", f"{out}/cell_types", "--out", f"{out}/final", *test])
    run("check the final submission", ["src/check_submission.py", f"{out}/final/submission.csv", "--task", "rxrx1",
                                       "--sample-submission", f"{data}/sample_submission.csv"])
    _, final = evaluate_submission(truth, Path(REPO) / out / "final" / "submission.csv")
    return [*lines, pseudo_line, final]


def hpa2018(a: DemoConfig) -> list[str]:
    """Every fold trained (whole fields, class-balanced sampling, fields cached in RAM), per-class
    thresholds fitted on the out-of-fold predictions, the held-out test split scored at 0.5, at the
    global threshold, with the winner's share rule and with the fitted thresholds (the submission)."""
    task = get_task("hpa-2018")
    data, test = f"input/{task.data_name}", f"input/{task.test_data_name}"
    models, out = f"models/{default_run_name(task, task.level)}", f"output/{task.test_data_name}"
    size = ["--size", str(a.size), "--workers", DATA_WORKERS]
    run("data", ["src/make_data.py", "--task", task.name, "--seed", str(a.train_data_seed), "--fields", str(a.fields), *size])
    # cover_groups=1: the test split's first protein groups hold one class each (rarest first), so
    # every class has a positive to score; training keeps the real long-tailed shares
    run("test data (every class present)",
        ["src/make_data.py", "--task", task.name, "--name", task.test_data_name, "--split", "test",
         "--seed", str(a.test_data_seed), "--fields", str(a.test_fields), *size, "--options", "cover_groups=1"])
    run("folds (each protein's images in one fold)",
        ["src/gen_folds.py", "--task", task.name, "--folds", str(a.folds), "--seed", "42",
         "--groups", f"{data}/truth/images.csv", "--group-col", "protein", "--overwrite"])
    for fold in range(a.folds):
        # ResNet-18, not B0: from scratch on ~200 fields it learned faster (fold 0 of seed 0, validation
        # macro AP 0.31 after 5 epochs against B0's 0.18 after 4) and a step costs 40 CPU-ms a field
        # at 128 px against B0's 65 (README, HPA-2018 scores)
        run(f"train fold {fold} of {a.folds} on whole fields (CPU-sized: ResNet-18, no ImageNet weights)",
            ["src/train.py", "--task", task.name, "--fold", str(fold), "--epochs", str(a.epochs),
             "--image-size", str(a.image_size), "--model", "resnet18", "--pretrained", "none",
             "--batch-size", "16", "--lr", "0.003", "--balance-power", str(a.balance_power), "--cache-mb", "256",
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
DEMOS: dict[str, Callable[[DemoConfig], list[str]]] = {"hpa-sc": hpa_single_cell, "rxrx1": rxrx1, "hpa-2018": hpa2018}


@exit_on_input_error
def main(argv: list[str] | None = None) -> None:
    a = parse_config(DemoConfig, argv, __doc__.splitlines()[0])
    t0 = time.perf_counter()
    if a.task not in DEMOS:
        raise InputError(f"no demo for task {a.task}; known: {', '.join(DEMOS)}")
    tail = DEMOS[a.task](a)
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f}s wall, {used.ru_utime + used.ru_stime:.0f}s CPU "
          f"(its stages, user + system); load average now {load}")
    for line in tail:
        print(line)


if __name__ == "__main__":
    main()

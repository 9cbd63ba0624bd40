"""Issue 19 study: how close per-cell answers trained from image labels get to the true-label ceiling.

    python bench/study_cellgap.py prepare                      # data, segmentation, crops, folds (once)
    python bench/study_cellgap.py run ceil_b0_64 --seeds 1 2 3 \\
        --train "--label-source true --model efficientnet-b0 --image-size 64 --epochs 40 --monitor last"
    python bench/study_cellgap.py run weak_b0_64 --seeds 1 2 3 --train "..." \\
        --variant none="--blend none" --variant mean="--blend mean"   # extra predictions, no training
    python bench/study_cellgap.py run oof_b0_64 --oof "--epochs 20" --train "--soft-weight 1" ...
    python bench/study_cellgap.py table                        # mean and spread per configuration

Every step is the normal command (``src/train.py``, ``src/predict.py``, ``src/evaluate.py``, ...)
run as a subprocess from the repository root; this script only chains them, per seed, and
appends one row per (configuration, prediction variant, seed) to ``output/study_cellgap/results.csv``
(a rerun skips the rows already there). The score is the competition's mAP@0.6 of the
submission on held-out generated fields against their per-cell truth; the validation fold's
macro AP against the true and the weak labels comes from the run's ``summary.json``.

Cost is the CPU time (user + sys) of the training process and its children
(``getrusage(RUSAGE_CHILDREN)`` around the subprocess), not the wall time, which other
sessions on a shared machine distort. Training runs with ``OMP_NUM_THREADS=1`` and no loader
workers by default: on a loaded 2-core machine two OpenMP threads spin at their barriers and
the same work costs 10-15x the CPU time (measured: EfficientNet-B2 at 64 px, 29 ms of CPU per
cell and step with one thread, 420 ms with two, at load average 12), while one thread's CPU
time is about the work itself; on an idle machine two threads do that work about 1.8x faster,
so 10 CPU-minutes here are about 5 minutes of a 2-thread run on the idle machine. The load
average is recorded with every row.

``--oof ARGS`` first trains the other folds on the image labels (``ARGS`` added to ``--train``'s;
together they predict every cell the configuration's fold trains on, each by a model that never
saw it), then trains the configuration's fold with ``--soft-targets`` pointing at those folds'
out-of-fold predictions; the fold trainings' CPU time is recorded apart (``oof_cpu_s``). With
``--oof-seed N`` the teachers are trained once (seed N) and shared by every seed's retraining.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
ROOT = Path("output/study_cellgap")
RESULTS = ROOT / "results.csv"
COLUMNS = ["config", "variant", "seed", "crops", "train_args", "oof_args", "predict_args", "train_cpu_s", "train_wall_s",
           "oof_cpu_s", "threads", "load_start", "load_end", "best_epoch", "epochs_run", "n_train", "val_ap_true",
           "val_ap_weak", "test_map", "when"]


def sh(args: list[str], threads: int | None = None, log: Path | None = None) -> tuple[float, float]:
    """Run ``python args`` from the repository root; (CPU seconds of it and its children, wall seconds)."""
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    cmd = [sys.executable, *args]
    print("$", shlex.join(["python", *args]), flush=True)
    out = open(log, "a") if log else None
    try:
        done = subprocess.run(cmd, cwd=REPO, env=env, stdout=out or subprocess.DEVNULL, stderr=subprocess.STDOUT)
    finally:
        if out:
            out.close()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"study: failed (exit {done.returncode}): {shlex.join(args)}" + (f"; log {log}" if log else ""))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, time.perf_counter() - t0


# --------------------------------------------------------------------------- data


def crops_dir(name: str) -> Path:
    return ROOT / f"crops_{name}"


def test_seg(data: str) -> Path:
    """The test fields' segmentation, cut once per dataset and shared by every model scored on it."""
    return ROOT / f"test_seg_{data}"


def prepare(a: argparse.Namespace) -> None:
    """Training and test fields, the training crops (one set per --crops NAME:SIZE:FIT) and folds, the test masks."""
    train, test = f"{a.data}_train", f"{a.data}_test"
    logs = ROOT / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if not (REPO / "input" / train / "train.csv").exists():
        sh(["src/make_data.py", "--name", train, "--fields", str(a.train_fields), "--size", str(a.size), "--seed", "0"],
           log=logs / "prepare.log")
    if not (REPO / "input" / test / "sample_submission.csv").exists():
        sh(["src/make_data.py", "--name", test, "--split", "test", "--fields", str(a.test_fields), "--size", str(a.size),
            "--seed", "1"], log=logs / "prepare.log")
    if not (REPO / test_seg(a.data) / "cells.csv").exists():
        sh(["src/segment.py", "--input", f"input/{test}/test", "--out", str(test_seg(a.data))], log=logs / "prepare.log")
    for spec in a.crops:
        name, size, fit = spec.split(":")
        out = crops_dir(name)
        if not (REPO / out / "folds.csv").exists():
            sh(["src/segment.py", "--input", f"input/{train}/train", "--out", str(out), "--crop-size", size,
                "--crop-fit", fit], log=logs / "prepare.log")
            sh(["src/gen_folds.py", "--cells", str(out / "cells.csv"), "--out", str(out / "folds.csv"), "--folds", "5",
                "--seed", "42"], log=logs / "prepare.log")
        for n in a.subsets:
            # the first N training fields alone, with folds of their own (what a demo with --fields N would train on)
            if not (REPO / out / f"folds_n{n}.csv").exists():
                cells = pd.read_csv(REPO / out / "cells.csv", dtype=str, keep_default_na=False)
                keep = sorted(cells["ID"].unique())[:n]
                cells[cells["ID"].isin(keep)].to_csv(REPO / out / f"cells_n{n}.csv", index=False)
                sh(["src/gen_folds.py", "--cells", str(out / f"cells_n{n}.csv"), "--out", str(out / f"folds_n{n}.csv"),
                    "--folds", str(a.subset_folds), "--seed", "42"], log=logs / "prepare.log")


# --------------------------------------------------------------------------- runs


def load_results() -> pd.DataFrame:
    path = REPO / RESULTS
    if not path.exists():
        return pd.DataFrame(columns=COLUMNS)
    return pd.read_csv(path, dtype={"config": str, "variant": str}, keep_default_na=False)


def append_row(row: dict) -> None:
    path = REPO / RESULTS
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        w = csv.DictWriter(fh, COLUMNS)
        if new:
            w.writeheader()
        w.writerow({k: row.get(k, "") for k in COLUMNS})


def train_args(a: argparse.Namespace, run: str, seed: int, fold: int, extra: str) -> list[str]:
    return ["src/train.py", "--folds-csv", str(crops_dir(a.crops) / a.folds_file), "--fold", str(fold),
            "--out-dir", str(ROOT / "models"), "--run-name", run, "--pretrained", "none", "--seed", str(seed),
            "--num-workers", str(a.workers), *shlex.split(a.train), *shlex.split(extra)]


def score(a: argparse.Namespace, run: str, variant: str, predict_extra: str, log: Path) -> float:
    """Predict the test fields with a trained run (reusing the test masks), then the competition metric."""
    out = ROOT / "predictions" / f"{run}__{variant or 'default'}"
    if (REPO / out).exists():
        shutil.rmtree(REPO / out)
    sh(["src/predict.py", "--models", str(ROOT / "models" / run), "--input", f"input/{a.data}_test/test",
        "--masks", str(test_seg(a.data) / "masks"), "--out", str(out), *shlex.split(a.predict), *shlex.split(predict_extra)],
       threads=a.threads, log=log)
    text = subprocess.run([sys.executable, "src/evaluate.py", "--truth", f"input/{a.data}_test/truth",
                           "--submission", str(out / "submission.csv")], cwd=REPO, capture_output=True, text=True)
    last = text.stdout.strip().splitlines()[-1] if text.stdout.strip() else ""
    if text.returncode != 0 or not last.startswith("mAP="):
        raise SystemExit(f"study: evaluate failed for {out}: {text.stderr.strip()[-300:]}")
    return float(last.split("=")[1])


def run(a: argparse.Namespace) -> None:
    done = load_results()
    variants = [("", "")] + [tuple(v.split("=", 1)) for v in a.variant]
    logs = REPO / ROOT / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for seed in a.seeds:
        have = set(done.loc[(done["config"] == a.config) & (done["seed"].astype(str) == str(seed)), "variant"])
        todo = [(n, p) for n, p in variants if n not in have]
        if not todo:
            continue
        run_name = f"{a.config}_s{seed}"
        fold_dir = REPO / ROOT / "models" / run_name / f"fold{a.fold}"
        log = logs / f"{run_name}.log"
        row = {"config": a.config, "seed": seed, "crops": a.crops if a.folds_file == "folds.csv" else f"{a.crops}/{a.folds_file}", "train_args": a.train, "oof_args": a.oof or "",
               "threads": a.threads}
        summary_path = fold_dir / "summary.json"
        if not summary_path.exists():
            oof_cpu = 0.0
            extra = ""
            if a.oof is not None:
                # the folds other than a.fold hold a held-out prediction of every cell a.fold trains on
                teacher_seed = seed if a.oof_seed is None else a.oof_seed
                oof_run = f"{a.config}_oof_s{teacher_seed}"
                for k in range(a.folds):
                    if k != a.fold and not (REPO / ROOT / "models" / oof_run / f"fold{k}" / "summary.json").exists():
                        oof_cpu += sh(_drop_soft(train_args(a, oof_run, teacher_seed, k, a.oof)), threads=a.threads,
                                      log=log)[0]
                extra = f"--soft-targets {ROOT / 'models' / oof_run}"
            load0 = os.getloadavg()[0]
            cpu, wall = sh(train_args(a, run_name, seed, a.fold, extra), threads=a.threads, log=log)
            row.update(train_cpu_s=round(cpu, 1), train_wall_s=round(wall, 1), oof_cpu_s=round(oof_cpu, 1),
                       load_start=round(load0, 2), load_end=round(os.getloadavg()[0], 2))
            (fold_dir / "last.pt").unlink(missing_ok=True)  # 3x the weights; the study needs best.pt only
            (fold_dir / "study_cost.json").write_text(json.dumps({k: row[k] for k in
                                                                  ("train_cpu_s", "train_wall_s", "oof_cpu_s", "load_start",
                                                                   "load_end")}))
        else:
            row.update(json.loads((fold_dir / "study_cost.json").read_text()))
        summary = json.loads(summary_path.read_text())
        row.update(best_epoch=summary["best_epoch"], epochs_run=summary["epochs_run"], n_train=summary["n_train"],
                   val_ap_true=round(summary["macro_ap_true"] or float("nan"), 4),
                   val_ap_weak=round(summary["macro_ap_weak"] or float("nan"), 4))
        for name, extra in todo:
            m = score(a, run_name, name, extra, log)
            append_row({**row, "variant": name, "predict_args": " ".join([a.predict, extra]).strip(), "test_map": m,
                        "when": dt.datetime.now().isoformat(timespec="seconds")})
            print(f"{a.config} seed {seed} {name or 'default'}: test mAP@0.6 {m:.4f}, val AP true {row['val_ap_true']}, "
                  f"train {row['train_cpu_s']} CPU-s", flush=True)


def _drop_soft(args: list[str]) -> list[str]:
    """The fold trainings of --oof are plain image-label runs: no soft-target options."""
    out, skip = [], False
    for x in args:
        if skip:
            skip = False
            continue
        if x in ("--soft-targets", "--soft-weight"):
            skip = True
            continue
        out.append(x)
    return out


# --------------------------------------------------------------------------- summary


def table(a: argparse.Namespace) -> None:
    df = load_results()
    if df.empty:
        print("no results yet")
        return
    for c in ("test_map", "val_ap_true", "val_ap_weak", "train_cpu_s", "oof_cpu_s", "load_start"):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    g = df.groupby(["config", "variant"], sort=False)
    out = pd.DataFrame({
        "n": g["seed"].count(),
        "test mAP mean": g["test_map"].mean().round(4),
        "sd": g["test_map"].std().round(4),
        "min": g["test_map"].min().round(4),
        "max": g["test_map"].max().round(4),
        "val AP true": g["val_ap_true"].mean().round(4),
        "val AP weak": g["val_ap_weak"].mean().round(4),
        "train CPU-min": (g["train_cpu_s"].mean() / 60).round(1),
        "teachers CPU-min": (g["oof_cpu_s"].sum() / 60).round(1),  # --oof: all seeds' teachers (trained once with --oof-seed)
        "load": g["load_start"].mean().round(1),
    }).reset_index()
    if a.paired:
        out = paired(df, a.paired)
        print(markdown(out) if a.markdown else out.to_string(index=False))
        return
    if a.ceiling:
        ceiling = out[out["config"] == a.ceiling].set_index("variant")["test mAP mean"]
        if ceiling.empty:
            raise SystemExit(f"study: no rows of --ceiling {a.ceiling}")
        ref = out["variant"].map(ceiling)  # a variant the ceiling was not predicted with has no ratio
        out.insert(3, "of ceiling", (out["test mAP mean"] / ref).round(2))
    if a.match:
        out = out[out["config"].str.contains(a.match)]
    if a.only_variant is not None:
        out = out[out["variant"] == a.only_variant]
    print(markdown(out) if a.markdown else out.to_string(index=False))


def paired(df: pd.DataFrame, variant: str) -> pd.DataFrame:
    """Per configuration: the default prediction minus ``variant``'s, seed by seed (same model), mean, min and max."""
    wide = df.pivot_table(index=["config", "seed"], columns="variant", values="test_map", sort=False)
    if variant not in wide.columns:
        raise SystemExit(f"study: no rows of variant {variant!r}")
    diff = (wide[""] - wide[variant]).dropna().groupby(level="config", sort=False)
    return pd.DataFrame({"seeds": diff.count(), f"default - {variant} mean": diff.mean().round(4),
                         "min": diff.min().round(4), "max": diff.max().round(4)}).reset_index()


def spread(a: argparse.Namespace) -> None:
    """How much the score of one submission moves with the test fields drawn: mAP@0.6 on random subsets."""
    sys.path.insert(0, str(REPO / "src"))
    from cellloc.metrics import competition_map
    from cellloc.submission_formats import parse_submission, read_truth

    fields = read_truth(REPO / "input" / f"{a.data}_test" / "truth", a.classes)
    ids = sorted(fields)
    rng = np.random.default_rng(a.seed)
    for sub in a.submissions:
        preds = parse_submission(sub, a.classes)
        full = competition_map(fields, preds, a.classes, 0.6)["map"]
        scores = []
        for _ in range(a.draws):
            pick = {ids[i]: fields[ids[i]] for i in rng.choice(len(ids), a.fields, replace=False)}
            scores.append(competition_map(pick, {k: preds[k] for k in pick if k in preds}, a.classes, 0.6)["map"])
        sd = float(np.std(scores, ddof=1))
        # subsets drawn without replacement from a finite pool vary less than independent draws by
        # sqrt(1 - f) (f = the share drawn); the independent-field sd follows from it
        independent = sd / np.sqrt(1 - a.fields / len(ids))
        print(f"{sub}: all {len(ids)} fields mAP {full:.4f}; {a.draws} subsets of {a.fields}: mean {np.mean(scores):.4f}, "
              f"sd {sd:.4f} (independent {a.fields} fields: about {independent:.4f}; {len(ids)}: about "
              f"{independent * np.sqrt(a.fields / len(ids)):.4f})")


def markdown(df: pd.DataFrame) -> str:
    """A GitHub table of ``df`` (pandas' to_markdown needs tabulate, not a dependency here)."""
    cells = [[str(v) if str(v) not in ("", "nan") else "-" for v in row] for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("prepare")
    pp.add_argument("--data", default="cg")
    pp.add_argument("--train-fields", type=int, default=40)
    pp.add_argument("--test-fields", type=int, default=60)
    pp.add_argument("--size", type=int, default=512)
    pp.add_argument("--crops", nargs="+", default=["pad128:128:pad"], help="NAME:CROP_SIZE:FIT crop sets to cut")
    pp.add_argument("--subsets", type=int, nargs="*", default=[], help="also folds_n<N>.csv in each crop set: the first "
                                                                        "N training fields only, folded on their own")
    pp.add_argument("--subset-folds", type=int, default=5, help="folds of each --subsets table")
    pr = sub.add_parser("run")
    pr.add_argument("config")
    pr.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    pr.add_argument("--data", default="cg")
    pr.add_argument("--crops", default="pad128")
    pr.add_argument("--fold", type=int, default=0)
    pr.add_argument("--folds-file", default="folds.csv", help="folds table in the crop set's folder (folds_n<N>.csv: "
                                                              "prepare --subsets)")
    pr.add_argument("--train", default="", help="options added to src/train.py")
    pr.add_argument("--oof", default=None, help="train every fold on image labels first (these options added) and "
                                                "retrain on their out-of-fold predictions")
    pr.add_argument("--oof-seed", type=int, default=None, help="--oof: train the out-of-fold teachers once with this "
                                                                   "seed for every seed (default: each seed its own)")
    pr.add_argument("--folds", type=int, default=5, help="folds in the folds table (--oof trains all but --fold)")
    pr.add_argument("--predict", default="", help="options added to src/predict.py")
    pr.add_argument("--variant", action="append", default=[], help="NAME=OPTIONS: another prediction of the same model")
    pr.add_argument("--threads", type=int, default=1)
    pr.add_argument("--workers", type=int, default=0)
    pt = sub.add_parser("table")
    pt.add_argument("--match", default="")
    pt.add_argument("--markdown", action="store_true")
    pt.add_argument("--only-variant", default=None, help="rows of this prediction variant only ('': the default)")
    pt.add_argument("--paired", default="", help="a prediction variant: the default's gain over it, seed by seed")
    pt.add_argument("--ceiling", default="", help="a configuration (true labels) to divide each mean by, same variant")
    ps = sub.add_parser("spread", help="the test-draw noise of a score: one submission on random subsets of the fields")
    ps.add_argument("submissions", nargs="+")
    ps.add_argument("--data", default="cg")
    ps.add_argument("--fields", type=int, default=60, help="fields per subset")
    ps.add_argument("--draws", type=int, default=20)
    ps.add_argument("--classes", type=int, default=19)
    ps.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    os.chdir(REPO)
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs", flush=True)
    {"prepare": prepare, "run": run, "table": table, "spread": spread}[a.cmd](a)


if __name__ == "__main__":
    main()

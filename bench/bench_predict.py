"""Prediction throughput (fields/s) relative to segmentation alone, per classifier runtime, in one run.

    PYTHONPATH=src python bench/bench_predict.py            # ~3-5 min on 2 CPU cores
    PYTHONPATH=src python bench/bench_predict.py --quick    # 512 px fields, a smoke check

Generated 4-channel fields are written as PNGs to a temporary folder. For each field size the
same fields go through

* segmentation alone: read the PNGs + the classical backend (what ``segment.py`` pays per field
  before writing anything), and
* ``run_predict``: read, segment, crop every cell, classify the crops, blend, encode every mask
  as RLE and append the submission row (what ``predict.py`` pays per field),

for each classifier setting: EfficientNet-B2 at 260 px (the paper recipe) with 1 and 4 TTA
views, and B0 at 64 px (a CPU-sized model). Weights are random, with batch-norm
statistics measured on random inputs so activations have a trained net's scale; the run folder
is written the way ``train.py`` writes it (best.pt + recipe.json), so ``load_predictor`` reads it like a
real one. The
ratio predict/segment says what the classifier adds: near 1 means segmentation dominates.

Each setting runs with the classifier on PyTorch and on OpenVINO (``--runtime openvino``, fp32,
the ``fast`` extra; graphs converted before the timing): the last columns give the speed-up
and the largest difference of any cell's class probability from PyTorch's.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import tempfile
import time
from pathlib import Path

import cellloc  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch loads OpenMP)
import numpy as np
import pandas as pd
import torch

from cellloc.classifier import RECIPE_FILE, Recipe
from cellloc.fieldio import list_fields, read_field, write_json
from cellloc.generators import write_dataset
from cellloc.models import calibrate, create_model
from cellloc.runs.predict import PredictConfig, load_predictor, run_predict
from cellloc.runs.segment import SegmentRunConfig
from cellloc.runtime import threads_for
from cellloc.segmentation import create_segmenter
from cellloc.synth import SynthConfig


def make_net(model: str, image_size: int, calibrate_on_random: bool) -> torch.nn.Module:
    """A random net; with ``calibrate_on_random`` its batch-norm statistics come from random batches
    and its logits spread like a trained net's (std ~3: probabilities away from 0.5, where a
    precision loss would show)."""
    torch.manual_seed(0)
    net = create_model(model, 4, 19, "none", image_size=image_size)
    if calibrate_on_random:
        calibrate(net, [torch.randn(16, 4, image_size, image_size) for _ in range(4)], head=net._fc)
    return net.eval()


def write_run(root: Path, model: str, image_size: int, crop_size: int) -> Path:
    """A one-fold run folder with random weights, laid out as ``train.py`` writes it."""
    run = root / f"{model}-{image_size}"
    fold = run / "fold0"
    fold.mkdir(parents=True)
    net = make_net(model, image_size, calibrate_on_random=True)
    torch.save(net.state_dict(), fold / "best.pt")
    seg = SegmentRunConfig(crop_size=crop_size)
    recipe_input = {"kind": "cell_crop", "crop_size": crop_size, "crop_mask": seg.crop_mask,
                    "segment": dataclasses.asdict(seg.segment_config())}
    recipe = Recipe("hpa-sc", "cell", model, 4, 19, image_size, [0.1] * 4, [0.2] * 4, "multilabel", recipe_input)
    write_json(fold / RECIPE_FILE, recipe.to_dict())
    return run


def time_segmentation(folder: Path, ids: list[str]) -> float:
    """Seconds to read and segment every field (the segmenter built once, outside the timing)."""
    seg = create_segmenter(SegmentRunConfig().segment_config())
    t0 = time.perf_counter()
    for i in ids:
        seg.segment(read_field(folder, i))
    return time.perf_counter() - t0


def time_predict(folder: Path, run: Path, out: Path, tta: int, runtime: str,
                 crop_size: int) -> tuple[float, int, pd.DataFrame, float, np.ndarray]:
    """(seconds, cells, every cell's scores, classifier-alone seconds, classifier-alone probabilities)
    of a full ``run_predict`` over the folder (models loaded, and converted for openvino, outside
    the timing), then of the classifier alone (``predict_samples``: resize, normalise, forward
    passes with TTA) on as many fixed random crops as the run found cells."""
    cfg = PredictConfig(input=str(folder), models=str(run), out=str(out), tta=tta, runtime=runtime)
    predictor = load_predictor(cfg)
    t0 = time.perf_counter()
    res = run_predict(cfg, predictor)
    seconds = time.perf_counter() - t0
    scores = pd.concat([pd.read_csv(p) for p in sorted((out / "cell_scores").glob("*.csv"))])
    crops = list(np.random.default_rng(3).integers(0, 256, (max(1, res.cells), crop_size, crop_size, 4), dtype=np.uint8))
    predictor.model.predict(crops[:2], tta=tta)  # first pass at this batch shape
    t0 = time.perf_counter()
    probs = predictor.model.predict(crops, tta=tta)
    return seconds, res.cells, scores, time.perf_counter() - t0, probs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="512 px fields, one classifier setting")
    ap.add_argument("--fields", type=int, default=3, help="fields per size")
    a = ap.parse_args()
    sizes = [512] if a.quick else [1024, 2048]
    settings = [("efficientnet-b0", 64, 64, 1)] if a.quick else [
        ("efficientnet-b2", 260, 128, 1), ("efficientnet-b2", 260, 128, 4), ("efficientnet-b0", 64, 64, 1)]
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, threads "
          f"{threads_for(1)} (cellloc's rule; --threads / $CELLLOC_THREADS / $OMP_NUM_THREADS set it), "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; load average at start {os.getloadavg()[0]:.2f}\n")
    print("| field | classifier (crop -> input px, TTA views) | runtime | cells/field | segment fields/s | predict fields/s | "
          "predict / segment time | x faster than torch | max prob diff vs torch | classifier alone s/field | "
          "classifier alone x faster than torch | its max prob diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        runs = {}
        for s in settings:  # one run folder per model and size; TTA is a predict option
            if (s[0], s[1], s[2]) not in runs:
                runs[s[0], s[1], s[2]] = write_run(root / "runs", s[0], s[1], s[2])
        for size in sizes:
            data = root / f"data{size}"
            write_dataset(SynthConfig(size=size, seed=11), data, a.fields, split="test")
            folder = data / "test"
            ids = list_fields(folder, ("red", "green", "blue", "yellow")).ids
            t_seg = time_segmentation(folder, ids)
            for s in settings:
                results = {rt: time_predict(folder, runs[s[0], s[1], s[2]], root / f"out{size}_{s[0]}_{s[1]}_{s[3]}_{rt}", s[3], rt,
                                            s[2]) for rt in ("torch", "openvino")}
                t_torch, _, ref, c_torch, p_torch = results["torch"]
                p_cols = [c for c in ref.columns if c[:1] == "p" and c[1:].isdigit()]
                for rt, (t_pred, cells, scores, t_cls, probs) in results.items():
                    diff = float(np.abs(scores[p_cols].to_numpy() - ref[p_cols].to_numpy()).max()) if len(ref) else 0.0
                    print(f"| {size}^2 | {s[0]}, {s[2]} -> {s[1]} px, x{s[3]} | {rt} | {cells / len(ids):.1f} | "
                          f"{len(ids) / t_seg:.2f} | {len(ids) / t_pred:.2f} | {t_pred / t_seg:.2f}x | {t_torch / t_pred:.2f} | "
                          f"{diff:.1e} | {t_cls / len(ids):.3f} | {c_torch / t_cls:.2f} | {np.abs(probs - p_torch).max():.1e} |",
                          flush=True)
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

"""HPA-2018 training speed: images/s against batch size and backbone (B0/B2/B4), and the field cache's gain.

    PYTHONPATH=src python bench/bench_hpa2018.py            # ~10 min on 2 quiet CPU cores
    PYTHONPATH=src python bench/bench_hpa2018.py --quick    # smaller: a smoke check of the bench itself

Every number comes from this one run, printed as markdown tables with the load average; read
ratios, not absolute rates, on a shared machine.

* backbones (the 2018 pipeline's speed study): training steps (forward, BCE, backward, AdamW) of a
  4-channel EfficientNet with 28 outputs at ``--image-size``, for batch sizes and B0/B2/B4, after a
  warm-up step; on CPU, and on CUDA (fp16 AMP + channels_last) when there is one;
* field cache, data only: one pass of the training Dataset (read the four 512 px PNGs, resize,
  random crop, flips, gain, normalise) over generated HPA-2018 images, without the cache and
  with it (after its one-time preload, which is timed on its own);
* field cache, whole epochs: ``train_fold`` (Tez loop, B0 from scratch at 128 px) for 3 epochs
  with ``--cache-mb 0`` and with the cache, with 0 and 2 loader workers; the seconds of epochs 2-3
  from each run's ``metrics.csv`` and the run's total (the cache run includes its preload).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import step_rate  # noqa: E402

from cellloc.data import EpochSampler, FieldFiles, FieldInput, SampleDataset, build_augment  # noqa: E402
from cellloc.field_cache import CachedFields, FieldCache  # noqa: E402
from cellloc.fieldio import format_label, write_csv  # noqa: E402
from cellloc.runs.train import TrainConfig, train_fold  # noqa: E402
from cellloc.synth_hpa2018 import Hpa2018Config, image_records, write_dataset  # noqa: E402

BACKBONES = ("efficientnet-b0", "efficientnet-b2", "efficientnet-b4")


def backbone_table(image_size: int, batches: list[int], steps: int, device: str, amp: bool) -> pd.DataFrame:
    rows = []
    for model in BACKBONES:
        for batch in batches:
            rate = step_rate(image_size, batch, steps, device, amp=amp, channels_last=amp, model=model, num_classes=28)
            rows.append({"backbone": model.split("-")[1].upper(), "batch": batch, "images_per_s": rate})
    df = pd.DataFrame(rows)
    base = df[(df["backbone"] == "B0")].set_index("batch")["images_per_s"]
    df["vs_B0_same_batch"] = [r.images_per_s / base[r.batch] for r in df.itertuples()]
    return df


def write_data(root: Path, n: int) -> tuple[Path, Path]:
    """``n`` generated 512 px HPA-2018 training images and a two-fold samples table (ID, Label, fold)."""
    cfg = Hpa2018Config(size=512, seed=5)
    write_dataset(root, cfg, n, "train", workers=2)
    records = sorted(image_records(cfg, "train", n), key=lambda r: r.image_id)
    table = pd.DataFrame({"ID": [r.image_id for r in records], "Label": [format_label(r.classes) for r in records],
                          "fold": [i % 2 for i in range(n)]})
    write_csv(root / "folds.csv", table)
    return root / "train", root / "folds.csv"


def data_pass(train_dir: Path, folds: Path, image_size: int) -> dict[str, float]:
    """Seconds of one Dataset pass over the fold-0 training fields: without cache, preload, with cache."""
    ids = pd.read_csv(folds).query("fold != 0")["ID"].tolist()
    files = FieldFiles("flat", train_dir, ids, ("red", "green", "blue", "yellow"))
    view = FieldInput(image_size, (0.1,) * 4, (0.2,) * 4, resize=image_size)
    keys = list(EpochSampler(len(ids), seed=0))

    def one_pass(reader) -> float:
        ds = SampleDataset(reader, None, view, build_augment(0.1))
        t = time.perf_counter()
        for key in keys:
            ds[key]
        return time.perf_counter() - t

    plain = min(one_pass(files) for _ in range(2))
    cached = CachedFields(files, image_size, FieldCache(1 << 30))
    t = time.perf_counter()
    cached.preload(threads=2)
    preload = time.perf_counter() - t
    return {"fields": len(ids), "no_cache_s": plain, "preload_s": preload, "cached_s": min(one_pass(cached) for _ in range(2))}


def epoch_runs(root: Path, train_dir: Path, folds: Path, image_size: int) -> pd.DataFrame:
    rows = []
    for workers in (0, 2):
        for cache_mb in (0, 512):
            cfg = TrainConfig(task="hpa-2018", folds_csv=str(folds), input=str(train_dir), out_dir=str(root / "runs"),
                              run_name=f"w{workers}_c{cache_mb}", fold=0, epochs=3, model="efficientnet-b0",
                              pretrained="none", image_size=image_size, batch_size=16, num_workers=workers,
                              device="cpu", cache_mb=cache_mb, stats_samples=16, patience=3)
            t = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                train_fold(cfg)
            total = time.perf_counter() - t
            m = pd.read_csv(cfg.run_dir / "metrics.csv")
            rows.append({"workers": workers, "cache": "on" if cache_mb else "off", "epoch1_s": m["epoch_seconds"].iloc[0],
                         "epochs2_3_s": m["epoch_seconds"].iloc[1:].mean(), "run_s": total})
    return pd.DataFrame(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer batch sizes, steps and images")
    ap.add_argument("--image-size", type=int, default=256, help="network input for the backbone table")
    args = ap.parse_args()
    torch.manual_seed(0)
    batches = [4, 8] if args.quick else [4, 8, 16]
    steps = 1 if args.quick else 3
    n_images = 32 if args.quick else 96
    cuda = torch.cuda.is_available()
    t_all = time.perf_counter()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, CUDA {'yes: ' + torch.cuda.get_device_name(0) if cuda else 'no'}; "
          f"load average at start {os.getloadavg()[0]:.2f}")

    print(f"\n### Training images/s by backbone and batch size (CPU fp32, {args.image_size} px, 4 channels, 28 classes)\n")
    df = backbone_table(args.image_size, batches, steps, "cpu", amp=False)
    print("| backbone | batch | images/s | vs B0, same batch |")
    print("|---|---|---|---|")
    for r in df.itertuples():
        print(f"| {r.backbone} | {r.batch} | {r.images_per_s:.2f} | {r.vs_B0_same_batch:.2f}x |")
    if cuda:
        print(f"\n### The same on CUDA (fp16 AMP + channels_last, {args.image_size} px)\n")
        gpu = backbone_table(args.image_size, [16, 32, 64], 10, "cuda", amp=True)
        print("| backbone | batch | images/s | vs B0, same batch |")
        print("|---|---|---|---|")
        for r in gpu.itertuples():
            print(f"| {r.backbone} | {r.batch} | {r.images_per_s:.0f} | {r.vs_B0_same_batch:.2f}x |")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        train_dir, folds = write_data(root, n_images)
        print(f"\n(generated {n_images} HPA-2018 images of 512 px in {time.perf_counter() - t:.0f} s)")

        print("\n### Field cache, data only: one training-Dataset pass over 512 px fields, resized to 128 px\n")
        d = data_pass(train_dir, folds, 128)
        print("| what | seconds | ms per field | vs no cache |")
        print("|---|---|---|---|")
        for name, key in (("no cache (decode + resize every time)", "no_cache_s"), ("preload, once (2 threads)", "preload_s"),
                          ("with the cache", "cached_s")):
            print(f"| {name} | {d[key]:.2f} | {1000 * d[key] / d['fields']:.1f} | {d['no_cache_s'] / d[key]:.1f}x |")

        print("\n### Field cache, whole epochs: train_fold, B0 from scratch, 128 px, batch 16, 3 epochs\n")
        runs = epoch_runs(root, train_dir, folds, 128)
        print("| loader workers | cache | epoch 1 s | epochs 2-3 s (mean) | run s (incl. preload) | epochs 2-3 gain |")
        print("|---|---|---|---|---|---|")
        for r in runs.itertuples():
            off = runs[(runs["workers"] == r.workers) & (runs["cache"] == "off")]["epochs2_3_s"].iloc[0]
            print(f"| {r.workers} | {r.cache} | {r.epoch1_s:.1f} | {r.epochs2_3_s:.1f} | {r.run_s:.1f} | "
                  f"{off / r.epochs2_3_s:.2f}x |")
    print(f"\nbench wall time {time.perf_counter() - t_all:.0f} s; load average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

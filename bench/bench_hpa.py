"""Benchmark the hpa segmentation backend against the reference loop, per field, as ratios within one run.

    PYTHONPATH=src python bench/bench_hpa.py [--sizes 1728,2048,3072] [--repeats 2] [--threads N]
    PYTHONPATH=src python bench/bench_hpa.py --steps [--size 2048] [--fields 2]   # where one field's time goes
    PYTHONPATH=src python bench/bench_hpa.py --precision [--size 2048]            # does bf16 keep the masks?
    PYTHONPATH=src python bench/bench_hpa.py --layers [--size 1024]               # one network's forward, stage by stage

Weights of the published layout are written to a temporary folder (``shortcut_state_dict``:
random deep path, so forward passes cost what the real networks cost, rewired so that cells are
found and post-processing has work), and generated 4-channel fields at each size.

Default: per field (decoded image in, labels out) at every size, for

* the reference loop: hpacellseg's per-field procedure rebuilt from its documented behaviour
  (``shared/reference/hpa_unet/FACTS.md``): each network's 3-plane stack rescaled with
  scikit-image (the nuclei network's three copies of one plane included), one field at a time,
  PyTorch fp32 with the networks as published (decoder upsampling unfolded), maps enlarged to
  full size and labelled there; padded only when the size needs it;
* the hpa backend on PyTorch (what ``--backend hpa`` did before ``--runtime``, plus the shared
  rescale), and on OpenVINO (``--runtime openvino``, fp32);
* the classical backend.

Paths alternate within each repeat (every path on every size in turn), so load from other
processes hits all of them alike; times are means over ``--repeats`` fields per size, after one
untimed field per path and size (PyTorch's first pass sets up kernels; OpenVINO converts the
graph once per weights and size, then compiles it). Peak RSS is measured in a fresh process per
path and size that loads the path and segments one field (``VmHWM``). Nothing is downloaded.

``--precision`` checks OpenVINO's bf16 (4-5x faster again on CPUs with AMX) against PyTorch
fp32 on a random DPN-U-Net whose batch-norm statistics come from the fields themselves (every
layer carries signal; the bench's usual weights route around the deep path, which would hide
any precision loss): raw logits, probabilities, and per-cell IoU of the labels.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import cellloc  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch loads OpenMP)
import numpy as np
import torch
from skimage import transform

from cellloc.fieldio import read_field, write_png
from cellloc.models import calibrate
from cellloc.runtime import OpenVINORunner, export_openvino
from cellloc.segmentation import create_segmenter
from cellloc.segmentation.base import SegmentConfig
from cellloc.segmentation.dpn_unet import DPNUnet, shortcut_state_dict
from cellloc.segmentation.hpa import HPASegmenter, network_input, pad_amounts
from cellloc.segmentation.weights import CELL_MODELS, NUCLEI_MODEL

CHANNELS = ("red", "green", "blue", "yellow")
Segment = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def synthetic_field(rng: np.random.Generator, size: int) -> np.ndarray:
    """uint8 size x size x 4 (red, green, blue, yellow): ~25 cells at HPA scale (0.08 um/px at
    2048) with noise, so PNGs compress and decode like microscopy rather than flat fills."""
    img = rng.normal(12, 4, (size, size, 4)).clip(0, 255)
    yy, xx = np.ogrid[:size, :size]
    step = size // 5
    for gy in range(5):
        for gx in range(5):
            y = gy * step + step // 2 + rng.integers(-step // 8, step // 8)
            x = gx * step + step // 2 + rng.integers(-step // 8, step // 8)
            d2 = (yy - y) ** 2 + (xx - x) ** 2
            r_cell, r_nuc = step * rng.uniform(0.30, 0.42), step * rng.uniform(0.12, 0.18)
            img[..., 0][d2 <= r_cell**2] += 170
            img[..., 1][d2 <= r_cell**2] += rng.uniform(20, 120)
            img[..., 3][d2 <= r_cell**2] += 110
            img[..., 2][d2 <= r_nuc**2] += 200
    img += rng.normal(0, 6, img.shape)
    return img.clip(0, 255).astype(np.uint8)


def best_of(repeats: int, fn: Callable[[], object]) -> tuple[float, object]:
    """(fastest wall time in seconds, last result) over ``repeats`` calls."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def write_weights(folder: Path) -> Path:
    """The bench's weight files: one shortcut file that every role links to."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(shortcut_state_dict(), folder / NUCLEI_MODEL)
    for name in CELL_MODELS.values():
        (folder / name).symlink_to(NUCLEI_MODEL)
    return folder


def per_cell_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each label of ``a``, its IoU with the label of ``b`` it overlaps most (0 if none), both ways."""
    out = []
    for x, y in ((a, b), (b, a)):
        for i in range(1, int(x.max()) + 1):
            m = x == i
            if m.any():
                j = np.bincount(y[m]).argmax()
                out.append((m & (y == j)).sum() / (m | (y == j)).sum() if j else 0.0)
    return np.asarray(out)


# --------------------------------------------------------------------------- the compared paths


class ReferenceLoop:
    """hpacellseg's ``pred_nuclei`` + ``pred_cells`` + ``label_cell`` for one field, on our networks.

    What it does per field that the hpa backend no longer does: rescale a 3-plane stack for each
    network with scikit-image (six planes, three of them copies of the nucleus plane), run the
    networks one field at a time, enlarge both maps to full size and label there.
    """

    def __init__(self, weights: str, scale: float, threads: int):
        cfg = SegmentConfig(backend="hpa", weights_dir=weights, scale_factor=scale, runtime="torch", threads=threads,
                            postprocess_at_network_scale=False)
        self.seg = HPASegmenter(cfg, fold=False)  # the published network structure

    def _input(self, planes: list[np.ndarray]) -> tuple[np.ndarray, tuple[int, int]]:
        stack = transform.rescale(np.dstack(planes), self.seg.cfg.scale_factor, channel_axis=-1)  # float64 [0, 1]
        return network_input([stack[..., c].astype(np.float32) for c in range(3)])[None], stack.shape[:2]

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        red, blue, yellow = image[..., 0], image[..., 2], image[..., 3]
        x, size = self._input([blue, blue, blue])
        nuc = self.seg._probabilities(self.seg.nuclei_net, x, size)[0]
        x, size = self._input([red, yellow, blue])
        cell = self.seg._probabilities(self.seg.cell_net, x, size)[0]
        return self.seg.labels_from_maps(nuc, cell, image.shape)


def build_path(name: str, weights: str, scale: float, threads: int) -> Segment:
    """One compared path as ``segment(image) -> (cells, nuclei)``."""
    hpa = SegmentConfig(backend="hpa", weights_dir=weights, scale_factor=scale, threads=threads)
    if name == "reference loop":
        return ReferenceLoop(weights, scale, threads)
    if name == "hpa, torch":
        return HPASegmenter(replace(hpa, runtime="torch")).segment
    if name == "hpa, openvino":
        return HPASegmenter(replace(hpa, runtime="openvino")).segment
    if name == "classical":
        return create_segmenter(SegmentConfig()).segment
    raise ValueError(name)


PATHS = ("reference loop", "hpa, torch", "hpa, openvino", "classical")


def peak_rss_child(name: str, weights: str, folder: str, image_id: str, scale: str, threads: str) -> None:
    """Child process: build one path, segment one field from its PNGs, print peak RSS in GB."""
    torch.set_num_threads(int(threads))
    build_path(name, weights, float(scale), int(threads))(read_field(folder, image_id, CHANNELS))
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent through fork and exec.
    status = {line.split(":")[0]: int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(("VmHWM", "RssFile"))}
    print(status["VmHWM"] / 1024**2, status["RssFile"] / 1024**2)


def peak_rss(name: str, weights: Path, folder: Path, image_id: str, scale: float, threads: int) -> tuple[float, float]:
    """(peak RSS, file-backed RSS at the end) in GB of a fresh process running one path on one field."""
    out = subprocess.run(
        [sys.executable, __file__, "--peak-rss", name, str(weights), str(folder), image_id, str(scale), str(threads)],
        check=True, capture_output=True, text=True,
    ).stdout.split()
    return float(out[-2]), float(out[-1])


def compare(args: argparse.Namespace) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench_hpa_") as tmp:
        tmp = Path(tmp)
        weights = write_weights(tmp / "weights")
        fields_dir = tmp / "fields"
        images = {size: [synthetic_field(rng, size) for _ in range(args.repeats)] for size in sizes}
        for size in sizes:  # one field per size as PNGs, for the peak-RSS children
            for c, ch in enumerate(CHANNELS):
                write_png(fields_dir / f"f{size}_{ch}.png", images[size][0][..., c], compression=3)
        load_before = os.getloadavg()
        paths: dict[str, Segment] = {}
        t_load: dict[str, float] = {}
        for name in PATHS:
            t_load[name], paths[name] = best_of(1, lambda: build_path(name, str(weights), args.scale, args.threads))
        # One untimed field per path and size: first-pass setup, and OpenVINO's one-off conversion.
        t_first: dict[tuple[str, int], float] = {}
        for size in sizes:
            for name in PATHS:
                t_first[name, size], _ = best_of(1, lambda: paths[name](images[size][0]))
        times: dict[tuple[str, int], list[float]] = {(n, s): [] for n in PATHS for s in sizes}
        labels: dict[tuple[str, int], list] = {(n, s): [] for n in PATHS for s in sizes}
        for r in range(args.repeats):
            for size in sizes:
                for name in PATHS:
                    t, out = best_of(1, lambda: paths[name](images[size][r]))
                    times[name, size].append(t)
                    labels[name, size].append(out)
        load_after = os.getloadavg()
        del paths
        rss = {(n, s): peak_rss(n, weights, fields_dir, f"f{s}", args.scale, args.threads) for s in sizes for n in PATHS}

    mean = {k: float(np.mean(v)) for k, v in times.items()}
    print(f"hpa backend against the reference loop: generated fields, scale {args.scale}, torch {torch.__version__}, "
          f"{args.threads} thread(s), {platform.machine()}, {os.cpu_count()} CPUs, {args.repeats} field(s) per size; "
          f"load average {load_before[0]:.1f} before / {load_after[0]:.1f} after")
    print()
    print("| field | path | s per field | x faster than the reference loop | peak RSS (GB) | of it file-backed (GB) | first field (s) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for size in sizes:
        ref = mean["reference loop", size]
        for name in PATHS:
            print(f"| {size}^2 | {name} | {mean[name, size]:.2f} | {ref / mean[name, size]:.2f} | "
                  f"{rss[name, size][0]:.2f} | {rss[name, size][1]:.2f} | {t_first[name, size]:.1f} |")
    print()
    print("- first field: the untimed one; for openvino it includes converting both graphs for that size "
          "(once per weights and size, cached beside the weights) and compiling them.")
    print("- file-backed: RssFile at the end of that process, pages of mapped files (OpenVINO maps each graph file, "
          "0.61 GB per network when resident, beside its own packed copy of the weights); the kernel can drop them.")
    print(f"- loading: {', '.join(f'{n} {t:.1f} s' for n, t in t_load.items())}.")
    for size in sizes:
        same = [np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
                for a, b in zip(labels["hpa, torch", size], labels["hpa, openvino", size])]
        ious = np.concatenate([per_cell_iou(a[0], b[0]) for a, b in zip(labels["hpa, torch", size], labels["hpa, openvino", size])])
        ref_ious = np.concatenate([per_cell_iou(a[0], b[0]) for a, b in zip(labels["reference loop", size], labels["hpa, torch", size])])
        cells = [int(c.max()) for c, _ in labels["hpa, torch", size]]
        print(f"- {size}^2: cells per field {cells}; openvino vs torch masks identical in {sum(same)}/{len(same)} fields "
              f"(per-cell IoU min {ious.min():.4f}); reference loop vs hpa backend per-cell IoU median "
              f"{np.median(ref_ious):.3f} (full-size vs network-scale post-processing).")


# --------------------------------------------------------------------------- one field's steps


def steps(args: argparse.Namespace) -> None:
    """Where one field's time goes on one runtime: decode, preprocess, networks (single vs batched),
    post-processing at network scale vs full resolution."""
    rng = np.random.default_rng(0)
    n = args.fields
    with tempfile.TemporaryDirectory(prefix="bench_hpa_") as tmp:
        tmp = Path(tmp)
        weights = write_weights(tmp / "weights")
        fields_dir = tmp / "fields"
        ids = [f"field{i}" for i in range(n)]
        for i in ids:
            img = synthetic_field(rng, args.size)
            for c, ch in enumerate(CHANNELS):
                write_png(fields_dir / f"{i}_{ch}.png", img[..., c], compression=3)
        cfg = SegmentConfig(backend="hpa", weights_dir=str(weights), scale_factor=args.scale, batch_size=1,
                            runtime=args.runtime, threads=args.threads)
        single = HPASegmenter(cfg)
        other = HPASegmenter(replace(cfg, batch_size=n, postprocess_at_network_scale=False))
        load_before = os.getloadavg()[0]
        t_decode, images = best_of(3, lambda: [read_field(fields_dir, i, CHANNELS) for i in ids])
        t_prep, _ = best_of(3, lambda: [single.network_inputs(im) for im in images])
        single.predict(images[:1])
        other.predict(images)  # warm-up: first passes at a new size (and batch size) set up kernels
        t_one = t_batch = float("inf")
        for _ in range(args.repeats):
            t, maps = best_of(1, lambda: single.predict(images))
            t_one = min(t_one, t)
            t, maps_b = best_of(1, lambda: other.predict(images))
            t_batch = min(t_batch, t)
        diff = max(float(np.abs(a - b).max()) for pair, pair_b in zip(maps, maps_b) for a, b in zip(pair, pair_b))
        t_post_net, labels = best_of(3, lambda: [single.labels_from_maps(nm, cm, im.shape) for (nm, cm), im in zip(maps, images)])
        t_post_full, labels_full = best_of(
            args.repeats, lambda: [other.labels_from_maps(nm, cm, im.shape) for (nm, cm), im in zip(maps, images)]
        )
        t_whole, _ = best_of(1, lambda: single.segment(read_field(fields_dir, ids[0], CHANNELS)))
        load_after = os.getloadavg()[0]

    ious = np.concatenate([per_cell_iou(a, b) for (a, _), (b, _) in zip(labels, labels_full)])
    net_side = round(args.size * args.scale)
    per = 1.0 / n
    rows = [
        ("decode the field's 4 PNGs (read_field)", t_decode * per, None),
        ("preprocess: rescale 3 planes, normalise", t_prep * per, None),
        ("networks, one field at a time (nuclei + cell)", t_one * per, None),
        (f"networks, {n} fields in one batch", t_batch * per, t_batch / t_one),
        ("post-process at network scale (default)", t_post_net * per, None),
        ("post-process at full resolution (reference)", t_post_full * per, t_post_full / t_post_net),
        ("whole field: decode + segment (default settings)", t_whole, None),
    ]
    print(f"hpa backend steps, runtime {args.runtime}, {n} generated {args.size}^2 fields, scale {args.scale} -> "
          f"{net_side}^2 network input, torch {torch.__version__}, {args.threads} thread(s), {platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {load_before:.1f} before / {load_after:.1f} after")
    print()
    print("| step | s per field | x decode | ratio |")
    print("|---|---:|---:|---:|")
    for name, sec, ratio in rows:
        print(f"| {name} | {sec:.3f} | {sec / (t_decode * per):.1f} | {'' if ratio is None else f'{ratio:.2f}'} |")
    print()
    print("- ratio column: batched / one-at-a-time network time; full-resolution / network-scale post-processing.")
    print(f"- batched and single maps differ by at most {diff:.1e} (probability).")
    print(f"- per-cell IoU between the two post-processing paths: median {np.median(ious):.3f}, min {np.min(ious):.3f}.")


# --------------------------------------------------------------------------- bf16


def calibrated_dpn(seed: int, batches: list[np.ndarray]) -> DPNUnet:
    """A random DPN-U-Net with batch-norm statistics measured on ``batches`` and its head scaled so
    logits spread like a trained net's (std ~4): every layer matters to the output."""
    torch.manual_seed(seed)
    net = DPNUnet()
    return calibrate(net, [torch.from_numpy(x) for x in batches], head=net.final[0], logit_std=4)


def precision(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(5)
    with tempfile.TemporaryDirectory(prefix="bench_hpa_") as tmp:
        tmp = Path(tmp)
        seg = HPASegmenter(SegmentConfig(backend="hpa", weights_dir=str(write_weights(tmp / "weights")), scale_factor=args.scale))
        calib = [seg.network_inputs(synthetic_field(rng, args.size // 2)) for _ in range(2)]
        image = synthetic_field(rng, args.size)
        nuc_in, cell_in, size = seg.network_inputs(image)
        top, _, left, _ = pad_amounts(*size)
        maps: dict[str, list[np.ndarray]] = {"torch f32": [], "openvino f32": [], "openvino bf16": []}
        logits: dict[str, list[np.ndarray]] = {k: [] for k in maps}
        times: dict[str, float] = {k: 0.0 for k in maps}
        for role, (k, x) in enumerate((("nuclei", nuc_in), ("cell", cell_in))):
            net = calibrated_dpn(role, [c[role][None] for c in calib])
            graph = export_openvino(net, x.shape, tmp / f"{k}.xml")
            runners = {
                "torch f32": lambda b, net=net: net(torch.from_numpy(b)).numpy(),
                "openvino f32": OpenVINORunner(graph, args.threads, "f32"),
                "openvino bf16": OpenVINORunner(graph, args.threads, "bf16"),
            }
            for name, run in runners.items():
                with torch.inference_mode():
                    run(x[None])
                    t, y = best_of(1, lambda: run(x[None]))
                times[name] += t
                logits[name].append(y)
                p = torch.softmax(torch.from_numpy(y), 1)[0, :, top : top + size[0], left : left + size[1]].permute(1, 2, 0).numpy().copy()
                p[..., 0] = 0
                maps[name].append(p)
        ref = seg.labels_from_maps(*maps["torch f32"], image.shape)
        print(f"bf16 check: one generated {args.size}^2 field, batch-norm-calibrated random DPN-U-Nets, "
              f"{args.threads} thread(s), load average {os.getloadavg()[0]:.1f}")
        print()
        print("| runtime | networks (s) | x torch | max logit diff | max prob diff | cells | per-cell IoU mean | min | share >= 0.99 |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name in maps:
            lab = seg.labels_from_maps(*maps[name], image.shape)
            iou = np.concatenate([per_cell_iou(ref[0], lab[0]), per_cell_iou(ref[1], lab[1])])
            dl = max(float(np.abs(a - b).max()) for a, b in zip(logits[name], logits["torch f32"]))
            dp = max(float(np.abs(a - b).max()) for a, b in zip(maps[name], maps["torch f32"]))
            print(f"| {name} | {times[name]:.2f} | {times['torch f32'] / times[name]:.2f} | {dl:.1e} | {dp:.1e} | "
                  f"{int(lab[0].max())} | {iou.mean():.4f} | {iou.min():.4f} | {(iou >= 0.99).mean():.3f} |")


# --------------------------------------------------------------------------- stage by stage


def _stage_modules(net: DPNUnet) -> list[tuple[str, torch.nn.Module]]:
    return ([(f"encoder {i}", m) for i, m in enumerate(net.encoder_stages)]
            + [(f"decoder upsampling {i}", m) for i, m in reversed(list(enumerate(net.decoder_stages)))]
            + [(f"decoder fuse {i}", m) for i, m in enumerate(net.bottlenecks)]
            + [("last upsampling", net.last_upsample), ("head", net.final)])


def conv_macs(net: DPNUnet, side: int) -> dict[str, float]:
    """Multiply-adds (G) of every stage of ``net`` for one (1, 3, side, side) input, by forward hooks."""
    macs: dict[str, float] = {}
    hooks = []
    for name, stage in _stage_modules(net):
        for m in stage.modules():
            if isinstance(m, torch.nn.Conv2d):
                hooks.append(m.register_forward_hook(
                    lambda m, i, o, name=name: macs.__setitem__(name, macs.get(name, 0.0) + o.numel() * m.in_channels // m.groups
                                                                * m.kernel_size[0] * m.kernel_size[1] / 1e9)))
    with torch.inference_mode():
        net(torch.zeros(1, 3, side, side))
    for h in hooks:
        h.remove()
    return macs


def layers(args: argparse.Namespace) -> None:
    """One DPN-U-Net forward, per stage (PyTorch, forward hooks), published structure against the
    folded decoder, and whole-network times on both runtimes, interleaved; then the multiply-adds."""
    side = round(args.size * args.scale / 32) * 32
    torch.manual_seed(0)
    plain = DPNUnet().eval()
    folded = DPNUnet().eval()
    folded.load_state_dict(plain.state_dict())
    folded.fold_upsampling()
    x = torch.randn(1, 3, side, side)
    stage_t: dict[tuple[str, str], list[float]] = {}
    for tag, net in (("published", plain), ("folded", folded)):
        for name, m in _stage_modules(net):
            m.register_forward_pre_hook(lambda m, i, key=(tag, name): stage_t.setdefault(key, []).append(-time.perf_counter()))
            m.register_forward_hook(lambda m, i, o, key=(tag, name): stage_t[key].__setitem__(-1, stage_t[key][-1] + time.perf_counter()))
    with tempfile.TemporaryDirectory(prefix="bench_hpa_") as tmp:
        graphs = {tag: OpenVINORunner(export_openvino(net, (3, side, side), Path(tmp) / f"{tag}.xml"), args.threads)
                  for tag, net in (("published", plain), ("folded", folded))}
        xn = x.numpy()
        runs = {"torch, published": lambda: plain(x), "torch, folded": lambda: folded(x),
                "openvino, published": lambda: graphs["published"](xn), "openvino, folded": lambda: graphs["folded"](xn)}
        load_before = os.getloadavg()[0]
        with torch.inference_mode():
            outs = {k: np.asarray(f()) for k, f in runs.items()}  # warm-up, and the outputs compared below
            for v in stage_t.values():
                v.clear()
            totals: dict[str, list[float]] = {k: [] for k in runs}
            for _ in range(args.repeats):
                for k, f in runs.items():
                    t, _ = best_of(1, f)
                    totals[k].append(t)
    macs = {tag: conv_macs(net, side) for tag, net in (("published", plain), ("folded", folded))}
    print(f"DPN-U-Net forward on one (1, 3, {side}, {side}) input (a {args.size}^2 field at scale {args.scale}), random weights, "
          f"{args.threads} thread(s), fastest of {args.repeats}, interleaved; load average {load_before:.1f} before / "
          f"{os.getloadavg()[0]:.1f} after")
    print()
    print("| stage | GMACs published | GMACs folded | torch published s | torch folded s | folded / published |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, _ in _stage_modules(plain):
        a, b = min(stage_t["published", name]), min(stage_t["folded", name])
        print(f"| {name} | {macs['published'].get(name, 0):.1f} | {macs['folded'].get(name, 0):.1f} | {a:.3f} | {b:.3f} | {b / a:.2f} |")
    print(f"| whole network | {sum(macs['published'].values()):.1f} | {sum(macs['folded'].values()):.1f} | | | |")
    print()
    ref = min(totals["torch, published"])
    print("| runtime, structure | s per forward | x torch published | max abs diff from torch published |")
    print("|---|---:|---:|---:|")
    for k, v in totals.items():
        print(f"| {k} | {min(v):.3f} | {ref / min(v):.2f} | {np.abs(outs[k] - outs['torch, published']).max():.1e} |")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--peak-rss"]:
        return peak_rss_child(*argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", action="store_true", help="break one size's time into steps instead")
    parser.add_argument("--precision", action="store_true", help="check OpenVINO bf16 against PyTorch fp32 instead")
    parser.add_argument("--layers", action="store_true", help="time one network's forward stage by stage instead")
    parser.add_argument("--sizes", default="1728,2048,3072", help="field sides compared (default run)")
    parser.add_argument("--size", type=int, default=2048, help="field side for --steps and --precision")
    parser.add_argument("--fields", type=int, default=2, help="fields for --steps, all in one batch for its batched row")
    parser.add_argument("--runtime", default="torch", choices=["torch", "openvino"], help="runtime for --steps")
    parser.add_argument("--scale", type=float, default=0.25, help="scale_factor (0.25: 2048 -> 512 network input)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="intra-op threads (torch and openvino)")
    parser.add_argument("--repeats", type=int, default=2, help="timed fields per size and path (default run); best-of runs (--steps)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.steps:
        steps(args)
    elif args.precision:
        precision(args)
    elif args.layers:
        layers(args)
    else:
        compare(args)


if __name__ == "__main__":
    sys.exit(main())

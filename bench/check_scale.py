"""Scored checks of segmenting with no pixel size given: every real set there is, generated fields
at other scales, and pure noise. Quality, not speed: the numbers do not depend on the machine.

    PYTHONPATH=src python bench/check_scale.py          # needs ../shared/data for the real sets (skipped if absent)
    PYTHONPATH=src python bench/check_scale.py --fields 4

1. Real nuclei (Cell Tracking Challenge GOWT1 and HeLa, ``../shared/data/nuclei_gt``): AP50 with
   no options against the published pixel sizes, as recorded, and at 0.5x and 2x.
2. Real HPA fields: the sample field (no truth: its pixel size and cell count) and the partial
   field 383_D2_1 (nucleus + protein channels only; 17 cells in a reviewed mask): cell AP50 with
   no options, with the estimate alone, and told 0.08 um/px.
3. Generated fields resized 0.25x-4x, the estimate alone (no snapping to the width rule): the
   estimate against the truth, cells found against the truth, cell AP50 at the original size.
4. Mosaics of 2x2 and 4x4 generated fields shrunk to fit one field (the width rule 2-4x off).
5. Pure noise fields (uint8, 16-bit Gaussian, low-count Poisson; 256-2048 px): cells found,
   with the contrast floor and without it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cellloc.fieldio import read_field, read_mask
from cellloc.metrics import segmentation_scores
from cellloc.runs.score_segmentation import find_items, score_items, summarise
from cellloc.segmentation import SegmentConfig, create_segmenter
from cellloc.segmentation.scale import segment_with_scale
from cellloc.synth import SynthConfig, generate_field
from cellloc.tasks import get_task

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
PUBLISHED_UM = {"gowt1*": 0.24, "hela*": 0.645}


def resized(image: np.ndarray, factor: float) -> np.ndarray:
    h, w = image.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)


def count(labels: np.ndarray) -> int:
    return len(np.unique(labels)) - 1


def real_nuclei() -> None:
    folder = SHARED / "nuclei_gt"
    print("### 1. Real nuclei, AP50 (nuclei)\n")
    if not folder.is_dir():
        print(f"skipped: {folder} not present\n")
        return
    print("| images | no options | pixel size found | published pixel size | told | no options, 0.5x | no options, 2x |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for pattern in ("*", "gowt1*", "hela*"):
        items = find_items(folder, get_task("hpa-sc"), pattern)
        table = score_items(items, SegmentConfig())
        told = [summarise(score_items(find_items(folder, get_task("hpa-sc"), p), SegmentConfig(pixel_size_um=um))).iloc[0]["AP50"]
                for p, um in PUBLISHED_UM.items() if pattern in ("*", p)]
        told_text = f"{told[0]:.3f}" if len(told) == 1 else "-"
        found = table.drop_duplicates("image")["pixel_size_um"]
        half, double = (summarise(score_items(items, SegmentConfig(), rescale=k)).iloc[0]["AP50"] for k in (0.5, 2))
        published = PUBLISHED_UM.get(pattern, "-")
        print(f"| {pattern} ({len(items)}) | {summarise(table).iloc[0]['AP50']:.3f} | {found.min():.3f}-{found.max():.3f} um/px | "
              f"{published} | {told_text} | {half:.3f} | {double:.3f} |")
    print()


def real_hpa() -> None:
    print("### 2. Real HPA fields\n")
    sample = REPO / "input" / "sample"
    image = read_field(sample, "57_F11_1")
    for cfg in (SegmentConfig(), SegmentConfig(snap_to_width=0)):
        cells, _, px = segment_with_scale(create_segmenter(cfg), cfg, image)
        print(f"- sample 57_F11_1, {'no options' if cfg.snap_to_width else 'estimate alone'}: {px.describe()}; {count(cells)} cells "
              "(about 12 visible, several cut by the border)")
    folder = SHARED / "hpa_field" / "partial_383_D2_1"
    if not folder.is_dir():
        print(f"- 383_D2_1 skipped: {folder} not present\n")
        return
    image = read_field(folder, "383_D2_1", ("green", "blue"))
    truth = read_mask(folder / "383_D2_1_cellmask.png")
    other = read_mask(folder / "383_D2_1_cellmask_pipeline_run.png")
    ref = segmentation_scores(truth, other, [0.5, 0.75])["ap"]
    print(f"- 383_D2_1 ({count(truth)} cells in the reviewed mask; the authors' second HPA-Cell-Segmentation run against it: "
          f"AP50 {ref[0]:.3f}, AP75 {ref[1]:.3f}):")
    base = dict(channels=("green", "blue"), nucleus_channel="blue", cell_channels=("green",))
    for label, kw in (("no options", {}), ("estimate alone", {"snap_to_width": 0}), ("told 0.08 um/px", {"pixel_size_um": 0.08})):
        cfg = SegmentConfig(**base, **kw)
        cells, _, px = segment_with_scale(create_segmenter(cfg), cfg, image)
        ap = segmentation_scores(truth, cells, [0.5, 0.75])["ap"]
        print(f"  - {label}: {px.describe()}; {count(cells)} cells, AP50 {ap[0]:.3f}, AP75 {ap[1]:.3f}")
    print()


def generated_rescaled(n_fields: int) -> None:
    print(f"### 3. Generated fields ({n_fields} of 512 px) resized, the estimate alone\n")
    print("| factor | field px | estimate / truth, median [min, max] | cells found - true, mean [min, max] | cell AP50 |")
    print("|---:|---:|---|---|---:|")
    cfg = SegmentConfig(snap_to_width=0)
    seg = create_segmenter(cfg)
    fields = [generate_field(SynthConfig(size=512, seed=21), i) for i in range(n_fields)]
    for factor in (0.25, 0.5, 1, 2, 4):
        ratio, diff, ap = [], [], []
        for f in fields:
            cells, _, px = segment_with_scale(seg, cfg, resized(f.image, factor))
            ratio.append(px.um / (163.84 / 512 / factor))
            diff.append(count(cells) - count(f.cell_labels))
            back = cv2.resize(cells, (512, 512), interpolation=cv2.INTER_NEAREST)
            ap.append(segmentation_scores(f.cell_labels, back, [0.5])["ap"][0])
        print(f"| {factor} | {round(512 * factor)} | {np.median(ratio):.2f} [{min(ratio):.2f}, {max(ratio):.2f}] | "
              f"{np.mean(diff):+.2f} [{min(diff):+d}, {max(diff):+d}] | {np.mean(ap):.3f} |")
    print()


def mosaics() -> None:
    print("### 4. Mosaics of generated fields (one image of 512 px)\n")
    print("| tiles | true cells | found, no options (pixel size) | found, width rule |")
    print("|---|---:|---|---:|")
    for k in (2, 4):
        fields = [generate_field(SynthConfig(size=512, seed=33), i) for i in range(k * k)]
        tiles = [resized(f.image, 1 / k) for f in fields]
        mosaic = np.vstack([np.hstack(tiles[r * k:(r + 1) * k]) for r in range(k)])
        truth = sum(count(f.cell_labels) for f in fields)
        cells, _, px = segment_with_scale(create_segmenter(SegmentConfig()), SegmentConfig(), mosaic)
        width, _ = create_segmenter(SegmentConfig(scale_from="width")).segment(mosaic)
        print(f"| {k}x{k} | {truth} | {count(cells)} ({px.um:.3g} um/px; truth {0.32 * k:.3g}) | {count(width)} |")
    print()


def noise() -> None:
    print("### 5. Pure noise fields: cells found\n")
    rng = np.random.default_rng(0)
    floor_off = {"classical": {"nucleus_min_contrast": 0}}
    print("| field | no options | no options, no floor | told 0.3 um/px | told 0.3, no floor |")
    print("|---|---:|---:|---:|---:|")
    for size in (256, 512, 1024, 2048):
        for name, make in (("uint8 uniform", lambda s: rng.integers(0, 256, s).astype(np.uint8)),
                           ("16-bit Gaussian", lambda s: rng.normal(1000, 30, s).astype(np.uint16)),
                           ("Poisson, mean 3", lambda s: rng.poisson(3, s).astype(np.uint8))):
            image = make((size, size, 4))
            found = [count(create_segmenter(SegmentConfig(pixel_size_um=um, extra=extra)).segment(image)[0])
                     for um in (None, 0.3) for extra in ({}, floor_off)]
            print(f"| {name} {size}^2 | " + " | ".join(map(str, found)) + " |")
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fields", type=int, default=8, help="generated fields for the resizing check")
    a = ap.parse_args()
    real_nuclei()
    real_hpa()
    generated_rescaled(a.fields)
    mosaics()
    noise()


if __name__ == "__main__":
    main()

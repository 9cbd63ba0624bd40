"""Submission encoding and evaluation speed, as ratios to the floors they cannot beat by much.

    PYTHONPATH=src python bench/bench_submission.py

1. Encoding every cell of a 2048^2 field with ~20 cells (``encode_field``: runs, COCO
   strings, zlib 9, base64) against the pycocotools floor: ``mask.encode`` alone on each
   cell's mask already built as a Fortran-ordered uint8 HxWx1 array (building it excluded).
   The per-cell route a user would write first (compare, Fortran copy, encode, zlib, base64)
   is shown too. Goal: <= 1.2x the floor.
2. Scoring a 500-field submission (256^2 fields, ~10 cells, up to 3 classes per cell) with
   ``parse_submission`` + ``competition_map`` against only parsing it and decoding every
   distinct mask: the floor is base64 + zlib + pycocotools ``decode`` with no validation;
   our validating ``decode_mask`` is shown too.

Prints a markdown table; one run takes well under two minutes on 2 CPU cores.
"""

from __future__ import annotations

import base64
import os
import platform
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pycocotools import mask as coco_mask

from cellloc.fieldio import write_png
from cellloc.metrics import FieldTruth, competition_map
from cellloc.submission import SubmissionWriter, decode_mask, encode_field, parse_submission, prediction_string
from cellloc.submission_formats import read_truth

rng = np.random.default_rng(0)


def ellipse_field(size: int, n_cells: int) -> np.ndarray:
    """uint16 label image of ``n_cells`` overlapping ellipses (later ones on top)."""
    labels = np.zeros((size, size), np.uint16)
    yy, xx = np.ogrid[:size, :size]
    for k in range(1, n_cells + 1):
        cy, cx = rng.integers(0, size, 2)
        ry, rx = rng.integers(size // 20, size // 7, 2)
        labels[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = k
    return labels


def best_of(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def bench_encoding(n_fields: int = 5, size: int = 2048, n_cells: int = 20, repeat: int = 3) -> list[tuple]:
    fields = [ellipse_field(size, n_cells) for _ in range(n_fields)]
    cells = [sorted(set(np.unique(f).tolist()) - {0}) for f in fields]
    floor = ours = naive = 0.0
    for lab, ids in zip(fields, cells):
        prepared = [np.asfortranarray((lab == c).astype(np.uint8))[:, :, None] for c in ids]
        floor += best_of(lambda: [coco_mask.encode(m) for m in prepared], repeat)
        ours += best_of(lambda: encode_field(lab), repeat)

        def per_cell() -> None:
            for c in ids:
                rle = coco_mask.encode(np.asfortranarray((lab == c).astype(np.uint8))[:, :, None])[0]
                base64.b64encode(zlib.compress(rle["counts"], 9))

        naive += best_of(per_cell, repeat)
        got = encode_field(lab)
        ref = {c: base64.b64encode(zlib.compress(coco_mask.encode(m)[0]["counts"], 9)).decode() for c, m in zip(ids, prepared)}
        assert got == ref, "encode_field differs from pycocotools"
    mean_cells = np.mean([len(i) for i in cells])
    size_txt = f"{size}^2, {mean_cells:.0f} cells, {n_fields} fields"
    return [
        ("pycocotools encode only (floor)", size_txt, floor / n_fields, 1.0),
        ("encode_field (runs+zlib+base64)", size_txt, ours / n_fields, ours / floor),
        ("per-cell mask+copy+encode+zlib", size_txt, naive / n_fields, naive / floor),
    ]


def bench_evaluation(n_fields: int = 500, size: int = 256, n_cells: int = 10) -> tuple[list[tuple], float]:
    with tempfile.TemporaryDirectory(prefix="bench_submission_") as tmp:
        return _bench_evaluation(Path(tmp), n_fields, size, n_cells)


def _bench_evaluation(work: Path, n_fields: int, size: int, n_cells: int) -> tuple[list[tuple], float]:
    truth: dict[str, FieldTruth] = {}
    sub_path = work / "submission.csv"
    with SubmissionWriter(sub_path) as writer:
        for i in range(n_fields):
            image_id = f"f{i:04d}"
            lab = ellipse_field(size, n_cells)
            ids = sorted(set(np.unique(lab).tolist()) - {0})
            classes = {c: sorted(set(rng.integers(0, 19, rng.integers(1, 3)).tolist())) for c in ids}
            truth[image_id] = FieldTruth(lab, classes)
            shifted = np.roll(lab, tuple(rng.integers(0, 4, 2)), axis=(0, 1))  # IoUs from ~0.5 to 1
            masks = encode_field(shifted, ids)
            scores = rng.random((len(ids), 19)) * 0.6
            for row, c in enumerate(ids):
                scores[row, classes[c]] += 0.4
            writer.write(image_id, size, size, prediction_string([masks[c] for c in ids], scores, 0.35, 3))
    truth_dir = work / "truth"
    rows = [(k, c, "|".join(map(str, v))) for k, t in truth.items() for c, v in t.cell_classes.items()]
    truth_dir.mkdir()
    (truth_dir / "cells.csv").write_text("ID,cell_id,Label\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    for k, t in truth.items():
        write_png(truth_dir / f"{k}_cell_mask.png", t.labels)

    def decode_floor() -> None:
        for p in parse_submission(sub_path, 19).values():
            size = [p.height, p.width]
            for text in dict.fromkeys(p.masks):
                coco_mask.decode({"size": size, "counts": zlib.decompress(base64.b64decode(text))})

    def decode_all() -> None:
        for p in parse_submission(sub_path, 19).values():
            for text in dict.fromkeys(p.masks):
                decode_mask(text, p.height, p.width)

    result: dict = {}

    def evaluate() -> None:
        result.update(competition_map(truth, parse_submission(sub_path, 19), 19))

    t_floor = best_of(decode_floor, 3)
    t_decode = best_of(decode_all, 3)
    t_eval = best_of(evaluate, 3)
    t_truth = best_of(lambda: read_truth(truth_dir, 19), 1)
    sub = parse_submission(sub_path, 19)
    n_triples = sum(len(p.masks) for p in sub.values())
    n_masks = sum(len(set(p.masks)) for p in sub.values())
    mb = sub_path.stat().st_size / 1e6
    size_txt = f"{n_fields} x {size}^2, {n_masks} masks, {n_triples} triples, {mb:.1f} MB"
    return [
        ("parse + pycocotools decode every mask (floor)", size_txt, t_floor, 1.0),
        ("parse + decode_mask every mask (validating)", size_txt, t_decode, t_decode / t_floor),
        ("parse + competition_map (the evaluator)", size_txt, t_eval, t_eval / t_floor),
        ("read_truth (PNG masks + cells.csv)", f"{n_fields} x {size}^2", t_truth, t_truth / t_floor),
    ], float(result["map"])


def main() -> None:
    t0 = time.perf_counter()
    enc = bench_encoding()
    ev, m = bench_evaluation()
    print(f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} CPU cores; seconds are medians\n")
    print("| step | size | seconds | ratio |")
    print("|---|---|---:|---:|")
    for name, size_txt, sec, ratio in enc:
        print(f"| {name} | {size_txt} | {sec:.4f} per field | {ratio:.2f}x floor |")
    for name, size_txt, sec, ratio in ev:
        print(f"| {name} | {size_txt} | {sec:.3f} | {ratio:.2f}x decode |")
    print(f"\nmAP of the benchmark submission (sanity): {m:.4f}; total bench time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()

"""Write generated fields to disk in the Kaggle HPA single-cell layout, with truth beside them.

    input/<name>/train/{ID}_{red,green,blue,yellow}.png   (or test/ for --split test)
    input/<name>/train.csv                               ID,Label   (image-level weak labels)
    input/<name>/sample_submission.csv                   for the test split
    input/<name>/truth/{ID}_cell_mask.png                uint16 instance labels, 0 = background
    input/<name>/truth/{ID}_nucleus_mask.png             nucleus id == its cell's id
    input/<name>/truth/cells.csv                         ID,cell_id,Label (per-cell truth)
    input/<name>/truth/labels.csv                        ID,Label (image level, both splits)

Fields are written one by one, atomically; a field whose files all exist is not drawn again,
so a killed run resumes where it stopped. The CSVs are rebuilt from per-field truth files.

A rerun asks for exactly the fields it lists: generated fields found in the split's folder
that it does not list (a previous run with more ``--fields``, or another ``--seed``) are
deleted with their truth files, so the folder never holds fields the CSVs do not name (they
would be segmented with no label). Only files named as this generator names them are touched.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .fieldio import HPA_CHANNELS, format_label, read_csv, write_csv, write_png
from .synth import SynthConfig, generate_field


@dataclass(frozen=True)
class FieldJob:
    cfg: SynthConfig
    index: int
    size: int
    image_id: str
    image_dir: Path
    truth_dir: Path


def field_id(seed: int, index: int) -> str:
    return f"synth{seed:03d}_{index:05d}"


def field_files(job: FieldJob) -> list[Path]:
    imgs = [job.image_dir / f"{job.image_id}_{c}.png" for c in HPA_CHANNELS]
    truth = [job.truth_dir / f"{job.image_id}_{k}.png" for k in ("cell_mask", "nucleus_mask")]
    return imgs + truth + [job.truth_dir / f"{job.image_id}_cells.csv"]


# Every file write_field makes: {ID}_{channel}.png in the split folder; masks and cells in truth/.
_GENERATED = re.compile(r"(synth\d{3}_\d{5})_(red|green|blue|yellow|cell_mask|nucleus_mask|cells)\.(png|csv)")
_TRUTH_SUFFIXES = ("_cell_mask.png", "_nucleus_mask.png", "_cells.csv")


def remove_stale_fields(image_dir: Path, truth_dir: Path, keep: Sequence[str]) -> list[str]:
    """Delete generated fields in ``image_dir`` whose ids are not in ``keep``, with their truth files.

    Returns the removed ids, sorted. Truth files of fields absent from ``image_dir`` (another
    split's, say) and files not named as :func:`write_field` names them are left alone.
    """
    keep_ids = set(keep)
    found: dict[str, list[Path]] = {}
    for path in image_dir.iterdir() if image_dir.is_dir() else ():
        m = _GENERATED.fullmatch(path.name)
        if m and m.group(2) in HPA_CHANNELS and m.group(1) not in keep_ids:
            found.setdefault(m.group(1), []).append(path)
    for image_id, paths in found.items():
        for path in paths + [truth_dir / f"{image_id}{suffix}" for suffix in _TRUTH_SUFFIXES]:
            path.unlink(missing_ok=True)
    return sorted(found)


def write_field(job: FieldJob) -> str:
    """Draw one field and write its channels and truth; skip when already complete."""
    if all(p.exists() for p in field_files(job)):
        return "skipped"
    f = generate_field(job.cfg, job.index, job.size)
    for c, name in enumerate(HPA_CHANNELS):
        write_png(job.image_dir / f"{job.image_id}_{name}.png", f.image[..., c])
    write_png(job.truth_dir / f"{job.image_id}_cell_mask.png", f.cell_labels)
    write_png(job.truth_dir / f"{job.image_id}_nucleus_mask.png", f.nucleus_labels)
    rows = [{"ID": job.image_id, "cell_id": k, "Label": format_label(v)} for k, v in f.cell_classes.items()]
    # the per-field CSV is written last: its presence marks the field complete
    write_csv(job.truth_dir / f"{job.image_id}_cells.csv", pd.DataFrame(rows, columns=["ID", "cell_id", "Label"]))
    return "written"


def write_dataset(
    cfg: SynthConfig,
    out_dir: str | Path,
    n_fields: int,
    split: str = "train",
    sizes: Sequence[int] | None = None,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Write ``n_fields`` generated fields under ``out_dir``; return the per-cell truth table.

    ``sizes`` (optional) gives a set of field sizes; each field draws one, seeded by its index.
    Generated fields of earlier runs that this one does not list are removed first (see the
    module docstring); ``log`` receives one line saying how many, if any.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    out = Path(out_dir)
    image_dir, truth_dir = out / split, out / "truth"
    image_dir.mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)
    choices = list(sizes) if sizes else [cfg.size]
    jobs = []
    for i in range(n_fields):
        size = choices[int(np.random.default_rng([cfg.seed, i, 7]).integers(len(choices)))]
        jobs.append(FieldJob(cfg, i, size, field_id(cfg.seed, i), image_dir, truth_dir))
    removed = remove_stale_fields(image_dir, truth_dir, [j.image_id for j in jobs])
    if removed and log:
        log(f"{image_dir}: removed {len(removed)} generated field(s) this run does not list ({removed[0]} ...)")
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for _ in pool.map(write_field, jobs):
                if progress:
                    progress(1)
    else:
        for job in jobs:
            write_field(job)
            if progress:
                progress(1)
    cells = pd.concat([read_csv(truth_dir / f"{j.image_id}_cells.csv") for j in jobs], ignore_index=True)
    labels = (
        cells.groupby("ID", sort=False)["Label"]
        .apply(lambda s: format_label([int(k) for v in s for k in v.split("|")]))
        .reset_index()
    )
    write_csv(truth_dir / "cells.csv", cells)
    write_csv(truth_dir / "labels.csv", labels)
    if split == "train":
        write_csv(out / "train.csv", labels)
    else:
        sizes_by_id = {j.image_id: j.size for j in jobs}
        sub = pd.DataFrame({
            "ID": labels["ID"],
            "ImageWidth": [sizes_by_id[i] for i in labels["ID"]],
            "ImageHeight": [sizes_by_id[i] for i in labels["ID"]],
            "PredictionString": "",
        })
        write_csv(out / "sample_submission.csv", sub)
    return cells

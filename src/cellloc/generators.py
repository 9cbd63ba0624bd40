"""Generated datasets with the truth their competitions never gave: one generator per task.

``GENERATORS[task_name](out_dir, cfg, split, workers, progress) -> summary`` writes a dataset in
its task's real layout plus a ``truth/`` folder, and returns a one-line summary; ``cfg`` is the
:class:`MakeDataConfig` of ``python src/make_data.py`` (a generator reads the options it knows;
``--options KEY=VALUE ...`` sets any field of the task's own generator config, e.g.
``sirnas=8 plates=1`` for RxRx1), and ``.units(cfg)`` says how many progress steps it reports.
The HPA-2018 and RxRx1 generators are provided by :mod:`cellloc.synth_hpa2018` and
:mod:`cellloc.synth_rxrx1` (imported on first use).

HPA single-cell (:func:`generate_hpa_sc`, drawing in :mod:`cellloc.synth`) writes the Kaggle
single-cell layout:

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

import dataclasses
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import yaml

from .config import opt
from .errors import InputError
from .fieldio import HPA_CHANNELS, format_label, read_csv, write_csv, write_png
from .registry import Registry
from .synth import SynthConfig, class_gallery, generate_field
from .tasks import DEFAULT_TASK, TASKS, get_task

Progress = Callable[[int], None]


@dataclass
class MakeDataConfig:
    """Options of ``python src/make_data.py``; each task's generator reads the ones it knows."""

    task: str = opt(DEFAULT_TASK, "task whose dataset to generate", choices=TASKS.names())
    name: str = opt("", "dataset folder name under --root (default: the task's, e.g. synth for hpa-sc)")
    root: str = opt("input", "where datasets live")
    split: str = opt("train", "train (with train.csv) or test (with sample_submission.csv)", choices=["train", "test"])
    fields: int = opt(40, "number of fields (hpa-sc, hpa-2018; rxrx1 draws whole plates: size it with --options)")
    size: list[int] = opt([512], "field size(s) in pixels; several (hpa-sc): each field draws one")
    bit_depth: int = opt(8, "8 or 16-bit PNGs", choices=[8, 16])
    seed: int = opt(0, "random seed (same seed, same fields)")
    workers: int = opt(1, "processes")
    min_cells: int = opt(10, "hpa-sc: fewest cells placed per field")
    max_cells: int = opt(22, "hpa-sc: most cells placed per field")
    noise: float = opt(1.0, "noise multiplier (0 = clean)")
    gallery: str = opt("", "write a picture of what the generator draws to this PNG instead of a dataset "
                       "(hpa-sc, hpa-2018: one cell per class; rxrx1: controls and a strong siRNA per cell type)")
    options: list[str] = opt([], "KEY=VALUE settings of the task's own generator config (hpa-sc SynthConfig, hpa-2018 "
                             "Hpa2018Config, rxrx1 RxRx1SynthConfig), e.g. --options sirnas=8 plates=1 train_experiments=1")

    def __post_init__(self) -> None:
        if self.fields < 1:
            raise ValueError(f"--fields must be >= 1, got {self.fields}")
        if any(s < 32 or s > 8192 for s in self.size):
            raise ValueError(f"--size must be within 32..8192 (each generator checks its own range), got {self.size}")
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if not self.name:
            self.name = get_task(self.task).data_name

    @property
    def out_dir(self) -> Path:
        return Path(self.root) / self.name


@dataclass(frozen=True)
class DatasetGenerator:
    """A task's generator in two steps, so bad options fail before anything is drawn.

    ``configure(cfg)`` builds (and checks) the generator's own settings from make_data's options;
    ``write(out_dir, settings, cfg, split, workers, progress)`` draws one split and returns a
    one-line summary; ``units(settings, cfg)`` is how many progress steps ``write`` reports.
    """

    configure: Callable[[MakeDataConfig], Any]
    write: Callable[[Path, Any, MakeDataConfig, str, int, "Progress | None"], str]
    units: Callable[[Any, MakeDataConfig], int] = lambda settings, cfg: cfg.fields
    unit: str = "field"  # what one progress step is
    gallery: Callable[[Any], np.ndarray] | None = None  # settings -> an RGB uint8 picture of what the generator draws

    def __call__(self, out_dir: Path, cfg: MakeDataConfig, split: str = "train", workers: int = 1,
                 progress: Progress | None = None) -> str:
        return self.write(out_dir, self.configure(cfg), cfg, split, workers, progress)


GENERATORS: Registry[DatasetGenerator] = Registry(
    "dataset generator", plugins={"hpa-2018": "cellloc.synth_hpa2018", "rxrx1": "cellloc.synth_rxrx1"}
)

G = TypeVar("G")


def generator_config(cls: type[G], cfg: MakeDataConfig, **base: Any) -> G:
    """A generator's own config: ``base`` (what make_data's options map to), then ``cfg.options`` (``KEY=VALUE``).

    Values are read as YAML scalars or lists (``noise=0.5``, ``cell_types=[HEPG2, U2OS]``); a
    key the config lacks, a value of the wrong kind or one the config rejects is a one-line
    :class:`InputError` naming the option.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values = dict(base)
    for item in cfg.options:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise InputError(f"--options {item!r}: expected KEY=VALUE with KEY one of {', '.join(fields)}")
        value = yaml.safe_load(text)
        default = fields[key].default
        if isinstance(value, list):
            value = tuple(value)
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if default is not dataclasses.MISSING and default is not None and not (
                isinstance(value, type(default)) or (isinstance(default, float) and numeric)
                or (isinstance(default, int) and not isinstance(default, bool) and isinstance(value, tuple))):
            raise InputError(f"--options {item!r}: {key} takes {type(default).__name__} values (default {default!r})")
        values[key] = float(value) if isinstance(default, float) and numeric else value
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{cfg.task} generator: {exc}") from None


def single_size(cfg: MakeDataConfig) -> int:
    """The one field size of a generator that draws all fields alike; several ``--size`` values are an error."""
    if len(cfg.size) != 1:
        raise InputError(f"task {cfg.task} draws every field at one size; got --size {' '.join(map(str, cfg.size))}")
    return cfg.size[0]


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
    progress: Progress | None = None,
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


def hpa_sc_settings(cfg: MakeDataConfig) -> SynthConfig:
    """The single-cell generator's config: --size, --bit-depth, --seed, --min/max-cells, --noise, then --options."""
    return generator_config(SynthConfig, cfg, size=cfg.size[0], bit_depth=cfg.bit_depth, seed=cfg.seed,
                            cells_per_field=(cfg.min_cells, cfg.max_cells), noise=cfg.noise)


def generate_hpa_sc(out_dir: Path, synth: SynthConfig, cfg: MakeDataConfig, split: str = "train", workers: int = 1,
                    progress: Progress | None = None) -> str:
    """HPA single-cell fields with per-cell truth (:func:`write_dataset`); returns a one-line summary."""
    t0 = time.perf_counter()
    said: list[str] = []
    cells = write_dataset(synth, out_dir, cfg.fields, split, cfg.size, workers, progress, said.append)
    return (f"{out_dir}: {cells['ID'].nunique()} fields, {len(cells)} cells with per-cell truth "
            f"in {time.perf_counter() - t0:.1f}s" + "".join(f"; {line}" for line in said))


def hpa_sc_gallery(settings: SynthConfig) -> np.ndarray:
    """One generated cell per class (:func:`cellloc.synth.class_gallery`)."""
    return class_gallery()


GENERATORS["hpa-sc"] = DatasetGenerator(hpa_sc_settings, generate_hpa_sc, gallery=hpa_sc_gallery)

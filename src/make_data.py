"""Generate HPA-like fields with per-cell ground truth (the embedded default dataset).

    python src/make_data.py                      # input/synth: 40 training fields, 512 px
    python src/make_data.py --name synth_test --split test --seed 1 --fields 12
    python src/make_data.py --size 2048 --bit-depth 16 --fields 100 --workers 2
    python src/make_data.py --gallery docs/classes.png   # one generated cell per class
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tqdm import tqdm

from cellloc.config import opt, parse_config, save_config
from cellloc.datasets import write_dataset
from cellloc.errors import exit_on_input_error
from cellloc.fieldio import write_png
from cellloc.synth import SynthConfig, class_gallery


@dataclass
class MakeDataConfig:
    name: str = opt("synth", "dataset folder name under --root")
    root: str = opt("input", "where datasets live")
    split: str = opt("train", "train (with train.csv) or test (with sample_submission.csv)", choices=["train", "test"])
    fields: int = opt(40, "number of fields")
    size: list[int] = opt([512], "field size(s) in pixels; several: each field draws one")
    bit_depth: int = opt(8, "8 or 16-bit PNGs", choices=[8, 16])
    seed: int = opt(0, "random seed (same seed, same fields)")
    workers: int = opt(1, "processes")
    min_cells: int = opt(10, "fewest cells placed per field")
    max_cells: int = opt(22, "most cells placed per field")
    noise: float = opt(1.0, "noise multiplier (0 = clean)")
    gallery: str = opt("", "write a per-class example grid PNG to this path instead of a dataset")

    def __post_init__(self) -> None:
        if self.fields < 1:
            raise ValueError(f"--fields must be >= 1, got {self.fields}")
        if any(s < 128 or s > 8192 for s in self.size):
            raise ValueError(f"--size must be within 128..8192, got {self.size}")
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")


@exit_on_input_error
def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(MakeDataConfig, argv, __doc__)
    if cfg.gallery:
        write_png(cfg.gallery, class_gallery(), compression=9)
        print(f"wrote {cfg.gallery}")
        return
    try:
        synth = SynthConfig(size=cfg.size[0], bit_depth=cfg.bit_depth, seed=cfg.seed,
                            cells_per_field=(cfg.min_cells, cfg.max_cells), noise=cfg.noise)
    except ValueError as exc:
        from cellloc.errors import InputError
        raise InputError(str(exc)) from None
    out = Path(cfg.root) / cfg.name
    t0 = time.perf_counter()
    with tqdm(total=cfg.fields, desc=f"make_data {cfg.name}", unit="field") as bar:
        cells = write_dataset(synth, out, cfg.fields, cfg.split, cfg.size, cfg.workers, bar.update, bar.write)
    save_config(cfg, out / "make_data_config.json")
    n_img = cells["ID"].nunique()
    print(f"{out}: {n_img} fields, {len(cells)} cells with per-cell truth in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()

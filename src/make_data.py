"""Generate a task's dataset with the truth its competition never gave (HPA single-cell by default).

    python src/make_data.py                      # input/synth: 40 HPA single-cell training fields, 512 px
    python src/make_data.py --name synth_test --split test --seed 1 --fields 12
    python src/make_data.py --size 2048 --bit-depth 16 --fields 100 --workers 2
    python src/make_data.py --task rxrx1         # input/rxrx1/train, in RxRx1's own layout (plates of wells, 2 sites)
    python src/make_data.py --task rxrx1 --split test   # the same design's test plates, answers in input/rxrx1/truth
    python src/make_data.py --task rxrx1 --size 128 --options sirnas=8 plates=1 train_experiments=1   # smaller
    python src/make_data.py --task hpa-2018 --fields 200         # input/hpa2018: 28-class HPA 2018-like images
    python src/make_data.py --gallery docs/classes.png   # one generated cell per class
    python src/make_data.py --task hpa-2018 --gallery docs/hpa2018_classes.png   # one cell per 2018 class
    python src/make_data.py --task rxrx1 --gallery docs/rxrx1.png   # controls and a strong siRNA per cell type
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tqdm import tqdm

from cellloc.config import parse_config, save_config
from cellloc.errors import InputError, exit_on_input_error
from cellloc.fieldio import write_png
from cellloc.generators import GENERATORS, MakeDataConfig


@exit_on_input_error
def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(MakeDataConfig, argv, __doc__)
    generator = GENERATORS[cfg.task]
    if cfg.gallery:
        if generator.gallery is None:
            raise InputError(f"--gallery: the {cfg.task} generator draws no gallery")
        write_png(cfg.gallery, generator.gallery(generator.configure(cfg)), compression=9)
        print(f"wrote {cfg.gallery}")
        return
    settings = generator.configure(cfg)  # bad options fail here, before anything is drawn
    with tqdm(total=generator.units(settings, cfg), desc=f"make_data {cfg.name}", unit=generator.unit, disable=None) as bar:
        summary = generator.write(cfg.out_dir, settings, cfg, cfg.split, cfg.workers, bar.update)
    save_config(cfg, cfg.out_dir / "make_data_config.json")
    print(summary)


if __name__ == "__main__":
    main()

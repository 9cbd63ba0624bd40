"""Generate a task's dataset with the truth its competition never gave (HPA single-cell by default).

    python src/make_data.py                      # input/synth: 40 HPA single-cell training fields, 512 px
    python src/make_data.py --name synth_test --split test --seed 1 --fields 12
    python src/make_data.py --size 2048 --bit-depth 16 --fields 100 --workers 2
    python src/make_data.py --task rxrx1         # input/rxrx1, in RxRx1's own layout
    python src/make_data.py --gallery docs/classes.png   # one generated cell per class
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
    if cfg.gallery:
        if cfg.task != "hpa-sc":
            raise InputError(f"--gallery draws HPA single-cell classes; not available for task {cfg.task}")
        from cellloc.synth import class_gallery

        write_png(cfg.gallery, class_gallery(), compression=9)
        print(f"wrote {cfg.gallery}")
        return
    generate = GENERATORS[cfg.task]
    with tqdm(total=cfg.fields, desc=f"make_data {cfg.name}", unit="field") as bar:
        summary = generate(cfg.out_dir, cfg, cfg.split, cfg.workers, bar.update)
    save_config(cfg, cfg.out_dir / "make_data_config.json")
    print(summary)


if __name__ == "__main__":
    main()

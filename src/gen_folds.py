"""Assign leak-free, label-stratified cross-validation folds to fields (and their cells).

    python src/gen_folds.py --folds 5 --seed 42                  # output/synth/cells.csv
    python src/gen_folds.py --labels train.csv --out output/hpa/folds.csv --method iterstrat
    python src/gen_folds.py --group-col antibody                 # keep each antibody in one fold
    python src/gen_folds.py --task hpa-2018 --groups input/hpa2018/truth/images.csv --group-col protein

Writes the folds CSV (input rows plus a ``fold`` column), ``<stem>_balance.txt/.csv/.png``
and ``<stem>_config.json`` beside it.
"""

from __future__ import annotations

from cellloc.config import parse_config, save_config
from cellloc.errors import exit_on_input_error
from cellloc.folds import summary
from cellloc.runs.folds import FoldsConfig, make_folds


@exit_on_input_error
def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(FoldsConfig, argv, description=__doc__.splitlines()[0])
    result = make_folds(cfg)
    save_config(cfg, result.paths["config"])
    for line in summary(result.balance, result.split, result.n_cells):
        print(line)
    print(f"wrote {result.paths['folds']} ({result.n_rows} rows), " + ", ".join(
        str(result.paths[key].name) for key in ("txt", "csv", "png", "config")
    ))


if __name__ == "__main__":
    main()

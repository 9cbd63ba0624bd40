"""Combine image-level prediction folders into one submission (saved field scores, no model runs).

    python src/ensemble.py --input input/rxrx1/test --out output/subsets --plate-assignment \
        --predictions output/no_w1 output/no_w2 output/no_w3 output/no_w4 output/no_w5 output/no_w6
    python src/ensemble.py --input input/rxrx1/test --out output/by_type --by cell_type --plate-assignment \
        --predictions HEPG2=output/ft_HEPG2 HUVEC=output/ft_HUVEC RPE=output/ft_RPE U2OS=output/ft_U2OS

Each folder is what predict.py wrote for the same test folder (field_scores/). Without --by the
folders are averaged field by field (--average logits: the softmax of the mean log-probability;
probs: the mean probability); with --by each sample takes the scores of the folder of its group.
Output (--out): field_scores/, scores.csv, submission.csv and ensemble_config.json.
"""

from __future__ import annotations

from pathlib import Path

from cellloc.config import parse_config, save_config
from cellloc.errors import exit_on_input_error
from cellloc.runs.ensemble import EnsembleConfig, run_ensemble


@exit_on_input_error
def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(EnsembleConfig, argv, __doc__.splitlines()[0])
    res = run_ensemble(cfg)
    save_config(cfg, Path(cfg.out) / "ensemble_config.json")
    how = f"each sample by its {cfg.by}" if cfg.by else f"mean of {cfg.average}"
    print(f"{res.submission}: {res.samples} samples ({res.fields} fields) from {res.members} prediction folder(s), {how}")


if __name__ == "__main__":
    main()

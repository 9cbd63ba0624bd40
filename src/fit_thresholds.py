"""Fit a multilabel image run's per-class decision thresholds on its out-of-fold predictions.

    python src/fit_thresholds.py --task hpa-2018                 # models/effb2_hpa-2018: every trained fold
    python src/fit_thresholds.py --models models/effb2_hpa-2018 --min-positives 10 --shrink 10 --fallback global
    python src/fit_thresholds.py --method share                  # the 2018 winner's rule: each class its label share
    python src/fit_thresholds.py --scores output/hpa2018_test/scores.csv --truth input/hpa2018_test/truth

Writes thresholds.json and thresholds.csv in the run folder and the thresholds into every fold's
recipe.json (predict.py applies them). Recipes that already hold thresholds fitted otherwise are
left alone with a one-line error unless --overwrite (the old ones are kept beside, in
thresholds.replaced-<time>.json). Prints the per-class table and the out-of-fold macro F1
at 0.5, at the global threshold and with the fitted thresholds (the last is optimistic: fitted on
the same predictions). With --scores/--truth it also scores each rule on those held-out samples
and prints macro_F1_at_0.5=, macro_F1_global=, macro_F1_share= and, last, macro_F1= (the
fitted thresholds, what the submission used).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cellloc.config import parse_config, save_config
from cellloc.errors import exit_on_input_error
from cellloc.runs.thresholds import ThresholdsConfig, compare_rules, fit_run, read_heldout


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(ThresholdsConfig, argv, __doc__.splitlines()[0])
    th, oof, table, kept = fit_run(cfg)
    save_config(cfg, Path(cfg.models) / "thresholds_config.json")
    print(table.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4f}"))
    folds = f"folds {', '.join(map(str, oof.folds))} of {oof.n_folds}"
    print(f"out-of-fold predictions: {len(oof.ids)} samples from {folds}; method {th.method}"
          + (f", prior {th.fallback}, min_positives {th.min_positives}, shrink {th.shrink:g}" if th.method == "f1" else "")
          + f", top class kept: {'yes' if th.keep_top else 'no'}")
    for name, value in th.oof_macro_f1.items():
        print(f"  OOF macro F1 {name}: {value:.4f}" + (f" (global threshold {th.global_threshold:.2f})" if name == "global" else ""))
    print(f"wrote {Path(cfg.models) / 'thresholds.json'} and the thresholds into {len(oof.fold_dirs)} recipe.json")
    if kept is not None:
        print(f"the thresholds they replace are kept in {kept}")
    if cfg.scores:
        _, probs, truth = read_heldout(cfg.scores, cfg.truth, oof.task)
        rules = compare_rules(th, oof, probs, truth)
        print(f"\nheld-out: {len(probs)} samples of {cfg.scores}, {int(truth.any(0).sum())} of {truth.shape[1]} classes present")
        print(rules.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        by_rule = dict(zip(rules["rule"], rules["macro_F1"]))
        for name in ("at_0.5", "global", "share"):
            print(f"macro_F1_{name}={by_rule[name]:.4f}")
        print(f"macro_F1={by_rule['fitted']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

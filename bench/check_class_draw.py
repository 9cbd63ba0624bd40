"""How evenly the generated HPA single-cell fields hold each class, for each class draw (balanced, stratified, random).

    python bench/check_class_draw.py [--fields 120] [--seeds 200]

For each draw mode and seed, counts the fields of the first N whose protein is drawn with each
class (before cells are drawn: a Mitotic spindle field also needs a mitotic cell to show it),
then prints, per class, the mean and standard deviation of that count over the seeds and how
often it is zero. Label draws only: no pixels are drawn, so it runs in seconds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cellloc.classes import HPA_SINGLE_CELL  # noqa: E402
from cellloc.synth import CLASS_DRAWS, SynthConfig, draw_field_classes  # noqa: E402


def field_counts(mode: str, fields: int, seeds: int) -> np.ndarray:
    """(seeds, classes) number of fields whose label holds each class."""
    out = np.zeros((seeds, HPA_SINGLE_CELL.num_classes), int)
    for s in range(seeds):
        cfg = SynthConfig(seed=s, class_draw=mode)
        for i in range(fields):
            # a fresh random stream per (seed, field): a field's own stream has placed its cells first,
            # which changes which numbers it draws, not how they are distributed
            out[s, draw_field_classes(np.random.default_rng([s, i, 7]), cfg, i)] += 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fields", type=int, default=120)
    ap.add_argument("--seeds", type=int, default=200)
    a = ap.parse_args()
    counts = {mode: field_counts(mode, a.fields, a.seeds) for mode in CLASS_DRAWS}
    print(f"fields drawn with each class in the first {a.fields} fields, over {a.seeds} seeds")
    print(f"{'class':<42}" + "".join(f"{m + ' mean/sd/zero':>28}" for m in CLASS_DRAWS))
    for k, name in enumerate(HPA_SINGLE_CELL.names):
        cells = [f"{c[:, k].mean():8.1f} {c[:, k].std():6.2f} {np.mean(c[:, k] == 0):6.1%}" for c in counts.values()]
        print(f"{name[:41]:<42}" + "".join(f"{x:>28}" for x in cells))
    print("mean sd over classes: " + ", ".join(f"{m} {c.std(0).mean():.2f}" for m, c in counts.items()))


if __name__ == "__main__":
    main()

"""Issue 15 study: how strong the generated RxRx1 batch effect is, and what each normalisation undoes.

    python bench/study_rxrx1_batch.py input/rxrx1_demo_s0 input/rxrx1_demo_s1 input/rxrx1_demo_s2

Reads only what a dataset folder holds (``pixel_stats.csv``, ``train.csv``, the controls CSVs
and, to score, ``truth/labels.csv``); no images, no network, seconds per folder. Two tables:

1. **Where the intensity varies.** The log of each site's channel mean, split into nested
   parts: between cell types, between experiments of a cell type, between plates of an
   experiment, between wells of a plate (the siRNA and the well's own cell count), and between
   the two sites of a well. The experiment and plate parts are the batch effect that
   ``--normalise`` is meant to remove.
2. **What a linear model learns across experiments.** Each well is described by what its two
   sites' statistics become under a normalisation (a channel's mean and median become
   ``(x - m) / s`` and its std ``std / s``, with ``m, s`` the statistics that normalisation uses
   for the site, exactly what the pixels become in training and prediction; ``none`` takes logs
   of the raw values) plus its cell type. A multinomial logistic regression fitted on the
   training experiments' treatment wells predicts the unseen test experiments' treatment wells;
   the table gives its accuracy (chance is 1 / number of siRNAs) and its accuracy on the wells
   it was fitted on. A normalisation that removes the batch raises the first; the gap between
   the two shows what is left of the batch (and of overfitting).

The probe sees 18 numbers per well, so it is a floor for what an image model can read from the
same fields, not a ceiling; it needs no training run, so it shows the batch effect itself.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cellloc import rxrx1  # noqa: E402
from cellloc.plate_norm import METHODS, dataset_field_stats  # noqa: E402

STATS = ("mean", "std", "median")


def wells_table(folder: Path) -> pd.DataFrame:
    """id_code, experiment, plate, cell_type, split, sirna (-1 where unknown) of every treatment well."""
    train = pd.read_csv(folder / "train.csv")
    test = pd.read_csv(folder / "test.csv").merge(pd.read_csv(folder / "truth" / "labels.csv"), on="id_code")
    out = pd.concat([train.assign(split="train"), test.assign(split="test")], ignore_index=True)
    out["cell_type"] = out["experiment"].str.split("-").str[0]
    return out


def site_features(folder: Path, method: str) -> pd.DataFrame:
    """Per site (index ``{id_code}_s{site}``): mean, std, median of each channel as ``method`` leaves them."""
    ps = pd.read_csv(folder / "pixel_stats.csv")
    ps["field"] = ps["id_code"] + "_s" + ps["site"].astype(str)
    wide = ps.pivot(index="field", columns="channel", values=list(STATS))
    if method == "none":
        return np.log(wide + 0.5)
    out = wide.copy()
    if method == "site":
        m, s = wide["mean"].to_numpy(), np.maximum(wide["std"].to_numpy(), 1.0)
    else:
        stats = dataset_field_stats(folder, method, rxrx1.CHANNELS)
        m = np.stack([stats[f].mean for f in wide.index])
        s = np.maximum(np.stack([stats[f].std for f in wide.index]), 1.0)  # plate_norm.normalise's min_std
    out["mean"] = (wide["mean"].to_numpy() - m) / s
    out["median"] = (wide["median"].to_numpy() - m) / s
    out["std"] = wide["std"].to_numpy() / s
    return out


def probe(folder: Path, method: str, seed: int = 0) -> dict:
    """Logistic regression on normalised well statistics: train experiments -> unseen test experiments."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    wells = wells_table(folder)
    feats = site_features(folder, method)
    per_well = feats.groupby(np.array([f.rsplit("_s", 1)[0] for f in feats.index])).mean()
    x = per_well.loc[wells["id_code"]].to_numpy(np.float64)
    x = np.hstack([x, pd.get_dummies(wells["cell_type"]).to_numpy(np.float64)])
    y = wells["sirna"].to_numpy()
    tr, te = (wells["split"] == "train").to_numpy(), (wells["split"] == "test").to_numpy()
    scale = StandardScaler().fit(x[tr])
    clf = LogisticRegression(C=1.0, max_iter=5000, random_state=seed).fit(scale.transform(x[tr]), y[tr])
    return {"test_accuracy": float((clf.predict(scale.transform(x[te])) == y[te]).mean()),
            "train_accuracy": float((clf.predict(scale.transform(x[tr])) == y[tr]).mean()),
            "test_wells": int(te.sum()), "chance": 1.0 / len(np.unique(y[tr]))}


def variance_parts(folder: Path) -> pd.DataFrame:
    """Per channel: std of the log site means between cell types, experiments, plates, wells and sites (nested)."""
    ps = pd.read_csv(folder / "pixel_stats.csv")
    ps["cell_type"] = ps["experiment"].str.split("-").str[0]
    ps["v"] = np.log(ps["mean"] + 0.5)
    rows = []
    for channel, g in ps.groupby("channel"):
        means = {level: g.groupby(keys)["v"].transform("mean") for level, keys in
                 (("cell_type", ["cell_type"]), ("experiment", ["experiment"]),
                  ("plate", ["experiment", "plate"]), ("well", ["id_code"]))}
        rows.append({"channel": f"w{channel}", "cell_type": means["cell_type"].std(),
                     "experiment": (means["experiment"] - means["cell_type"]).std(),
                     "plate": (means["plate"] - means["experiment"]).std(),
                     "well": (means["well"] - means["plate"]).std(), "site": (g["v"] - means["well"]).std()})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path, help="generated RxRx1 dataset folders (both splits written)")
    ap.add_argument("--methods", nargs="+", default=["none", *METHODS])
    a = ap.parse_args(argv)
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    parts = pd.concat([variance_parts(f) for f in a.folders]).groupby("channel").mean()
    print(f"\nstd of log channel means by level (mean over {len(a.folders)} folder(s)):")
    print(parts.round(3).to_string())
    rows = []
    for folder in a.folders:
        for method in a.methods:
            rows.append({"folder": folder.name, "normalise": method, **probe(folder, method)})
    table = pd.DataFrame(rows)
    print("\nlogistic regression on well statistics, training experiments -> unseen test experiments:")
    print(table.round(3).to_string(index=False))
    summary = table.groupby("normalise", sort=False)[["test_accuracy", "train_accuracy"]].agg(["mean", "std"])
    print("\nmean and sd over folders:")
    print(summary.round(3).to_string())


if __name__ == "__main__":
    main()

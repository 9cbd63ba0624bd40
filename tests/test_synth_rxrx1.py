"""The RxRx1 generator: the plate design, effects that show in the pictures, batches, and the written dataset."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from skimage.measure import regionprops

from cellloc import rxrx1
from cellloc.errors import InputError
from cellloc.plate_assignment import plate_groups
from cellloc.synth_rxrx1 import (
    P,
    PARAMS,
    RxRx1SynthConfig,
    cell_type_base,
    gallery,
    generate_site,
    make_design,
    render_cells,
    write_dataset,
)

TINY = RxRx1SynthConfig(size=96, sirnas=8, positive_controls=2, train_experiments=1, test_experiments=1,
                        cell_types=("HEPG2", "U2OS"), seed=2)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("rxrx1")
    summary = write_dataset(out, TINY)
    return out, summary


# --------------------------------------------------------------------------- design


def test_each_plate_holds_one_group_each_sirna_once_plus_controls():
    cfg = RxRx1SynthConfig(sirnas=20, train_experiments=3, test_experiments=2, seed=4)
    d = make_design(cfg)
    wells = pd.DataFrame([w.__dict__ for w in d.wells])
    assert sorted(sum(d.groups, [])) == list(range(20)) and {len(g) for g in d.groups} == {5}
    for (exp, plate), g in wells.groupby(["experiment", "plate"]):
        treat = g[g["well_type"] == "treatment"]
        assert treat["group"].nunique() == 1
        assert sorted(treat["sirna"]) == d.groups[treat["group"].iloc[0]]
        assert sorted(g[g["well_type"] == "positive_control"]["sirna"]) == [1108, 1109, 1110, 1111]
        assert (g["well_type"] == "negative_control").sum() == 1 and g["well"].is_unique
    per_exp = wells[wells["well_type"] == "treatment"].groupby("experiment")
    assert all(sorted(g["sirna"]) == list(range(20)) for _, g in per_exp)  # 4 plates: every siRNA once
    orders = {tuple(g.groupby("plate")["group"].first()) for _, g in per_exp}
    assert len(orders) > 1  # the group -> plate permutation changes between experiments
    # the groups can be recovered from the training table alone
    train = wells[(wells["split"] == "train") & (wells["well_type"] == "treatment")]
    assert plate_groups(g["sirna"] for _, g in train.groupby(["experiment", "plate"])) == [frozenset(x) for x in sorted(d.groups, key=min)]


def test_test_experiments_are_other_batches_of_the_same_cell_types():
    d = make_design(RxRx1SynthConfig(train_experiments=(2, 3, 1, 1), test_experiments=1))
    train = [e for e in d.experiments if e[2] == "train"]
    test = [e for e in d.experiments if e[2] == "test"]
    assert [e[0] for e in test] == ["HEPG2-03", "HUVEC-04", "RPE-02", "U2OS-02"]
    assert not {e[0] for e in train} & {e[0] for e in test}
    assert all(rxrx1.cell_type_of(name) == ct for name, ct, _ in d.experiments)


def test_effect_kinds_few_strong_most_weak_some_none():
    d = make_design(RxRx1SynthConfig(sirnas=400))
    kinds = Counter(d.kinds[s] for s in range(400))
    assert 0.08 < kinds["strong"] / 400 < 0.22 and 0.13 < kinds["none"] / 400 < 0.27 and kinds["weak"] > 200
    assert all(not d.effects[s].any() for s in range(400) if d.kinds[s] == "none")
    strong = np.mean([np.abs(d.effects[s]).max() for s in range(400) if d.kinds[s] == "strong"])
    weak = np.mean([np.abs(d.effects[s]).max() for s in range(400) if d.kinds[s] == "weak"])
    assert strong > 2 * weak
    assert not d.effects[1138].any() and all(np.abs(d.effects[s]).max() >= 0.45 for s in rxrx1.POSITIVE_CONTROLS[:4])


def test_batch_strength_sets_how_different_experiments_look():
    flat = make_design(RxRx1SynthConfig(batch_strength=0.0, train_experiments=5))
    assert all(np.allclose(b.gain, 1) and np.allclose(b.offset, 0) for b in flat.exp_batches)
    strong = make_design(RxRx1SynthConfig(train_experiments=5))
    log_gain = np.log([b.gain for b in strong.exp_batches])
    assert log_gain.std(axis=0).min() > 0.15


def test_full_scale_config_is_the_real_design():
    cfg = RxRx1SynthConfig(sirnas=1108, positive_controls=30, train_experiments=(7, 16, 7, 3), test_experiments=(4, 8, 4, 2))
    assert cfg.group_size == 277 and cfg.wells_per_plate == 308
    d = make_design(cfg)
    assert len(d.experiments) == 51 and len(d.wells) == 51 * 4 * 308


def test_bad_configs_say_what_is_wrong():
    with pytest.raises(ValueError, match="sirnas must be within 4..1108"):
        RxRx1SynthConfig(sirnas=2000)
    with pytest.raises(ValueError, match="unknown cell type"):
        RxRx1SynthConfig(cell_types=("HeLa",))
    with pytest.raises(ValueError, match="one per cell type"):
        RxRx1SynthConfig(train_experiments=(1, 2))


# --------------------------------------------------------------------------- pictures


def site_with(cell_type: str, seed: int, **log_shift: float):
    """Render a site from the cell type's base parameters with some shifted (log scale), no cell variation."""
    site = cell_type_base(cell_type)
    for k, v in log_shift.items():
        site[P[k]] *= np.exp(v)
    cells = np.tile(site, (400, 1))
    return render_cells(np.random.default_rng(seed), cell_type, site, cells, 256)


def nucleus_fraction(img, labels, nuclei):
    return (nuclei > 0).sum() / (labels > 0).sum()


def cells_counted(img, labels, nuclei):
    return labels.max()


def mito_in_cytoplasm(img, labels, nuclei):
    return img[..., 4][(labels > 0) & (nuclei == 0)].mean()


def actin_over_nuclei(img, labels, nuclei):
    return img[..., 2][nuclei > 0].mean()  # stress fibres cross the nucleus, the cortex does not


def golgi_in_cells(img, labels, nuclei):
    return img[..., 5][labels > 0].mean()


@pytest.mark.parametrize("param,measure", [
    ("nucleus_size", nucleus_fraction),
    ("density", cells_counted),
    ("mito", mito_in_cytoplasm),
    ("fibres", actin_over_nuclei),
    ("golgi", golgi_in_cells),
])
def test_a_parameter_shift_shows_in_the_stain_it_belongs_to(param, measure):
    lo = np.mean([measure(*site_with("RPE", s, **{param: -0.5})) for s in range(3)])
    hi = np.mean([measure(*site_with("RPE", s, **{param: +0.5})) for s in range(3)])
    assert hi > 1.15 * lo, (param, lo, hi)


def test_cell_types_have_their_own_shapes():
    def mean_elongation(ct):
        _, labels, _ = site_with(ct, 0)
        props = [p for p in regionprops(labels) if p.area > 30]
        return np.mean([p.axis_major_length / max(p.axis_minor_length, 1) for p in props]), np.mean([p.area for p in props])

    huvec, rpe, u2os, hepg2 = (mean_elongation(ct) for ct in ("HUVEC", "RPE", "U2OS", "HEPG2"))
    assert huvec[0] > 1.5 * rpe[0]  # endothelial spindles vs cobblestones
    assert u2os[1] > 1.5 * hepg2[1]  # large flat cells vs small hepatocytes


def test_same_config_same_site_and_another_seed_differs():
    well = make_design(TINY).wells[3]
    a, la, _ = generate_site(TINY, well, 1)
    b, lb, _ = generate_site(TINY, well, 1)
    c, _, _ = generate_site(RxRx1SynthConfig(**{**TINY.__dict__, "seed": 3}), make_design(TINY).wells[3], 1)
    assert a.shape == (96, 96, 6) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a, generate_site(TINY, well, 2)[0])  # the other site is other cells


def test_nuclei_are_bright_in_the_hoechst_channel():
    well = next(w for w in make_design(TINY).wells if w.well_type == "negative_control")
    img, labels, nuclei = generate_site(TINY, well, 1)
    w1 = img[..., 0].astype(float)
    assert w1[nuclei > 0].mean() > 2 * w1[labels == 0].mean()


# --------------------------------------------------------------------------- the written dataset


def test_written_dataset_reads_back_with_the_rxrx1_readers(tiny_dataset):
    out, summary = tiny_dataset
    assert summary["experiments"] == {"train": ["HEPG2-01", "U2OS-01"], "test": ["HEPG2-02", "U2OS-02"]}
    for split in ("train", "test"):
        wells = rxrx1.read_split(out, split)
        assert len(wells) == 2 * 4 * (2 + 2 + 1)  # 2 experiments x 4 plates x (2 siRNAs + 2 positive + 1 negative)
        rxrx1.check_sites(rxrx1.list_fields(out / split), wells["ID"], out / split)
        assert len(rxrx1.list_fields(out / split).ids) == 2 * len(wells)
    train = rxrx1.read_split(out, "train")
    assert set(train["well_type"]) == {"treatment", "positive_control", "negative_control"}
    assert train[train["well_type"] == "treatment"]["labels"].map(lambda x: x[0]).between(0, 7).all()


def test_test_truth_is_kept_apart_and_matches_the_submission_ids(tiny_dataset):
    out, _ = tiny_dataset
    test = rxrx1.read_split(out, "test")
    truth = pd.read_csv(out / "truth" / "labels.csv")
    treat = test[test["well_type"] == "treatment"]
    assert list(truth.columns) == ["id_code", "sirna"] and sorted(truth["id_code"]) == sorted(treat["ID"])
    assert (treat["Label"] == "").all()
    sample = pd.read_csv(out / "sample_submission.csv")
    assert rxrx1.check_submission(out / "sample_submission.csv", expected_ids=truth["id_code"]) == []
    assert len(sample) == len(truth)
    wells = pd.read_csv(out / "truth" / "wells.csv")
    joined = truth.merge(wells, on="id_code", suffixes=("", "_w"))
    assert (joined["sirna"] == joined["sirna_w"]).all()


def test_pixel_stats_describe_the_written_images(tiny_dataset):
    out, _ = tiny_dataset
    stats = rxrx1.read_pixel_stats(out / "pixel_stats.csv")
    assert len(stats) == 2 * 2 * 4 * 5 * 2 * 6  # every site of both splits, six channels
    row = stats.iloc[7]
    img = rxrx1.read_field(out / "train" if row["experiment"].endswith("01") else out / "test",
                           rxrx1.field_id(row["id_code"], row["site"]))[..., row["channel"] - 1]
    assert row["mean"] == pytest.approx(img.mean(), abs=1e-3) and row["std"] == pytest.approx(img.std(), abs=1e-3)
    assert (row["median"], row["min"], row["max"]) == (np.median(img), img.min(), img.max())


def test_rewriting_skips_finished_wells_and_redraws_a_missing_one_identically(tiny_dataset):
    out, _ = tiny_dataset
    png = out / "test" / "U2OS-02" / "Plate3"
    first = sorted(png.glob("*_s1_w2.png"))[0]
    before = first.read_bytes()
    mtime = first.stat().st_mtime_ns
    write_dataset(out, TINY, split="test")
    assert first.stat().st_mtime_ns == mtime
    well = first.name.split("_")[0]
    (out / ".wells" / "test" / f"U2OS-02_3_{well}.csv").unlink()
    first.unlink()
    write_dataset(out, TINY, split="test")
    assert first.read_bytes() == before


def test_parallel_workers_write_the_same_files(tmp_path, tiny_dataset):
    out, _ = tiny_dataset
    write_dataset(tmp_path, TINY, split="train", workers=2)
    files = sorted((tmp_path / "train").rglob("*.png"))
    assert len(files) == 2 * 4 * 5 * 2 * 6
    for f in files:
        assert f.read_bytes() == (out / f.relative_to(tmp_path)).read_bytes()
    assert (tmp_path / "train.csv").read_text() == (out / "train.csv").read_text()


def test_params_are_all_used():
    assert len(PARAMS) == len(set(PARAMS)) == len(cell_type_base("HEPG2"))


def test_a_folder_drawn_with_other_settings_is_refused(tiny_dataset):
    out, _ = tiny_dataset
    other = RxRx1SynthConfig(**{**TINY.__dict__, "size": 128, "sirnas": 12})
    with pytest.raises(InputError, match=r"drawn with other settings \(sirnas, size differ\)"):
        write_dataset(out, other, split="test")


def test_gallery_shows_controls_and_the_strongest_sirna_per_cell_type(tmp_path):
    cfg = RxRx1SynthConfig(size=96, sirnas=8, positive_controls=1, cell_types=("HEPG2", "RPE"))
    pic = gallery(cfg, tile=48)
    # 2 cell types x 3 wells (negative, positive, strongest siRNA) in 2 columns of two 48 px composites
    assert pic.shape == (3 * (18 + 48), 2 * 2 * 48, 3) and pic.dtype == np.uint8
    from test_evaluate_cli import load_script

    load_script("make_data").main(["--task", "rxrx1", "--size", "96", "--options", "sirnas=8", "positive_controls=1",
                                   "cell_types=[HEPG2,RPE]", "--gallery", str(tmp_path / "g.png")])
    from cellloc.fieldio import decode_image

    np.testing.assert_array_equal(decode_image((tmp_path / "g.png").read_bytes())[..., ::-1], gallery(cfg))


def test_a_nucleus_stays_inside_its_own_cell():
    for ct in ("HUVEC", "U2OS"):
        _, labels, nuclei = site_with(ct, 1, cell_size=0.6)  # big cells overlap their neighbours' nuclei
        inside = nuclei > 0
        assert np.all(labels[inside] == nuclei[inside])
        for cell in np.unique(nuclei[inside]):
            assert ndimage.label(nuclei == cell)[1] <= 2  # one nucleus (rarely cut in two by a neighbour)

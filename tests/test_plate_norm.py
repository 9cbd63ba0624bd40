"""Per-experiment / per-plate normalisation on hand-made plates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellloc.errors import InputError
from cellloc.plate_norm import (
    REFERENCE_MEAN,
    REFERENCE_STD,
    ChannelStats,
    FieldNormaliser,
    channel_numbers,
    dataset_field_stats,
    field_stats,
    group_stats,
    negative_control_wells,
    normalise,
    pooled_channel_stats,
    stats_for,
    to_reference,
)


def stats_rows(id_code: str, site: int, image: np.ndarray) -> list[dict]:
    """pixel_stats.csv rows of one site, computed the way the generator and Kaggle do."""
    exp, plate, well = id_code.rsplit("_", 2)
    return [{"id_code": id_code, "experiment": exp, "plate": int(plate), "well": well, "site": site, "channel": c + 1,
             "mean": float(image[..., c].mean()), "std": float(image[..., c].std()), "median": float(np.median(image[..., c])),
             "min": float(image[..., c].min()), "max": float(image[..., c].max())} for c in range(image.shape[2])]


def test_pooled_stats_equal_those_of_the_concatenated_pixels():
    rng = np.random.default_rng(0)
    images = [rng.normal(m, s, (50, 3)) for m, s in ((1, 1), (5, 2), (-3, 0.5))]
    means = np.stack([i.mean(0) for i in images])
    stds = np.stack([i.std(0) for i in images])
    mean, std = pooled_channel_stats(means, stds)
    allpix = np.concatenate(images)
    np.testing.assert_allclose(mean, allpix.mean(0))
    np.testing.assert_allclose(std, allpix.std(0))
    # unequal sizes need the pixel counts
    mean2, std2 = pooled_channel_stats(means[:2], stds[:2], pixels=[50, 50])
    np.testing.assert_allclose(std2, np.concatenate(images[:2]).std(0))


def test_hand_made_plate_two_wells():
    # well A: all pixels 10 in w1, 100 in w2; well B: half 10 / half 30 in w1, 100 in w2
    a = np.stack([np.full((2, 2), 10.0), np.full((2, 2), 100.0)], -1)
    b = np.stack([np.array([[10.0, 30.0], [10.0, 30.0]]), np.full((2, 2), 100.0)], -1)
    df = pd.DataFrame(stats_rows("E-1_1_B02", 1, a) + stats_rows("E-1_1_B03", 1, b))
    st = group_stats(df, "plate", ("w1", "w2"))[("E-1", "1")]
    # pixels of w1: 10,10,10,10,10,30,10,30 -> mean 15, std sqrt(75)
    np.testing.assert_allclose(st.mean, [15.0, 100.0])
    np.testing.assert_allclose(st.std, [np.sqrt(75.0), 0.0])
    assert st.sites == 2
    out = normalise(b, st.mean, st.std)
    np.testing.assert_allclose(out[0, :, 0], [-5 / np.sqrt(75), 15 / np.sqrt(75)], rtol=1e-6)
    np.testing.assert_allclose(out[..., 1], 0.0)  # a flat channel: min_std keeps it finite
    # only the negative-control well (A)
    ctrl = group_stats(df, "plate", ("w1", "w2"), wells={"E-1_1_B02"})[("E-1", "1")]
    np.testing.assert_allclose(ctrl.mean, [10.0, 100.0])


def test_normalisation_removes_a_batch_gain_and_offset():
    """Two experiments see the same cells through different gains and offsets; after
    per-experiment normalisation their pixels agree, before it they do not."""
    rng = np.random.default_rng(1)
    wells = [rng.gamma(2.0, 10.0, (8, 8, 2)) for _ in range(3)]
    gain, offset = np.array([2.5, 0.6]), np.array([12.0, 3.0])
    rows = []
    for k, w in enumerate(wells):
        rows += stats_rows(f"A-1_1_B0{k + 2}", 1, w)
        rows += stats_rows(f"B-1_1_B0{k + 2}", 1, w * gain + offset)
    st = group_stats(pd.DataFrame(rows), "experiment", ("w1", "w2"))
    assert set(st) == {("A-1",), ("B-1",)}
    x_a = normalise(wells[0], st[("A-1",)].mean, st[("A-1",)].std)
    x_b = normalise(wells[0] * gain + offset, st[("B-1",)].mean, st[("B-1",)].std)
    np.testing.assert_allclose(x_a, x_b, rtol=1e-4, atol=1e-4)
    assert np.abs((wells[0] * gain + offset) - wells[0]).mean() > 5


def test_channel_subsets_and_lookup_errors():
    img = np.arange(12, dtype=np.float64).reshape(2, 2, 3)
    rows = stats_rows("E-1_2_C03", 1, img)
    st = group_stats(pd.DataFrame(rows), "plate", ("w3", "w1"))[("E-1", "2")]
    np.testing.assert_allclose(st.mean, [img[..., 2].mean(), img[..., 0].mean()])
    assert channel_numbers(["w1", "w6"]) == [1, 6]
    with pytest.raises(InputError, match="expected w1..w6"):
        channel_numbers(["red"])
    with pytest.raises(InputError, match="no pixel statistics for E-1/3"):
        stats_for({("E-1", "2"): st}, "E-1", 3, "plate")
    with pytest.raises(InputError, match="lacks a row for some of channels"):
        group_stats(pd.DataFrame(rows[:2]), "plate", ("w1", "w3"))
    with pytest.raises(InputError, match="unknown normalisation level"):
        group_stats(pd.DataFrame(rows), "well")


def test_field_stats_give_every_site_its_groups_statistics():
    rng = np.random.default_rng(3)
    rows = []
    for exp in ("A-1", "B-1"):
        for plate in (1, 2):
            for well in ("B02", "B03"):
                for site in (1, 2):
                    rows += stats_rows(f"{exp}_{plate}_{well}", site, rng.gamma(2.0, 5.0 * (1 + plate), (4, 4, 6)))
    df = pd.DataFrame(rows)
    plate = field_stats(df, "plate")
    assert len(plate) == 16 and plate["A-1_2_B02_s1"] is plate["A-1_2_B03_s2"]
    assert plate["A-1_1_B02_s1"] is not plate["A-1_2_B02_s1"]
    site = field_stats(df, "site", ("w2",))
    one = df[(df["id_code"] == "B-1_1_B03") & (df["site"] == 2) & (df["channel"] == 2)].iloc[0]
    np.testing.assert_allclose(site["B-1_1_B03_s2"].mean, [one["mean"]])
    ctrl = field_stats(df, "experiment-controls", negative_controls={"A-1_1_B02", "B-1_2_B03"})
    np.testing.assert_allclose(ctrl["A-1_2_B03_s1"].mean, group_stats(df, "experiment", wells={"A-1_1_B02"})[("A-1",)].mean)
    with pytest.raises(InputError, match="no negative-control statistics for A-1/2"):
        field_stats(df, "plate-controls", negative_controls={"A-1_1_B02"})
    with pytest.raises(InputError, match="unknown normalisation 'batch'"):
        field_stats(df, "batch")


# --------------------------------------------------------------------------- fields on the reference scale


def test_to_reference_puts_the_batch_mean_and_std_on_fixed_uint16_values():
    img = np.array([[[10, 100], [30, 100]]], np.uint8)  # 1x2x2: w1 has mean 20 std 10; w2 is flat
    out = to_reference(img, np.array([20.0, 100.0]), np.array([10.0, 0.0]))
    assert out.dtype == np.uint16
    assert out[0, :, 0].tolist() == [REFERENCE_MEAN - REFERENCE_STD, REFERENCE_MEAN + REFERENCE_STD]
    assert out[0, :, 1].tolist() == [REFERENCE_MEAN] * 2
    far = to_reference(np.array([[[255]]], np.uint8), np.array([1.0]), np.array([1.0]))
    assert far[0, 0, 0] == 65535  # z beyond the scale is clipped, not wrapped


def test_field_normaliser_by_method(tmp_path):
    img = np.random.default_rng(0).integers(0, 60, (6, 6, 2)).astype(np.uint8)
    assert FieldNormaliser("none")("x", img) is img
    site = FieldNormaliser("site")("x", img).astype(float)
    np.testing.assert_allclose((site.reshape(-1, 2).mean(0) - REFERENCE_MEAN) / REFERENCE_STD, 0, atol=1e-3)
    np.testing.assert_allclose(site.reshape(-1, 2).std(0) / REFERENCE_STD, 1, atol=1e-3)
    st = ChannelStats(np.array([10.0, 20.0]), np.array([5.0, 5.0]), 2)
    plate = FieldNormaliser("plate", {"E-1_1_B02_s1": st})
    np.testing.assert_array_equal(plate("E-1_1_B02_s1", img), to_reference(img, st.mean, st.std))
    with pytest.raises(InputError, match="E-1_1_B03_s1: no pixel statistics for normalisation plate"):
        plate.subset(["E-1_1_B03_s1"])
    with pytest.raises(InputError, match="unknown normalisation 'gamma'"):
        FieldNormaliser("gamma")


def test_dataset_statistics_come_from_pixel_stats_and_the_negative_controls(tmp_path):
    rows = []
    for well, value in (("B02", 10.0), ("B03", 30.0)):
        rows += stats_rows(f"E-1_1_{well}", 1, np.full((2, 2, 6), value))
    pd.DataFrame(rows).to_csv(tmp_path / "pixel_stats.csv", index=False)
    (tmp_path / "train_controls.csv").write_text(
        "id_code,experiment,plate,well,sirna,well_type\nE-1_1_B02,E-1,1,B02,1138,negative_control\n")
    assert negative_control_wells(tmp_path) == {"E-1_1_B02"}
    plate = dataset_field_stats(tmp_path, "plate", ("w1", "w4"))
    np.testing.assert_allclose(plate["E-1_1_B03_s1"].mean, [20.0, 20.0])
    controls = dataset_field_stats(tmp_path, "plate-controls", ("w1",))
    np.testing.assert_allclose(controls["E-1_1_B03_s1"].mean, [10.0])
    assert dataset_field_stats(tmp_path, "site", ("w1",)) is None and dataset_field_stats(tmp_path, "none", ("w1",)) is None
    with pytest.raises(InputError, match="pixel_stats.csv: not found; normalisation experiment needs"):
        dataset_field_stats(tmp_path / "elsewhere", "experiment", ("w1",))

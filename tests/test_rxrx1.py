"""RxRx1 layout, CSV readers and the id_code,sirna submission, on hand-made files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellloc import rxrx1
from cellloc.errors import InputError
from cellloc.fieldio import write_png


def make_tree(root: Path, sites: dict[str, list[int]], size: int = 8, channels=rxrx1.CHANNELS) -> None:
    """Write ``{experiment}/Plate{p}/{well}_s{site}_w{c}.png`` with pixel value 10 * channel + site."""
    for id_code, site_list in sites.items():
        exp, plate, well = rxrx1.parse_id_code(id_code)
        for s in site_list:
            for ch in channels:
                value = 10 * int(ch[1:]) + s
                write_png(root / exp / f"Plate{plate}" / f"{well}_s{s}_{ch}.png", np.full((size, size), value, np.uint8))


def write(path: Path, text: str) -> Path:
    path.write_text(text.strip() + "\n")
    return path


# --------------------------------------------------------------------------- ids and layout


def test_ids_round_trip_and_cell_type():
    key = rxrx1.parse_field_id("HEPG2-01_3_B03_s2")
    assert (key.experiment, key.plate, key.well, key.site) == ("HEPG2-01", 3, "B03", 2)
    assert key.id_code == "HEPG2-01_3_B03" and key.field_id == "HEPG2-01_3_B03_s2"
    assert rxrx1.sample_of("U2OS-05_1_O23_s1") == "U2OS-05_1_O23"
    assert rxrx1.cell_type_of("HUVEC-17") == "HUVEC"
    assert rxrx1.field_id("RPE-02_4_C11", 1) == "RPE-02_4_C11_s1"
    with pytest.raises(InputError, match="not an RxRx1 field id"):
        rxrx1.sample_of("HEPG2-01_1_B03")


def test_label_set_and_wells_follow_the_real_design():
    assert rxrx1.LABELS.num_classes == 1139 == rxrx1.NUM_CLASSES
    assert rxrx1.LABELS.names[1138] == "negative_control" and len(rxrx1.POSITIVE_CONTROLS) == 30
    assert len(rxrx1.WELLS) == 308 == 277 + 31  # one group of 277 siRNAs + 31 controls per plate
    assert rxrx1.WELLS[0] == "B02" and rxrx1.WELLS[-1] == "O23"


def test_list_fields_finds_sites_incomplete_ones_and_strays(tmp_path):
    make_tree(tmp_path, {"HEPG2-01_1_B02": [1, 2], "HEPG2-01_2_C03": [1], "U2OS-01_1_B02": [1, 2]})
    (tmp_path / "HEPG2-01" / "Plate2" / "C03_s2_w1.png").write_bytes(
        (tmp_path / "HEPG2-01" / "Plate2" / "C03_s1_w1.png").read_bytes())
    (tmp_path / "HEPG2-01" / "notes.txt").write_text("x")
    (tmp_path / "HEPG2-01" / "Plate1" / "B02_w1.png").write_bytes(b"")
    listing = rxrx1.list_fields(tmp_path)
    assert listing.ids == ["HEPG2-01_1_B02_s1", "HEPG2-01_1_B02_s2", "HEPG2-01_2_C03_s1",
                           "U2OS-01_1_B02_s1", "U2OS-01_1_B02_s2"]
    assert listing.incomplete == {"HEPG2-01_2_C03_s2": ["w2", "w3", "w4", "w5", "w6"]}
    assert "HEPG2-01/notes.txt" in listing.unmatched and "HEPG2-01/Plate1/B02_*" in listing.unmatched


def test_list_fields_with_a_channel_subset_needs_only_those_files(tmp_path):
    make_tree(tmp_path, {"RPE-01_1_D04": [1]}, channels=("w1", "w4"))
    assert rxrx1.list_fields(tmp_path, ("w1", "w4")).ids == ["RPE-01_1_D04_s1"]
    assert rxrx1.list_fields(tmp_path).incomplete == {"RPE-01_1_D04_s1": ["w2", "w3", "w5", "w6"]}


def test_read_field_stacks_channels_in_the_order_asked(tmp_path):
    make_tree(tmp_path, {"HUVEC-02_4_K10": [1, 2]})
    img = rxrx1.read_field(tmp_path, "HUVEC-02_4_K10_s2")
    assert img.shape == (8, 8, 6) and img.dtype == np.uint8
    assert img[0, 0].tolist() == [12, 22, 32, 42, 52, 62]
    sub = rxrx1.read_field(tmp_path, "HUVEC-02_4_K10_s1", ("w5", "w1"))
    assert sub[0, 0].tolist() == [51, 11]
    assert rxrx1.channel_file(tmp_path, "HUVEC-02_4_K10_s2", "w1") == tmp_path / "HUVEC-02" / "Plate4" / "K10_s2_w1.png"


def test_read_field_names_the_missing_channel_file(tmp_path):
    make_tree(tmp_path, {"HUVEC-02_4_K10": [1]})
    (tmp_path / "HUVEC-02" / "Plate4" / "K10_s1_w3.png").unlink()
    with pytest.raises(InputError, match=r"Plate4/K10_s1_w3\.png: missing channel file"):
        rxrx1.read_field(tmp_path, "HUVEC-02_4_K10_s1")


def test_check_sites_reports_a_missing_site_or_channel(tmp_path):
    make_tree(tmp_path, {"HEPG2-01_1_B02": [1, 2], "HEPG2-01_1_B03": [1]})
    listing = rxrx1.list_fields(tmp_path)
    rxrx1.check_sites(listing, ["HEPG2-01_1_B02"], tmp_path)
    with pytest.raises(InputError, match=r"B03_s2_\*\.png: missing site 2 of well HEPG2-01_1_B03"):
        rxrx1.check_sites(listing, ["HEPG2-01_1_B02", "HEPG2-01_1_B03"], tmp_path)
    (tmp_path / "HEPG2-01" / "Plate1" / "B02_s2_w6.png").unlink()
    with pytest.raises(InputError, match=r"B02_s2_w6\.png: missing channel file\(s\) w6 of well HEPG2-01_1_B02"):
        rxrx1.check_sites(rxrx1.list_fields(tmp_path), ["HEPG2-01_1_B02"], tmp_path)


# --------------------------------------------------------------------------- CSVs


TRAIN = """
id_code,experiment,plate,well,sirna
HEPG2-01_1_B03,HEPG2-01,1,B03,513
U2OS-02_4_O23,U2OS-02,4,O23,0
"""
CONTROLS = """
id_code,experiment,plate,well,sirna,well_type
HEPG2-01_1_B04,HEPG2-01,1,B04,1138,negative_control
HEPG2-01_1_B05,HEPG2-01,1,B05,1108,positive_control
"""


def test_read_table_gives_the_label_frame_with_metadata(tmp_path):
    df = rxrx1.read_task_labels(write(tmp_path / "train.csv", TRAIN))
    assert list(df.columns) == ["ID", "Label", "labels", "experiment", "plate", "well", "cell_type", "well_type"]
    assert df["ID"].tolist() == ["HEPG2-01_1_B03", "U2OS-02_4_O23"]
    assert df["Label"].tolist() == ["513", "0"] and df["labels"].tolist() == [[513], [0]]
    assert df["cell_type"].tolist() == ["HEPG2", "U2OS"] and df["well_type"].tolist() == ["treatment"] * 2
    assert df["plate"].tolist() == ["1", "4"]
    ctrl = rxrx1.read_table(write(tmp_path / "train_controls.csv", CONTROLS))
    assert ctrl["well_type"].tolist() == ["negative_control", "positive_control"]
    assert ctrl["labels"].tolist() == [[1138], [1108]]


def test_read_split_joins_treatments_and_controls_and_test_has_no_labels(tmp_path):
    write(tmp_path / "test.csv", "id_code,experiment,plate,well\nHEPG2-08_2_C03,HEPG2-08,2,C03")
    write(tmp_path / "test_controls.csv", "id_code,experiment,plate,well,sirna,well_type\n"
          "HEPG2-08_2_C04,HEPG2-08,2,C04,1138,negative_control")
    df = rxrx1.read_split(tmp_path, "test")
    assert df["ID"].tolist() == ["HEPG2-08_2_C03", "HEPG2-08_2_C04"]
    assert df["Label"].tolist() == ["", "1138"] and df["labels"].tolist() == [[], [1138]]
    with pytest.raises(InputError, match="has no sirna column"):
        rxrx1.read_task_labels(tmp_path / "test.csv")


@pytest.mark.parametrize("text,message", [
    ("id_code,experiment,plate,well,sirna,site\nA-1_1_B03,A-1,1,B03,1,1", r"unknown column\(s\) site"),
    ("id_code,experiment,well,sirna\nA-1_1_B03,A-1,B03,1", r"missing column\(s\) plate"),
    ("id_code,experiment,plate,well,sirna\nA-1_1_B03,A-1,1,B03,1139", r"line 2: sirna 1139 outside 0\.\.1138"),
    ("id_code,experiment,plate,well,sirna\nA-1_1_B03,A-1,1,B03,x7", r"line 2: sirna 'x7' is not a class id"),
    ("id_code,experiment,plate,well,sirna\nA-1_1_B03,A-1,1,B03,1\nA-1_1_B03,A-1,1,B03,2",
     r"line 3: well A-1_1_B03 listed twice \(first on line 2\)"),
    ("id_code,experiment,plate,well,sirna\nA-1_2_B03,A-1,1,B03,1", r"id_code 'A-1_2_B03' does not match"),
    ("id_code,experiment,plate,well,sirna\nA-1_1_B3,A-1,1,B3,1", r"well 'B3' is not a plate well"),
    ("id_code,experiment,plate,well,sirna\nA-1_1_B03,A-1,1,B03,1108", r"sirna 1108 is a positive_control, not a treatment"),
    ("id_code,experiment,plate,well,sirna,well_type\nA-1_1_B03,A-1,1,B03,1138,control", r"unknown well_type 'control'"),
    # physical lines: a blank line counts, a ragged row is named, not shifted into other columns
    ("id_code,experiment,plate,well,sirna\nA-1_1_B03,A-1,1,B03,1\n\nA-1_1_B04,A-1,1,B04,x7", r"line 4: sirna 'x7'"),
    ("id_code,experiment,plate,well,sirna\nA-1_1_B03,A-1,1,B03,1,2\n", r"line 2: 6 field\(s\) where the header"),
])
def test_bad_tables_fail_in_one_line(tmp_path, text, message):
    with pytest.raises(InputError, match=message) as err:
        rxrx1.read_table(write(tmp_path / "train.csv", text))
    assert "\n" not in str(err.value)


def test_a_well_in_both_train_and_controls_is_an_error(tmp_path):
    write(tmp_path / "train.csv", TRAIN)
    write(tmp_path / "train_controls.csv", CONTROLS.replace("B04,1138", "B03,1138").replace("HEPG2-01_1_B04", "HEPG2-01_1_B03"))
    with pytest.raises(InputError, match="well HEPG2-01_1_B03 is listed in train.csv too"):
        rxrx1.read_split(tmp_path, "train")


PIXEL_STATS = """
id_code,experiment,plate,well,site,channel,mean,std,median,min,max
HEPG2-01_1_B03,HEPG2-01,1,B03,1,1,10.5,3.0,10,0,200
HEPG2-01_1_B03,HEPG2-01,1,B03,1,2,20.0,4.0,19,1,180
"""


def test_pixel_stats_are_read_as_numbers_and_checked(tmp_path):
    df = rxrx1.read_pixel_stats(write(tmp_path / "pixel_stats.csv", PIXEL_STATS))
    assert df["mean"].tolist() == [10.5, 20.0] and df["channel"].tolist() == [1, 2] and df["site"].dtype.kind == "i"
    with pytest.raises(InputError, match="line 3: well HEPG2-01_1_B03 site 1 channel 1 listed twice"):
        rxrx1.read_pixel_stats(write(tmp_path / "p.csv", PIXEL_STATS.replace(",1,2,20.0", ",1,1,20.0")))
    with pytest.raises(InputError, match=r"line 2: mean 'n/a' is not a number"):
        rxrx1.read_pixel_stats(write(tmp_path / "p.csv", PIXEL_STATS.replace("10.5", "n/a")))
    with pytest.raises(InputError, match=r"missing column\(s\) std"):
        rxrx1.read_pixel_stats(write(tmp_path / "p.csv", "id_code,experiment,plate,well,site,channel,mean,median,min,max\n"
                                     "a_1_B03,a,1,B03,1,1,1,1,1,1"))


# --------------------------------------------------------------------------- submission


def test_submission_round_trip_check_and_accuracy_per_cell_type(tmp_path):
    truth = {"HEPG2-08_1_B03": 5, "HEPG2-08_1_B04": 7, "U2OS-04_1_B03": 1, "U2OS-04_2_C05": 2}
    write(tmp_path / "labels.csv", "id_code,sirna\n" + "\n".join(f"{k},{v}" for k, v in truth.items()))
    sub = tmp_path / "submission.csv"
    rxrx1.write_submission(sub, [("HEPG2-08_1_B03", 5), ("HEPG2-08_1_B04", 9), ("U2OS-04_1_B03", 1), ("U2OS-04_2_C05", 2)])
    assert sub.read_text().splitlines()[0] == "id_code,sirna"
    assert rxrx1.check_submission(sub, expected_ids=truth) == []
    table, line = rxrx1.evaluate_submission(tmp_path, sub)
    assert line == "accuracy=0.7500"
    by = table.set_index("cell_type")
    assert by.loc["HEPG2", "accuracy"] == 0.5 and by.loc["U2OS", "accuracy"] == 1.0 and by.loc["all", "wells"] == 4


def test_check_lists_every_problem_by_line(tmp_path):
    sub = write(tmp_path / "s.csv", "id_code,sirna\nA-1_1_B03,5\nA-1_1_B03,6\nA-1_1_B04,abc\nA-1_1_B05,2000\nA-1_1_B06\n,3")
    problems = rxrx1.check_submission(sub, expected_ids=["A-1_1_B03", "A-1_1_B04", "A-1_1_B05", "A-1_1_B07"])
    assert problems == [
        (3, "id_code 'A-1_1_B03' repeated (first on line 2)"),
        (4, "sirna 'abc' is not a class id"),
        (5, "sirna 2000 outside 0..1138"),
        (6, "1 fields; expected 2 (id_code,sirna)"),
        (7, "empty id_code"),
        (0, "1 id_code(s) missing: A-1_1_B07"),
    ]
    assert rxrx1.check_submission(write(tmp_path / "h.csv", "Id,Predicted\nA-1_1_B03,5"))[0] == (
        1, "header 'Id,Predicted'; expected id_code,sirna")


def test_evaluate_refuses_a_submission_for_other_wells(tmp_path):
    write(tmp_path / "labels.csv", "id_code,sirna\nA-1_1_B03,5")
    sub = write(tmp_path / "s.csv", "id_code,sirna\nA-1_1_B03,5\nB-1_1_B03,5")
    with pytest.raises(InputError, match="'B-1_1_B03' is not in the truth"):
        rxrx1.evaluate_submission(tmp_path / "labels.csv", sub)
    with pytest.raises(InputError, match="lacks 1 of the 1 truth wells"):
        rxrx1.evaluate_submission(tmp_path, write(tmp_path / "e.csv", "id_code,sirna"))


def test_write_submission_refuses_a_repeated_id_and_leaves_no_file(tmp_path):
    with pytest.raises(ValueError, match="written twice"):
        rxrx1.write_submission(tmp_path / "s.csv", [("a_1_B03", 1), ("a_1_B03", 2)])
    assert list(tmp_path.iterdir()) == []


def test_preview_draws_two_composites_per_site(tmp_path):
    make_tree(tmp_path, {"HEPG2-01_1_B02": [1, 2]}, size=16)
    pic = rxrx1.preview(tmp_path, ["HEPG2-01_1_B02_s1", "HEPG2-01_1_B02_s2"], tile=32)
    assert pic.shape == (2 * (18 + 32), 64, 3) and pic.dtype == np.uint8


def test_label_frame_metadata_are_strings(tmp_path):
    df = rxrx1.read_table(write(tmp_path / "train.csv", TRAIN))
    assert all(isinstance(v, str) for c in ("experiment", "plate", "well", "cell_type", "well_type") for v in df[c])
    assert isinstance(df, pd.DataFrame)


# --------------------------------------------------------------------------- encoding scores as a submission


def test_encode_picks_treatments_only_and_can_assign_by_plate(tmp_path):
    # train.csv: two plates with groups {0, 1} and {2, 3}
    write(tmp_path / "train.csv", "id_code,experiment,plate,well,sirna\n"
          "A-1_1_B02,A-1,1,B02,0\nA-1_1_B03,A-1,1,B03,1\nA-1_2_B02,A-1,2,B02,2\nA-1_2_B03,A-1,2,B03,3")
    assert rxrx1.plate_groups_of(tmp_path / "train.csv") == [frozenset({0, 1}), frozenset({2, 3})]
    probs = np.full((3, rxrx1.NUM_CLASSES), 1e-6)
    probs[0, [1, 1138]] = [0.3, 0.6]  # a control class wins the raw argmax: never the answer for a test well
    probs[1, [1, 0]] = [0.5, 0.4]  # both wells of plate 1 prefer siRNA 1; only the second has 0 as a close second
    probs[2, [2, 3]] = [0.2, 0.1]  # plate 2 holds group {2, 3}
    ids = ["T-1_1_C02", "T-1_1_C03", "T-1_2_C02"]
    assert rxrx1.encode_submission(ids, probs) == [("T-1_1_C02", 1), ("T-1_1_C03", 1), ("T-1_2_C02", 2)]
    assigned = rxrx1.encode_submission(ids, probs, plate_groups=tmp_path / "train.csv")
    assert assigned == [("T-1_1_C02", 1), ("T-1_1_C03", 0), ("T-1_2_C02", 2)]


def test_a_site_lacking_a_channel_is_not_silently_left_out_of_training(tmp_path):
    """The well's other site alone would stand for it; training says which file is missing instead."""
    from cellloc.data import expand_to_fields

    make_tree(tmp_path, {"HEPG2-01_1_B02": [1, 2], "U2OS-01_1_B02": [1, 2]})
    (tmp_path / "HEPG2-01" / "Plate1" / "B02_s2_w3.png").unlink()
    samples = pd.DataFrame({"ID": ["HEPG2-01_1_B02", "U2OS-01_1_B02"], "Label": ["0", "1"]})
    with pytest.raises(InputError) as err:
        expand_to_fields(samples, "rxrx1", tmp_path, rxrx1.CHANNELS)
    assert str(err.value) == (f"{tmp_path}: field HEPG2-01_1_B02_s2 of sample 'HEPG2-01_1_B02' lacks channel file(s) w3; "
                              "restore them, or drop the sample from the folds table")
    rows = expand_to_fields(samples[1:], "rxrx1", tmp_path, rxrx1.CHANNELS)  # other samples' gaps do not count
    assert rows["field_id"].tolist() == ["U2OS-01_1_B02_s1", "U2OS-01_1_B02_s2"]


def test_a_folder_given_as_the_submission_is_named_as_a_folder(tmp_path):
    with pytest.raises(InputError, match=f"{tmp_path}: is a folder, not a CSV file"):
        rxrx1.check_submission(tmp_path)

"""The task records and the registries they name (layouts, label readers, submission formats)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellloc.errors import InputError
from cellloc.fieldio import write_png
from cellloc.generators import GENERATORS
from cellloc.labels import LABEL_READERS, read_task_labels
from cellloc.layouts import LAYOUTS
from cellloc.registry import Registry
from cellloc.submission_formats import FORMATS
from cellloc.tasks import TASKS, Task, get_task


def test_the_three_tasks():
    sc, y18, rx = get_task("hpa-sc"), get_task("hpa-2018"), get_task("rxrx1")
    assert (sc.num_classes, sc.label_set.negative, sc.level, sc.kind) == (19, 18, "cell", "multilabel")
    assert (y18.num_classes, y18.label_set.negative, y18.level, y18.kind) == (28, None, "image", "multilabel")
    assert (rx.num_classes, rx.level, rx.kind, rx.loss) == (1139, "image", "multiclass", "ce")
    assert rx.label_set.names[1107] == "sirna_1107" and rx.label_set.names[1138] == "negative_control"  # 31 controls after the 1,108
    assert sc.channels == y18.channels == ("red", "green", "blue", "yellow")
    assert rx.channels == ("w1", "w2", "w3", "w4", "w5", "w6") and rx.nucleus_channel == "w1"
    assert (sc.metrics[0], y18.metrics[0], rx.metrics[0]) == ("macro_ap", "macro_f1", "accuracy")
    assert (sc.submission, y18.submission, rx.submission) == ("hpa-sc-rle", "hpa-2018", "rxrx1")
    assert sc.data_dir("test", test=True).as_posix() == "input/synth_test/test"
    assert sc.truth_dir().as_posix() == "input/synth_test/truth" and y18.submission_path().as_posix() == "output/hpa2018_test/submission.csv"
    assert rx.data_dir("test", test=True).as_posix() == "input/rxrx1/test"  # one generated design holds both splits
    assert sc.segment_channels() == {"channels": sc.channels, "nucleus_channel": "blue", "cell_channels": ("red", "yellow")}


def test_every_name_a_task_gives_is_registered_or_provided():
    for task in TASKS.values():
        assert task.layout in LAYOUTS.names()
        assert task.labels_csv in LABEL_READERS.names()
        assert task.submission in FORMATS.names()
        assert task.name in GENERATORS.names()


def test_the_dataset_modules_provide_their_entries_on_first_lookup():
    from cellloc import hpa2018, rxrx1, synth_hpa2018, synth_rxrx1

    assert LAYOUTS["rxrx1"] is rxrx1 and LABEL_READERS["rxrx1"] is rxrx1.read_task_labels
    assert LABEL_READERS["hpa-2018"] is hpa2018.read_labels
    assert FORMATS["rxrx1"].columns == ("id_code", "sirna") and FORMATS["hpa-2018"].columns == ("Id", "Predicted")
    assert FORMATS["hpa-2018"].show is hpa2018.format_table
    assert GENERATORS["rxrx1"].write.__module__ == synth_rxrx1.__name__
    assert GENERATORS["hpa-2018"].write.__module__ == synth_hpa2018.__name__
    assert rxrx1.LABELS is get_task("rxrx1").label_set


def test_generator_options_set_the_task_generators_own_config():
    from cellloc.generators import MakeDataConfig, generator_config
    from cellloc.synth_rxrx1 import RxRx1SynthConfig

    cfg = MakeDataConfig(task="rxrx1", options=["sirnas=8", "cell_types=[HEPG2, U2OS]", "noise=1", "train_experiments=[1, 2]"])
    synth = generator_config(RxRx1SynthConfig, cfg, seed=3, size=64)
    assert (synth.seed, synth.size, synth.sirnas, synth.cell_types, synth.noise) == (3, 64, 8, ("HEPG2", "U2OS"), 1.0)
    assert synth.train_experiments == (1, 2)
    for bad, message in (("sirna=8", "KEY one of seed, size, sirnas"), ("sirnas", "expected KEY=VALUE"),
                         ("sirnas=many", "sirnas takes int values"), ("sirnas=2", "rxrx1 generator: sirnas must be within")):
        with pytest.raises(InputError, match=message):
            generator_config(RxRx1SynthConfig, MakeDataConfig(task="rxrx1", options=[bad]))


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(InputError, match="unknown task 'hpa-2019'; known: hpa-2018, hpa-sc, rxrx1"):
        get_task("hpa-2019")


def test_task_record_checks_itself():
    sc = get_task("hpa-sc")
    fields = {f: getattr(sc, f) for f in sc.__dataclass_fields__}
    with pytest.raises(ValueError, match="level must be one of"):
        Task(**{**fields, "level": "tile"})
    with pytest.raises(ValueError, match=r"segmentation channel\(s\) \['w1'\]"):
        Task(**{**fields, "nucleus_channel": "w1"})


def test_registry_plugins_load_on_first_lookup():
    reg: Registry[int] = Registry("widget", plugins={"json-widget": "json", "gone": "cellloc.no_such_module"})
    reg.register("one")(1)
    assert reg["one"] == 1 and reg.names() == ["gone", "json-widget", "one"]
    with pytest.raises(InputError, match="widget 'json-widget': json was imported but did not register it"):
        reg["json-widget"]
    with pytest.raises(InputError, match="widget 'gone' is provided by cellloc.no_such_module, which this installation lacks"):
        reg["gone"]
    with pytest.raises(InputError, match="unknown widget 'two'; known: gone, json-widget, one"):
        reg["two"]
    assert "two" not in reg and reg.get("two") is None


def test_flat_layout_reads_fields_and_samples_are_fields(tmp_path):
    layout = LAYOUTS["flat"]
    for ch, value in zip(("red", "green", "blue", "yellow"), (1, 2, 3, 4)):
        write_png(tmp_path / f"57_F11_1_{ch}.png", np.full((5, 6), value, np.uint8))
    write_png(tmp_path / "half_red.png", np.zeros((5, 6), np.uint8))
    listing = layout.list_fields(tmp_path, get_task("hpa-sc").channels)
    assert listing.ids == ["57_F11_1"] and listing.incomplete == {"half": ["green", "blue", "yellow"]}
    image = layout.read_field(tmp_path, "57_F11_1", ("blue", "red"))
    assert image.shape == (5, 6, 2) and image[0, 0].tolist() == [3, 1]
    assert layout.sample_of("57_F11_1") == "57_F11_1"


def test_hpa_sc_labels_are_canonical(tmp_path):
    path = tmp_path / "train.csv"
    pd.DataFrame({"ID": ["a", "b"], "Label": ["16|0", "18"], "antibody": ["x", "y"]}).to_csv(path, index=False)
    df = read_task_labels(path, get_task("hpa-sc"))
    assert df["Label"].tolist() == ["0|16", "18"] and df["labels"].tolist() == [[0, 16], [18]]
    assert df["antibody"].tolist() == ["x", "y"]
    pd.DataFrame({"ID": ["a"], "Label": ["19"]}).to_csv(path, index=False)
    with pytest.raises(InputError, match="line 2: unknown class id 19"):
        read_task_labels(path, get_task("hpa-sc"))

"""Every script takes ``--task`` and ``--config``; the config a run saves re-runs it, giving the same files.

Training re-runs from its ``config.json`` in ``test_training.py`` and prediction from its
``predict_config.json`` in ``test_predict.py``; here the data, segmentation and folds steps.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from test_evaluate_cli import load_script

SRC = Path(__file__).resolve().parents[1] / "src"
SCRIPTS = sorted(p.stem for p in SRC.glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_takes_a_task_and_a_config_file(script, capsys):
    with pytest.raises(SystemExit) as stop:
        load_script(script).main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "--task {" in out and "--config FILE" in out


def files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path, without the saved configs (they name their own output)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.endswith("_config.json")}


def test_saved_configs_rerun_data_segmentation_and_folds(tmp_path):
    """make_data -> segment -> gen_folds, then each again from only its saved config and a new output."""
    make = load_script("make_data").main
    make(["--task", "hpa-sc", "--root", str(tmp_path), "--name", "data", "--fields", "3", "--size", "128", "--seed", "3"])
    make(["--config", str(tmp_path / "data" / "make_data_config.json"), "--name", "again"])
    first = files(tmp_path / "data")
    assert len([k for k in first if k.startswith("train/")]) == 12 and first == files(tmp_path / "again")

    segment = load_script("segment").main
    assert segment(["--input", str(tmp_path / "data" / "train"), "--out", str(tmp_path / "seg")]) == 0
    assert segment(["--config", str(tmp_path / "seg" / "segment_config.json"), "--out", str(tmp_path / "seg2")]) == 0
    first = files(tmp_path / "seg")
    assert "cells.csv" in first and first == files(tmp_path / "seg2")

    folds = load_script("gen_folds").main
    folds(["--cells", str(tmp_path / "seg" / "cells.csv"), "--out", str(tmp_path / "f" / "folds.csv"), "--folds", "2", "--seed", "7"])
    folds(["--config", str(tmp_path / "f" / "folds_config.json"), "--out", str(tmp_path / "f2" / "folds.csv")])
    assert (tmp_path / "f" / "folds.csv").read_bytes() == (tmp_path / "f2" / "folds.csv").read_bytes()
    assert (tmp_path / "f" / "folds_balance.csv").read_bytes() == (tmp_path / "f2" / "folds_balance.csv").read_bytes()

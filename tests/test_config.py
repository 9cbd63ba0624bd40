"""Configs as data: defaults, then a YAML/JSON file, then command-line flags; a saved config re-runs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from cellloc.config import load_config, opt, parse_config, read_config_file, save_config
from cellloc.errors import InputError
from cellloc.generators import MakeDataConfig
from cellloc.runs.folds import FoldsConfig


@dataclass
class Demo:
    name: str = opt("a", "a name")
    count: int = opt(1, "a count")
    rate: float = opt(0.5, "a rate")
    sizes: list[int] = opt([512], "sizes")
    flag: bool = opt(False, "a switch")
    maybe: str | None = opt(None, "optional")
    path: str = opt("in", "positional")
    max_side: int = opt(3, "a two-word option")

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError(f"count must be >= 0, got {self.count}")


def test_file_values_sit_between_defaults_and_flags(tmp_path):
    yml = tmp_path / "c.yaml"
    yml.write_text("name: b\ncount: 3\nrate: 1e-3\nsizes: [128, 256]\nflag: true\n")
    cfg = parse_config(Demo, ["--config", str(yml), "--count", "7"])
    assert (cfg.name, cfg.count, cfg.rate, cfg.sizes, cfg.flag, cfg.maybe) == ("b", 7, 1e-3, [128, 256], True, None)
    assert parse_config(Demo, ["--config", str(yml), "--no-flag"]).flag is False
    assert parse_config(Demo, ["--sizes", "64", "--config", str(yml)]).sizes == [64]  # order of flags does not matter
    assert parse_config(Demo, []) == Demo()


def test_json_file_with_dashed_keys_and_a_positional(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"path": "from-file", "count": 2, "max-side": 9}))
    assert parse_config(Demo, ["--config", str(path)], positional=("path",)) == Demo(count=2, path="from-file", max_side=9)
    assert parse_config(Demo, ["given", "--config", str(path)], positional=("path",)).path == "given"


def test_saved_config_reads_back_equal(tmp_path):
    cfg = Demo(name="x", count=4, sizes=[1, 2], flag=True, maybe="m")
    save_config(cfg, tmp_path / "saved.json")
    assert json.loads((tmp_path / "saved.json").read_text())["_config"] == "Demo"
    assert load_config(Demo, tmp_path / "saved.json") == cfg
    assert parse_config(Demo, ["--config", str(tmp_path / "saved.json")]) == cfg


@pytest.mark.parametrize(
    "text, suffix, message",
    [
        ("count: x\n", ".yaml", "count: expected an integer, got 'x'"),
        ("count: 1.5\n", ".yaml", "count: expected an integer, got 1.5"),
        ("flag: 1\n", ".yaml", "flag: expected true or false, got 1"),
        ("sizes: 3\n", ".yaml", "sizes: expected a list, got 3"),
        ("colour: red\n", ".yaml", "unknown option 'colour' for Demo"),
        ("count: -1\n", ".yaml", "count must be >= 0, got -1"),
        ("- a\n- b\n", ".yaml", "a config file holds a mapping of option names to values, got list"),
        ("name: [unclosed\n", ".yaml", "not valid YAML"),
        ('{"count": }', ".json", "not valid JSON"),
        ('{"_config": "TrainConfig"}', ".json", "is a TrainConfig (another stage's config), not a Demo"),
    ],
)
def test_bad_config_files_are_one_line_errors(tmp_path, text, suffix, message):
    path = tmp_path / f"c{suffix}"
    path.write_text(text)
    with pytest.raises(InputError) as exc:
        parse_config(Demo, ["--config", str(path)])
    assert message in str(exc.value) and "\n" not in str(exc.value)
    if "must be >= 0" not in message:
        assert str(path) in str(exc.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(InputError, match="config file not found"):
        read_config_file(tmp_path / "none.yaml", Demo)


def test_task_defaults_are_resolved_and_saved(tmp_path):
    """A config saved after its task filled the defaults re-runs the same way if the defaults change."""
    cfg = parse_config(MakeDataConfig, ["--task", "rxrx1"])
    assert cfg.name == "rxrx1" and cfg.out_dir == Path("input/rxrx1")
    save_config(parse_config(FoldsConfig, ["--task", "rxrx1"]), tmp_path / "folds_config.json")
    saved = json.loads((tmp_path / "folds_config.json").read_text())
    assert saved["labels"] == "input/rxrx1/train.csv" and saved["task"] == "rxrx1"
    with pytest.raises(SystemExit):  # argparse: not one of the choices
        parse_config(FoldsConfig, ["--task", "hpa-2019"])


def test_a_config_of_another_task_is_one_line_naming_it(tmp_path):
    saved = tmp_path / "config.json"
    save_config(parse_config(FoldsConfig, ["--task", "rxrx1"]), saved)
    with pytest.raises(InputError) as exc:
        parse_config(FoldsConfig, ["--task", "hpa-2018", "--config", str(saved)])
    assert str(exc.value) == (f"{saved}: a config of task rxrx1, not hpa-2018; drop --task hpa-2018, "
                              "or pass a config of hpa-2018")
    assert parse_config(FoldsConfig, ["--task", "rxrx1", "--config", str(saved)]).task == "rxrx1"


def test_a_bad_value_met_with_a_config_file_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("count: 2\n")
    with pytest.raises(InputError, match=rf"count must be >= 0, got -1 \(options from {path} and the command line\)"):
        parse_config(Demo, ["--config", str(path), "--count", "-1"])


def test_a_recipe_is_not_a_training_config(tmp_path):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"task": "hpa-sc", "model": "efficientnet-b2", "in_chans": 4}))
    with pytest.raises(InputError, match=r"recipe.json: is a model's recipe .* the config.json beside it"):
        parse_config(Demo, ["--config", str(recipe)])

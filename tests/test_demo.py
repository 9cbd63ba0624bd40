"""The HPA single-cell demo's recipe: which options its train and predict stages get."""

from __future__ import annotations

import dataclasses

import pytest

from cellloc.errors import InputError

from test_evaluate_cli import load_script


@pytest.fixture
def demo():
    return load_script("demo")


def stages_of(demo, argv: list[str], monkeypatch) -> dict[str, list[str]]:
    """Run the hpa-sc demo with every stage recorded instead of run: {script name: its first call's arguments}."""
    seen: dict[str, list[str]] = {}

    def record(title, args, capture=False, log=None):
        seen.setdefault(args[0].removeprefix("src/").removesuffix(".py"), args[1:])
        return ["mAP=0.5"] if capture else []

    monkeypatch.setattr(demo, "run", record)
    cfg = demo.parse_config(demo.DemoConfig, argv)
    assert demo.hpa_single_cell(cfg) == ["mAP=0.5"]
    return seen


def value_of(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_the_hpa_sc_demo_trains_resnet18_class_balanced_and_predicts_one_view(demo, monkeypatch):
    stages = stages_of(demo, [], monkeypatch)
    defaults = demo.DEMO_DEFAULTS["hpa-sc"]
    assert value_of(stages["make_data"], "--fields") == str(defaults["fields"])
    assert value_of(stages["make_data"], "--workers") == demo.DATA_WORKERS == "2"
    assert value_of(stages["segment"], "--workers") == value_of(stages["predict"], "--workers") == demo.FIELD_WORKERS == "2"
    assert value_of(stages["train"], "--epochs") == str(defaults["epochs"])
    assert value_of(stages["train"], "--balance-power") == "0.5"
    assert value_of(stages["train"], "--model") == "resnet18"
    assert value_of(stages["train"], "--student-init") == "teacher"
    assert value_of(stages["predict"], "--tta") == "1" == str(defaults["tta"])
    assert value_of(stages["gen_folds"], "--folds") == str(defaults["folds"])


def test_the_hpa_sc_demo_passes_the_given_views_balance_and_student_start_on(demo, monkeypatch):
    stages = stages_of(demo, ["--tta", "8", "--balance-power", "0", "--epochs", "3", "--folds", "10",
                              "--student-init", "scratch"], monkeypatch)
    assert value_of(stages["gen_folds"], "--folds") == "10"
    assert value_of(stages["train"], "--student-init") == "scratch"
    assert value_of(stages["predict"], "--tta") == "8"
    assert value_of(stages["train"], "--balance-power") == "0.0"
    assert value_of(stages["train"], "--epochs") == "3"


def test_the_hpa_sc_demo_draws_training_and_test_classes_the_same_given_way(demo, monkeypatch):
    calls: list[list[str]] = []
    monkeypatch.setattr(demo, "run", lambda title, args, capture=False, log=None: (calls.append(args), ["mAP=0.5"])[1])
    for draw in ("stratified", "balanced"):
        calls.clear()
        argv = [] if draw == "stratified" else ["--class-draw", draw]
        demo.hpa_single_cell(demo.parse_config(demo.DemoConfig, argv))
        data = [args for args in calls if args[0] == "src/make_data.py"]
        assert len(data) == 2 and all(value_of(args, "--options") == f"class_draw={draw}" for args in data)
    with pytest.raises(SystemExit):
        demo.parse_config(demo.DemoConfig, ["--class-draw", "sobol"])


def test_the_demo_refuses_views_predict_py_has_not(demo):
    with pytest.raises(SystemExit):
        demo.parse_config(demo.DemoConfig, ["--tta", "3"])


def test_the_demo_help_names_each_task_default_it_takes(demo):
    """--help says what a 0 takes, read from DEMO_DEFAULTS, so the two cannot drift apart."""
    helps = {f.name: f.metadata["help"] for f in dataclasses.fields(demo.DemoConfig)}
    for key in ("size", "epochs", "folds"):
        for task, sizes in demo.DEMO_DEFAULTS.items():
            assert f"{task} {sizes[key]}" in helps[key], (key, task)


def data_seeds(demo, argv: list[str], monkeypatch) -> tuple[str, str]:
    """The generator seeds of a demo's training and test fields (its two make_data calls)."""
    calls: list[list[str]] = []

    def record(title, args, capture=False, log=None):
        if args[0] == "src/make_data.py":
            calls.append(args[1:])
        return ["mAP=0.5", "macro_F1_at_0.5=0.1", "macro_F1_global=0.1", "macro_F1=0.1"] if capture else []

    monkeypatch.setattr(demo, "run", record)
    cfg = demo.parse_config(demo.DemoConfig, argv)
    demo.DEMOS[cfg.task](cfg)
    train, test = calls
    assert "--split" not in train and value_of(test, "--split") == "test"
    return value_of(train, "--seed"), value_of(test, "--seed")


@pytest.mark.parametrize("task", ["hpa-sc", "hpa-2018"])
def test_the_test_fields_follow_the_seed_unless_a_test_seed_fixes_them(demo, monkeypatch, task):
    t = ["--task", task]
    assert data_seeds(demo, [*t, "--seed", "3"], monkeypatch) == ("6", "7")
    assert data_seeds(demo, [*t, "--seed", "3", "--test-seed", "1"], monkeypatch) == ("6", "1")
    assert data_seeds(demo, [*t, "--seed", "0", "--test-seed", "1"], monkeypatch) == ("0", "1")
    with pytest.raises(InputError, match="test_seed 4 draws the training fields"):  # one line at the command line
        demo.parse_config(demo.DemoConfig, [*t, "--seed", "2", "--test-seed", "4"])

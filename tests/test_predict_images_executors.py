"""Image-level prediction (HPA-2018, RxRx1 models) on every executor: the same bytes, the same
failure row, and a resumed run that redoes only the chunks it lacks.

Each task's tiny model (EfficientNet-B0 at 32 px, one epoch) is trained once for the module; the
test split gets one unreadable field. Chunks of 2 fields make several units of work per run.
"""

from __future__ import annotations

import importlib.util
import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellloc import rxrx1
from cellloc.layouts import LAYOUTS
from cellloc.tasks import get_task

from conftest import module_folder, run_then_kill
from test_evaluate_cli import load_script
from test_predict import assert_same_but_float_noise
from test_task_runs import TINY, make_hpa2018, make_rxrx1

needs_dask = pytest.mark.skipif(importlib.util.find_spec("distributed") is None,
                                reason='the dask executor needs pip install -e ".[distributed]"')
MAKERS = {"hpa-2018": make_hpa2018, "rxrx1": make_rxrx1}


def channel_file(task_name: str, split_dir: Path, field_id: str) -> Path:
    """The first channel file of one field, in the task's own layout."""
    if task_name == "rxrx1":
        return rxrx1.channel_file(split_dir, field_id, "w1")
    return split_dir / f"{field_id}_red.png"


@pytest.fixture(scope="module", params=list(MAKERS))
def image_run(request, tmp_path_factory) -> dict:
    """A trained tiny run of the task and a copy of its test split with one broken field."""
    task_name = request.param
    task = get_task(task_name)
    with module_folder(tmp_path_factory, task_name) as root:
        train_data, test_data = MAKERS[task_name](root / "input")
        folds = root / "folds.csv"
        group = ["--group-col", "experiment"] if task_name == "rxrx1" else []
        load_script("gen_folds").main(["--task", task_name, "--labels", str(train_data / "train.csv"), "--out", str(folds),
                                       "--folds", "2", *group])
        assert load_script("train").main(["--task", task_name, "--folds-csv", str(folds), "--input", str(train_data / "train"),
                                          "--out-dir", str(root / "models"), "--run-name", "tiny", *TINY]) == 0
        test = root / "test_split" / "test"
        shutil.copytree(test_data / "test", test)
        for table in test_data.glob("*.csv"):  # sample submission; RxRx1's pixel_stats.csv for its plate normalisation
            shutil.copy(table, test.parent / table.name)
        expected = set(pd.read_csv(test.parent / "sample_submission.csv", dtype=str).iloc[:, 0])
        layout = LAYOUTS[task.layout]
        ids = [i for i in layout.list_fields(test, task.channels).ids if layout.sample_of(i) in expected]
        bad = ids[1]
        channel_file(task_name, test, bad).write_bytes(b"\x89PNG\r\n\x1a\n broken")
        yield {"task": task_name, "models": root / "models" / "tiny", "test": test, "bad": bad, "fields": len(ids)}


def same_as(got: dict[str, bytes], serial: dict[str, bytes]) -> bool:
    """The tables and the submission as text, numbers to their last printed place; the per-chunk
    score files field for field, their float32 probabilities to 1e-3 (a worker's thread count can move
    their last bits: see :func:`test_predict.assert_same_but_float_noise`)."""
    assert got.keys() == serial.keys()
    tables = [n for n in serial if not n.startswith("field_scores/")]
    assert_same_but_float_noise({n: got[n] for n in tables}, {n: serial[n] for n in tables})
    for name, data in serial.items():
        if not name.startswith("field_scores/"):
            continue
        with np.load(io.BytesIO(got[name])) as a, np.load(io.BytesIO(data)) as b:
            assert [a[k].tolist() for k in ("ids", "got", "failed")] == [b[k].tolist() for k in ("ids", "got", "failed")], name
            np.testing.assert_allclose(a["probs"], b["probs"], rtol=0, atol=1e-3, err_msg=name)
    return True


def outputs(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "predict_config.json" and not p.name.startswith(".")}


def predict(run: dict, out: Path, *extra: str) -> int:
    return load_script("predict").main(["--models", str(run["models"]), "--input", str(run["test"]), "--out", str(out),
                                        "--chunk", "2", *extra])


@pytest.fixture(scope="module")
def serial(image_run, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("serial")
    assert predict(image_run, out) == 1  # the broken field fails, the others are scored
    return outputs(out)


def test_serial_run_scores_every_chunk_and_lists_the_bad_field(image_run, serial):
    parts = [k for k in serial if k.startswith("field_scores/")]
    assert len(parts) == (image_run["fields"] + 1) // 2 >= 2
    failures = serial["predict_failures.csv"].decode().splitlines()
    assert len(failures) == 2 and failures[1].startswith(f"{image_run['bad']},")


@pytest.mark.parametrize("executor", ["process", pytest.param("dask", marks=needs_dask)])
def test_every_executor_writes_the_same_bytes(image_run, serial, executor, tmp_path):
    out = tmp_path / executor
    assert predict(image_run, out, "--executor", executor, "--workers", "2") == 1
    assert same_as(outputs(out), serial)


@needs_dask
def test_a_rerun_redoes_only_the_missing_chunks(image_run, serial, tmp_path, capsys):
    out = tmp_path / "dask"
    assert predict(image_run, out, "--executor", "dask", "--workers", "2") == 1
    (out / "field_scores" / "part00001.npz").unlink()  # as if the run had been killed before this chunk
    (out / "submission.csv").unlink()
    capsys.readouterr()
    assert predict(image_run, out, "--executor", "dask", "--workers", "1") == 1
    assert f"2 fields predicted, {image_run['fields'] - 2} already done" in capsys.readouterr().out
    assert same_as(outputs(out), serial)


@needs_dask
def test_a_killed_dask_run_rerun_keeps_finished_chunks_and_gives_the_serial_files(image_run, serial, tmp_path, capsys):
    out = tmp_path / "killed"
    parts = out / "field_scores"
    argv = ["--models", str(image_run["models"]), "--input", str(image_run["test"]), "--out", str(out),
            "--chunk", "1", "--executor", "dask"]
    run_then_kill(["src/predict.py", *argv, "--workers", "1"], until=lambda: any(parts.glob("part*.npz")))
    done = {p.name: p.stat().st_mtime_ns for p in parts.glob("part*.npz")}
    assert 1 <= len(done) < image_run["fields"], "the run was not caught midway"
    assert not (out / "submission.csv").exists()  # the driver writes it only at the end

    capsys.readouterr()
    assert load_script("predict").main([*argv, "--workers", "2"]) == 1
    n = image_run["fields"]
    assert f"{n - len(done)} fields predicted, {len(done)} already done" in capsys.readouterr().out
    assert {k: (parts / k).stat().st_mtime_ns for k in done} == done  # not scored again
    got = outputs(out)
    for name in ("scores.csv", "submission.csv", "predict_failures.csv"):  # the same whatever the chunks
        assert got[name] == serial[name]


def test_dataloader_readers_belong_to_the_serial_run(image_run, capsys):
    with pytest.raises(SystemExit) as stop:
        predict(image_run, image_run["test"].parent / "x", "--executor", "process", "--num-workers", "2")
    assert stop.value.code == 2 and "drop --num-workers" in capsys.readouterr().err

"""segment.py on every executor: byte-identical outputs, a bad field as a failure row, kill and resume."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, run_then_kill

needs_dask = pytest.mark.skipif(importlib.util.find_spec("distributed") is None,
                                reason='the dask executor needs pip install -e ".[distributed]"')


def segment(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "src/segment.py", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, **kw)


def tree(out: Path) -> dict[str, bytes]:
    """Every output file's bytes, by path; the run's own config (it names the executor) and
    temporary files a killed writer left behind are not outputs."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "segment_config.json" and not p.name.startswith(".")}


def finished(out: Path) -> dict[str, int]:
    """{field id: mtime} of the fields marked done (cells/{ID}.csv; not a killed writer's temporary file)."""
    return {p.stem: p.stat().st_mtime_ns for p in (out / "cells").glob("*.csv") if not p.name.startswith(".")}


@pytest.fixture(scope="module")
def fields_with_a_bad_one(synth_dataset, tmp_path_factory) -> Path:
    """The 4 generated fields (with train.csv and truth beside them) plus a field whose red PNG is corrupt."""
    root = tmp_path_factory.mktemp("withbad")
    shutil.copytree(synth_dataset, root, dirs_exist_ok=True)
    train = root / "train"
    src = sorted(train.glob("*_blue.png"))[0].name[: -len("_blue.png")]
    for ch in ("green", "blue", "yellow"):
        shutil.copy(train / f"{src}_{ch}.png", train / f"broken_{ch}.png")
    (train / "broken_red.png").write_bytes(b"\x89PNG garbage")
    return train


@pytest.fixture(scope="module")
def serial_run(fields_with_a_bad_one, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("serial")
    r = segment("--input", fields_with_a_bad_one, "--out", out, "--crop-size", "32", "--executor", "serial")
    assert r.returncode == 1, r.stderr  # the bad field fails, the run finishes
    assert "failed: broken: " in r.stderr
    return tree(out)


def test_serial_run_has_the_bad_field_as_a_failure_row(serial_run):
    assert serial_run["failures.csv"].decode().splitlines()[1].startswith("broken,")
    assert sum(k.startswith("cells/") for k in serial_run) == 4


def test_process_pool_outputs_are_byte_identical_to_serial(fields_with_a_bad_one, serial_run, tmp_path):
    r = segment("--input", fields_with_a_bad_one, "--out", tmp_path, "--crop-size", "32", "--workers", "2")
    assert r.returncode == 1, r.stderr
    assert '"executor": "process"' in (tmp_path / "segment_config.json").read_text()
    assert tree(tmp_path) == serial_run


@needs_dask
def test_dask_outputs_are_byte_identical_to_serial(fields_with_a_bad_one, serial_run, tmp_path):
    r = segment("--input", fields_with_a_bad_one, "--out", tmp_path, "--crop-size", "32",
                "--executor", "dask", "--workers", "2")
    assert r.returncode == 1, r.stderr
    assert tree(tmp_path) == serial_run


@needs_dask
def test_dask_run_killed_then_rerun_redoes_only_unfinished_fields(tmp_path):
    from cellloc.generators import write_dataset
    from cellloc.synth import SynthConfig

    write_dataset(SynthConfig(size=256, seed=5), tmp_path / "data", 12)
    fields = tmp_path / "data" / "train"
    out = tmp_path / "out"
    args = ("--input", fields, "--crop-size", "32", "--executor", "dask")
    run_then_kill(["src/segment.py", *map(str, args), "--out", str(out), "--workers", "1"],
                  until=lambda: len(finished(out)) >= 3, timeout=240)
    done = finished(out)
    assert 3 <= len(done) < 12, "the run was not caught midway"
    assert not (out / "cells.csv").exists()  # the driver writes the table only at the end

    r = segment(*args, "--out", out, "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert f"{12 - len(done)} fields segmented, {len(done)} already done" in r.stdout
    assert {k: (out / "cells" / f"{k}.csv").stat().st_mtime_ns for k in done} == done  # not redone
    fresh = tmp_path / "fresh"
    assert segment(*args[:4], "--out", fresh, "--executor", "serial").returncode == 0
    assert tree(out) == tree(fresh)


def test_workers_alone_means_a_process_pool_and_address_needs_dask(tmp_path):
    from cellloc.runs.segment import SegmentRunConfig

    assert SegmentRunConfig(input=str(tmp_path), workers=2).executor == "process"
    assert SegmentRunConfig(input=str(tmp_path), workers=2, executor="dask").executor == "dask"
    r = segment("--input", tmp_path, "--address", "tcp://127.0.0.1:8786", "--executor", "process")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "use it with --executor dask" in r.stderr


def test_serial_worker_reads_each_next_field_ahead_and_a_bad_one_fails_alone(fields_with_a_bad_one, tmp_path):
    """In order (the serial executor), a worker reads field k+1 on a second thread while it
    segments field k: every field is read once, and a field that cannot be read (its read ahead
    failed) fails alone, with the same one-line reason as when read in place."""
    from cellloc.runs.segment import FieldWorker, SegmentRunConfig

    worker = FieldWorker(SegmentRunConfig(input=str(fields_with_a_bad_one), out=str(tmp_path), crop_size=32), {}, None)
    good = sorted(p.name[: -len("_red.png")] for p in fields_with_a_bad_one.glob("*_red.png") if p.name != "broken_red.png")
    order = [good[0], "broken", *good[1:3]]
    reads, read = [], worker.read
    worker.read = lambda image_id: reads.append(image_id) or read(image_id)
    results = [worker.run_one(i, n) for i, n in zip(order, [*order[1:], None])]
    assert reads == order  # each once: all but the first were read ahead
    assert [bool(r.error) for r in results] == [False, True, False, False]
    in_place = FieldWorker(SegmentRunConfig(input=str(fields_with_a_bad_one), out=str(tmp_path / "b"), crop_size=32), {}, None)
    assert results[1].error == in_place.run_one("broken").error and "broken_red.png" in results[1].error
    assert all((tmp_path / "cells" / f"{i}.csv").is_file() for i in order if i != "broken")

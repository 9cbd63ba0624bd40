"""Run folders: resume only with the same settings, start over without losing anything, one writer at a time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cellloc.errors import InputError
from cellloc.run_state import (
    LOCK_NAME,
    RunStart,
    ensure_same_settings,
    folder_lock,
    manifest_path,
    settings_changes,
)

OUTPUTS = ("submission.csv", "submission.csv.partial", "cell_scores", "predict_failures.csv")
SETTINGS = {"models": ["models/effb2/fold0"], "checksums": ["ab" * 32], "tta": "none", "blend": 0.5, "crop": (64, 64)}


def start(out: Path, settings=SETTINGS, overwrite: bool = False) -> RunStart:
    return ensure_same_settings(out, settings, overwrite, tool="predict", outputs=OUTPUTS)


def fake_outputs(out: Path, text: str) -> None:
    (out / "cell_scores").mkdir(parents=True, exist_ok=True)
    (out / "cell_scores" / "f1.csv").write_text(text)
    (out / "submission.csv").write_text(text)


def test_new_folder_records_the_settings(tmp_path):
    out = tmp_path / "out"
    assert start(out) == RunStart(resuming=False, moved_aside=None)
    manifest = json.loads(manifest_path(out, "predict").read_text())
    assert manifest["tool"] == "predict" and manifest["settings"]["crop"] == [64, 64]
    assert manifest["outputs"] == list(OUTPUTS)


def test_same_settings_resume(tmp_path):
    out = tmp_path / "out"
    start(out)
    fake_outputs(out, "done")
    reordered = dict(reversed(list(SETTINGS.items())), crop=[64, 64])  # key order and tuple vs list do not count
    begun = start(out, reordered)
    assert begun.resuming and begun.message(out) == f"{out}: resuming (same settings as the finished work there)"
    assert (out / "submission.csv").read_text() == "done"


def test_other_settings_stop_with_one_line_saying_what_changed(tmp_path):
    out = tmp_path / "out"
    start(out)
    fake_outputs(out, "done")
    with pytest.raises(InputError) as err:
        start(out, {**SETTINGS, "tta": "flip", "checksums": ["cd" * 32]})
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{out}: its predict outputs were made with other settings (")
    assert 'tta: "none" -> "flip"' in msg and 'checksums: ["abab' in msg and '-> ["cdcd' in msg
    assert "add --overwrite to start over" in msg and "choose another --out" in msg
    assert (out / "submission.csv").read_text() == "done"  # nothing touched
    assert json.loads(manifest_path(out, "predict").read_text())["settings"]["tta"] == "none"


def test_settings_changes_lists_added_removed_and_long_values():
    changes = settings_changes({"a": 1, "b": "x" * 100}, {"a": 2, "c": None})
    assert changes[0] == "a: 1 -> 2"
    assert changes[1].startswith('b: "xxxx') and changes[1].endswith("... -> (absent)") and len(changes[1]) < 70
    assert changes[2] == "c: (absent) -> null"
    nested = settings_changes({"segment": {"px": None, "k": 1}, "n": {"x": 1}}, {"segment": {"px": 0.3, "k": 1}, "n": 5})
    assert nested == ["n: {\"x\": 1} -> 5", "segment.px: null -> 0.3"]  # a group's member named, not the whole group


def test_overwrite_moves_only_this_tools_outputs_aside(tmp_path):
    out = tmp_path / "out"
    start(out)
    fake_outputs(out, "old run")
    (out / "masks").mkdir()
    (out / "masks" / "f1_cell_mask.png").write_bytes(b"segment's output")  # another tool's
    (out / "notes.txt").write_text("the user's")
    begun = start(out, {**SETTINGS, "tta": "flip"}, overwrite=True)
    assert not begun.resuming and begun.moved_aside is not None
    aside = begun.moved_aside
    assert aside.parent == out.resolve().parent and aside.name.startswith("out.replaced-")
    assert begun.message(out) == f"{out}: starting over; the previous outputs were moved to {aside} (delete it when not needed)"
    # Nothing is lost: the old run is intact beside the folder, manifest included.
    assert (aside / "submission.csv").read_text() == "old run" and (aside / "cell_scores" / "f1.csv").read_text() == "old run"
    assert json.loads((aside / "predict_manifest.json").read_text())["settings"]["tta"] == "none"
    assert sorted(p.name for p in out.iterdir()) == ["masks", "notes.txt", "predict_manifest.json"]
    assert json.loads(manifest_path(out, "predict").read_text())["settings"]["tta"] == "flip"
    # Twice in one second: a second sibling, not a clash.
    fake_outputs(out, "second run")
    again = start(out, overwrite=True).moved_aside
    assert again != aside and (again / "submission.csv").read_text() == "second run"


def test_outputs_without_a_manifest_are_not_resumed_over(tmp_path):
    out = tmp_path / "out"
    fake_outputs(out, "made before manifests existed")
    with pytest.raises(InputError, match=r"holds predict outputs \(cell_scores, submission.csv\) with no record of their settings"):
        start(out)
    begun = start(out, overwrite=True)
    assert (begun.moved_aside / "submission.csv").read_text() == "made before manifests existed"
    assert not (out / "submission.csv").exists()


def test_two_tools_share_a_folder(tmp_path):
    out = tmp_path / "out"
    start(out)
    seg = ensure_same_settings(out, {"crop_size": 64}, tool="segment", outputs=("masks", "cells.csv"))
    assert not seg.resuming and start(out).resuming


def test_damaged_manifest_is_one_line(tmp_path):
    out = tmp_path / "out"
    start(out)
    manifest_path(out, "predict").write_text("{not json")
    with pytest.raises(InputError, match="unreadable run manifest .*add --overwrite"):
        start(out)
    assert not start(out, overwrite=True).resuming


# --------------------------------------------------------------------------- the lock

HOLDER = """
import sys, time
from cellloc.run_state import folder_lock
with folder_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def hold_lock(folder: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.skipif(sys.platform == "win32", reason="flock is POSIX")
def test_second_run_gets_one_line_naming_folder_and_holder(tmp_path):
    holder = hold_lock(tmp_path)
    try:
        with pytest.raises(InputError) as err:
            with folder_lock(tmp_path):
                pass
        assert str(err.value) == (
            f"{tmp_path}: another run is writing to this folder (pid {holder.pid}); wait for it to finish, or choose another --out"
        )
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.skipif(sys.platform == "win32", reason="flock is POSIX")
def test_a_killed_holder_leaves_no_blocking_lock(tmp_path):
    holder = hold_lock(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert (tmp_path / LOCK_NAME).read_text().strip() == str(holder.pid)  # the stale file is still there ...
    with folder_lock(tmp_path):  # ... and does not block
        assert (tmp_path / LOCK_NAME).read_text().strip() == str(os.getpid())


def test_lock_is_released_when_the_block_ends_or_raises(tmp_path):
    with folder_lock(tmp_path):
        pass
    with pytest.raises(RuntimeError):
        with folder_lock(tmp_path):
            raise RuntimeError("the run failed")
    with folder_lock(tmp_path / "new" / "folder") as lock:  # made when missing
        assert lock == tmp_path / "new" / "folder" / LOCK_NAME

"""Bad input and a hostile environment both end a script with one line and exit status 2."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from cellloc.data import load_crop
from cellloc.errors import InputError, describe_os_error, exit_on_input_error
from cellloc.fieldio import atomic_path, write_csv
from conftest import REPO


def run_main(exc: BaseException, capsys) -> tuple[int, str]:
    @exit_on_input_error
    def main() -> None:
        raise exc

    with pytest.raises(SystemExit) as done:
        main()
    return done.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "exc, line",
    [
        (InputError("x.csv: line 3: bad"), "error: x.csv: line 3: bad\n"),
        (PermissionError(errno.EACCES, "Permission denied", "/out/cells.csv"), "error: /out/cells.csv: Permission denied\n"),
        (OSError(errno.ENOSPC, "No space left on device", "/out/masks/f1.png"), "error: /out/masks/f1.png: No space left on device\n"),
        (OSError(errno.EXDEV, "Invalid cross-device link", "a", None, "b"), "error: a -> b: Invalid cross-device link\n"),
        (OSError(errno.ENOSPC, "No space left on device"), "error: No space left on device\n"),
    ],
)
def test_one_line_and_exit_2(capsys, exc, line):
    assert run_main(exc, capsys) == (2, line)


def test_describe_os_error_without_strerror():
    assert describe_os_error(ConnectionResetError("peer went away")) == "peer went away"


def test_a_full_disk_met_by_a_write_names_the_output(tmp_path):
    target = tmp_path / "cells.csv"
    with pytest.raises(OSError) as err:
        with atomic_path(target):
            raise OSError(errno.ENOSPC, "No space left on device")  # what write() raises: no file name
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone


def test_an_output_folder_that_cannot_be_made_is_named(tmp_path):
    (tmp_path / "blocked").write_text("a file where a folder should be")
    with pytest.raises(OSError) as err:
        write_csv(tmp_path / "blocked" / "sub" / "cells.csv", __import__("pandas").DataFrame({"a": [1]}))
    assert str(tmp_path / "blocked") in str(err.value.filename)


def test_gen_folds_into_an_unwritable_place_is_one_line(tmp_path):
    labels = tmp_path / "train.csv"
    labels.write_text("ID,Label\n" + "".join(f"f{i},{i % 3}\n" for i in range(12)))
    (tmp_path / "blocked").write_text("a file where the output folder should be")
    out = tmp_path / "blocked" / "folds.csv"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    res = subprocess.run(
        [sys.executable, str(REPO / "src" / "gen_folds.py"), "--labels", str(labels), "--out", str(out), "--folds", "3"],
        capture_output=True, text=True, env=env,
    )
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: ") and str(tmp_path / "blocked") in res.stderr
    assert "Traceback" not in res.stderr


class CorruptCrops(torch.utils.data.Dataset):
    def __init__(self, folder):
        self.paths = [folder / "f1_1.npy", folder / "f1_2.npy"]
        np.save(self.paths[0], np.zeros((8, 8, 4), np.uint8))
        self.paths[1].write_bytes(b"\x93NUMPY garbage, not an array")

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return torch.from_numpy(load_crop(self.paths[i]).astype(np.float32))


def test_a_corrupt_crop_in_a_dataloader_worker_is_one_short_line_naming_it(tmp_path):
    loader = torch.utils.data.DataLoader(CorruptCrops(tmp_path), batch_size=1, num_workers=1)
    with pytest.raises(InputError) as err:
        list(loader)
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'f1_2.npy'}: cannot read crop (") and len(msg) < 200
    assert "Traceback" not in msg and "worker" not in msg


SCRIPTS = sorted(p.stem for p in (REPO / "src").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_says_a_bad_config_in_one_line_and_exits_2(script, tmp_path, capsys, monkeypatch):
    """What the README promises for every script: a bad invocation is `error: <file>: <problem>`, exit 2."""
    from test_evaluate_cli import load_script

    bad = tmp_path / "settings.json"
    bad.write_text('{"_config": "SomethingElse"}')
    monkeypatch.chdir(tmp_path)
    positional = ["x.csv"] if script in ("check_submission", "report", "score_segmentation") else []
    with pytest.raises(SystemExit) as done:
        load_script(script).main([*positional, "--config", str(bad)])
    lines = capsys.readouterr().err.splitlines()
    assert done.value.code == 2, lines
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: is a SomethingElse (another stage's config), not a ")

"""Shared fixtures: small generated datasets written once per session."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(params=[True, False], ids=["openvino", "no-openvino"])
def openvino_installed(request, monkeypatch) -> bool:
    """Runs a test twice: with the optional openvino package (skipped where it is not installed),
    and with ``import openvino`` failing as if it were not; the value says which."""
    if request.param:
        pytest.importorskip("openvino", reason='the openvino runtime is the optional extra: pip install -e ".[fast]"')
    else:
        monkeypatch.setitem(sys.modules, "openvino", None)
    return request.param


@contextmanager
def module_folder(tmp_path_factory, name: str) -> Iterator[Path]:
    """A folder for a module-scoped fixture, removed when the fixture is torn down (the module ends).

    pytest keeps ``mktemp`` folders to the end of the session, and this suite's module fixtures hold
    HPA-sized weights and trained runs (2.5 GB in all); removed as each module ends, the suite's disk
    use stays near its largest module's, which a CI machine short of disk can hold."""
    folder = tmp_path_factory.mktemp(name)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory) -> Path:
    """A 4-field, 256 px generated training set with truth (input/<name> layout)."""
    from cellloc.generators import write_dataset
    from cellloc.synth import SynthConfig

    out = tmp_path_factory.mktemp("synth")
    write_dataset(SynthConfig(size=256, seed=3), out, 4)
    return out


def tiny_cell_config(csv: Path, out: Path, **kw):
    """A train.py config of a cell model on a small cells table (``write_synthetic_cells``) that trains in seconds:
    ResNet-18 from scratch at 32 px, one epoch, batches of 8, no loader workers; ``kw`` overrides any field."""
    from cellloc.runs.train import TrainConfig

    base = dict(folds_csv=str(csv), out_dir=str(out), model="resnet18", pretrained="none", image_size=32,
                batch_size=8, epochs=1, num_workers=0, device="cpu", stats_samples=8)
    return TrainConfig(**{**base, **kw})


def torchrun_train(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node=2 src/train.py ARGS`` in ``cwd``: two CPU ranks (gloo), one thread each;
    skips the test where torchrun is not installed beside this python."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not installed beside this python")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(torchrun), "--standalone", "--nproc-per-node=2", str(root / "src" / "train.py"), *args],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


def zlib_bomb_bytes(mib: int, byte: bytes = b"0") -> bytes:
    """A valid zlib stream of ``mib`` MiB of ``byte``, about 1 KiB per MiB, built in milliseconds.

    Each MiB is deflated once after a full flush (so every MiB compresses to the same block),
    the block is repeated, and the Adler-32 of the whole is computed in closed form.
    """
    chunk = byte * (1 << 20)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = deflate.compress(chunk) + deflate.flush(zlib.Z_FULL_FLUSH)
    block = deflate.compress(chunk) + deflate.flush(zlib.Z_FULL_FLUSH)
    end = deflate.flush()
    n, v = mib << 20, byte[0]
    a = (1 + v * n) % 65521
    b = (n + v * n * (n + 1) // 2) % 65521
    return b"\x78\xda" + first + block * (mib - 1) + end + struct.pack(">I", (b << 16) | a)


@pytest.fixture(scope="session")
def zlib_bomb():
    """``zlib_bomb(mib)``: base64 text of a zlib bomb inflating to ``mib`` MiB of ``'0'``."""
    return lambda mib: base64.b64encode(zlib_bomb_bytes(mib)).decode("ascii")


_CAPPED_CHILD = """
import json, resource, sys
{setup}
def _vm_kib():
    with open("/proc/self/status") as fh:
        return int(fh.read().split("VmSize:")[1].split()[0])
_base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
_limit = (_vm_kib() + {cap_kib}) * 1024
resource.setrlimit(resource.RLIMIT_AS, (_limit, _limit))
try:
{body}
finally:
    _growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - _base) / 1024
    print("RSS_GROWTH_MIB", _growth, file=sys.stderr)
"""


@pytest.fixture
def run_memory_capped():
    """``run(setup, body, cap_mib=1024) -> (CompletedProcess, peak RSS growth in MiB)``.

    Runs ``setup`` (imports) and then ``body`` in a child Python whose address space may grow
    by at most ``cap_mib`` after setup: code that would exhaust memory fails there with a
    MemoryError instead of taking the shared machine down. Linux only (reads /proc).
    """
    if not Path("/proc/self/status").exists():
        pytest.skip("needs Linux /proc to cap a child's memory")

    def run(setup: str, body: str, cap_mib: int = 1024) -> tuple[subprocess.CompletedProcess, float]:
        code = _CAPPED_CHILD.format(setup=setup, body=textwrap.indent(body, "    "), cap_kib=cap_mib * 1024)
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
        growth = [float(x.split()[1]) for x in res.stderr.splitlines() if x.startswith("RSS_GROWTH_MIB")]
        return res, growth[0] if growth else float("nan")

    return run


@pytest.fixture(scope="session")
def chromium() -> str:
    """A headless Chromium binary; tests that need one are skipped (with the reason) where it is absent."""
    from cellloc.browser import find_chromium

    browser = find_chromium()
    if browser is None:
        pytest.skip("no chromium binary (apt-get install chromium, or set CELLLOC_CHROMIUM)")
    return browser


def run_then_kill(argv: list[str], until: Callable[[], bool], timeout: float = 300) -> None:
    """Run ``python ARGV`` from the repository root in its own process group until ``until()``
    holds (or it exits, or ``timeout`` s pass), then kill -9 the whole group (a Dask run's
    cluster, nannies and workers with it) and wait until none of it is left to write."""
    proc = subprocess.Popen([sys.executable, *argv], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not until() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for _ in range(100):
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)

"""What a run folder's finished work was made with, and who is writing to it now.

A folder-level run (segment, predict, train) resumes by skipping the work it finds done. That
is only right when the done work was made with the same settings, so each run keeps a
*manifest* in its output folder, ``{tool}_manifest.json``: the settings that change its
results (model checksums included) as they were when the work started.
:func:`ensure_same_settings` compares a new run's settings with it:

* no manifest and none of the tool's outputs: a new run (the manifest is written);
* the same settings: the run resumes, keeping and skipping the finished work;
* other settings, or outputs with no manifest (written before manifests existed): the run
  stops with one line naming what changed (``old -> new``) and the two ways to start over:
  ``--overwrite``, or another ``--out``. The two kinds of results are never mixed.

``--overwrite`` starts over without losing anything: the previous run's outputs (only the
files and folders this tool writes, as the run declares them; other tools' outputs and
anything else in the folder stay) are *moved* into a sibling folder
``{out}.replaced-{YYYYmmdd-HHMMSS}``, and the run starts in an empty place. Moving is a rename
on the same file system, so it costs no time or space; delete the sibling when it is not
needed. The manifest moves last, so a run killed while moving leaves a folder that still
says what it holds.

:func:`folder_lock` keeps two runs from writing one folder at once: an exclusive ``flock`` on
``{out}/.cellloc.lock`` held for the run's life. A second run stops with one line naming the
folder and the holder's pid. The kernel drops the lock when its holder exits, however it
exits (``kill -9`` included), so a stale lock file never blocks a later run.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError
from .fieldio import write_json

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".cellloc.lock"
MANIFEST_FORMAT = 1


def manifest_path(out_dir: str | Path, tool: str) -> Path:
    return Path(out_dir) / f"{tool}_manifest.json"


def _plain(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings as they read back from JSON (tuples become lists, paths strings)."""
    return json.loads(json.dumps(dict(settings), default=str))


def _short(value: Any, width: int = 48) -> str:
    text = "(absent)" if value is _ABSENT else json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


_ABSENT = object()


def settings_changes(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``"key: old -> new"`` for each setting that differs (keys sorted; long values cut); inside a
    group of settings on both sides (a dict), each member that differs: ``"segment.pixel_size_um: null -> 0.3"``."""
    changes = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, _ABSENT), new.get(k, _ABSENT)
        if a == b:
            continue
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            changes += settings_changes(a, b, f"{prefix}{k}.")
        else:
            changes.append(f"{prefix}{k}: {_short(a)} -> {_short(b)}")
    return changes


def read_manifest(out_dir: str | Path, tool: str) -> dict[str, Any] | None:
    """The manifest of ``tool`` in ``out_dir``, or None; a damaged one is an :class:`InputError`."""
    path = manifest_path(out_dir, tool)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable run manifest ({exc}); add --overwrite to start over") from None
    if not isinstance(data, dict) or not isinstance(data.get("settings"), dict):
        raise InputError(f"{path}: not a run manifest (no settings); add --overwrite to start over")
    return data


def existing_outputs(out_dir: str | Path, outputs: Sequence[str]) -> list[Path]:
    """The entries of ``out_dir`` matching the glob patterns ``outputs`` (top level only), sorted."""
    out_dir = Path(out_dir)
    found = {p for pattern in outputs for p in out_dir.glob(pattern)} if out_dir.is_dir() else set()
    return sorted(found)


def move_aside(out_dir: str | Path, entries: Sequence[Path], last: Path | None = None) -> Path:
    """Move ``entries`` (then ``last``) of ``out_dir`` into a new sibling ``{out}.replaced-{time}``; return it."""
    out_dir = Path(out_dir).resolve()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = out_dir.with_name(f"{out_dir.name}.replaced-{stamp}")
    k = 1
    while dest.exists():
        k += 1
        dest = out_dir.with_name(f"{out_dir.name}.replaced-{stamp}-{k}")
    dest.mkdir(parents=True)
    for entry in [*entries, *([last] if last is not None and last.exists() else [])]:
        try:
            os.replace(entry, dest / entry.name)
        except OSError:  # another file system: copy, then remove
            shutil.move(str(entry), str(dest / entry.name))
    return dest


@dataclass(frozen=True)
class RunStart:
    """How a run starts: ``resuming`` finished work made with the same settings, or afresh
    (``moved_aside``: where ``--overwrite`` put the previous outputs, if there were any)."""

    resuming: bool
    moved_aside: Path | None = None

    def message(self, out_dir: str | Path) -> str | None:
        """One line for the user, or None when there is nothing to say (a new run)."""
        if self.resuming:
            return f"{out_dir}: resuming (same settings as the finished work there)"
        if self.moved_aside is not None:
            return f"{out_dir}: starting over; the previous outputs were moved to {self.moved_aside} (delete it when not needed)"
        return None


def ensure_same_settings(
    out_dir: str | Path,
    settings: Mapping[str, Any],
    overwrite: bool = False,
    *,
    tool: str,
    outputs: Sequence[str],
) -> RunStart:
    """Check ``out_dir`` against a run's ``settings`` before it does any work (see the module docstring).

    Args:
        out_dir: the run's output folder (created if missing).
        settings: JSON-able values that change the run's results; compared as JSON reads them
            back, so key order, tuples vs lists and ``Path`` vs ``str`` do not count.
        overwrite: start over even when the settings match or are unknown.
        tool: the run's name (``segment``, ``predict``, ``train``): one manifest per tool, so
            two tools may share a folder.
        outputs: glob patterns (relative to ``out_dir``, top level) of every file and folder
            the tool writes there; ``--overwrite`` moves exactly these aside.
    Returns:
        :class:`RunStart`. The manifest for ``settings`` is in place when it returns.
    Raises:
        InputError: the folder holds this tool's outputs made with other or unrecorded settings
            and ``overwrite`` is false.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    new = _plain(settings)
    manifest = manifest_path(out_dir, tool)
    old = None if overwrite else read_manifest(out_dir, tool)
    present = [p for p in existing_outputs(out_dir, outputs) if p != manifest]
    if old is not None and old["settings"] == new:
        return RunStart(resuming=True)
    start_over = f"add --overwrite to start over (the old outputs are moved to {out_dir.name}.replaced-<time>), or choose another --out"
    if not overwrite and old is not None:
        changes = settings_changes(old["settings"], new)
        shown = "; ".join(changes[:4]) + (f"; and {len(changes) - 4} more" if len(changes) > 4 else "")
        raise InputError(f"{out_dir}: its {tool} outputs were made with other settings ({shown}); {start_over}")
    if not overwrite and present:
        names = ", ".join(p.name for p in present[:3]) + (", ..." if len(present) > 3 else "")
        raise InputError(f"{out_dir}: holds {tool} outputs ({names}) with no record of their settings; {start_over}")
    moved = move_aside(out_dir, present, manifest) if present or manifest.exists() else None
    write_json(manifest, {"format": MANIFEST_FORMAT, "tool": tool, "settings": new, "outputs": list(outputs)})
    return RunStart(resuming=False, moved_aside=moved)


@contextmanager
def folder_lock(out_dir: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on ``out_dir`` (created if missing) for the ``with`` block.

    Raises :class:`InputError` at once, naming the folder and the holder's pid, when another
    process holds it. Yields the lock file's path.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK_NAME
    fh = open(path, "a+")
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "unknown"
                raise InputError(
                    f"{out_dir}: another run is writing to this folder (pid {holder}); "
                    "wait for it to finish, or choose another --out"
                ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield path
    finally:
        fh.close()  # closing releases the lock; the file stays (unlinking a lock file races)

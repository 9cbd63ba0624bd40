"""One exception type for bad input, so scripts can print one line instead of a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import TypeVar

T = TypeVar("T")


_WORKER_TRACEBACK = "\nOriginal Traceback (most recent call last):\n"


class InputError(ValueError):
    """Bad user input: a message naming the file (or value) and the problem, on one line.

    One raised in a torch ``DataLoader`` worker (a corrupt crop, say) is re-created in the main
    process from ``"Caught InputError in DataLoader worker process N. Original Traceback ..."``:
    the worker's whole traceback. The original one-line message is recovered from its last line.
    """

    def __init__(self, message: str) -> None:
        text = str(message)
        if text.startswith("Caught ") and _WORKER_TRACEBACK in text:
            head, sep, original = text.rstrip().splitlines()[-1].partition(": ")
            if sep and head.rsplit(".", 1)[-1] == type(self).__name__:
                text = original
        super().__init__(" ".join(text.split()))


def describe_os_error(exc: OSError) -> str:
    """``path: reason`` (``src -> dst: reason`` for a rename) of an OS error, on one line."""
    reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
    if exc.filename is not None and exc.filename2 is not None:
        return f"{exc.filename} -> {exc.filename2}: {reason}"
    if exc.filename is not None:
        return f"{exc.filename}: {reason}"
    return reason


def exit_on_input_error(main: Callable[..., T]) -> Callable[..., T]:
    """Wrap a script's ``main``: an :class:`InputError`, or an ``OSError`` (an unwritable folder,
    a full disk: the environment, not the code), becomes one line ``error: ...`` on stderr and exit 2."""

    @wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        except OSError as exc:
            print(f"error: {describe_os_error(exc)}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted: finished work is kept; rerun the same command to resume", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper

"""Headless Chromium, to check that an HTML report shows and to take its picture.

Optional: nothing else in the package needs a browser. Each call starts a fresh browser with
a throw-away profile and no network features, so it leaves nothing behind and never waits on
the network; ``CELLLOC_CHROMIUM`` names the binary when it is not on the PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from PIL import Image

from .errors import InputError
from .fieldio import atomic_path

BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",
    "--no-sandbox",  # root in containers; the page is our own local file
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--hide-scrollbars",
    "--virtual-time-budget=10000",  # run the page's load handlers before dumping or shooting
)


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary: ``$CELLLOC_CHROMIUM`` or the first of :data:`BINARIES` on the PATH."""
    env = os.environ.get("CELLLOC_CHROMIUM")
    if env:
        return env if shutil.which(env) else None
    return next((p for p in map(shutil.which, BINARIES) if p), None)


def _run(browser: str | None, page: Path, extra: list[str], timeout: float) -> subprocess.CompletedProcess:
    browser = browser or find_chromium()
    if browser is None:
        raise InputError(f"no Chromium found (tried {', '.join(BINARIES)}; set CELLLOC_CHROMIUM)")
    page = Path(page).resolve()
    if not page.is_file():
        raise InputError(f"{page}: page not found")
    with tempfile.TemporaryDirectory(prefix="cellloc-chromium-") as profile:
        args = [browser, *FLAGS, f"--user-data-dir={profile}", *extra, page.as_uri()]
        try:
            done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise InputError(f"{browser}: no answer within {timeout:.0f} s for {page}") from None
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise InputError(f"{browser}: exit {done.returncode} for {page}: {tail}")
    return done


def dump_dom(page: str | Path, browser: str | None = None, timeout: float = 120) -> str:
    """The page's DOM after its load handlers ran (``--dump-dom``), as HTML text."""
    return _run(browser, Path(page), ["--dump-dom"], timeout).stdout


def screenshot(page: str | Path, out: str | Path, window: tuple[int, int] = (1200, 2000), width: int | None = None,
               colours: int = 0, browser: str | None = None, timeout: float = 120) -> Path:
    """Picture of the page's first ``window`` (w, h) CSS pixels as PNG at ``out`` (atomic).

    ``width`` shrinks the picture to that many pixels wide; ``colours`` > 0 reduces it to a
    palette of that many colours, which keeps a README picture small.
    """
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="cellloc-shot-") as tmp:
        raw = Path(tmp) / "shot.png"
        _run(browser, Path(page), [f"--screenshot={raw}", f"--window-size={window[0]},{window[1]}"], timeout)
        if not raw.is_file() or raw.stat().st_size == 0:
            raise InputError(f"{page}: the browser wrote no screenshot")
        img = Image.open(raw).convert("RGB")
        if width and img.width > width:
            img = img.resize((width, round(img.height * width / img.width)), Image.Resampling.LANCZOS)
        if colours:
            img = img.quantize(colors=colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        with atomic_path(out) as dst:
            img.save(dst, format="PNG", optimize=True)
    return out

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


# --------------------------------------------------------------------------- driving a live page


class CdpPage:
    """One page of a headless Chromium, driven over the DevTools protocol on a pipe (fds 3 and 4).

    Made by :func:`open_page`. No WebSocket or automation package is needed: Chromium's
    ``--remote-debugging-pipe`` reads NUL-terminated JSON commands from fd 3 and writes replies
    and events to fd 4.
    """

    def __init__(self, proc: subprocess.Popen, to_browser: int, from_browser: int, timeout: float) -> None:
        self._proc, self._out, self._in, self.timeout = proc, to_browser, from_browser, timeout
        self._buf = b""
        self._next_id = 0
        self._events: list[dict] = []
        self.session: str | None = None

    def send(self, method: str, params: dict | None = None, session: bool = True) -> dict:
        """Send one command and wait for its reply (events that arrive meanwhile are kept)."""
        import json

        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self._out, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise InputError(f"chromium: {method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            self._events.append(reply)

    def wait_event(self, method: str, timeout: float | None = None) -> dict:
        """The next event called ``method`` (e.g. ``Page.loadEventFired``)."""
        import time

        end = time.monotonic() + (timeout or self.timeout)
        while True:
            for i, ev in enumerate(self._events):
                if ev.get("method") == method:
                    return self._events.pop(i)
            self._events.append(self._read(end - time.monotonic()))

    def _read(self, timeout: float | None = None) -> dict:
        import json
        import select

        timeout = self.timeout if timeout is None else timeout
        while b"\0" not in self._buf:
            ready, _, _ = select.select([self._in], [], [], max(timeout, 0))
            if not ready:
                raise InputError(f"chromium: no answer within {timeout:.0f} s")
            chunk = os.read(self._in, 1 << 16)
            if not chunk:
                raise InputError("chromium: the browser closed its pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (promises are awaited)."""
        res = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in res:
            raise InputError(f"chromium: {expression[:60]!r} threw {res['exceptionDetails'].get('text')}")
        return res.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float | None = None, poll: float = 0.2):
        """Poll ``expression`` until it is truthy; its value. InputError after ``timeout`` seconds."""
        import time

        end = time.monotonic() + (timeout or self.timeout)
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > end:
                raise InputError(f"chromium: {expression!r} still false after {timeout or self.timeout:.0f} s")
            time.sleep(poll)

    def set_files(self, selector: str, paths: list[str | Path]) -> None:
        """Choose files in an ``<input type=file>`` as a user would (fires its change event)."""
        root = self.send("DOM.getDocument")["root"]["nodeId"]
        node = self.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        if not node:
            raise InputError(f"chromium: no element {selector!r}")
        self.send("DOM.setFileInputFiles", {"nodeId": node, "files": [str(Path(p).resolve()) for p in paths]})

    def screenshot(self, out: str | Path) -> Path:
        """PNG of the viewport at ``out`` (atomic)."""
        import base64

        data = base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])
        out = Path(out)
        with atomic_path(out) as dst:
            dst.write_bytes(data)
        return out


def open_page(url: str, browser: str | None = None, window: tuple[int, int] = (1280, 900), timeout: float = 60):
    """Context manager: a fresh headless Chromium showing ``url`` (loaded), as a :class:`CdpPage`.

    The browser gets a throw-away profile and is ended (its own process, by id) when the block ends.
    """
    from contextlib import contextmanager

    @contextmanager
    def page():
        binary = browser or find_chromium()
        if binary is None:
            raise InputError(f"no Chromium found (tried {', '.join(BINARIES)}; set CELLLOC_CHROMIUM)")
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()

        def wire_fds() -> None:  # in the child: its fd 3 reads our commands, fd 4 writes its replies
            r, w = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(r, 3)
            os.dup2(w, 4)

        flags = [f for f in FLAGS if not f.startswith("--virtual-time-budget")]
        with tempfile.TemporaryDirectory(prefix="cellloc-chromium-") as profile:
            proc = subprocess.Popen([binary, *flags, f"--user-data-dir={profile}", "--remote-debugging-pipe",
                                     f"--window-size={window[0]},{window[1]}", "about:blank"],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    preexec_fn=wire_fds, pass_fds=(3, 4))  # 3 and 4 survive close_fds
            os.close(to_browser_r)
            os.close(from_browser_w)
            cdp = CdpPage(proc, to_browser_w, from_browser_r, timeout)
            try:
                target = cdp.send("Target.createTarget", {"url": "about:blank"})["targetId"]
                cdp.session = cdp.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
                cdp.send("Page.enable")
                cdp.send("Emulation.setDeviceMetricsOverride",
                         {"width": window[0], "height": window[1], "deviceScaleFactor": 1, "mobile": False})
                cdp.send("Page.navigate", {"url": url})
                cdp.wait_event("Page.loadEventFired")
                yield cdp
            finally:
                try:
                    cdp.send("Browser.close", session=False)
                except (InputError, OSError):
                    pass
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                os.close(to_browser_w)
                os.close(from_browser_r)

    return page()

"""The prediction service over real HTTP: a server started by each test module on a free loopback port.

The classifier is a real EfficientNet-B0 run folder written here with untrained weights (what
the service does with scores is under test, not their quality), loaded by the same code as a
trained run. The uploaded field is the real sample field in input/sample.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from cellloc.classifier import Recipe, save_untrained
from cellloc.config import save_config
from cellloc.fieldio import encode_png, read_field
from cellloc.runs.segment import SegmentRunConfig
from cellloc.runs.train import TrainConfig
from cellloc.tasks import get_task
from cellloc.uploads import encode_multipart

from conftest import REPO

pytest.importorskip("fastapi")

SAMPLE = REPO / "input" / "sample"
SAMPLE_ID = "57_F11_1"
CHANNELS = ("red", "green", "blue", "yellow")
MAX_MB = 4
MAX_PIXELS = 4_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_untrained_run(root: Path, task: str = "hpa-sc", level: str = "", name: str = "tiny") -> Path:
    """A run folder as train.py leaves it (fold0/config.json, recipe.json, best.pt), with random weights.

    At the task's level by default: hpa-sc a cell model whose recipe records the sample field's
    segmentation (32 px crops), the other tasks image-level models of 32 px fields.
    """
    spec = get_task(task)
    level = level or spec.level
    fold = root / "models" / name / "fold0"
    n = len(spec.channels)
    if level == "cell":
        seg = SegmentRunConfig(input=str(SAMPLE), out=str(root / "seg"), crop_size=32)
        save_config(seg, root / "seg" / "segment_config.json")
        recipe_input = seg.recipe_input()
    else:
        recipe_input = {"kind": "field", "resize": 32, "tiles": 1}
    cfg = TrainConfig(task=task, level=level, folds_csv=str(root / "seg" / "folds.csv"), model="efficientnet-b0", pretrained="none",
                      image_size=32, mean=[0.1] * n, std=[0.2] * n)
    save_config(cfg, fold / "config.json")
    save_untrained(fold, Recipe(task, level, cfg.model, n, spec.num_classes, cfg.image_size, cfg.mean, cfg.std,
                                spec.kind, recipe_input))
    return fold.parent


def sample_files() -> dict[str, tuple[str, bytes, str]]:
    return {c: (f"{SAMPLE_ID}_{c}.png", (SAMPLE / f"{SAMPLE_ID}_{c}.png").read_bytes(), "image/png") for c in CHANNELS}


class Client:
    """Plain http.client requests to one server; answers are (status, headers, body bytes)."""

    def __init__(self, port: int) -> None:
        self.port = port

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 300):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            res = conn.getresponse()
            return res.status, dict(res.getheaders()), res.read()
        finally:
            conn.close()

    def get_json(self, path: str):
        status, _, body = self.request("GET", path)
        return status, json.loads(body)

    def upload(self, files: dict, path: str = "/predict"):
        body, kind = encode_multipart(files)
        status, headers, data = self.request("POST", path, body, {"Content-Type": kind})
        return status, headers, data

    def predict(self, files: dict, query: str = "") -> tuple[int, dict]:
        status, _, data = self.upload(files, "/predict" + query)
        return status, json.loads(data)


def wait_healthy(client: Client, proc: subprocess.Popen | None = None, timeout: float = 240) -> list[int]:
    """Poll /health until 200; the statuses seen on the way."""
    seen, end = [], time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        try:
            status, _ = client.get_json("/health")
            seen.append(status)
            if status == 200:
                return seen
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"no healthy server within {timeout} s (saw {seen})")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``python src/serve.py --models <run> --port <free>`` with small limits and its own TMPDIR."""
    root = tmp_path_factory.mktemp("serve")
    run = write_untrained_run(root)
    tmp = root / "server_tmp"
    tmp.mkdir()
    port = free_port()
    cmd = [sys.executable, str(REPO / "src" / "serve.py"), "--models", str(run), "--port", str(port),
           "--workers", "1", "--queue", "1", "--max-upload-mb", str(MAX_MB), "--max-pixels", str(MAX_PIXELS),
           "--log-level", "warning"]
    env = {**os.environ, "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    client = Client(port)
    try:
        wait_healthy(client, proc)
        yield {"client": client, "proc": proc, "tmp": tmp, "port": port}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def open_files_under(pid: int, folder: Path) -> list[str]:
    """Files the process holds open inside ``folder`` (deleted ones included)."""
    out = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(folder)):
            out.append(target)
    return out


# --------------------------------------------------------------------------- answers


def test_health_docs_and_page_answer(server):
    client = server["client"]
    status, info = client.get_json("/health")
    assert status == 200 and info["status"] == "ok"
    assert info["channels"] == list(CHANNELS) and len(info["classes"]) == 19 and info["run"] == "tiny"
    assert info["limits"]["max_bytes"] == MAX_MB * 2**20 and info["limits"]["max_pixels"] == MAX_PIXELS
    for path, kind in (("/", "text/html"), ("/docs", "text/html"), ("/static/app.js", "javascript"),
                       ("/openapi.json", "application/json")):
        status, headers, body = client.request("GET", path)
        assert status == 200 and kind in headers["content-type"], path
    status, _, body = client.request("GET", "/docs")
    assert b"//cdn" not in body and b"https://" not in body  # the docs page loads nothing from outside
    spec = json.loads(client.request("GET", "/openapi.json")[2])
    form = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert set(CHANNELS) <= set(form)


def test_predict_answers_every_cell_with_scores_boxes_and_masks(server):
    from cellloc.submission import decode_mask

    status, ans = server["client"].predict(sample_files(), "?masks=true")
    assert status == 200, ans
    f = ans["field"]
    assert (f["width"], f["height"], f["dtype"], f["channels"]) == (1728, 1728, "uint8", list(CHANNELS))
    assert ans["task"] == "hpa-sc" and ans["level"] == "cell" and len(ans["classes"]) == 19
    cells = ans["cells"]
    assert f["n_cells"] == len(cells) >= 5
    for cell in cells:
        x0, y0, x1, y1 = cell["bbox"]
        assert 0 <= x0 < x1 <= 1728 and 0 <= y0 < y1 <= 1728
        assert len(cell["scores"]) == 19 and all(0 <= s <= 1 for s in cell["scores"])
        top = cell["top"]
        assert [t["score"] for t in top] == sorted((t["score"] for t in top), reverse=True)
        assert top[0]["score"] == max(cell["scores"]) and top[0]["name"] == ans["classes"][top[0]["class"]]
        mask = decode_mask(cell["mask"], 1728, 1728)  # the submission's encoding
        assert mask.sum() == cell["area"]
        ys, xs = np.nonzero(mask)
        assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == cell["bbox"]
    assert len(f["scores"]) == 19 and f["top"][0]["score"] == max(f["scores"])
    status, plain = server["client"].predict(sample_files())
    assert "mask" not in plain["cells"][0] and "overlay" not in plain
    assert [c["scores"] for c in plain["cells"]] == [c["scores"] for c in cells]  # same field, same answer


def test_a_tiff_stack_gives_the_same_answer_as_the_channel_files(server):
    image = read_field(SAMPLE, SAMPLE_ID, CHANNELS)
    tif = io.BytesIO()
    tifffile.imwrite(tif, np.moveaxis(image, -1, 0), photometric="minisblack", compression="zlib")  # 3.8 MB
    status, from_tiff = server["client"].predict({"image": ("field.tif", tif.getvalue(), "image/tiff")})
    status_png, from_png = server["client"].predict(sample_files())
    assert status == status_png == 200
    assert from_tiff["cells"] == from_png["cells"]


def test_overlay_comes_with_the_answer_and_from_post_overlay(server):
    client = server["client"]
    status, ans = client.predict(sample_files(), "?overlay=true")
    assert status == 200
    embedded = Image.open(io.BytesIO(base64.b64decode(ans["overlay"]["png"])))
    assert ans["overlay"]["scale"] == pytest.approx(1024 / 1728)
    status, headers, png = client.upload(sample_files(), "/overlay")
    assert status == 200 and headers["content-type"] == "image/png"
    picture = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert embedded.size == (picture.shape[1], picture.shape[0]) and picture.shape[0] == 1024
    assert picture.shape[1] > 1024  # the field, then its legend
    assert len(np.unique(picture.reshape(-1, 3), axis=0)) > 1000


# --------------------------------------------------------------------------- bad input


def bad(client: Client, files: dict, status: int, starts: str = "", **kw) -> dict:
    got, headers, data = client.upload(files, **kw)
    body = json.loads(data)
    assert got == status, body
    assert body["status"] == status and body["error"].startswith(starts), body
    return body


def test_every_bad_upload_is_a_clear_4xx_and_the_service_goes_on(server):
    client = server["client"]
    files = sample_files()
    small = {c: (f"{c}.png", encode_png(np.full((64, 64), k * 40, np.uint8)), "image/png") for k, c in enumerate(CHANNELS)}
    missing = {c: v for c, v in files.items() if c != "yellow"}
    bad(client, missing, 400, "yellow: missing channel file")
    bad(client, {**files, "purple": files["red"]}, 400, "purple: unexpected")
    bad(client, {**files, "red": ("notes.txt", b"this is not an image\n", "application/octet-stream")}, 415, "red: not a PNG")
    bad(client, {**files, "red": (files["red"][0], files["red"][1], "text/plain")}, 415, "red: content type text/plain")
    bad(client, {**files, "green": ("g.png", files["green"][1][:5000], "image/png")}, 422, "green: cannot decode")
    bad(client, {**files, "blue": small["blue"]}, 422, "blue: size 64x64 differs from red (1728x1728)")
    colour = encode_png(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    bad(client, {**small, "red": ("rgb.png", colour, "image/png")}, 422, "red: is a colour image")
    # over the pixel limit: refused from the header (a 4096^2 field of zeros is a 50 kB PNG)
    zeros = encode_png(np.zeros((2048, 2048), np.uint8), compression=9)
    assert len(zeros) < 100_000
    bad(client, {**small, "red": ("big.png", zeros, "image/png")}, 413, "red: 2048x2048 = 4,194,304 pixels is over")
    # over the byte limit, declared in Content-Length
    noise = encode_png(np.random.default_rng(1).integers(0, 255, (1500, 1500), dtype=np.uint8))
    assert len(noise) * 2 > MAX_MB * 2**20
    bad(client, {**small, "red": ("n.png", noise, "image/png"), "green": ("n.png", noise, "image/png")}, 413, "request:")
    # not multipart
    status, _, data = client.request("POST", "/predict", b'{"red": 1}', {"Content-Type": "application/json"})
    assert status == 415 and json.loads(data)["error"].startswith("request: content type application/json")
    # a body cut before its closing boundary
    body, kind = encode_multipart(small)
    status, _, data = client.request("POST", "/predict", body[:-30], {"Content-Type": kind})
    assert status == 400 and "closing boundary" in json.loads(data)["error"]
    status, _, data = client.request("POST", "/predict?masks=maybe", body, {"Content-Type": kind})
    assert status == 422 and json.loads(data)["error"].startswith("query.masks")
    # still serving
    assert client.get_json("/health")[0] == 200
    assert client.predict(small)[0] == 200


def test_the_byte_limit_is_enforced_while_reading(server):
    """A chunked upload with no Content-Length is refused once it passes the limit, before it ends."""
    limit, chunk = MAX_MB * 2**20, b"x" * 2**18
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
            f"Content-Type: multipart/form-data; boundary=b\r\n\r\n").encode()
    sent, answer = 0, b""
    with socket.create_connection(("127.0.0.1", server["port"]), timeout=60) as s:
        part = b'--b\r\nContent-Disposition: form-data; name="red"; filename="r.png"\r\nContent-Type: image/png\r\n\r\n'
        s.sendall(head + b"%x\r\n%s\r\n" % (len(part), part))
        try:
            while sent < 4 * limit and not answer:
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                if select.select([s], [], [], 0)[0]:
                    answer = s.recv(65536)
        except (BrokenPipeError, ConnectionResetError):
            pass
        while not answer:
            answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # answered, and the connection closed, long before the client was done (socket buffers hold a few MB)
    assert sent < 8 * limit
    assert server["client"].get_json("/health")[0] == 200


def test_busy_server_answers_503_with_retry_after_and_recovers(server):
    """workers 1 + queue 1: two slow uploads hold both places; a third request gets 503 at once."""
    client = server["client"]
    body, kind = encode_multipart(sample_files())
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {kind}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    slow = [socket.create_connection(("127.0.0.1", server["port"]), timeout=300) for _ in range(2)]
    try:
        for s in slow:
            s.sendall(head + body[: len(body) // 2])
        end = time.monotonic() + 60
        while client.get_json("/health")[1]["load"]["active"] < 2:
            assert time.monotonic() < end, "slow uploads were not admitted"
            time.sleep(0.1)
        # while uploads are in flight, nothing of them is on disk
        assert open_files_under(server["proc"].pid, server["tmp"]) == []
        status, headers, data = client.upload(sample_files())
        assert status == 503 and int(headers["retry-after"]) >= 1
        assert json.loads(data)["error"].startswith("busy:")
        for s in slow:
            s.sendall(body[len(body) // 2:])
        for s in slow:
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
    finally:
        for s in slow:
            s.close()
    assert client.predict(sample_files())[0] == 200


def test_a_client_that_leaves_mid_upload_gives_its_place_back(server):
    client = server["client"]
    body, kind = encode_multipart(sample_files())
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {kind}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server["port"]), timeout=60) as s:
        s.sendall(head + body[:100_000])
        end = time.monotonic() + 60
        while client.get_json("/health")[1]["load"]["active"] < 1:
            assert time.monotonic() < end
            time.sleep(0.1)
    end = time.monotonic() + 60
    while client.get_json("/health")[1]["load"]["active"] > 0:
        assert time.monotonic() < end, "the place of a client that left was not given back"
        time.sleep(0.1)
    assert client.predict(sample_files())[0] == 200


def test_concurrent_clients_get_answers_or_503_never_a_crash(server):
    client = server["client"]
    body, kind = encode_multipart(sample_files())
    statuses: list[int] = []

    def one() -> None:
        statuses.append(client.request("POST", "/predict", body, {"Content-Type": kind})[0])

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert len(statuses) == 6 and set(statuses) <= {200, 503} and 200 in statuses
    assert server["proc"].poll() is None and client.get_json("/health")[0] == 200


# --------------------------------------------------------------------------- startup


@contextmanager
def serving(app):
    """Run an app with uvicorn in a thread on a free loopback port (stopped when the block ends)."""
    import uvicorn

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    end = time.monotonic() + 60
    while not srv.started:
        assert time.monotonic() < end and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    try:
        yield Client(port)
    finally:
        srv.should_exit = True
        thread.join(30)


def test_health_is_503_until_the_model_is_loaded_and_no_model_still_segments():
    from cellloc.service import ServiceConfig, create_app
    from cellloc.service_model import load_service_model

    release = threading.Event()

    def load():
        release.wait(60)
        return load_service_model(None, "hpa-sc")  # no trained model: segmentation only

    with serving(create_app(ServiceConfig(), load)) as client:
        status, body = client.get_json("/health")
        assert status == 503 and "loading" in body["error"]
        assert client.predict(sample_files())[0] == 503
        release.set()
        wait_healthy(client, timeout=60)
        status, ans = client.predict(sample_files())
        assert status == 200 and ans["classes"] == [] and ans["run"] is None
        assert len(ans["cells"]) >= 5 and all(c["scores"] is None and c["top"] == [] for c in ans["cells"])


def test_a_model_that_fails_to_load_stops_the_script_with_one_line(tmp_path):
    run = write_untrained_run(tmp_path, "hpa-2018")  # an HPA-2018 run, served as hpa-sc
    done = subprocess.run([sys.executable, "src/serve.py", "--models", str(run), "--port", str(free_port())],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: ") and "trained for task hpa-2018, not hpa-sc" in done.stderr
    done = subprocess.run([sys.executable, "src/serve.py", "--models", str(tmp_path / "nothing")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "no trained fold" in done.stderr


# --------------------------------------------------------------------------- the page, in a real browser


def test_the_page_uploads_the_sample_field_and_shows_overlay_cells_and_a_cell(server, chromium, tmp_path):
    from cellloc.browser import open_page

    with open_page(f"http://127.0.0.1:{server['port']}/", chromium, window=(1280, 1000), timeout=120) as page:
        page.wait_for("document.querySelector('#status').textContent.startsWith('task hpa-sc')")
        assert page.evaluate("document.querySelector('#run').disabled")
        page.set_files("#pick", [SAMPLE / f"{SAMPLE_ID}_{c}.png" for c in CHANNELS])
        assert page.evaluate("[...document.querySelectorAll('.slot.ok')].length") == 4
        page.evaluate("document.querySelector('#run').click()")
        rows = page.wait_for("document.querySelectorAll('#cells tbody tr').length", timeout=300)
        width = page.wait_for("document.querySelector('#overlay').complete && document.querySelector('#overlay').naturalWidth")
        assert rows >= 5 and width > 1024
        assert page.evaluate("document.querySelector('#error').hidden")
        summary = page.evaluate("document.querySelector('#summary').textContent")
        assert "1728 x 1728 px" in summary and f"cells{rows}" in summary.replace(" ", "")
        page.evaluate("document.querySelectorAll('#cells tbody tr')[1].click()")
        assert page.evaluate("document.querySelector('#cell-title').textContent").startswith("Cell ")
        assert page.evaluate("document.querySelectorAll('#cell-view .bar').length") == 8
        crop = page.evaluate("""(() => { const c = document.querySelector('#crop');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let lit = 0; for (let i = 0; i < d.length; i += 4) lit += (d[i] + d[i + 1] + d[i + 2]) > 60;
            return lit / (d.length / 4); })()""")
        assert crop > 0.2  # the cell's crop is drawn, not a black square
        shot = page.screenshot(tmp_path / "page.png")
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape == (1000, 1280, 3)
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1000  # not blank


def test_the_api_docs_render_offline(server, chromium):
    from cellloc.browser import open_page

    with open_page(f"http://127.0.0.1:{server['port']}/docs", chromium, timeout=120) as page:
        page.wait_for("document.querySelectorAll('.opblock').length", timeout=60)
        paths = page.evaluate("[...document.querySelectorAll('.opblock-summary-path')].map(e => e.textContent)")
    assert paths == ["/predict", "/overlay", "/health"]


def test_the_page_shows_the_services_error(server, chromium, tmp_path):
    from cellloc.browser import open_page

    odd = tmp_path / f"{SAMPLE_ID}_red.png"
    odd.write_bytes(encode_png(np.zeros((64, 64), np.uint8)))
    with open_page(f"http://127.0.0.1:{server['port']}/", chromium, timeout=120) as page:
        page.wait_for("document.querySelector('#status').textContent.startsWith('task')")
        page.set_files("#pick", [odd, *(SAMPLE / f"{SAMPLE_ID}_{c}.png" for c in CHANNELS[1:])])
        page.evaluate("document.querySelector('#run').click()")
        message = page.wait_for("!document.querySelector('#error').hidden && document.querySelector('#error').textContent")
    assert message.startswith("422: green: size 1728x1728 differs from red (64x64)")


def test_uploads_leave_no_files_behind(server):
    """Run last in this module: every request above is over, and the server's TMPDIR is empty."""
    assert server["client"].predict(sample_files())[0] == 200
    assert list(server["tmp"].iterdir()) == []
    assert open_files_under(server["proc"].pid, server["tmp"]) == []

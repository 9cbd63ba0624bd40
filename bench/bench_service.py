"""The prediction service under load: HTTP on loopback against the same work done in-process.

    PYTHONPATH=src python bench/bench_service.py                       # models/effb2 (python src/demo.py)
    PYTHONPATH=src python bench/bench_service.py --requests 2 --overlay

One field (the real sample field, 1728 x 1728 x 4, 3.1 MB of PNGs) is predicted

* in-process: ``service.predict_upload`` on the upload's bytes, one after another (decode the
  PNGs, segment, crop, classify, build the JSON answer: the work of one request without HTTP);
* over HTTP: ``python src/serve.py`` on a free loopback port, by 1, 4 and 16 concurrent
  clients (threads with their own connections), each sending ``--requests`` uploads.

Latency is per request as the client sees it (queueing included); throughput is answered
fields per second; "vs in-process" is HTTP throughput / in-process throughput (1.0: HTTP,
multipart parsing and JSON cost nothing). The server runs with ``--workers`` and a queue deep
enough for 16 clients, so every request is answered; its peak RSS (VmHWM, reset before each
level) says what N clients cost in memory. Load average is printed before and after: the
machine is shared, and a busy one slows both sides alike.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SAMPLE, SAMPLE_ID, CHANNELS = REPO / "input" / "sample", "57_F11_1", ("red", "green", "blue", "yellow")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def random_run(root: Path) -> Path:
    """A one-fold run like the demo's (EfficientNet-B2 on 64 px crops) with random weights."""
    from cellloc.classifier import Recipe, save_untrained
    from cellloc.config import save_config
    from cellloc.runs.segment import SegmentRunConfig
    from cellloc.runs.train import TrainConfig

    seg = SegmentRunConfig(crop_size=64)
    save_config(seg, root / "seg" / "segment_config.json")
    fold = root / "run" / "fold0"
    cfg = TrainConfig(folds_csv=str(root / "seg" / "folds.csv"), model="efficientnet-b2", pretrained="none",
                      image_size=64, mean=[0.1] * 4, std=[0.2] * 4)
    save_config(cfg, fold / "config.json")
    save_untrained(fold, Recipe("hpa-sc", "cell", cfg.model, 4, 19, cfg.image_size, cfg.mean, cfg.std, "multilabel",
                                seg.recipe_input()))
    return fold.parent


def rss_mb(pid: int, key: str) -> float:
    """VmRSS or VmHWM of a process, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak(pid: int) -> None:
    """Restart a process's VmHWM from its current RSS (Linux: write 5 to clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def post(port: int, body: bytes, kind: str, path: str) -> tuple[int, float]:
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": kind})
        res = conn.getresponse()
        res.read()
        return res.status, time.perf_counter() - t0
    finally:
        conn.close()


def http_level(port: int, clients: int, requests: int, body: bytes, kind: str, path: str) -> dict:
    results: list[tuple[int, float]] = []
    lock = threading.Lock()

    def client() -> None:
        for _ in range(requests):
            r = post(port, body, kind, path)
            with lock:
                results.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = [s for code, s in results if code == 200]
    return {"n": len(results), "ok": len(ok), "busy": sum(code == 503 for code, _ in results),
            "p50": float(np.percentile(ok, 50)) if ok else float("nan"),
            "p95": float(np.percentile(ok, 95)) if ok else float("nan"), "rate": len(ok) / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="models/effb2", help="run folder (missing: a random-weight B2/64 px run)")
    ap.add_argument("--requests", type=int, default=3, help="requests per client at each level")
    ap.add_argument("--inproc", type=int, default=5, help="in-process repetitions")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--workers", type=int, default=1, help="server --workers")
    ap.add_argument("--overlay", action="store_true", help="ask for the overlay picture too (what the page does)")
    a = ap.parse_args()

    from cellloc.service import ServiceConfig, predict_upload
    from cellloc.service_model import load_service_model
    from cellloc.uploads import Part, encode_multipart

    tmp = tempfile.TemporaryDirectory(prefix="bench-service-")
    models = Path(a.models) if Path(a.models, "fold0").is_dir() else random_run(Path(tmp.name))
    files = {c: (f"{SAMPLE_ID}_{c}.png", (SAMPLE / f"{SAMPLE_ID}_{c}.png").read_bytes(), "image/png") for c in CHANNELS}
    body, kind = encode_multipart(files)
    path = "/predict" + ("?overlay=true" if a.overlay else "")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; "
          f"load average at start {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"field: {SAMPLE_ID} 1728x1728x4 uint8, upload {len(body) / 2**20:.1f} MiB; model {models}; "
          f"request {path}; server --workers {a.workers}\n")

    # in-process: the same work, no HTTP
    cfg = ServiceConfig(models=str(models), workers=a.workers)
    model = load_service_model(models, "hpa-sc")
    parts = {c: Part(c, f, k, bytearray(d)) for c, (f, d, k) in files.items()}
    predict_upload(parts, model, cfg, overlay=a.overlay)  # warm-up
    times = []
    for _ in range(a.inproc):
        t0 = time.perf_counter()
        answer = predict_upload(parts, model, cfg, overlay=a.overlay)
        times.append(time.perf_counter() - t0)
    inproc_rate = len(times) / sum(times)
    print(f"in-process predict_upload: {len(answer['cells'])} cells; p50 {np.percentile(times, 50):.2f} s, "
          f"p95 {np.percentile(times, 95):.2f} s, {inproc_rate:.2f} fields/s (n={len(times)}); "
          f"this process's peak RSS {rss_mb(os.getpid(), 'VmHWM'):.0f} MB\n")
    del model

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, str(REPO / "src" / "serve.py"), "--models", str(models), "--port", str(port),
           "--workers", str(a.workers), "--queue", str(max(a.clients)), "--log-level", "warning"]
    server = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 300
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > end or server.poll() is not None:
                raise SystemExit("bench: the server did not become healthy")
            time.sleep(0.5)
        post(port, body, kind, path)  # warm-up
        idle = rss_mb(server.pid, "VmRSS")
        print(f"server RSS when idle and warm: {idle:.0f} MB")
        print("clients  requests  200  503   p50 s   p95 s  fields/s  vs in-process  server peak RSS MB")
        for n in a.clients:
            reset_peak(server.pid)
            r = http_level(port, n, a.requests, body, kind, path)
            print(f"{n:7d}  {r['n']:8d}  {r['ok']:3d}  {r['busy']:3d}  {r['p50']:6.2f}  {r['p95']:6.2f}  "
                  f"{r['rate']:8.2f}  {r['rate'] / inproc_rate:13.2f}  {rss_mb(server.pid, 'VmHWM'):18.0f}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/health")
        print(f"\nafter the load: /health {json.loads(conn.getresponse().read())['status']}, "
              f"server RSS {rss_mb(server.pid, 'VmRSS'):.0f} MB")
    finally:
        server.terminate()
        server.wait(30)
        tmp.cleanup()
    print(f"load average at end {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()

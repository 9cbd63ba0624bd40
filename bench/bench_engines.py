"""Dask distributed vs Ray on this machine: what chose the engine behind ``--executor``.

    python bench/bench_engines.py --engine dask     # in a venv with distributed installed
    python bench/bench_engines.py --engine ray      # in a venv with ray installed

One engine per run (each lives in its own scratch venv beside the pinned CPU torch). Measured
in the run, each engine against the same in-process serial loop, on the fields of ``--input``
(``python src/make_data.py --fields 16 --size 512 1024`` makes them):

1. import time of the engine (fresh interpreter, best of 3) and a local cluster's start + stop
   (``--workers`` worker processes, one thread each);
2. per-task overhead: 400 no-op tasks mapped over the cluster (seconds per task), and one task
   at a time (submit, wait: the round trip);
3. the per-field map of real work: read a field + classical segmentation, with per-worker state
   built once (the segmenter and an EfficientNet-B2 classifier): a per-process cache inside the
   task (engine-neutral), and the engine's own mechanism (Dask worker plugin, Ray actor pool).
   Fields/s against the serial loop, and how many times the state was built;
4. failures: one field raising (is it a value for that field, do the others finish?), and one
   task killing its worker process (does the map finish, what does that field report, how long).
5. memory: RSS of the cluster's processes, idle, after start.

Dask's local cluster gets the settings of cellloc's executor (``LOCAL_CLUSTER_CONFIG``: no
MALLOC_TRIM_THRESHOLD_ in the workers, worker-saturation 1.0, allowed-failures 0).
Read the ratios, not the seconds: the machine is shared, so the load average is printed too.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cellloc.fieldio import list_fields, read_field
from cellloc.models import create_model
from cellloc.segmentation import SegmentConfig, create_segmenter

_STATE: dict = {}
BUILDS = "build"


def build_state() -> dict:
    """What a worker holds: the segmenter and a classifier (random EfficientNet-B2, ~9M weights)."""
    return {"segmenter": create_segmenter(SegmentConfig()), "model": create_model("efficientnet-b2", 4, 19),
            "pid": os.getpid()}


def cached_state() -> dict:
    if BUILDS not in _STATE:
        _STATE[BUILDS] = build_state()
    return _STATE[BUILDS]


def segment_with(state: dict, folder: str, image_id: str) -> tuple[str, int, int]:
    image = read_field(folder, image_id)
    cells, _ = state["segmenter"].segment(image)
    return image_id, int(cells.max()), state["pid"]


def segment_cached(folder: str, image_id: str) -> tuple[str, int, int]:
    if image_id == "BAD":
        raise ValueError("a bad field")
    if image_id == "KILL":
        os._exit(3)
    return segment_with(cached_state(), folder, image_id)


def noop(x: int) -> int:
    return x


def descendants_rss_mb(pid: int) -> float:
    """Summed RSS of every process under ``pid`` (the cluster), MB."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    total, todo = 0, list(children.get(pid, []))
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def import_seconds(module: str) -> float:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    return min(float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
               for _ in range(3))


# ----------------------------------------------------------------------------- engines


class DaskEngine:
    module = "distributed"

    def start(self, workers: int):
        import dask
        from distributed import Client, LocalCluster

        from cellloc.runs.executor import LOCAL_CLUSTER_CONFIG

        with dask.config.set(LOCAL_CLUSTER_CONFIG):  # as cellloc's executor: see there why
            self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                        dashboard_address="127.0.0.1:0", silence_logs=40)
        self.client = Client(self.cluster)

    def stop(self) -> None:
        self.client.close()
        self.cluster.close()

    def map(self, fn, items, *args) -> list:
        """Results in input order; an exception (or a lost worker) is the value of its item."""
        futs = [self.client.submit(fn, *args, x, pure=False) for x in items]
        out = []
        for f in futs:
            try:
                out.append(f.result(timeout=300))
            except Exception as exc:  # noqa: BLE001
                out.append(exc)
        return out

    def round_trip(self, n: int) -> float:
        t = time.perf_counter()
        for i in range(n):
            self.client.submit(noop, i, pure=False).result()
        return (time.perf_counter() - t) / n

    def map_native_state(self, folder: str, ids: list[str]) -> list:
        """State through a worker plugin: built in ``setup`` on each worker, read via get_worker()."""
        from distributed import WorkerPlugin

        class Holder(WorkerPlugin):
            name = "cellloc-state"

            def setup(self, worker):
                worker.data_state = build_state()

        def run(folder, image_id):
            from distributed import get_worker

            return segment_with(get_worker().data_state, folder, image_id)

        self.client.register_plugin(Holder())
        return self.map(run, ids, folder)


class RayEngine:
    module = "ray"

    def start(self, workers: int):
        import ray

        ray.init(num_cpus=workers, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="ERROR", log_to_driver=False)
        self.ray = ray

    def stop(self) -> None:
        self.ray.shutdown()

    def map(self, fn, items, *args) -> list:
        remote = self.ray.remote(fn).options(max_retries=1)
        refs = [remote.remote(*args, x) for x in items]
        out = []
        for r in refs:
            try:
                out.append(self.ray.get(r, timeout=300))
            except Exception as exc:  # noqa: BLE001
                out.append(exc)
        return out

    def round_trip(self, n: int) -> float:
        remote = self.ray.remote(noop)
        t = time.perf_counter()
        for i in range(n):
            self.ray.get(remote.remote(i))
        return (time.perf_counter() - t) / n

    def map_native_state(self, folder: str, ids: list[str]) -> list:
        """State in actors: one per CPU, fed through an ActorPool (ordered map)."""
        from ray.util import ActorPool

        @self.ray.remote(num_cpus=1)
        class Holder:
            def __init__(self):
                self.state = build_state()

            def run(self, folder, image_id):
                return segment_with(self.state, folder, image_id)

        n = int(self.ray.available_resources().get("CPU", 1))
        pool = ActorPool([Holder.remote() for _ in range(n)])
        out = list(pool.map(lambda a, i: a.run.remote(folder, i), ids))
        for a in pool._idle_actors:
            self.ray.kill(a)
        return out


ENGINES = {"dask": DaskEngine, "ray": RayEngine}


def describe(res) -> str:
    return type(res).__name__ if isinstance(res, Exception) else f"ok ({res[1]} cells)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=sorted(ENGINES), required=True)
    ap.add_argument("--input", default="input/synth/train")
    ap.add_argument("--noop", type=int, default=400)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # Workers must import the task functions by name (as they import cellloc in a real run), not
    # receive copies pickled from __main__ with fresh globals each time: run them from this module.
    here = Path(__file__).resolve().parent
    os.environ["PYTHONPATH"] = os.pathsep.join([str(here), str(here.parent / "src"), os.environ.get("PYTHONPATH", "")])
    sys.path.insert(0, str(here))
    import bench_engines as mod

    mod.run(args)


def run(args: argparse.Namespace) -> None:
    engine = ENGINES[args.engine]()
    folder = args.input
    ids = list_fields(folder).ids
    print(f"{platform.machine()}, {os.cpu_count()} CPU cores, python {platform.python_version()}; "
          f"engine {args.engine}; {len(ids)} fields from {folder}")
    print(f"import {engine.module}: {import_seconds(engine.module):.2f} s (fresh interpreter, best of 3)")

    t = time.perf_counter()
    state = build_state()
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    serial = [segment_with(state, folder, i) for i in ids]
    serial_fps = len(ids) / (time.perf_counter() - t)
    print(f"serial: {serial_fps:.2f} fields/s (state built once in {build_s:.2f} s)")

    for workers in (1, 2):
        t = time.perf_counter()
        engine.start(workers)
        start_s = time.perf_counter() - t
        rss = descendants_rss_mb(os.getpid())
        line = f"{workers} worker(s): cluster start {start_s:.2f} s, idle RSS of its processes {rss:.0f} MB"
        engine.map(noop, range(4 * workers))  # warm the workers
        t = time.perf_counter()
        engine.map(noop, range(args.noop))
        per_task = (time.perf_counter() - t) / args.noop
        rt = engine.round_trip(50)
        print(f"{line}; no-op map {per_task * 1e3:.2f} ms/task, one-at-a-time round trip {rt * 1e3:.2f} ms")
        _STATE.clear()
        for style, run in (("per-process cache", lambda: engine.map(segment_cached, ids, folder)),
                           ("native state", lambda: engine.map_native_state(folder, ids))):
            t = time.perf_counter()
            res = run()
            fps = len(ids) / (time.perf_counter() - t)
            t = time.perf_counter()
            res2 = engine.map(segment_cached, ids, folder) if style.startswith("per") else run()
            warm = len(ids) / (time.perf_counter() - t)
            same = [r[:2] for r in res] == [r[:2] for r in serial] == [r[:2] for r in res2]
            pids = {r[2] for r in res + res2}
            print(f"   fields, state by {style}: first map {fps:.2f} fields/s = {fps / serial_fps:.2f}x serial "
                  f"(state build included), second map {warm:.2f} fields/s = {warm / serial_fps:.2f}x; "
                  f"results equal serial: {same}; state built in {len(pids)} process(es)")
        if workers == 2:
            res = engine.map(segment_cached, [ids[0], "BAD", ids[1]], folder)
            print("   one field raises: " + ", ".join(describe(r) for r in res))
            t = time.perf_counter()
            res = engine.map(segment_cached, [ids[0], "KILL", ids[1], ids[2]], folder)
            print(f"   one task kills its worker: {', '.join(describe(r) for r in res)} ({time.perf_counter() - t:.1f} s)")
        t = time.perf_counter()
        engine.stop()
        print(f"   cluster stop {time.perf_counter() - t:.2f} s")
    print("load average " + " ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()

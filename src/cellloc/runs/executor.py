"""Map a per-field function over many fields: in this process, a local process pool, or a Dask cluster.

    from cellloc.runs.executor import map_fields

    for result in map_fields(segment_one, ids, executor="dask", workers=2, init=make_segmenter):
        ...   # results in the order of ids, whatever ran where; a field that raised is a Failure

Three promises hold for every executor, so a run's tables are byte-identical whichever one ran it:

* results come back in INPUT order (the driver writes tables in a fixed order);
* per-worker state is built once per worker process, not once per field: ``init()`` (a
  segmenter, a loaded classifier) runs lazily on a worker's first item and is kept for the
  rest of the map, then dropped; the function is called as ``fn(state, item)``;
* an item whose function raises, or whose worker process dies, becomes a :class:`Failure`
  value in its place; the map goes on with the other items.

``fn`` and ``init`` must be picklable by reference or value (module-level functions,
``functools.partial`` of them, dataclasses): the process pool and Dask ship them to workers.
``init`` is sent to each worker once per map (not with every item), so it may carry a labels
table or a config.

Executors are a registry (``EXECUTORS``): ``serial``, ``process`` (a local process pool of
``workers``) and ``dask`` (the optional ``distributed`` extra, imported only when chosen: a
local cluster of ``workers`` single-threaded worker processes on 127.0.0.1, started and shut
down by the executor's context manager, or an existing cluster joined with ``address``).
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Protocol

from ..config import opt
from ..errors import InputError

DISTRIBUTED_INSTALL = 'pip install -e ".[distributed]"'

# Dask settings for the local cluster (and recommended for a cluster that --address joins):
# - worker-saturation 1.0: a worker holds only the field it runs, so a field that kills its worker
#   (out of memory) takes no queued field down with it; the extra scheduler round trip per field
#   costs milliseconds against seconds of work.
# - allowed-failures 0: a field that kills its worker is a failure at once (retrying a field that
#   ran out of memory kills the next worker too; a rerun redoes it). With retries, a poisoned
#   field can kill a worker that its nanny is still starting, and the nanny does not restart a
#   worker in that state: measured here, 4 deaths left a 2-worker cluster with none, and the map hung.
# - no MALLOC_TRIM_THRESHOLD_ in the workers' environment (Dask sets 65536 by default): it turns
#   off glibc's dynamic mmap threshold, so every large numpy temporary is mmapped and faulted in
#   afresh; classical segmentation ran ~1.5x slower with it (measured, see README).
LOCAL_CLUSTER_CONFIG = {
    "distributed.scheduler.worker-saturation": 1.0,
    "distributed.scheduler.allowed-failures": 0,
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
}


@dataclass(frozen=True)
class Failure:
    """The value in place of an item that failed: the item and a one-line reason."""

    item: Any
    error: str


def failure_message(exc: BaseException) -> str:
    """One line for a failed item: an InputError's own message, else ``Type: message``."""
    if isinstance(exc, InputError):
        return str(exc)
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}".rstrip(": ")


# ----------------------------------------------------------------------------- per-worker state
# One table per process. A map registers its ``init`` under a fresh token on every worker (the
# process pool's initializer, a Dask worker plugin, or the driver itself for ``serial``); the
# first item a worker runs builds the state, the next items reuse it.

_INITS: dict[str, Callable[[], Any] | None] = {}
_STATES: dict[str, Any] = {}
_LOCK = threading.Lock()


class _InitFailed:
    def __init__(self, message: str) -> None:
        self.message = message


def register_init(token: str, init: Callable[[], Any] | None) -> None:
    """Make ``init`` the state factory of map ``token`` in this process."""
    with _LOCK:
        _INITS[token] = init


def forget_state(token: str) -> None:
    """Drop map ``token``'s factory and state in this process (a model's memory goes with it)."""
    with _LOCK:
        _INITS.pop(token, None)
        _STATES.pop(token, None)


def worker_state(token: str) -> Any:
    """This process's state for map ``token``, built on first use; threads of a worker share it."""
    with _LOCK:
        if token not in _STATES:
            init = _INITS[token]
            try:
                _STATES[token] = init() if init is not None else None
            except Exception as exc:  # noqa: BLE001 - every item of this worker reports it
                _STATES[token] = _InitFailed(f"worker set-up failed: {failure_message(exc)}")
        return _STATES[token]


def apply(fn: Callable[..., Any], token: str, item: Any) -> Any:
    """Run ``fn`` on one item with this worker's state; an exception becomes a :class:`Failure`."""
    state = worker_state(token)
    if isinstance(state, _InitFailed):
        return Failure(item, state.message)
    try:
        return fn(item) if _INITS.get(token) is None else fn(state, item)
    except Exception as exc:  # noqa: BLE001 - one bad field must not stop a 20k-field run
        return Failure(item, failure_message(exc))


def _lost(item: Any, exc: BaseException) -> Failure:
    return Failure(item, f"worker lost: {failure_message(exc)}")


# ----------------------------------------------------------------------------- executors


class _Future(Protocol):
    def result(self, timeout: float | None = None) -> Any: ...


def in_order(submit: Callable[[Any], _Future], items: Iterable[Any], window: int | Callable[[], int]) -> Iterator[Any]:
    """Submit ahead at most ``window`` items, yield results in input order.

    The window keeps the driver's memory bounded on a 100k-field map and lets every worker stay
    busy while the head item is still running; a callable window follows a cluster that grows
    (workers joining after the run started). A future that raises (its worker died, the cluster
    went away) is a :class:`Failure` for its item.
    """
    size = window if callable(window) else (lambda: window)
    pending: deque[tuple[Any, _Future]] = deque()
    it = iter(items)
    exhausted = False

    def top_up() -> None:
        nonlocal exhausted
        limit = max(1, size())
        while not exhausted and len(pending) < limit:
            nxt = next(it, _END)
            if nxt is _END:
                exhausted = True
            else:
                pending.append((nxt, submit(nxt)))

    top_up()
    while pending:
        item, fut = pending.popleft()
        try:
            yield fut.result()
        except Exception as exc:  # noqa: BLE001
            yield _lost(item, exc)
        top_up()


_END = object()


class Executor:
    """A context manager that starts what it needs on enter and stops it on exit."""

    name = ""
    # True where every item runs in this process, one after the other, in input order: a worker
    # then knows its next item and may prepare it while this one runs (segment.py reads ahead).
    in_order = False

    def __init__(self, workers: int = 1, address: str | None = None) -> None:
        if workers < 1:
            raise InputError(f"--workers must be >= 1, got {workers}")
        if address:
            raise InputError(f"--address joins a Dask cluster; use it with --executor dask, not {self.name}")
        self.workers = workers

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @property
    def slots(self) -> int:
        """How many items run at once."""
        return self.workers

    def map(self, fn: Callable[..., Any], items: Iterable[Any], init: Callable[[], Any] | None = None,
            **options: Any) -> Iterator[Any]:
        """``fn(state, item)`` (``fn(item)`` without ``init``) for each item, in input order."""
        raise NotImplementedError


EXECUTORS: dict[str, type[Executor]] = {}


def register_executor(name: str) -> Callable[[type[Executor]], type[Executor]]:
    """Class decorator: make an executor choosable by name (``--executor NAME``)."""

    def deco(cls: type[Executor]) -> type[Executor]:
        cls.name = name
        EXECUTORS[name] = cls
        return cls

    return deco


@register_executor("serial")
class SerialExecutor(Executor):
    """Everything in the calling process, one item after the other (the default)."""

    in_order = True

    def map(self, fn, items, init=None, **options):
        token = uuid.uuid4().hex
        register_init(token, init)
        try:
            for item in items:
                yield apply(fn, token, item)
        finally:
            forget_state(token)


@register_executor("process")
class ProcessExecutor(Executor):
    """A pool of ``workers`` local processes; each builds the state once, in its first item.

    The processes are spawned, not forked: a driver that already ran torch (prediction loads its
    models first) has thread pools that a forked child inherits locked, and hangs in its first
    forward pass. A worker process that dies (killed, out of memory) breaks a Python process
    pool: the items it had in flight become failures and a fresh pool takes the rest.
    """

    def map(self, fn, items, init=None, **options):
        token = uuid.uuid4().hex
        pool: list[ProcessPoolExecutor] = []

        def new_pool() -> ProcessPoolExecutor:
            if pool:
                pool.pop().shutdown(wait=False, cancel_futures=True)
            pool.append(ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=register_init, initargs=(token, init)))
            return pool[0]

        def submit(item):
            ex = pool[0] if pool else new_pool()
            try:
                return ex.submit(apply, fn, token, item)
            except BrokenProcessPool:
                return new_pool().submit(apply, fn, token, item)

        try:
            yield from in_order(submit, items, window=4 * self.workers)
        finally:
            if pool:
                pool[0].shutdown(wait=True, cancel_futures=True)


@register_executor("dask")
class DaskExecutor(Executor):
    """Dask distributed: a local cluster of ``workers`` processes, or the cluster at ``address``.

    The local cluster's workers have one thread each (a model per process, like the process
    pool) and listen on 127.0.0.1 only; it is shut down on exit. With ``address`` (``tcp://host:8786``
    or a scheduler file written by ``dask scheduler --scheduler-file``) the cluster is only
    joined, and left running. The state factory goes to the workers as a worker plugin, so
    workers that join later (an adaptive SLURM or Kubernetes cluster) and workers restarted
    after a crash get it too. A field whose worker dies is a failure (on the local cluster at
    once; on a joined one after its ``distributed.scheduler.allowed-failures`` retries), and the
    worker's nanny starts a fresh worker.
    """

    connect_timeout_s: float = 30.0  # how long a joined scheduler may take to answer (Dask retries until then)

    def __init__(self, workers: int = 1, address: str | None = None) -> None:
        if workers < 1:
            raise InputError(f"--workers must be >= 1, got {workers}")
        self.workers = workers
        self.address = address or None
        self.cluster_config = dict(LOCAL_CLUSTER_CONFIG)  # Dask settings of the local cluster
        self.client = None
        self.cluster = None

    def __enter__(self) -> DaskExecutor:
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise InputError(f"--executor dask needs the distributed extra: {DISTRIBUTED_INSTALL}") from None
        import logging

        if self.address:
            try:
                if self.address.endswith(".json"):
                    self.client = Client(scheduler_file=self.address, timeout=self.connect_timeout_s)
                else:
                    self.client = Client(self.address, timeout=self.connect_timeout_s)
            except (OSError, TimeoutError, ValueError) as exc:
                raise InputError(f"{self.address}: cannot reach a Dask scheduler ({failure_message(exc)})") from None
        else:
            import dask

            with dask.config.set(self.cluster_config):
                self.cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                            host="127.0.0.1", dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR)
            self.client = Client(self.cluster)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        self.client = self.cluster = None

    @property
    def slots(self) -> int:
        return max(1, sum(self.client.nthreads().values())) if self.client is not None else self.workers

    def map(self, fn, items, init=None, resources: dict[str, float] | None = None, **options):
        """As :meth:`Executor.map`; ``resources`` (e.g. ``{"GPU": 1}``) limits items to workers
        started with ``--resources "GPU=1"``."""
        from distributed import WorkerPlugin

        if self.client is None:
            raise RuntimeError("DaskExecutor.map outside its with-block")
        client = self.client
        token = uuid.uuid4().hex

        class StateFactory(WorkerPlugin):
            name = f"cellloc-state-{token}"

            def setup(self, worker) -> None:
                register_init(token, init)

            def teardown(self, worker) -> None:
                forget_state(token)

        client.register_plugin(StateFactory(), name=StateFactory.name)
        counter = iter(range(1 << 62))

        def submit(item):
            return client.submit(apply, fn, token, item, key=f"cellloc-{token[:8]}-{next(counter)}",
                                 pure=False, resources=resources)

        checked = [0.0, 16]

        def window() -> int:  # 8 items per worker thread, re-read from the scheduler every 5 s
            if time.monotonic() - checked[0] > 5:
                checked[:] = [time.monotonic(), max(16, 8 * self.slots)]
            return checked[1]

        try:
            yield from in_order(submit, items, window=window)
        finally:
            try:
                client.unregister_worker_plugin(StateFactory.name)
            except Exception:  # noqa: BLE001 - the cluster may be gone already; nothing to free then
                pass


def executor_names() -> list[str]:
    return sorted(EXECUTORS, key=lambda n: (n != "serial", n != "process", n))


@dataclass
class ExecutorOptions:
    """``--executor``, ``--workers``, ``--threads``, ``--address``: where a folder run's fields run (a config mixin).

    A subclass's ``__post_init__`` calls :meth:`check_executor`. They do not change results (the
    outputs are byte-identical whatever runs them), so they are not settings a resume compares.
    """

    executor: str = opt("serial", "where fields run: serial, process (a local pool of --workers) or dask "
                        "(a local cluster of --workers, or the cluster at --address; pip install -e \".[distributed]\"); "
                        "--workers > 1 with serial means process", choices=executor_names())
    workers: int = opt(1, "worker processes of the process pool or the local Dask cluster")
    threads: int = opt(0, "intra-op threads per process for the networks, PyTorch and OpenVINO (0: $CELLLOC_THREADS, "
                       "else $OMP_NUM_THREADS, else the CPUs this process may use shared among --workers)")
    address: str = opt("", "join a running Dask cluster (--executor dask): tcp://host:8786 or a scheduler JSON file")

    def check_executor(self) -> None:
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if self.threads < 0:
            raise ValueError(f"--threads must be >= 0, got {self.threads}")
        if self.executor == "serial" and self.workers > 1:
            self.executor = "process"
        if self.address and self.executor != "dask":
            raise ValueError(f"--address joins a Dask cluster; use it with --executor dask, not {self.executor}")

    def open_executor(self) -> Executor:
        return open_executor(self.executor, self.workers, self.address)


def open_executor(name: str = "serial", workers: int = 1, address: str | None = None) -> Executor:
    """The executor called ``name`` (not started yet: use it as a context manager)."""
    try:
        cls = EXECUTORS[name]
    except KeyError:
        raise InputError(f"unknown executor {name!r}; known: {', '.join(executor_names())}") from None
    return cls(workers=workers, address=address)


def map_fields(fn: Callable[..., Any], items: Iterable[Any], executor: str = "serial", workers: int = 1,
               address: str | None = None, init: Callable[[], Any] | None = None, **options: Any) -> Iterator[Any]:
    """Start ``executor``, yield ``fn``'s results for ``items`` in input order, stop it.

    ``fn(init(), item)`` with ``init`` (built once per worker), else ``fn(item)``. A failed item
    yields a :class:`Failure`. Closing the generator early shuts the executor down too.
    """
    with open_executor(executor, workers, address) as ex:
        yield from ex.map(fn, items, init=init, **options)

"""map_fields on every executor: same results in input order, state once per worker, failures as values."""

from __future__ import annotations

import importlib.util
import os
import sys
import time
import uuid
from functools import partial

import pytest

from cellloc.errors import InputError
from cellloc.runs import executor as ex_mod
from cellloc.runs.executor import EXECUTORS, Failure, map_fields, open_executor

ITEMS = [f"f{i:02d}" for i in range(10)]


def make_state(tag: str) -> dict:
    """A worker's state: which process built it, and a unique id per build."""
    return {"tag": tag, "pid": os.getpid(), "build": uuid.uuid4().hex}


def field_work(state: dict, item: str) -> tuple[str, str, int, str, int]:
    """(item, state tag, a result, state build id, pid). Late items finish first, so an executor
    that returned completion order would show it."""
    if item == "bad":
        raise InputError(f"{item}_red.png: not a PNG")
    if item == "boom":
        raise ZeroDivisionError("division by zero")
    k = int(item[1:])
    time.sleep(0.02 * (len(ITEMS) - k) / len(ITEMS))
    return item, state["tag"], k * k, state["build"], state["pid"]


def plain(item: str) -> str:
    if item == "bad":
        raise ValueError("bad  item\nwith a newline")
    return item.upper()


def broken_init() -> dict:
    raise OSError("weights.pt: no such file")


def die(item: str) -> str:
    if item == "kill":
        os._exit(3)
    return item


def check_state_per_worker(results: list, most: int) -> None:
    builds = {(r[4], r[3]) for r in results}
    pids = {r[4] for r in results}
    assert len(builds) == len(pids) <= most  # each worker process built its state once


# ----------------------------------------------------------------------------- serial and process


def test_serial_gives_results_in_order_with_state_built_once():
    res = list(map_fields(field_work, ITEMS, init=partial(make_state, "x")))
    assert [r[:3] for r in res] == [(i, "x", int(i[1:]) ** 2) for i in ITEMS]
    assert len({r[3] for r in res}) == 1 and res[0][4] == os.getpid()


def test_process_pool_matches_serial_and_builds_state_once_per_worker():
    serial = list(map_fields(field_work, ITEMS, init=partial(make_state, "x")))
    pooled = list(map_fields(field_work, ITEMS, executor="process", workers=2, init=partial(make_state, "x")))
    assert [r[:3] for r in pooled] == [r[:3] for r in serial]
    assert os.getpid() not in {r[4] for r in pooled}
    check_state_per_worker(pooled, 2)


@pytest.mark.parametrize("executor", ["serial", "process"])
def test_a_failing_item_is_a_failure_value_and_the_map_goes_on(executor):
    items = ["f01", "bad", "f02", "boom", "f03"]
    res = list(map_fields(field_work, items, executor=executor, workers=2, init=partial(make_state, "x")))
    assert res[1] == Failure("bad", "bad_red.png: not a PNG")
    assert res[3] == Failure("boom", "ZeroDivisionError: division by zero")
    assert [r[0] for r in (res[0], res[2], res[4])] == ["f01", "f02", "f03"]


def test_without_init_the_function_takes_the_item_alone_and_errors_are_one_line():
    assert list(map_fields(plain, ["a", "bad", "b"])) == ["A", Failure("bad", "ValueError: bad item with a newline"), "B"]


@pytest.mark.parametrize("executor", ["serial", "process"])
def test_a_failing_init_fails_each_item_with_its_reason(executor):
    res = list(map_fields(field_work, ["f01", "f02"], executor=executor, workers=1, init=broken_init))
    assert res == [Failure(i, "worker set-up failed: OSError: weights.pt: no such file") for i in ("f01", "f02")]


def test_a_process_that_dies_fails_its_item_and_a_new_pool_takes_the_rest():
    items = ["kill"] + ITEMS
    res = list(map_fields(die, items, executor="process", workers=1))
    assert res[0] == Failure("kill", res[0].error) and res[0].error.startswith("worker lost: BrokenProcessPool")
    window = 4  # items in flight with the dead worker may fail with it; those submitted later may not
    assert res[window:] == items[window:]
    assert all(r == i or (isinstance(r, Failure) and r.error.startswith("worker lost")) for r, i in zip(res, items))


def test_state_is_dropped_after_the_map():
    list(map_fields(field_work, ITEMS[:2], init=partial(make_state, "x")))
    assert not ex_mod._STATES and not ex_mod._INITS


def test_bad_choices_are_one_line_input_errors():
    with pytest.raises(InputError, match="unknown executor 'spark'; known: serial, process"):
        open_executor("spark")
    with pytest.raises(InputError, match="--address joins a Dask cluster"):
        open_executor("process", 2, address="tcp://127.0.0.1:8786")
    with pytest.raises(InputError, match="--workers must be >= 1"):
        open_executor("process", 0)


def test_a_missing_distributed_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(InputError, match=r'needs the distributed extra: pip install -e "\.\[distributed\]"'):
        with open_executor("dask", 1):
            pass


def test_registry_names_the_executors():
    assert {"serial", "process", "dask"} <= set(EXECUTORS)


# ----------------------------------------------------------------------------- dask

needs_dask = pytest.mark.skipif(importlib.util.find_spec("distributed") is None,
                                reason='the dask executor needs pip install -e ".[distributed]"')


@pytest.fixture
def by_value():
    """Dask workers are fresh processes without tests/ on their path: ship this module's functions by value."""
    import cloudpickle

    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    yield
    cloudpickle.unregister_pickle_by_value(module)


@needs_dask
def test_dask_local_cluster_matches_serial_and_is_shut_down(by_value):
    serial = list(map_fields(field_work, ITEMS + ["bad"], init=partial(make_state, "x")))
    with open_executor("dask", workers=2) as ex:
        cluster = ex.cluster
        assert ex.slots == 2 and cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        res = list(ex.map(field_work, ITEMS + ["bad"], init=partial(make_state, "x")))
    assert cluster.status.name == "closed"
    assert [r if isinstance(r, Failure) else r[:3] for r in res] == [r if isinstance(r, Failure) else r[:3] for r in serial]
    assert os.getpid() not in {r[4] for r in res[:-1]}
    check_state_per_worker(res[:-1], 2)


@needs_dask
def test_dask_joins_a_running_cluster_leaves_it_up_and_frees_the_state(by_value):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster:
        res = list(map_fields(field_work, ITEMS, executor="dask", address=cluster.scheduler_address,
                              init=partial(make_state, "joined")))
        assert [r[:3] for r in res] == [(i, "joined", int(i[1:]) ** 2) for i in ITEMS]
        check_state_per_worker(res, 1)  # two threads of one worker share one state
        with Client(cluster) as client:
            assert cluster.status.name == "running"
            left = client.run(lambda: len(ex_mod._STATES) + len(ex_mod._INITS))
            assert list(left.values()) == [0]


@needs_dask
def test_dask_a_field_that_kills_its_worker_is_a_failure_and_a_fresh_worker_takes_the_rest(by_value):
    items = ["kill"] + ITEMS
    res = list(map_fields(die, items, executor="dask", workers=1))
    assert isinstance(res[0], Failure) and res[0].error.startswith("worker lost: KilledWorker")
    # Dask sends the first 2 tasks per thread straight to the worker (later ones wait in the
    # scheduler's queue), so the second field may die with the first; none after it may
    assert res[1] in (items[1], Failure(items[1], res[1].error if isinstance(res[1], Failure) else ""))
    assert res[2:] == items[2:]


def hold_gpu(item: str) -> tuple[str, float, float]:
    """(item, start, end) of a short task, to see which tasks overlapped in time."""
    start = time.monotonic()
    time.sleep(0.05)
    return item, start, time.monotonic()


@needs_dask
def test_dask_resources_hold_items_to_the_workers_that_have_them(by_value):
    """One worker with 2 threads and one "GPU": items that need the GPU run one at a time
    (one model replica per GPU), though the worker could run two items at once."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", resources={"GPU": 1}) as cluster:
        res = list(map_fields(hold_gpu, ITEMS, executor="dask", address=cluster.scheduler_address,
                              resources={"GPU": 1}))
    assert [r[0] for r in res] == ITEMS
    spans = sorted((r[1], r[2]) for r in res)
    assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:]))  # never two at once


@needs_dask
def test_dask_unreachable_address_is_one_line(monkeypatch):
    from cellloc.runs.executor import DaskExecutor

    monkeypatch.setattr(DaskExecutor, "connect_timeout_s", 2.0)  # Dask retries until then (30 s by default)
    with pytest.raises(InputError, match="cannot reach a Dask scheduler"):
        with open_executor("dask", address="tcp://127.0.0.1:9"):
            pass


"""RayPool against a real local Ray instance (tests/ray_support.py), never a mock.

What every pool promises alike is tested on all three pools in test_contract.py;
this module tests what is RayPool's own: its Ray connection, Ray's object store
(ObjectRefs passed as they are, numpy arrays without a copy), and what Ray can do
that Dask cannot (stop a running task: its worker process is killed, for a cancel
or a time limit). Tests marked ``slow`` run in ``make test-all`` only.

Every test here is marked ``ray``: conftest.py runs them at the end of the
session, after every fork-based test (see tests/ray_support.py).
"""

from __future__ import annotations

import concurrent.futures
import gc
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray", reason="install the ray extra: pip install 'procpool[ray]'")

import numpy as np  # noqa: E402  (after the importorskip above)

import dask_helpers as h  # noqa: E402
import helpers  # noqa: E402
import placement_helpers as plh  # noqa: E402
import procpool  # noqa: E402
import ray_helpers as rh  # noqa: E402
from procpool import RayPool  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120), pytest.mark.usefixtures("ray_session")]


@pytest.fixture
def pool() -> Any:
    """A RayPool on the session's Ray instance; terminated if a test leaves it running."""
    p = RayPool()
    try:
        yield p
    finally:
        p.terminate()
        p.join(30)


# -- construction and the connection ----------------------------------------------------------


def test_raypool_is_exported_and_an_executor() -> None:
    assert procpool.RayPool is RayPool
    assert issubclass(RayPool, concurrent.futures.Executor)


def test_missing_ray_raises_import_error_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r'pip install "procpool\[ray\]"'):
        RayPool()


@pytest.mark.parametrize("bad", [-1.0, float("nan")])
def test_negative_task_timeout_is_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match="task_timeout"):
        RayPool(task_timeout=bad)


def test_an_address_that_is_not_a_string_is_rejected() -> None:
    with pytest.raises(TypeError, match="address"):
        RayPool(6379)  # type: ignore[arg-type]


def test_the_programs_own_ray_is_used_and_left_running() -> None:
    with RayPool() as pool:
        assert pool.submit(h.square, 3).result(timeout=30) == 9
        assert pool.workers == 2  # the session's instance has two CPUs
    assert ray.is_initialized()  # not ours to shut down


def test_another_address_while_connected_is_refused() -> None:
    with pytest.raises(RuntimeError, match="already connected"):
        RayPool("127.0.0.1:1")
    assert ray.is_initialized()


def test_a_dropped_pool_stops_its_threads() -> None:
    pool = RayPool()
    assert pool.submit(h.square, 5).then(str).result(timeout=30) == "25"
    assert pool.options(timeout=5).submit(h.square, 6).result(timeout=30) == 36
    tag = f"{id(pool._core):x}"  # in the names of the pool's threads
    del pool
    gc.collect()
    assert helpers.wait_for(lambda: not [t for t in threading.enumerate() if tag in t.name])


def test_ray_pool_refuses_a_memory_limit_per_worker(pool: RayPool) -> None:
    with pytest.raises(ValueError, match="memory monitor"):
        pool.options(max_memory_per_worker="1 GiB")


# -- what travels -----------------------------------------------------------------------------


def test_current_worker_holds_for_procpools_tasks_only(pool: RayPool) -> None:
    # Set around each call, not per worker process: a plain Ray task (on a worker
    # that ran procpool's tasks before) sees None.
    ours = pool.map(plh.who, range(4), chunksize=1).result(timeout=30)
    assert all(info is not None and info[4] == "ray" for info in ours)
    assert pool.submit(plh.who).result(timeout=30) is not None
    plain = ray.remote(plh.who)
    assert ray.get([plain.remote(i) for i in range(4)], timeout=30) == [None] * 4


def test_ray_pool_refuses_a_priority_rather_than_ignore_it(pool: RayPool) -> None:
    with pytest.raises(ValueError, match="Ray has no task priorities"):
        pool.options(priority=5)
    assert pool.options(priority=0).submit(h.square, 3).result(timeout=30) == 9


def test_submit_sends_lambdas_and_closures_with_cloudpickle(pool: RayPool) -> None:
    offset = 40
    assert pool.submit(lambda x: x + offset, 2).result(timeout=30) == 42
    assert pool.map(lambda x: x * offset, [1, 2]).result(timeout=30) == [40, 80]


def test_builtins_and_callable_objects_run_too(pool: RayPool) -> None:
    assert pool.submit(pow, 2, 10).result(timeout=30) == 1024
    assert pool.submit(helpers.Greet("ray")).result(timeout=30) == "hello ray"


def test_an_object_ref_argument_reaches_the_function_as_it_is(pool: RayPool) -> None:
    ref = ray.put(40)
    assert pool.submit(rh.is_object_ref, ref).result(timeout=30) is True
    assert pool.submit(rh.get_and_add, ref, x=2).result(timeout=30) == 42
    assert pool.map(rh.get_and_add, [ref, ref], [1, 2]).result(timeout=30) == [41, 42]


def test_numpy_arrays_travel_through_the_object_store_without_a_copy(pool: RayPool) -> None:
    big = np.arange(1_000_000, dtype=np.float64)  # 8 MB: past Ray's inline limit
    writeable, owns, total = pool.submit(rh.array_view, big).result(timeout=30)
    # Read-only and not owning its data: the worker reads the object store's buffer.
    assert (writeable, owns, total) == (False, False, float(big.sum()))
    result = pool.submit(rh.ones, 1_000_000).result(timeout=30)
    assert not result.flags.writeable
    assert not result.flags.owndata
    assert float(result.sum()) == 1_000_000.0


def test_unpicklable_keyword_argument_is_named(pool: RayPool) -> None:
    with pytest.raises(procpool.SerializationError, match=r"argument value= of sleep_then"):
        pool.submit(h.sleep_then, 0, value=threading.Lock()).result(timeout=30)  # type: ignore[arg-type]


def test_an_exception_that_does_not_unpickle_is_a_serialization_error(pool: RayPool) -> None:
    with pytest.raises(procpool.SerializationError, match=r"UnpicklableError|could not be"):
        pool.submit(helpers.raise_unpicklable_error).result(timeout=30)
    result = pool.map(rh.raise_unpicklable_error_of, [1, 2]).exception(timeout=30)
    assert isinstance(result, procpool.SerializationError)


def test_a_wait_that_times_out_leaves_the_future_to_resolve_on_its_own(pool: RayPool) -> None:
    # result() fetches on the waiting thread and withdraws Ray's watch meanwhile;
    # after its timeout the watch is back, so callbacks and other waiters still see
    # the result.
    fut = pool.submit(h.sleep_then, 0.5, 7)
    with pytest.raises(concurrent.futures.TimeoutError):
        fut.result(timeout=0.05)
    seen = threading.Event()
    fut.add_done_callback(lambda _: seen.set())
    assert seen.wait(30)
    assert fut.result(timeout=0) == 7


def test_futures_nobody_waits_for_resolve_too(pool: RayPool) -> None:
    futures = [pool.submit(h.square, i) for i in range(20)]
    done, _ = concurrent.futures.wait(futures, timeout=30)
    assert len(done) == 20
    assert sorted(f.result() for f in done) == [i * i for i in range(20)]


# -- faults -----------------------------------------------------------------------------------


def test_a_dead_worker_is_a_worker_lost_error_with_rays_error_as_cause(pool: RayPool) -> None:
    error = pool.submit(h.exit_worker, 3).exception(timeout=60)
    assert isinstance(error, procpool.WorkerLostError)
    assert error.cause == "unknown"  # Ray does not tell the driver how a worker died
    assert isinstance(error.__cause__, ray.exceptions.WorkerCrashedError)
    assert "exit_worker" in str(error)


def test_a_dead_worker_fails_its_map_chunk_and_retries_run_it_again(
    pool: RayPool, tmp_path: Path
) -> None:
    marker = str(tmp_path / "died")
    mapped = pool.options(retries=1).map(h.die_once_then_sleep, [marker, marker], [0.0, 0.0])
    assert mapped.result(timeout=60) == [0.0, 0.0]
    assert pool.stats().retried == 1


# -- stopping running work: the worker process is killed --------------------------------------


def test_cancelling_a_running_task_kills_its_worker(pool: RayPool, tmp_path: Path) -> None:
    path = str(tmp_path / "pid")
    running = pool.submit(rh.pid_then_sleep, path, 60)
    pid = rh.pid_of(path)
    assert pid
    assert running.cancel()
    assert running.cancelled()
    assert rh.wait_gone(pid), "the worker still runs the cancelled task"
    assert pool.submit(h.square, 3).result(timeout=30) == 9  # Ray started another


def test_a_time_limit_without_grace_kills_the_worker(pool: RayPool, tmp_path: Path) -> None:
    path = str(tmp_path / "pid")
    started = time.monotonic()
    error = pool.options(timeout=0.5).submit(rh.pid_then_sleep, path, 60).exception(timeout=30)
    assert isinstance(error, procpool.TaskTimeoutError)
    assert error.killed is True
    assert "killed" in str(error)
    assert time.monotonic() - started < 10
    assert rh.wait_gone(rh.pid_of(path))


def test_a_task_that_ignores_the_interrupt_is_killed_after_its_grace(pool: RayPool) -> None:
    started = time.monotonic()
    late = pool.options(timeout=0.3, grace=0.5).submit(helpers.ignore_the_interrupt, 60)
    error = late.exception(timeout=30)
    assert isinstance(error, procpool.TaskTimeoutError)
    assert error.killed is True
    assert "had not stopped 0.5 s later" in str(error)
    assert 0.8 <= time.monotonic() - started < 10


def test_a_stuck_item_ends_its_worker_and_the_rest_of_the_chunk_runs_on_another(
    pool: RayPool,
) -> None:
    results = pool.options(timeout=0.5).map(rh.sleep_then_pid, [0.0, 30.0, 0.0, 0.0], chunksize=4)
    outcomes: list[object] = []
    for _ in range(4):
        try:
            outcomes.append(next(results))
        except procpool.TaskTimeoutError as exc:
            outcomes.append(("timeout", exc.killed))
    first, stuck, third, fourth = outcomes
    assert stuck == ("timeout", True)
    assert isinstance(first, int)
    assert isinstance(third, int)
    assert third == fourth != first  # the worker of items 0-1 was killed
    assert rh.wait_gone(first)
    stats = pool.stats()
    assert (stats.completed, stats.failed, stats.timed_out) == (3, 1, 1)


def test_retry_timeouts_runs_a_stuck_item_again_on_another_worker(pool: RayPool) -> None:
    patient = pool.options(timeout=0.4, retries=1, retry_timeouts=True)
    results = patient.map(rh.sleep_then_pid, [0.0, 30.0, 0.0], chunksize=3)
    outcomes: list[object] = []
    for _ in range(3):
        try:
            outcomes.append(next(results))
        except procpool.TaskTimeoutError:
            outcomes.append("timeout")
    assert outcomes[1] == "timeout"
    assert pool.stats().retried == 1  # the stuck item, once, in a fresh worker
    assert pool.stats().timed_out == 1


def test_terminate_kills_the_workers_of_running_tasks(tmp_path: Path) -> None:
    pool = RayPool()
    path = str(tmp_path / "pid")
    running = pool.submit(rh.pid_then_sleep, path, 60)
    pid = rh.pid_of(path)
    pool.terminate()
    assert pool.join(timeout=30)
    assert running.cancelled()
    assert rh.wait_gone(pid)


@pytest.mark.slow
def test_cancelling_at_random_moments_leaves_nothing_behind(tmp_path: Path) -> None:
    # Cancels land before, during and after tasks of a few milliseconds. In a process
    # of its own: should Ray abort the driver (see RayBackend._stop), this test fails
    # and the session goes on.
    tests = Path(__file__).parent
    env = dict(os.environ, PYTHONPATH=str(tests))  # the driver and Ray's workers
    done = helpers.run_python(
        tests / "scripts" / "ray_random_cancels.py", timeout=110, cwd=tmp_path, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["all_done"] is True
    assert report["wrong"] == []  # no future failed for a neighbour's cancel
    assert report["results_right"] is True
    assert report["cancelled"] >= 1
    assert "tasks=0" in report["left"]


@pytest.mark.slow
def test_many_time_limited_tasks_share_one_waiting_thread() -> None:
    with RayPool() as pool:
        before = threading.active_count()
        limited = pool.options(timeout=30)
        futures = [limited.submit(h.square, i) for i in range(200)]
        assert [f.result(timeout=60) for f in futures] == [i * i for i in range(200)]
        assert threading.active_count() <= before + 6  # one loop, the helpers, callbacks

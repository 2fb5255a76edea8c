"""DaskPool against a real dask.distributed LocalCluster started by this module.

No mocks: two worker processes, one thread each, on loopback, no dashboard. The
cluster's scheduler runs in this process, so ``allowed-failures = 0`` set here makes
a task that kills its worker fail at once with KilledWorker (Dask's default is to
try it on three more workers first).

The functions the workers run live in ``tests/dask_helpers.py``. pytest puts
``tests/`` on ``sys.path`` (rootdir-relative "prepend" imports), and the cluster's
nanny starts the workers with multiprocessing's spawn, which hands the parent's
``sys.path`` to the child, so the workers import ``dask_helpers`` by name.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import gc
import itertools
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

distributed = pytest.importorskip(
    "distributed", reason="install the dask extra: pip install 'procpool[dask]'"
)

import dask  # noqa: E402  (after the importorskip above)
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import dask_helpers as h  # noqa: E402
import dask_support  # noqa: E402
import helpers  # noqa: E402
import procpool  # noqa: E402
from procpool import DaskPool  # noqa: E402
from procpool._errors import RemoteTraceback  # noqa: E402

pytestmark = pytest.mark.timeout(120)

PROPERTY_SETTINGS = settings(
    max_examples=25,
    deadline=None,  # one example is a few cluster round trips; their time varies
    # The pool fixture is module-scoped on purpose: one pool serves every example.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


# Module scope, not session: the cluster (and the threads Dask leaves behind) must be
# gone before the next test module runs, see dask_support.stop_dask_threads.
@contextlib.contextmanager
def _client_of_a_new_cluster() -> Iterator[Any]:
    """A Client of a new LocalCluster: 2 worker processes x 1 thread, loopback, no
    dashboard, a task that kills its worker failed at once."""
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        dask_support.local_cluster(2) as cluster,
    ):
        client = distributed.Client(cluster, set_as_default=False)
        try:
            client.wait_for_workers(2, timeout=60)
            yield client
        finally:
            client.close()


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    """The module's cluster (see :func:`_client_of_a_new_cluster`)."""
    with _client_of_a_new_cluster() as client:
        yield client


@pytest.fixture
def doomed_client() -> Iterator[Any]:
    """A cluster of its own, for a test whose tasks end Dask workers.

    The nanny restarts a worker that died, but on a loaded machine that has taken
    minutes or not happened at all (150 s in one run of make test-all; Dask's own
    test_repeated_restarts is flaky, dask/distributed#6838). These tests need no
    restart, and the module's cluster must not be left a worker short.
    """
    with _client_of_a_new_cluster() as client:
        yield client


@pytest.fixture
def pool(dask_client: Any) -> Iterator[DaskPool]:
    """A DaskPool on the session's cluster; terminated if a test leaves it running."""
    p = DaskPool(dask_client)
    try:
        yield p
    finally:
        p.terminate()
        p.join(30)


@pytest.fixture(scope="module")
def shared_pool(dask_client: Any) -> Iterator[DaskPool]:
    """One DaskPool for all examples of a Hypothesis property."""
    p = DaskPool(dask_client)
    try:
        yield p
    finally:
        p.close()
        p.join(60)


def _keys(client: Any) -> set[str]:
    """The keys this client holds futures for (Dask forgets a key when none is left)."""
    refcount: dict[str, int] = client.refcount
    return set(refcount)


def _wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``predicate``: Dask drops a released key on its own thread, a moment later."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# Tests that cancel running tasks or let them run out of time use short sleeps: Dask
# cannot stop them, so each one keeps its worker thread busy until it ends.


# -- construction -----------------------------------------------------------------------------


def test_daskpool_is_exported_and_an_executor() -> None:
    assert procpool.DaskPool is DaskPool
    assert issubclass(DaskPool, concurrent.futures.Executor)


def test_missing_distributed_raises_import_error_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r'pip install "procpool\[dask\]"'):
        DaskPool("tcp://127.0.0.1:1")


@pytest.mark.parametrize("bad", [-1.0, math.nan])
def test_negative_task_timeout_is_rejected(dask_client: Any, bad: float) -> None:
    with pytest.raises(ValueError, match="task_timeout"):
        DaskPool(dask_client, task_timeout=bad)


def test_client_given_is_left_open_and_address_given_is_closed(dask_client: Any) -> None:
    with DaskPool(dask_client) as given:
        assert given.submit(h.square, 3).result() == 9
    assert dask_client.status == "running"

    address = dask_client.scheduler.address
    with DaskPool(address) as owned:
        assert owned.client is not dask_client
        assert owned.submit(h.square, 4).result() == 16
    assert owned.client.status == "closed"


def test_a_dropped_pool_closes_the_client_it_made_and_stops_its_threads(
    dask_client: Any,
) -> None:
    pool = DaskPool(dask_client.scheduler.address)
    client = pool.client
    assert pool.submit(h.square, 5).then(str).result(timeout=30) == "25"
    tag = f"{id(pool._core):x}"  # in the names of the pool's threads
    del pool
    gc.collect()
    assert _wait_until(lambda: client.status == "closed")
    assert _wait_until(lambda: not [t for t in threading.enumerate() if tag in t.name])


# -- submit, then, catch, await ---------------------------------------------------------------


def test_submit_returns_a_procpool_future_with_the_result(pool: DaskPool) -> None:
    fut = pool.submit(h.add, 2, b=3)
    assert isinstance(fut, procpool.Future)
    assert fut.result(timeout=30) == 5


def test_submit_passes_keyword_arguments_dask_would_take_for_its_own(pool: DaskPool) -> None:
    fut = pool.submit(h.kwargs_echo, 1, key="k", workers=2, retries=3)
    assert fut.result(timeout=30) == (1, "k", 2, 3)


def test_submit_sends_lambdas_with_cloudpickle(pool: DaskPool) -> None:
    assert pool.submit(lambda x: x * 2, 21).result(timeout=30) == 42


def test_then_and_catch_chain_in_the_parent(pool: DaskPool) -> None:
    text = pool.submit(h.square, 7).then(str)
    assert text.result(timeout=30) == "49"
    recovered = pool.submit(h.raise_value_error, "no").catch(lambda exc: f"caught {exc}")
    assert recovered.result(timeout=30) == "caught no"


def test_then_flattens_a_chained_submission(pool: DaskPool) -> None:
    def next_step(x: int) -> procpool.Future[int]:
        return pool.submit(h.square, x)

    assert pool.submit(h.add, 1, 2).then(next_step).result(timeout=30) == 9


def test_a_callback_may_wait_for_another_future_of_the_pool(pool: DaskPool) -> None:
    # Runs on the pool's callback thread; on Dask's own callback thread it would deadlock.
    chained = pool.submit(h.square, 2).then(lambda x: pool.submit(h.square, x).result(timeout=30))
    assert chained.result(timeout=30) == 16


def test_a_callback_may_wait_for_a_then_future_of_the_pool(pool: DaskPool) -> None:
    # A then-future is resolved by a callback: the waiting callback hands its thread over.
    derived = pool.submit(h.sleep_then, 0.3, 4).then(lambda x: x * 10)
    waited = pool.submit(h.square, 1).then(lambda _: derived.result(timeout=30))
    assert waited.result(timeout=30) == 40


@pytest.mark.parametrize("how", ["shutdown", "close-join", "with-block"])
def test_a_callback_can_shut_down_its_dask_pool(dask_client: Any, how: str) -> None:
    pool = DaskPool(dask_client)
    finished = threading.Event()
    outcome: list[object] = []

    def stop(_: procpool.Future[int]) -> None:
        try:
            if how == "shutdown":
                pool.shutdown(wait=True)
            elif how == "close-join":
                pool.close()
                outcome.append(pool.join())
            else:
                with pool:
                    pass
        finally:
            finished.set()

    others = [pool.submit(h.sleep_then, 0.2, i) for i in range(3)]
    pool.submit(h.square, 2).add_done_callback(stop)
    assert finished.wait(30)
    assert outcome in ([], [True])
    assert pool.join(timeout=30)
    assert [f.result(timeout=0) for f in others] == [0, 1, 2]


@pytest.fixture
def retrying_pool(doomed_client: Any) -> Iterator[DaskPool]:
    """A DaskPool that retries a task once, on a cluster of its own (its task ends a
    worker)."""
    pool = DaskPool(doomed_client, retries=1)
    try:
        yield pool
    finally:
        pool.terminate()
        pool.join(30)


def _wait_for_one_retry(pool: DaskPool) -> None:
    """Wait (60 s at most) until the pool has retried a task, then check it did once."""
    deadline = time.monotonic() + 60
    while pool.stats().retried < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool.stats().retried == 1


def test_cancelling_a_map_reaches_a_chunk_that_was_retried(
    retrying_pool: DaskPool, tmp_path: Any
) -> None:
    pool = retrying_pool
    mapped = pool.map(h.die_once_then_sleep, [str(tmp_path / "died")], [6.0], chunksize=1)
    _wait_for_one_retry(pool)
    assert mapped.cancel()
    pool.close()
    # Nothing of the map is left to wait for: the retried task was cancelled too.
    assert pool.join(timeout=3)


def test_cancelling_an_imap_reaches_a_chunk_that_was_retried(
    retrying_pool: DaskPool, tmp_path: Any
) -> None:
    pool = retrying_pool
    stream = pool.imap(functools.partial(h.die_once_then_sleep, str(tmp_path / "died")), [6.0])
    _wait_for_one_retry(pool)
    stream.close()  # type: ignore[attr-defined]
    pool.close()
    assert pool.join(timeout=3)


def test_map_iteration_keeps_no_yielded_result_alive(pool: DaskPool) -> None:
    # helpers.make_blob runs on the Dask workers: they import tests/helpers.py by name
    # as they do dask_helpers (the nanny hands them this process's sys.path).
    for results in (
        pool.map(helpers.make_blob, range(6), chunksize=2),
        pool.imap(helpers.make_blob, range(6)),
    ):
        assert not any(helpers.kept_alive(results))


def test_await_gives_the_result(pool: DaskPool) -> None:
    async def main() -> list[int]:
        one = await pool.submit(h.square, 5)
        many = await pool.map(h.square, range(4))
        loop = asyncio.get_running_loop()
        three = await loop.run_in_executor(pool, h.add, 1, 2)
        return [one, *many, three]

    assert asyncio.run(main()) == [25, 0, 1, 4, 9, 3]


def test_futures_work_with_concurrent_futures_wait_and_as_completed(pool: DaskPool) -> None:
    futures = [pool.submit(h.square, i) for i in range(6)]
    done, not_done = concurrent.futures.wait(futures, timeout=30)
    assert not not_done
    assert sorted(f.result() for f in concurrent.futures.as_completed(futures)) == [
        i * i for i in range(6)
    ]
    assert len(done) == 6


# -- errors -----------------------------------------------------------------------------------


def test_task_exception_keeps_its_type_and_carries_the_remote_traceback(pool: DaskPool) -> None:
    fut = pool.submit(h.raise_value_error, "bad input")
    with pytest.raises(ValueError, match="bad input") as info:
        fut.result(timeout=30)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "raise_value_error" in str(cause)
    assert "dask_helpers.py" in str(cause)


def test_a_killed_worker_fails_only_its_task_with_worker_lost_error(doomed_client: Any) -> None:
    with DaskPool(doomed_client) as pool:
        bystander = pool.submit(h.sleep_then, 0.5, 7)
        doomed = pool.submit(h.exit_worker, 3)
        with pytest.raises(procpool.WorkerLostError, match="exit_worker"):
            doomed.result(timeout=60)
        assert isinstance(doomed.exception(), concurrent.futures.process.BrokenProcessPool)
        assert bystander.result(timeout=60) == 7
        # The pool goes on, on the worker left (or the one the nanny restarted).
        assert pool.submit(h.square, 3).result(timeout=30) == 9


def test_retries_submit_again_after_a_killed_worker(doomed_client: Any) -> None:
    with DaskPool(doomed_client) as pool:
        fut = pool.options(retries=1).submit(h.exit_worker, 4)
        with pytest.raises(procpool.WorkerLostError):
            fut.result(timeout=90)
        assert pool.stats().retried == 1


def test_unpicklable_argument_or_result_is_a_serialization_error(pool: DaskPool) -> None:
    with pytest.raises(procpool.SerializationError, match="sleep_then"):
        pool.submit(h.sleep_then, threading.Lock()).result(timeout=30)  # type: ignore[arg-type]
    with pytest.raises(procpool.SerializationError, match="result of unpicklable_result"):
        pool.submit(h.unpicklable_result).result(timeout=30)


# -- pure=False -------------------------------------------------------------------------------


def test_the_same_impure_call_runs_every_time(pool: DaskPool) -> None:
    first, second = pool.submit(h.random_token), pool.submit(h.random_token)
    assert first.result(timeout=30) != second.result(timeout=30)
    tokens = pool.map(h.random_token_of, [1, 1, 1, 1], chunksize=1).result(timeout=30)
    assert len(set(tokens)) == 4


# -- map --------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunksize", [None, 1, 3, 100])
def test_map_is_ordered_and_equal_to_serial(pool: DaskPool, chunksize: int | None) -> None:
    xs = list(range(50))
    result = pool.map(h.square, xs, chunksize=chunksize)
    assert isinstance(result, procpool.MapFuture)
    assert result.result(timeout=60) == list(map(h.square, xs))


def test_map_zips_several_iterables_and_stops_at_the_shortest(pool: DaskPool) -> None:
    assert pool.map(h.add3, range(5), range(10), [1] * 4).result(timeout=30) == [1, 3, 5, 7]


def test_map_of_nothing_is_an_empty_list(pool: DaskPool) -> None:
    assert pool.map(h.square, []).result(timeout=5) == []


def test_map_iteration_streams_in_input_order(pool: DaskPool) -> None:
    assert list(pool.map(h.square, range(20), chunksize=2)) == [x * x for x in range(20)]


def test_map_then_chains_on_the_list(pool: DaskPool) -> None:
    assert pool.map(h.square, range(4)).then(sum).result(timeout=30) == 14


def test_map_fails_the_same_items_as_serial(pool: DaskPool) -> None:
    result = pool.map(h.fail_on_multiples, range(1, 10), chunksize=2)
    with pytest.raises(h.DaskHelperError, match="3 is a multiple"):
        result.result(timeout=30)
    seen: list[object] = []
    iterator = pool.map(h.fail_on_multiples, range(1, 10), chunksize=4)
    for _ in range(9):
        try:
            seen.append(next(iterator))
        except h.DaskHelperError as exc:
            seen.append(("error", "dask_helpers.py" in str(exc.__cause__)))
    error = ("error", True)  # raised with the worker's traceback as __cause__
    assert seen == [2, 3, error, 5, 6, error, 8, 9, error]


def test_map_timeout_raises_timeout_error_when_iterating(pool: DaskPool) -> None:
    iterator = pool.map(h.sleep_then, [2.0], timeout=0.3)
    # concurrent.futures.TimeoutError: the builtin TimeoutError only from Python 3.11 on.
    with pytest.raises(concurrent.futures.TimeoutError):
        next(iterator)


def test_cancelling_a_map_cancels_its_tasks(pool: DaskPool, dask_client: Any) -> None:
    before = _keys(dask_client)
    result = pool.map(h.sleep_then, [1.0] * 8, chunksize=1)
    assert result.cancel()
    assert result.cancelled()
    assert _wait_until(lambda: not _keys(dask_client) - before), _keys(dask_client) - before


def test_map_with_progress_callback_reports_every_item(pool: DaskPool) -> None:
    seen: list[tuple[int, int | None]] = []
    pool.map(h.square, range(10), chunksize=3, progress=lambda d, t: seen.append((d, t))).result(
        timeout=30
    )
    assert seen[-1] == (10, 10)


def test_imap_with_progress_callback_counts_items_of_unknown_total(pool: DaskPool) -> None:
    seen: list[tuple[int, int | None]] = []
    endless_kind = (x for x in range(7))  # a generator does not tell its length
    results = list(pool.imap(h.square, endless_kind, progress=lambda d, t: seen.append((d, t))))
    assert results == [x * x for x in range(7)]
    assert seen[-1] == (7, None)


def test_imap_progress_has_a_total_when_the_input_tells_its_length(pool: DaskPool) -> None:
    seen: list[tuple[int, int | None]] = []
    items = iter(range(7))  # length_hint: 7, without reading anything
    assert list(pool.imap(h.square, items, progress=lambda d, t: seen.append((d, t)))) == [
        x * x for x in range(7)
    ]
    assert seen[-1] == (7, 7)


# -- imap -------------------------------------------------------------------------------------


def test_imap_reads_at_most_buffersize_items_ahead_of_an_endless_input(pool: DaskPool) -> None:
    pulled = 0

    def endless() -> Iterator[int]:
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield i

    results = pool.imap(h.square, endless(), chunksize=2, buffersize=6)
    assert pulled <= 6
    for consumed, value in enumerate(itertools.islice(results, 40), start=1):
        assert value == (consumed - 1) ** 2
        assert pulled <= consumed + 6
    results.close()


def test_imap_default_buffersize_is_bounded(pool: DaskPool) -> None:
    pulled = 0

    def endless() -> Iterator[int]:
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield i

    results = pool.imap(h.square, endless())
    assert next(results) == 0
    assert pulled <= 1 + 4 * pool.workers


def test_imap_unordered_yields_every_result(pool: DaskPool) -> None:
    assert sorted(pool.imap_unordered(h.square, range(30), chunksize=4)) == [
        x * x for x in range(30)
    ]


def test_imap_raises_a_failed_item_and_goes_on(pool: DaskPool) -> None:
    iterator = pool.imap(h.fail_on_multiples, [1, 3, 4])
    assert next(iterator) == 2
    with pytest.raises(h.DaskHelperError):
        next(iterator)
    assert next(iterator) == 5
    with pytest.raises(StopIteration):
        next(iterator)


def test_imap_raises_the_inputs_own_error_after_the_items_before_it(pool: DaskPool) -> None:
    def broken() -> Iterator[int]:
        yield 1
        yield 2
        raise KeyError("input")

    iterator = pool.imap(h.square, broken(), buffersize=10)
    assert next(iterator) == 1
    assert next(iterator) == 4
    with pytest.raises(KeyError):
        next(iterator)


def test_imap_after_close_yields_what_was_sent_then_raises_pool_closed(pool: DaskPool) -> None:
    iterator = pool.imap(h.square, range(100), buffersize=4)
    pool.close()
    got = []
    with pytest.raises(procpool.PoolClosedError):
        got.extend(iterator)
    assert got == [0, 1, 4, 9]


# -- time limits and cancellation -------------------------------------------------------------


def test_a_task_over_its_time_limit_fails_with_task_timeout_error(pool: DaskPool) -> None:
    started = time.monotonic()
    fut = pool.options(timeout=0.5).submit(h.sleep_then, 5)
    with pytest.raises(procpool.TaskTimeoutError) as info:
        fut.result(timeout=30)
    assert info.value.timeout == 0.5
    assert isinstance(info.value, TimeoutError)
    assert time.monotonic() - started < 10
    assert pool.submit(h.square, 2).result(timeout=30) == 4  # the pool goes on


def test_pool_wide_task_timeout_and_time_spent_queued_does_not_count(dask_client: Any) -> None:
    with DaskPool(dask_client, task_timeout=1.5) as limited:
        # Four 0.6 s tasks on two worker threads: the last two wait ~0.6 s in the
        # queue, and still finish within their own limit.
        quick = [limited.submit(h.sleep_then, 0.6, i) for i in range(4)]
        slow = limited.submit(h.busy_loop, 5.0)
        assert [f.result(timeout=30) for f in quick] == [0, 1, 2, 3]
        with pytest.raises(procpool.TaskTimeoutError):
            slow.result(timeout=30)
        # math.inf lifts the pool's limit for one submission.
        assert limited.options(timeout=math.inf).submit(h.sleep_then, 1.8, 5).result(30) == 5


def test_a_time_limited_task_still_sees_its_dask_worker(pool: DaskPool) -> None:
    # It runs in a helper thread with a copy of the task's context, where Dask keeps
    # the current worker, so get_worker() and worker_client() work as without a limit.
    address = pool.options(timeout=10).submit(h.worker_address).result(timeout=30)
    assert address.startswith("tcp://127.0.0.1:")


def test_map_items_over_the_limit_fail_alone(pool: DaskPool) -> None:
    result = pool.options(timeout=0.5).map(h.sleep_then, [0.0, 3.0, 0.0], [1, 2, 3], chunksize=3)
    outcomes: list[object] = []
    for _ in range(3):
        try:
            outcomes.append(next(result))
        except procpool.TaskTimeoutError:
            outcomes.append("timeout")
    assert outcomes == [1, "timeout", 3]


def test_a_grace_period_lets_a_late_task_clean_up(pool: DaskPool, tmp_path: Any) -> None:
    import helpers

    marker = tmp_path / "cleaned-up"
    late = pool.options(timeout=0.5, grace=10).submit(
        helpers.sleep_in_steps_with_cleanup, str(marker), 60
    )
    with pytest.raises(procpool.TaskTimeoutError, match="stopped within its grace") as info:
        late.result(timeout=60)
    assert info.value.killed is False
    assert marker.read_text() == "cleaned up"


def test_daskpool_refuses_a_memory_limit_per_worker(pool: DaskPool) -> None:
    with pytest.raises(ValueError, match="memory_limit"):
        pool.options(max_memory_per_worker="1 GiB")


def test_retry_timeouts_runs_a_late_task_again(pool: DaskPool) -> None:
    patient = pool.options(timeout=0.3, retries=1, retry_timeouts=True)
    started = time.monotonic()
    with pytest.raises(procpool.TaskTimeoutError):
        patient.submit(h.sleep_then, 2.0).result(timeout=30)
    assert pool.stats().retried == 1
    with pytest.raises(procpool.TaskTimeoutError):
        patient.map(h.sleep_then, [2.0]).result(timeout=30)
    assert time.monotonic() - started >= 4 * 0.3  # two attempts each


def test_cancelling_a_future_cancels_the_dask_task(pool: DaskPool, dask_client: Any) -> None:
    before = _keys(dask_client)
    blockers = [pool.submit(h.sleep_then, 1.0) for _ in range(2)]
    queued = pool.submit(h.sleep_then, 1.0, 1)
    assert queued.cancel()
    assert queued.cancelled()
    with pytest.raises(concurrent.futures.CancelledError):
        queued.result(timeout=1)
    running = blockers[0]
    time.sleep(0.3)
    assert running.cancel()  # Dask drops the result; the worker thread runs on
    assert running.cancelled()
    assert blockers[1].result(timeout=30) == 0
    assert _wait_until(lambda: not _keys(dask_client) - before), _keys(dask_client) - before


# -- lifecycle --------------------------------------------------------------------------------


def test_a_closed_pool_raises_pool_closed_error(pool: DaskPool) -> None:
    pool.close()
    with pytest.raises(procpool.PoolClosedError):
        pool.submit(h.square, 1)
    with pytest.raises(procpool.PoolClosedError):
        pool.map(h.square, [1])
    with pytest.raises(procpool.PoolClosedError):
        pool.imap(h.square, [1])
    with pytest.raises(RuntimeError):  # PoolClosedError is a RuntimeError, as in Executor
        pool.options(timeout=1).submit(h.square, 1)


def test_join_on_a_running_pool_is_a_value_error(pool: DaskPool) -> None:
    with pytest.raises(ValueError, match="close"):
        pool.join()


def test_leaving_the_with_block_waits_for_every_task(dask_client: Any) -> None:
    with DaskPool(dask_client) as pool:
        futures = [pool.submit(h.sleep_then, 0.2, i) for i in range(4)]
        chained = futures[0].then(lambda x: x + 100)
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == [0, 1, 2, 3]
    assert chained.result(timeout=0) == 100
    with pytest.raises(procpool.PoolClosedError):
        pool.submit(h.square, 1)


def test_leaving_the_with_block_by_an_exception_cancels_everything(
    dask_client: Any,
) -> None:
    before = _keys(dask_client)
    futures: list[procpool.Future[int]] = []
    with pytest.raises(KeyError), DaskPool(dask_client) as pool:
        futures.extend(pool.submit(h.sleep_then, 2.0, i) for i in range(4))
        raise KeyError("leave")
    assert all(f.cancelled() for f in futures)
    assert _wait_until(lambda: not _keys(dask_client) - before), _keys(dask_client) - before


def test_shutdown_cancel_futures_cancels_what_is_unfinished(pool: DaskPool) -> None:
    futures = [pool.submit(h.sleep_then, 2.0, i) for i in range(4)]
    pool.shutdown(wait=True, cancel_futures=True)
    assert all(f.cancelled() for f in futures)


def test_terminate_cancels_maps_and_imaps_in_flight(pool: DaskPool) -> None:
    mapped = pool.map(h.sleep_then, [2.0] * 4, chunksize=1)
    streamed = pool.imap(h.sleep_then, [2.0] * 4)
    pool.terminate()
    assert mapped.cancelled()
    with pytest.raises(concurrent.futures.CancelledError):
        next(streamed)
    with pytest.raises(StopIteration):
        next(streamed)


def test_breaking_out_of_imap_cancels_the_chunks_in_flight(
    pool: DaskPool, dask_client: Any
) -> None:
    before = _keys(dask_client)
    for value in pool.imap(h.sleep_then, itertools.repeat(0.5), buffersize=4):
        assert value == 0
        break
    gc.collect()  # the dropped iterator cancels its chunks (CPython: already at the break)
    assert _wait_until(lambda: not _keys(dask_client) - before), _keys(dask_client) - before


def test_no_argument_uses_the_default_dask_client(dask_client: Any) -> None:
    address = dask_client.scheduler.address
    with distributed.Client(address) as default:  # becomes the default client
        with DaskPool() as pool:
            assert pool.client is default
            assert pool.submit(h.square, 6).result(timeout=30) == 36
        assert default.status == "running"  # not ours to close


def test_cancelling_at_random_moments_leaves_nothing_behind(dask_client: Any) -> None:
    # Cancels land before, during and after each task, and while its result is
    # being fetched: every future must end and every Dask key must be released.
    before = _keys(dask_client)
    with DaskPool(dask_client) as pool:
        futures = [pool.submit(h.sleep_then, 0.002 * (i % 5), i) for i in range(120)]
        for i, fut in enumerate(futures):
            if i % 2:
                time.sleep(0.001 * (i % 7))
                fut.cancel()
    assert all(f.done() for f in futures)
    for i, fut in enumerate(futures):
        assert fut.cancelled() or fut.result() == i
    gc.collect()
    assert _wait_until(lambda: not _keys(dask_client) - before), _keys(dask_client) - before


def test_dask_futures_are_released_once_done(pool: DaskPool, dask_client: Any) -> None:
    before = _keys(dask_client)
    results = pool.map(h.square, range(40), chunksize=5).result(timeout=30)
    assert len(results) == 40
    single = pool.submit(h.square, 3)
    assert single.result(timeout=30) == 9
    gc.collect()
    assert _wait_until(lambda: not _keys(dask_client) - before), _keys(dask_client) - before
    assert "tasks=0" in repr(pool)


def test_stats_count_tasks_and_items(dask_client: Any) -> None:
    with DaskPool(dask_client) as pool:
        pool.submit(h.square, 2).result(timeout=30)
        with pytest.raises(h.DaskHelperError):
            pool.map(h.fail_on_multiples, range(1, 7)).result(timeout=30)
    stats = pool.stats()
    assert stats.submitted == 7
    assert stats.completed == 5
    assert stats.failed == 2


def test_stats_add_up_after_cancelling_a_map_and_closing_an_imap(dask_client: Any) -> None:
    with DaskPool(dask_client) as pool:
        mapped = pool.map(h.sleep_then, [0.2] * 20, chunksize=1)
        assert mapped.cancel()
        streamed = pool.imap(h.sleep_then, itertools.repeat(0.2), buffersize=6)
        assert next(streamed) == 0
        del streamed  # dropped after one item: the rest of what was read is cancelled
        assert pool.map(h.fail_on_multiples, range(1, 7)).exception(timeout=30) is not None

        def settled() -> bool:
            s = pool.stats()
            return s.completed + s.failed + s.cancelled == s.submitted

        # Every task and item ends counted once: completed, failed or cancelled.
        assert _wait_until(settled)
    stats = pool.stats()
    # imap: 6 read ahead; the first chunk still counts as read ahead until the
    # consumer moves past it (the same engine as Pool.imap), so nothing more.
    assert stats.submitted == 20 + 6 + 6
    assert stats.failed == 2
    assert stats.cancelled >= 15  # the map's 20 items, but for any that ran first


# -- properties -------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(xs=st.lists(st.integers(-1000, 1000), max_size=60), chunksize=st.none() | st.integers(1, 8))
def test_property_map_equals_serial(
    shared_pool: DaskPool, xs: list[int], chunksize: int | None
) -> None:
    assert shared_pool.map(h.square, xs, chunksize=chunksize).result(timeout=60) == list(
        map(h.square, xs)
    )


def _serial_outcomes(xs: list[int], of: int) -> list[object]:
    outcomes: list[object] = []
    for x in xs:
        try:
            outcomes.append(h.fail_on_multiples(x, of))
        except h.DaskHelperError as exc:
            outcomes.append(("error", str(exc)))
    return outcomes


@PROPERTY_SETTINGS
@given(
    xs=st.lists(st.integers(0, 100), max_size=40),
    of=st.integers(2, 7),
    chunksize=st.none() | st.integers(1, 6),
)
def test_property_exactly_the_serially_failing_items_fail(
    shared_pool: DaskPool, xs: list[int], of: int, chunksize: int | None
) -> None:
    result = shared_pool.map(h.fail_on_multiples, xs, [of] * len(xs), chunksize=chunksize)
    outcomes: list[object] = []
    for _ in xs:
        try:
            outcomes.append(next(result))
        except h.DaskHelperError as exc:
            outcomes.append(("error", str(exc)))
    assert outcomes == _serial_outcomes(xs, of)


@PROPERTY_SETTINGS
@given(
    xs=st.lists(st.integers(-50, 50), max_size=40),
    chunksize=st.integers(1, 5),
    buffersize=st.none() | st.integers(1, 12),
)
def test_property_iteration_and_imap_give_the_serial_sequence(
    shared_pool: DaskPool, xs: list[int], chunksize: int, buffersize: int | None
) -> None:
    expected = list(map(h.square, xs))
    assert list(shared_pool.map(h.square, xs, chunksize=chunksize)) == expected
    imap = shared_pool.imap(h.square, iter(xs), chunksize=chunksize, buffersize=buffersize)
    assert list(imap) == expected
    unordered = shared_pool.imap_unordered(h.square, xs, chunksize=chunksize, buffersize=buffersize)
    assert sorted(unordered) == sorted(expected)

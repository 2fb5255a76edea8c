"""The contract every pool keeps: the same tests on Pool, DaskPool and RayPool.

Each test takes a ``pool`` (or a ``make_pool`` factory) of every kind: a local
``Pool(2)``, a ``DaskPool`` on a ``LocalCluster`` of two single-threaded worker
processes (module scope), and a ``RayPool`` on the session's local Ray instance of
two CPUs (tests/ray_support.py). Only what the three pools promise alike is
tested here; what differs (docs/scale-out.md: Dask cannot stop a running task,
Ray kills its worker) is tested in test_pool.py, test_dask.py and test_ray.py.

The functions the workers run live in ``tests/dask_helpers.py`` and
``tests/helpers.py``; every kind of worker imports them by name. Without Dask or
Ray installed, their cases are skipped with the install hint (nox requires Ray
where it has wheels; see noxfile.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dask_helpers as h
import helpers
import placement_helpers as plh
import policy_helpers as ph
import procpool
from procpool import Executor
from procpool._remote import RemotePool

pytestmark = pytest.mark.timeout(120)

KINDS = [
    pytest.param("Pool", id="Pool"),
    pytest.param("DaskPool", id="DaskPool"),
    pytest.param("RayPool", id="RayPool", marks=pytest.mark.ray),
]

PROPERTY_SETTINGS = settings(
    max_examples=20,
    deadline=None,  # one example is a few round trips to a cluster; their time varies
    # The pools are module-scoped on purpose: one pool serves every example.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

#: A pool factory: keyword arguments as for the pool's constructor (task_timeout=...).
MakePool = Callable[..., Executor]


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    """The module's Dask cluster, started only if a DaskPool case runs."""
    pytest.importorskip(
        "distributed", reason="install the dask extra: pip install 'procpool[dask]'"
    )
    import dask_support

    with dask_support.client_of_a_new_cluster() as client:
        yield client


def _factory(kind: str, request: pytest.FixtureRequest) -> Callable[..., Executor]:
    if kind == "Pool":
        return lambda **kw: procpool.Pool(2, **kw)
    if kind == "DaskPool":
        client = request.getfixturevalue("dask_client")
        return lambda **kw: procpool.DaskPool(client, **kw)
    request.getfixturevalue("ray_session")
    return lambda **kw: procpool.RayPool(**kw)


@pytest.fixture(params=KINDS)
def make_pool(request: pytest.FixtureRequest) -> Iterator[MakePool]:
    """A factory of pools of one kind; each is terminated after the test if still open."""
    new = _factory(request.param, request)
    made: list[Executor] = []

    def make(**kwargs: Any) -> Executor:
        made.append(new(**kwargs))
        return made[-1]

    yield make
    for pool in made:
        pool.terminate()
        pool.join(30)


@pytest.fixture
def pool(make_pool: MakePool) -> Executor:
    """A pool of each kind, with no options."""
    return make_pool()


@pytest.fixture(scope="module", params=KINDS)
def shared_pool(request: pytest.FixtureRequest) -> Iterator[Executor]:
    """One pool of each kind for all examples of a Hypothesis property."""
    p = _factory(request.param, request)()
    try:
        yield p
    finally:
        p.close()
        p.join(60)


def _wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# -- submit, then, catch, await ---------------------------------------------------------------


def test_every_pool_is_an_executor(pool: Executor) -> None:
    assert isinstance(pool, concurrent.futures.Executor)
    assert pool.workers >= 1


def test_submit_returns_a_procpool_future_with_the_result(pool: Executor) -> None:
    fut = pool.submit(h.add, 2, b=3)
    assert isinstance(fut, procpool.Future)
    assert fut.result(timeout=30) == 5


def test_submit_passes_keyword_arguments_an_engine_would_take_for_its_own(
    pool: Executor,
) -> None:
    fut = pool.submit(h.kwargs_echo, 1, key="k", workers=2, retries=3)
    assert fut.result(timeout=30) == (1, "k", 2, 3)


def test_then_and_catch_chain_in_the_parent(pool: Executor) -> None:
    text = pool.submit(h.square, 7).then(str)
    assert text.result(timeout=30) == "49"
    recovered = pool.submit(h.raise_value_error, "no").catch(lambda exc: f"caught {exc}")
    assert recovered.result(timeout=30) == "caught no"


def test_then_flattens_a_chained_submission(pool: Executor) -> None:
    def next_step(x: int) -> procpool.Future[int]:
        return pool.submit(h.square, x)

    assert pool.submit(h.add, 1, 2).then(next_step).result(timeout=30) == 9


def test_a_callback_may_wait_for_another_future_of_the_pool(pool: Executor) -> None:
    # Runs on the pool's callback thread: on an engine's own thread it would deadlock.
    chained = pool.submit(h.square, 2).then(lambda x: pool.submit(h.square, x).result(timeout=30))
    assert chained.result(timeout=30) == 16


def test_a_callback_may_wait_for_a_then_future_of_the_pool(pool: Executor) -> None:
    # A then-future is resolved by a callback: the waiting callback hands its thread over.
    derived = pool.submit(h.sleep_then, 0.3, 4).then(lambda x: x * 10)
    waited = pool.submit(h.square, 1).then(lambda _: derived.result(timeout=30))
    assert waited.result(timeout=30) == 40


@pytest.mark.parametrize("how", ["shutdown", "close-join", "with-block"])
def test_a_callback_can_shut_down_its_pool(make_pool: MakePool, how: str) -> None:
    pool = make_pool()
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


def test_await_gives_the_result(pool: Executor) -> None:
    async def main() -> list[int]:
        one = await pool.submit(h.square, 5)
        many = await pool.map(h.square, range(4))
        loop = asyncio.get_running_loop()
        three = await loop.run_in_executor(pool, h.add, 1, 2)
        return [one, *many, three]

    assert asyncio.run(main()) == [25, 0, 1, 4, 9, 3]


def test_futures_work_with_concurrent_futures_wait_and_as_completed(pool: Executor) -> None:
    futures = [pool.submit(h.square, i) for i in range(6)]
    done, not_done = concurrent.futures.wait(futures, timeout=30)
    assert not not_done
    assert sorted(f.result() for f in concurrent.futures.as_completed(futures)) == [
        i * i for i in range(6)
    ]
    assert len(done) == 6


def test_the_same_impure_call_runs_every_time(pool: Executor) -> None:
    first, second = pool.submit(h.random_token), pool.submit(h.random_token)
    assert first.result(timeout=30) != second.result(timeout=30)
    tokens = pool.map(h.random_token_of, [1, 1, 1, 1], chunksize=1).result(timeout=30)
    assert len(set(tokens)) == 4


# -- errors -----------------------------------------------------------------------------------


def test_task_exception_keeps_its_type_and_carries_the_remote_traceback(
    pool: Executor,
) -> None:
    fut = pool.submit(h.raise_value_error, "bad input")
    with pytest.raises(ValueError, match="bad input") as info:
        fut.result(timeout=30)
    cause = info.value.__cause__
    assert isinstance(cause, procpool.RemoteTraceback)
    assert "raise_value_error" in str(cause)
    assert "dask_helpers.py" in str(cause)


def test_arguments_that_do_not_fit_the_function_are_its_type_error(pool: Executor) -> None:
    fut = pool.submit(h.square, 1, 2)  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    with pytest.raises(TypeError, match="square"):
        fut.result(timeout=30)
    assert not isinstance(fut.exception(), procpool.SerializationError)


def test_unpicklable_argument_or_result_is_a_serialization_error(pool: Executor) -> None:
    with pytest.raises(procpool.SerializationError, match="sleep_then"):
        pool.submit(h.sleep_then, threading.Lock()).result(timeout=30)  # type: ignore[arg-type]
    with pytest.raises(procpool.SerializationError, match="result"):
        pool.submit(h.unpicklable_result).result(timeout=30)
    assert pool.submit(h.square, 3).result(timeout=30) == 9  # the pool goes on


# -- map --------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunksize", [None, 1, 3, 100])
def test_map_is_ordered_and_equal_to_serial(pool: Executor, chunksize: int | None) -> None:
    xs = list(range(50))
    result = pool.map(h.square, xs, chunksize=chunksize)
    assert isinstance(result, procpool.MapFuture)
    assert result.result(timeout=60) == list(map(h.square, xs))


def test_map_zips_several_iterables_and_stops_at_the_shortest(pool: Executor) -> None:
    assert pool.map(h.add3, range(5), range(10), [1] * 4).result(timeout=30) == [1, 3, 5, 7]


def test_map_of_nothing_is_an_empty_list(pool: Executor) -> None:
    assert pool.map(h.square, []).result(timeout=5) == []


def test_map_iteration_streams_in_input_order(pool: Executor) -> None:
    assert list(pool.map(h.square, range(20), chunksize=2)) == [x * x for x in range(20)]


def test_map_then_chains_on_the_list(pool: Executor) -> None:
    assert pool.map(h.square, range(4)).then(sum).result(timeout=30) == 14


def test_map_fails_the_same_items_as_serial(pool: Executor) -> None:
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


def test_map_timeout_raises_timeout_error_when_iterating(pool: Executor) -> None:
    iterator = pool.map(h.sleep_then, [2.0], timeout=0.3)
    # concurrent.futures.TimeoutError: the builtin TimeoutError only from Python 3.11 on.
    with pytest.raises(concurrent.futures.TimeoutError):
        next(iterator)


def test_map_iteration_keeps_no_yielded_result_alive(pool: Executor) -> None:
    # Many times: the thread that delivers a chunk may still be on its way out
    # (holding the chunk's values) while the caller already drops the first item.
    # RayPool kept it about one map in ten before MapFuture.set_items emptied
    # the list it was given.
    kept = []
    for attempt in range(30):
        for kind, results in (
            ("map", pool.map(helpers.make_blob, range(6), chunksize=2)),
            ("imap", pool.imap(helpers.make_blob, range(6))),
        ):
            alive = helpers.kept_alive(results)
            if any(alive):
                kept.append((attempt, kind, alive))
    assert not kept


def test_map_with_progress_callback_reports_every_item(pool: Executor) -> None:
    seen: list[tuple[int, int | None]] = []
    pool.map(h.square, range(10), chunksize=3, progress=lambda d, t: seen.append((d, t))).result(
        timeout=30
    )
    assert seen[-1] == (10, 10)


def test_imap_with_progress_callback_counts_items_of_unknown_total(pool: Executor) -> None:
    seen: list[tuple[int, int | None]] = []
    endless_kind = (x for x in range(7))  # a generator does not tell its length
    results = list(pool.imap(h.square, endless_kind, progress=lambda d, t: seen.append((d, t))))
    assert results == [x * x for x in range(7)]
    assert seen[-1] == (7, None)


def test_imap_progress_has_a_total_when_the_input_tells_its_length(pool: Executor) -> None:
    seen: list[tuple[int, int | None]] = []
    items = iter(range(7))  # length_hint: 7, without reading anything
    assert list(pool.imap(h.square, items, progress=lambda d, t: seen.append((d, t)))) == [
        x * x for x in range(7)
    ]
    assert seen[-1] == (7, 7)


# -- per-item outcomes: return_exceptions=True (issue 25.1) -----------------------------------


def _shown(outcomes: list[object]) -> list[object]:
    """Outcomes with each exception as (type name, message, worker traceback named it)."""
    return [
        (type(v).__name__, str(v), "dask_helpers.py" in str(v.__cause__))
        if isinstance(v, BaseException)
        else v
        for v in outcomes
    ]


def _expected(xs: list[int]) -> list[object]:
    return [
        ("DaskHelperError", str(v[1]), True) if isinstance(v, tuple) else v
        for v in _serial_outcomes(xs, 3)
    ]


def test_return_exceptions_puts_each_failure_in_its_place(pool: Executor) -> None:
    xs = list(range(1, 12))
    mapped = pool.map(h.fail_on_multiples, xs, chunksize=4, return_exceptions=True)
    assert _shown(mapped.result(timeout=30)) == _expected(xs)
    assert mapped.exception() is None
    streamed = pool.map(h.fail_on_multiples, xs, chunksize=2, return_exceptions=True)
    assert _shown(list(streamed)) == _expected(xs)
    lazily = pool.imap(h.fail_on_multiples, iter(xs), chunksize=3, return_exceptions=True)
    assert _shown(list(lazily)) == _expected(xs)
    unordered = list(pool.imap_unordered(h.fail_on_multiples, xs, return_exceptions=True))
    errors = [v for v in unordered if isinstance(v, BaseException)]
    assert sorted(str(e) for e in errors) == sorted(
        f"{x} is a multiple of 3" for x in xs if x % 3 == 0
    )
    # Each carries a note naming its item of the input.
    assert all(
        getattr(e, "__notes__", None)
        == [f"procpool: raised by item {xs.index(int(str(e).split()[0]))} of the input"]
        for e in errors
    )


def test_return_exceptions_still_cancels_and_terminates(pool: Executor) -> None:
    queued = pool.map(h.sleep_then, [1.0] * 6, chunksize=1, return_exceptions=True)
    assert queued.cancel()
    with pytest.raises(concurrent.futures.CancelledError):
        queued.result(timeout=10)
    running = pool.map(h.sleep_then, [2.0] * 4, chunksize=1, return_exceptions=True)
    streamed = pool.imap(h.sleep_then, [2.0] * 4, return_exceptions=True)
    time.sleep(0.3)
    pool.terminate()
    assert pool.join(timeout=30)
    with pytest.raises(concurrent.futures.CancelledError):
        running.result(timeout=10)
    with pytest.raises((concurrent.futures.CancelledError, procpool.ProcpoolError)):
        next(streamed)


# -- imap -------------------------------------------------------------------------------------


def _counting(pulled: list[int]) -> Iterator[int]:
    for i in itertools.count():
        pulled[0] += 1
        yield i


def test_imap_reads_at_most_buffersize_items_ahead_of_an_endless_input(
    pool: Executor,
) -> None:
    pulled = [0]
    results = pool.imap(h.square, _counting(pulled), chunksize=2, buffersize=6)
    assert pulled[0] <= 6
    for consumed, value in enumerate(itertools.islice(results, 40), start=1):
        assert value == (consumed - 1) ** 2
        assert pulled[0] <= consumed + 6
    results.close()  # type: ignore[attr-defined]


def test_imap_default_buffersize_is_bounded(pool: Executor) -> None:
    pulled = [0]
    results = pool.imap(h.square, _counting(pulled))
    assert next(results) == 0
    assert pulled[0] <= 1 + 4 * pool.workers
    results.close()  # type: ignore[attr-defined]


def test_imap_unordered_yields_every_result(pool: Executor) -> None:
    assert sorted(pool.imap_unordered(h.square, range(30), chunksize=4)) == [
        x * x for x in range(30)
    ]


def test_imap_raises_a_failed_item_and_goes_on(pool: Executor) -> None:
    iterator = pool.imap(h.fail_on_multiples, [1, 3, 4])
    assert next(iterator) == 2
    with pytest.raises(h.DaskHelperError):
        next(iterator)
    assert next(iterator) == 5
    with pytest.raises(StopIteration):
        next(iterator)


def test_imap_raises_the_inputs_own_error_after_the_items_before_it(pool: Executor) -> None:
    def broken() -> Iterator[int]:
        yield 1
        yield 2
        raise KeyError("input")

    iterator = pool.imap(h.square, broken(), buffersize=10)
    assert next(iterator) == 1
    assert next(iterator) == 4
    with pytest.raises(KeyError):
        next(iterator)


def test_imap_after_close_yields_what_was_sent_then_raises_pool_closed(
    pool: Executor,
) -> None:
    iterator = pool.imap(h.square, range(100), buffersize=4)
    pool.close()
    got = []
    with pytest.raises(procpool.PoolClosedError):
        got.extend(iterator)
    assert got == [0, 1, 4, 9]


# -- time limits and cancellation -------------------------------------------------------------


def test_a_task_over_its_time_limit_fails_with_task_timeout_error(pool: Executor) -> None:
    started = time.monotonic()
    fut = pool.options(timeout=0.5).submit(h.sleep_then, 5)
    with pytest.raises(procpool.TaskTimeoutError) as info:
        fut.result(timeout=30)
    assert info.value.timeout == 0.5
    assert isinstance(info.value, TimeoutError)
    assert time.monotonic() - started < 4
    assert pool.submit(h.square, 2).result(timeout=30) == 4  # the pool goes on


def test_pool_wide_task_timeout_and_time_spent_queued_does_not_count(
    make_pool: MakePool,
) -> None:
    limited = make_pool(task_timeout=1.5)
    # Four 0.6 s tasks on two workers: the last two wait ~0.6 s in the queue, and
    # still finish within their own limit.
    quick = [limited.submit(h.sleep_then, 0.6, i) for i in range(4)]
    slow = limited.submit(h.busy_loop, 5.0)
    assert [f.result(timeout=30) for f in quick] == [0, 1, 2, 3]
    with pytest.raises(procpool.TaskTimeoutError):
        slow.result(timeout=30)
    # math.inf lifts the pool's limit for one submission.
    assert limited.options(timeout=float("inf")).submit(h.sleep_then, 1.8, 5).result(30) == 5


def test_map_items_over_the_limit_fail_alone(pool: Executor) -> None:
    # On Pool, item 0 (finished, its result maybe not yet sent) failed about half
    # the time when its worker was killed for item 1's limit, until issue 22: it
    # now runs again.
    result = pool.options(timeout=0.5).map(h.sleep_then, [0.0, 3.0, 0.0], [1, 2, 3], chunksize=3)
    outcomes: list[object] = []
    for _ in range(3):
        try:
            outcomes.append(next(result))
        except procpool.TaskTimeoutError:
            outcomes.append("timeout")
    assert outcomes == [1, "timeout", 3]


def test_a_grace_period_lets_a_late_task_clean_up(pool: Executor, tmp_path: Any) -> None:
    marker = tmp_path / "cleaned-up"
    late = pool.options(timeout=0.5, grace=10).submit(
        helpers.sleep_in_steps_with_cleanup, str(marker), 60
    )
    with pytest.raises(procpool.TaskTimeoutError) as info:
        late.result(timeout=60)
    assert info.value.killed is False
    assert marker.read_text() == "cleaned up"


def test_retry_timeouts_runs_a_late_task_again(pool: Executor) -> None:
    patient = pool.options(timeout=0.3, retries=1, retry_timeouts=True)
    started = time.monotonic()
    with pytest.raises(procpool.TaskTimeoutError):
        patient.submit(h.sleep_then, 2.0).result(timeout=30)
    assert pool.stats().retried == 1
    with pytest.raises(procpool.TaskTimeoutError):
        patient.map(h.sleep_then, [2.0]).result(timeout=30)
    assert time.monotonic() - started >= 4 * 0.3  # two attempts each


def test_cancelling_queued_and_running_futures(pool: Executor) -> None:
    blockers = [pool.submit(h.sleep_then, 1.0) for _ in range(2)]
    queued = pool.submit(h.sleep_then, 1.0, 1)
    assert queued.cancel()
    assert queued.cancelled()
    with pytest.raises(concurrent.futures.CancelledError):
        queued.result(timeout=1)
    running = blockers[0]
    time.sleep(0.3)
    assert running.cancel()
    assert running.cancelled()
    assert blockers[1].result(timeout=30) == 0
    assert pool.submit(h.square, 3).result(timeout=30) == 9  # the pool goes on


def test_cancelling_a_map_cancels_it(pool: Executor) -> None:
    result = pool.map(h.sleep_then, [1.0] * 8, chunksize=1)
    assert result.cancel()
    assert result.cancelled()
    pool.close()
    assert pool.join(timeout=30)


def test_a_killed_worker_fails_only_its_task_with_worker_lost_error(
    make_pool: MakePool, request: pytest.FixtureRequest
) -> None:
    pool = _pool_that_may_lose_workers(make_pool, request)
    bystander = pool.submit(h.sleep_then, 0.5, 7)
    doomed = pool.submit(h.exit_worker, 3)
    with pytest.raises(procpool.WorkerLostError, match="exit_worker"):
        doomed.result(timeout=60)
    assert isinstance(doomed.exception(), concurrent.futures.process.BrokenProcessPool)
    assert bystander.result(timeout=60) == 7
    # The pool goes on, on the worker left (or the one started in its place).
    assert pool.submit(h.square, 3).result(timeout=30) == 9


def test_retries_submit_again_after_a_killed_worker(
    make_pool: MakePool, request: pytest.FixtureRequest
) -> None:
    pool = _pool_that_may_lose_workers(make_pool, request, retries=1)
    fut = pool.submit(h.exit_worker, 4)
    with pytest.raises(procpool.WorkerLostError):
        fut.result(timeout=90)
    assert pool.stats().retried == 1


def test_a_crash_in_a_map_fails_only_the_item_that_crashed(
    make_pool: MakePool, request: pytest.FixtureRequest
) -> None:
    # Issue 22.1 on every pool: the neighbours of the crashed item, in its chunk,
    # are delivered (a remote pool runs them again, in smaller chunks).
    pool = _pool_that_may_lose_workers(make_pool, request)
    got = pool.map(h.exit_on, range(8), [5] * 8, chunksize=8, return_exceptions=True)
    outcomes = got.result(timeout=110)
    assert [v for i, v in enumerate(outcomes) if i != 5] == [x * x for x in range(8) if x != 5]
    assert isinstance(outcomes[5], procpool.WorkerLostError)
    stats = pool.stats()
    assert (stats.completed, stats.failed, stats.retried) == (7, 1, 0)


@pytest.mark.slow
def test_with_retries_the_item_that_crashed_runs_again_alone(
    make_pool: MakePool, request: pytest.FixtureRequest
) -> None:
    pool = _pool_that_may_lose_workers(make_pool, request, retries=1)
    got = pool.map(h.exit_on, range(4), [2] * 4, chunksize=4, return_exceptions=True)
    outcomes = got.result(timeout=110)
    assert [outcomes[i] for i in (0, 1, 3)] == [0, 1, 9]
    assert isinstance(outcomes[2], procpool.WorkerLostError)
    stats = pool.stats()
    assert (stats.completed, stats.failed, stats.retried) == (3, 1, 1)


def _pool_that_may_lose_workers(
    make_pool: MakePool, request: pytest.FixtureRequest, **kwargs: Any
) -> Executor:
    """A pool whose workers may die. A Dask cluster of its own: the nanny restarts a
    worker that died, but on a loaded machine that has taken minutes (test_dask.py)."""
    if request.node.callspec.params["make_pool"] != "DaskPool":
        return make_pool(**kwargs)
    import dask_support

    stack = contextlib.ExitStack()
    request.addfinalizer(stack.close)
    client = stack.enter_context(dask_support.client_of_a_new_cluster())
    pool = procpool.DaskPool(client, **kwargs)
    stack.callback(pool.join, 30)
    stack.callback(pool.terminate)
    return pool


# -- retries by exception type, with backoff (issue 25.2) ------------------------------------


def test_a_task_raising_a_retried_type_runs_again_until_it_succeeds(
    pool: Executor, tmp_path: Path
) -> None:
    view = pool.options(retries=3, retry_on=ConnectionError, backoff=0.01)
    assert view.submit(ph.fail_first, str(tmp_path / "a"), 2).result(timeout=30) == 3
    assert pool.stats().retried == 2
    assert pool.stats().failed == 0


def test_retry_on_and_backoff_are_pool_defaults_and_other_types_are_not_retried(
    make_pool: MakePool, tmp_path: Path
) -> None:
    pool = make_pool(retries=3, retry_on=(ConnectionError,), backoff=0.01)
    assert pool.submit(ph.fail_first, str(tmp_path / "a"), 1).result(timeout=30) == 2
    fut = pool.submit(ph.fail_first, str(tmp_path / "b"), 1, "ValueError")
    with pytest.raises(ValueError, match="call 1 failed"):
        fut.result(timeout=30)
    assert pool.stats().retried == 1
    with pytest.raises(ValueError, match="backoff"):
        make_pool(backoff=-1)
    with pytest.raises(TypeError, match="retry_on"):
        make_pool(retry_on=42)


def test_the_final_error_says_how_many_attempts_were_made(pool: Executor, tmp_path: Path) -> None:
    view = pool.options(retries=2, retry_on=ConnectionError)
    with pytest.raises(ConnectionError, match="call 3 failed") as info:
        view.submit(ph.fail_first, str(tmp_path / "a"), 10).result(timeout=30)
    assert getattr(info.value, "__notes__", None) == [
        "procpool: 3 attempts were made; this is the error of the last"
    ]
    assert isinstance(info.value.__cause__, procpool.RemoteTraceback)
    assert pool.stats().retried == 2


def test_map_items_are_retried_one_by_one_in_their_places(pool: Executor, tmp_path: Path) -> None:
    view = pool.options(retries=2, retry_on=ConnectionError, backoff=0.01)
    got = view.map(ph.fail_first_item, range(12), [str(tmp_path)] * 12, [1] * 12, chunksize=4)
    assert got.result(timeout=30) == [(x, 2 if x % 3 == 0 else 0) for x in range(12)]
    assert pool.stats().retried == 4
    assert pool.stats().completed == 12
    # An item that keeps failing ends in its last error, with the note, in its place.
    (tmp_path / "t").mkdir()
    stubborn = pool.options(retries=1, retry_on=ConnectionError).map(
        ph.fail_first_item, [1, 3], [str(tmp_path / "t")] * 2, [5] * 2, return_exceptions=True
    )
    outcomes = stubborn.result(timeout=30)
    assert outcomes[0] == (1, 0)
    assert isinstance(outcomes[1], ConnectionError)
    assert getattr(outcomes[1], "__notes__", None) == [
        "procpool: 2 attempts were made; this is the error of the last"
    ]


def test_a_retry_waits_in_the_client_holding_no_worker(pool: Executor, tmp_path: Path) -> None:
    # Two workers: while both failed tasks wait out their backoff (1-3 s), other
    # work runs on both workers; a waiting retry can be cancelled.
    view = pool.options(retries=1, retry_on=ConnectionError, backoff=2.0)
    flaky = [view.submit(ph.fail_first, str(tmp_path / name), 1) for name in "ab"]
    assert _wait_until(lambda: (tmp_path / "a").exists() and (tmp_path / "b").exists())
    others = pool.map(h.sleep_then, [0.2] * 4, range(4), chunksize=1)
    assert others.result(timeout=30) == [0, 1, 2, 3]
    assert not any(f.done() for f in flaky)
    assert flaky[0].cancel()
    assert flaky[1].result(timeout=30) == 2
    assert (tmp_path / "a").read_text() == "1"  # the cancelled retry never ran


# -- who runs a task, per-worker state (issue 26.1, 26.2) ---------------------------------------


def _kind(pool: Executor) -> str:
    return type(pool).__name__


def test_current_worker_says_who_runs_the_task(pool: Executor) -> None:
    assert procpool.current_worker() is None
    method = {"Pool": None, "DaskPool": "dask", "RayPool": "ray"}[_kind(pool)]
    seen = [
        pool.submit(plh.who).result(timeout=30),
        pool.options(timeout=30).submit(plh.who).result(timeout=30),  # a helper thread on Dask
        *pool.map(plh.who, range(6), chunksize=2).result(timeout=30),
        *pool.options(timeout=30).map(plh.who, range(2), chunksize=2).result(timeout=30),
        *pool.imap(plh.who, range(2)),
    ]
    for info in seen:
        assert info is not None
        slot, pid, name, tasks_run, start_method = info
        assert pid != os.getpid()
        assert tasks_run >= 0
        if method is None:
            assert start_method in ("fork", "spawn", "forkserver")
            assert slot in (0, 1)
            assert name.startswith("procpool.Pool-")
        else:
            assert start_method == method
        if method == "dask":  # a LocalCluster names its workers 0, 1
            assert slot in (0, 1)
            assert name.startswith("tcp://127.0.0.1:")
        if method == "ray":  # Ray's workers have no fixed places
            assert slot == -1
            assert name
    # The count goes up in each process: calls finished before this one.
    counts: dict[int, list[int]] = {}
    for info in pool.map(plh.who, range(8), chunksize=1).result(timeout=30):
        assert info is not None
        counts.setdefault(info[1], []).append(info[3])
    assert all(len(set(runs)) == len(runs) for runs in counts.values()), counts


def test_worker_state_is_built_once_per_worker_process(pool: Executor) -> None:
    model = procpool.WorkerState(plh.make_model)
    got = pool.map(plh.model_seen, [model] * 16, range(16), chunksize=1).result(timeout=60)
    assert [x for *_, x in got] == list(range(16))
    built: dict[int, set[float]] = {}
    for builder, when, runner, _ in got:
        assert builder == runner != os.getpid()  # built where it is used, not in the parent
        built.setdefault(runner, set()).add(when)
    assert all(len(times) == 1 for times in built.values()), built  # once per process


# -- on_event (issue 25.5) ----------------------------------------------------------------------


def test_on_event_tells_tasks_queued_and_finished_with_their_times(make_pool: MakePool) -> None:
    events: list[procpool.PoolEvent] = []
    threads: set[str] = set()

    def hook(event: procpool.PoolEvent) -> None:
        threads.add(threading.current_thread().name)
        events.append(event)

    with make_pool(on_event=hook) as pool:
        assert pool.submit(h.sleep_then, 0.2, 7).result(timeout=30) == 7
        with pytest.raises(ValueError, match="no"):
            pool.submit(h.raise_value_error, "no").result(timeout=30)
        with pytest.raises(procpool.TaskTimeoutError):
            pool.options(timeout=0.3).submit(h.sleep_then, 2.0).result(timeout=30)
        failing = pool.map(h.fail_on_multiples, range(1, 7), chunksize=6)
        assert failing.exception(timeout=30) is not None
        assert list(pool.imap(h.square, range(3), chunksize=3)) == [0, 1, 4]
    name = pool._name  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue]
    assert all(e.pool == name for e in events)
    assert all(t.endswith("-callbacks") for t in threads), threads  # never the engine's
    queued = [(e.task, e.items) for e in events if isinstance(e, procpool.TaskQueued)]
    assert queued == [
        ("dask_helpers.sleep_then", 1),
        ("dask_helpers.raise_value_error", 1),
        ("dask_helpers.sleep_then", 1),
        ("map(dask_helpers.fail_on_multiples, ...)", 6),
        ("map(dask_helpers.square, ...)", 3),
    ]
    finished = [e for e in events if isinstance(e, procpool.TaskFinished)]
    by_task = {(e.task, e.outcome): e for e in finished}
    slept = by_task["dask_helpers.sleep_then", "completed"]
    assert 0.15 < slept.run_seconds < 10
    assert 0 <= slept.queued_seconds < 10
    assert slept.worker_pid not in (None, os.getpid())
    assert ("dask_helpers.raise_value_error", "failed") in by_task
    assert ("dask_helpers.sleep_then", "timed_out") in by_task
    chunk = by_task["map(dask_helpers.fail_on_multiples, ...)", "failed"]
    assert (chunk.items, chunk.failed) == (6, 2)
    assert chunk.run_seconds > 0
    assert by_task["map(dask_helpers.square, ...)", "completed"].items == 3


def test_a_raising_hook_is_logged_and_the_pool_goes_on(
    make_pool: MakePool, caplog: pytest.LogCaptureFixture
) -> None:
    def hook(event: procpool.PoolEvent) -> None:
        raise RuntimeError("hook exploded")

    with caplog.at_level(logging.ERROR, logger="procpool"), make_pool(on_event=hook) as pool:
        assert pool.map(h.square, range(6)).result(timeout=30) == [x * x for x in range(6)]
        assert pool.submit(h.square, 3).result(timeout=30) == 9
    assert "hook exploded" in caplog.text
    with pytest.raises(TypeError, match="on_event"):
        make_pool(on_event="print")


# -- lifecycle --------------------------------------------------------------------------------


def test_a_closed_pool_raises_pool_closed_error(pool: Executor) -> None:
    pool.close()
    with pytest.raises(procpool.PoolClosedError):
        pool.submit(h.square, 1)
    with pytest.raises(procpool.PoolClosedError):
        pool.map(h.square, [1])
    with pytest.raises(procpool.PoolClosedError):
        pool.imap(h.square, [1])
    with pytest.raises(RuntimeError):  # PoolClosedError is a RuntimeError, as in Executor
        pool.options(timeout=1).submit(h.square, 1)


def test_join_on_a_running_pool_is_a_value_error(pool: Executor) -> None:
    with pytest.raises(ValueError, match="close"):
        pool.join()


def test_leaving_the_with_block_waits_for_every_task(make_pool: MakePool) -> None:
    with make_pool() as pool:
        futures = [pool.submit(h.sleep_then, 0.2, i) for i in range(4)]
        chained = futures[0].then(lambda x: x + 100)
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == [0, 1, 2, 3]
    assert chained.result(timeout=0) == 100
    with pytest.raises(procpool.PoolClosedError):
        pool.submit(h.square, 1)


def test_leaving_the_with_block_by_an_exception_ends_every_future(make_pool: MakePool) -> None:
    futures: list[procpool.Future[int]] = []
    with pytest.raises(KeyError), make_pool() as pool:
        futures.extend(pool.submit(h.sleep_then, 2.0, i) for i in range(4))
        raise KeyError("leave")
    assert all(f.done() for f in futures)
    assert sum(f.cancelled() for f in futures) >= 2  # the two queued ones at least


def test_shutdown_cancel_futures_cancels_what_has_not_started(pool: Executor) -> None:
    futures = [pool.submit(h.sleep_then, 1.0, i) for i in range(6)]
    pool.shutdown(wait=True, cancel_futures=True)
    assert all(f.done() for f in futures)
    # Local pools let the started ones finish; Dask and Ray cannot tell them apart.
    assert all(f.cancelled() or f.result() == i for i, f in enumerate(futures))
    assert sum(f.cancelled() for f in futures) >= 2


def test_terminate_ends_maps_and_imaps_in_flight(pool: Executor) -> None:
    mapped = pool.map(h.sleep_then, [2.0] * 4, chunksize=1)
    streamed = pool.imap(h.sleep_then, [2.0] * 4)
    pool.terminate()
    assert pool.join(timeout=30)
    assert mapped.done()
    with pytest.raises((concurrent.futures.CancelledError, procpool.ProcpoolError)):
        next(streamed)
    with pytest.raises(StopIteration):
        next(streamed)


def test_stats_count_tasks_and_items(make_pool: MakePool) -> None:
    with make_pool() as pool:
        pool.submit(h.square, 2).result(timeout=30)
        with pytest.raises(h.DaskHelperError):
            pool.map(h.fail_on_multiples, range(1, 7)).result(timeout=30)
    stats = pool.stats()
    assert stats.submitted == 7
    assert stats.completed == 5
    assert stats.failed == 2


def test_stats_add_up_after_cancelling_a_map_and_closing_an_imap(make_pool: MakePool) -> None:
    with make_pool() as pool:
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
    assert stats.submitted == 20 + 6 + 6
    assert stats.failed == 2


def test_remote_pools_share_one_base(pool: Executor) -> None:
    assert isinstance(pool, RemotePool) == (not isinstance(pool, procpool.Pool))


# -- properties -------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(xs=st.lists(st.integers(-1000, 1000), max_size=60), chunksize=st.none() | st.integers(1, 8))
def test_property_map_equals_serial(
    shared_pool: Executor, xs: list[int], chunksize: int | None
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
    shared_pool: Executor, xs: list[int], of: int, chunksize: int | None
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
    shared_pool: Executor, xs: list[int], chunksize: int, buffersize: int | None
) -> None:
    expected = list(map(h.square, xs))
    assert list(shared_pool.map(h.square, xs, chunksize=chunksize)) == expected
    imap = shared_pool.imap(h.square, iter(xs), chunksize=chunksize, buffersize=buffersize)
    assert list(imap) == expected
    unordered = shared_pool.imap_unordered(h.square, xs, chunksize=chunksize, buffersize=buffersize)
    assert sorted(unordered) == sorted(expected)

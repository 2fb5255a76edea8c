"""Pool: submit, map, imap, options, lifecycle and the with-block."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import math
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import helpers
import procpool

pytestmark = pytest.mark.timeout(60)


def test_submit_returns_the_functions_value(pool: procpool.Pool) -> None:
    assert pool.submit(helpers.add, 2, y=3).result(timeout=30) == 5


def test_submit_keeps_the_exception_type_with_remote_traceback(pool: procpool.Pool) -> None:
    fut = pool.submit(helpers.raise_value_error, "boom")
    with pytest.raises(ValueError, match="boom") as info:
        fut.result(timeout=30)
    cause = info.value.__cause__
    assert isinstance(cause, procpool._errors.RemoteTraceback)
    assert "raise_value_error" in str(cause)


def test_map_is_ordered_and_equal_to_serial(pool: procpool.Pool) -> None:
    xs = list(range(1000))
    assert pool.map(helpers.square, xs).result(timeout=30) == list(map(helpers.square, xs))


def test_map_with_several_iterables_zips_like_builtin_map(pool: procpool.Pool) -> None:
    result = pool.map(helpers.add, range(5), [10, 20, 30]).result(timeout=30)
    assert result == list(map(helpers.add, range(5), [10, 20, 30]))


def test_map_iteration_streams_in_order_and_raises_at_the_failed_item(
    pool: procpool.Pool,
) -> None:
    it = iter(pool.map(helpers.fail_on, range(6), chunksize=2))
    assert [next(it), next(it), next(it)] == [0, 1, 2]
    with pytest.raises(ValueError, match="bad item 3"):
        next(it)
    assert list(it) == [4, 5]


@pytest.mark.parametrize("timeout", [None, 60.0])
def test_map_iteration_yields_an_item_as_soon_as_it_arrives(
    pool: procpool.Pool, timeout: float | None
) -> None:
    # The iterator waits for its item, not for the map: with the second item
    # still sleeping, the first one is already there.
    fut = pool.map(helpers.sleep_item, [0, 5_000], chunksize=1, timeout=timeout)
    it = iter(fut)
    assert next(it) == 0
    assert not fut.done()
    fut.cancel()


def test_map_result_raises_the_first_failed_items_exception(pool: procpool.Pool) -> None:
    fut = pool.map(helpers.fail_on, range(10), itertools.repeat(frozenset({7, 4})))
    with pytest.raises(ValueError, match="bad item 4"):
        fut.result(timeout=30)


def test_map_then_chains_on_the_list(pool: procpool.Pool) -> None:
    assert pool.map(helpers.square, range(4)).then(sum).result(timeout=30) == 14


def test_map_of_nothing_is_an_empty_done_future(pool: procpool.Pool) -> None:
    fut = pool.map(helpers.square, [])
    assert fut.done()
    assert fut.result() == []
    assert list(pool.map(helpers.square, [])) == []


def test_map_list_after_iteration_released_items_is_an_invalid_state(
    pool: procpool.Pool,
) -> None:
    fut = pool.map(helpers.square, range(3))
    assert next(fut) == 0
    with pytest.raises(concurrent.futures.InvalidStateError, match="iterat"):
        fut.result()


@pytest.mark.parametrize("kind", ["map", "imap", "imap-chunks", "imap_unordered"])
def test_iteration_keeps_no_yielded_result_alive(start_method: str, kind: str) -> None:
    """CPython's bpo-14406 test: a yielded result dropped by the caller is gone."""
    with procpool.Pool(2, context=start_method) as pool:
        if kind == "map":
            results: Iterator[helpers.Blob] = pool.map(helpers.make_blob, range(10))
        elif kind == "imap":
            results = pool.imap(helpers.make_blob, range(10))
        elif kind == "imap-chunks":
            results = pool.imap(helpers.make_blob, range(10), chunksize=3)
        else:
            results = pool.imap_unordered(helpers.make_blob, range(10), chunksize=2)
        assert not any(helpers.kept_alive(results))


def test_map_iterated_after_result_keeps_the_list(pool: procpool.Pool) -> None:
    fut = pool.map(helpers.square, range(3))
    assert fut.result(timeout=30) == [0, 1, 4]
    assert list(fut) == [0, 1, 4]
    assert fut.result() == [0, 1, 4]


def test_map_result_is_the_same_list_each_time_as_future_result_is(
    pool: procpool.Pool,
) -> None:
    fut = pool.map(helpers.square, range(3))
    first = fut.result(timeout=30)
    assert fut.result() is first
    assert fut.then(lambda values: values is first).result(timeout=30)
    assert list(fut) == [0, 1, 4]  # iterating after result() leaves the list whole
    assert first == [0, 1, 4]


def test_map_timeout_raises_timeout_error_when_iterating(pool: procpool.Pool) -> None:
    pool.submit(helpers.square, 1).result(timeout=30)  # a worker is up
    fut = pool.map(helpers.sleep_then, [0.0, 30.0], timeout=3)
    it = iter(fut)
    assert next(it) is None
    # concurrent.futures.TimeoutError, as Executor.map raises (builtin TimeoutError
    # from Python 3.11 on).
    with pytest.raises(concurrent.futures.TimeoutError):
        next(it)
    assert fut.cancelled()


def test_map_automatic_chunking_batches_tiny_items(pool: procpool.Pool) -> None:
    before = pool.stats()
    assert pool.map(helpers.square, range(20_000)).result(timeout=30)[-1] == 19_999**2
    after = pool.stats()
    assert after.completed - before.completed == 20_000


@pytest.mark.skipif(sys.platform != "linux", reason="pipe capacity is a Linux fcntl")
def test_worker_pipes_are_widened_so_big_replies_need_no_ping_pong() -> None:
    import fcntl

    from procpool._waiting import PIPE_CAPACITY

    with procpool.Pool(1, context="fork") as p:
        p.submit(helpers.square, 2).result(timeout=30)
        worker = next(iter(p._dispatcher.workers.values()))  # pyright: ignore[reportPrivateUsage]
        for conn in (worker.task_conn, worker.result_conn):
            assert fcntl.fcntl(conn.fileno(), fcntl.F_GETPIPE_SZ) == PIPE_CAPACITY
        # A reply several times the default 64 KiB still arrives whole.
        assert (
            p.map(helpers.square, range(50_000), chunksize=50_000).result(timeout=30)[-1]
            == 49_999**2
        )


class _Counted:
    """An input (0, 1, 2, ... or ``value`` again and again) that counts what was pulled."""

    def __init__(self, stop: int | None = None, value: int | None = None) -> None:
        self.pulled = 0
        self._stop = stop
        self._value = value

    def __iter__(self) -> Iterator[int]:
        for i in itertools.count() if self._stop is None else range(self._stop):
            self.pulled += 1
            yield i if self._value is None else self._value


def test_imap_is_lazy_and_bounded_on_an_endless_generator(pool: procpool.Pool) -> None:
    source = _Counted()
    it = pool.imap(helpers.square, source, buffersize=8)
    got = [next(it) for _ in range(50)]
    assert got == [i * i for i in range(50)]
    # Read ahead of the consumer by at most buffersize.
    assert source.pulled <= 50 + 8


def test_imap_buffersize_below_chunksize_still_bounds_the_read_ahead(
    pool: procpool.Pool,
) -> None:
    source = _Counted()
    it = pool.imap(helpers.square, source, chunksize=10, buffersize=3)
    for consumed in range(1, 31):
        assert next(it) == (consumed - 1) ** 2
        assert source.pulled <= consumed + 3


def test_imap_starts_at_once_and_after_close_yields_what_was_sent(
    pool: procpool.Pool,
) -> None:
    source = _Counted(stop=100)
    iterator = pool.imap(helpers.square, source, buffersize=4)
    assert source.pulled == 4  # sent before the first next(), as Executor.map does
    pool.close()
    got: list[int] = []
    with pytest.raises(procpool.PoolClosedError):
        got.extend(iterator)
    assert got == [0, 1, 4, 9]


def test_imap_closed_after_the_pool_closed_ends_without_the_pending_error(
    pool: procpool.Pool,
) -> None:
    # Found by the state machine: the refusal of the chunk after the pool's close
    # waited to be raised after the items before it, and close() did not drop it.
    iterator = pool.imap(helpers.square, range(1_000), chunksize=10, buffersize=20)
    assert next(iterator) == 0
    pool.close()
    # Past the first chunk: the next one is refused, and the refusal kept for later.
    assert [next(iterator) for _ in range(14)] == [i * i for i in range(1, 15)]
    iterator.close()  # type: ignore[attr-defined]
    assert list(iterator) == []


def test_imap_with_chunks_and_unordered(pool: procpool.Pool) -> None:
    xs = list(range(100))
    assert list(pool.imap(helpers.square, xs, chunksize=7)) == [x * x for x in xs]
    assert sorted(pool.imap_unordered(helpers.square, xs, chunksize=3)) == [x * x for x in xs]


def test_imap_raises_at_the_failed_item_and_can_go_on(pool: procpool.Pool) -> None:
    it = pool.imap(helpers.fail_on, range(5))
    assert next(it) == 0
    assert next(it) == 1
    assert next(it) == 2
    with pytest.raises(ValueError, match="bad item 3"):
        next(it)
    assert next(it) == 4
    with pytest.raises(StopIteration):
        next(it)


def test_imap_goes_on_after_a_failed_item_inside_a_chunk(pool: procpool.Pool) -> None:
    it = pool.imap(helpers.fail_on, range(10), chunksize=5)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="bad item 3"):
        next(it)
    assert list(it) == [4, 5, 6, 7, 8, 9]


def test_imap_close_stops_at_once_even_inside_a_chunk(pool: procpool.Pool) -> None:
    it = pool.imap(helpers.square, range(1000), chunksize=100)
    assert next(it) == 0
    it.close()  # type: ignore[attr-defined]
    assert list(it) == []


def test_imap_breaking_out_of_the_loop_cancels_the_chunks_not_started(
    pool: procpool.Pool,
) -> None:
    # Each item sleeps 300 ms: too slow to be read ahead, and slow enough that none
    # but the first ones end before the break, however loaded the machine.
    source = _Counted(value=300)
    before = pool.stats().cancelled
    for index, _ in enumerate(pool.imap(helpers.sleep_item, source, buffersize=10)):
        if index == 1:
            break
    read = source.pulled
    # Ten items were queued, two consumed and at most two running: the rest go.
    assert helpers.wait_for(lambda: pool.stats().cancelled >= before + 5)
    assert source.pulled == read  # the input is not read further
    assert pool.submit(helpers.square, 3).result(timeout=30) == 9


def test_imap_breaking_out_spares_the_worker_running_an_earlier_chunk(
    pool: procpool.Pool,
) -> None:
    # Fast items, so a busy worker gets its next chunk ahead of time; the third
    # chunk ends with a slow item, still running when the loop breaks.
    stream = pool.imap(helpers.sleep_item, [0] * 29 + [1000] + [0] * 200, chunksize=10)
    for index, _ in enumerate(stream):
        if index == 19:
            time.sleep(0.3)  # the third chunk runs, with a chunk read ahead behind it
            break
    del stream  # cancels the chunks not started, the one read ahead too

    def settled() -> bool:
        s = pool.stats()
        return s.completed + s.failed + s.cancelled == s.submitted

    assert helpers.wait_for(settled)
    # The read-ahead chunk's cancellation did not kill the worker to stop it.
    assert pool.stats().workers_replaced == 0


def test_imap_chunks_share_their_timing_so_read_ahead_starts_after_one_reply() -> None:
    from procpool._jobs import MapJob, Timing
    from procpool._mapfuture import MapFuture
    from procpool._options import Options

    timing = Timing()

    def chunk() -> MapJob:
        return MapJob(
            MapFuture(10),
            helpers.square,
            list(range(10)),
            star=False,
            chunksize=10,
            opts=Options(None, 0, False),
            cloud=False,
            timing=timing,
        )

    first, second = chunk(), chunk()
    assert not second.read_ahead_pays()  # nothing measured yet
    first.record_timing(10, 0.0001)
    assert second.read_ahead_pays()


def test_imap_source_error_is_raised_after_the_items_before_it(pool: procpool.Pool) -> None:
    def source() -> Iterator[int]:
        yield 1
        yield 2
        raise LookupError("input broke")

    it = pool.imap(helpers.square, source())
    assert next(it) == 1
    assert next(it) == 4
    with pytest.raises(LookupError, match="input broke"):
        next(it)


def test_then_catch_and_flattening(pool: procpool.Pool) -> None:
    fut = pool.submit(helpers.square, 3).then(str)
    assert fut.result(timeout=30) == "9"
    recovered = pool.submit(helpers.raise_value_error, "x").catch(lambda exc: type(exc).__name__)
    assert recovered.result(timeout=30) == "ValueError"

    def chain(x: int) -> procpool.Future[int]:
        return pool.submit(helpers.square, x)

    assert pool.submit(helpers.square, 2).then(chain).result(timeout=30) == 16


def test_await_a_pool_future(pool: procpool.Pool) -> None:
    async def main() -> list[int]:
        one = await pool.submit(helpers.square, 5)
        many = await pool.map(helpers.square, range(3))
        via_executor = await asyncio.get_running_loop().run_in_executor(pool, helpers.square, 6)
        return [one, *many, via_executor]

    assert asyncio.run(main()) == [25, 0, 1, 4, 36]


def test_wait_and_as_completed_accept_pool_futures(pool: procpool.Pool) -> None:
    futures = [pool.submit(helpers.square, i) for i in range(10)]
    done, not_done = concurrent.futures.wait(futures, timeout=30)
    assert not not_done
    assert sorted(f.result() for f in concurrent.futures.as_completed(futures)) == sorted(
        i * i for i in range(10)
    )
    assert len(done) == 10


def test_options_sets_a_time_limit_for_one_submission(pool: procpool.Pool) -> None:
    slow = pool.options(timeout=0.3).submit(helpers.sleep_then, 10)
    fine = pool.submit(helpers.sleep_then, 0.5, "ok")
    with pytest.raises(procpool.TaskTimeoutError, match="time limit"):
        slow.result(timeout=30)
    assert fine.result(timeout=30) == "ok"


def test_cancel_queued_future_never_runs(tmp_path: object, start_method: str) -> None:
    path = os.path.join(str(tmp_path), "ran.txt")
    with procpool.Pool(1, context=start_method) as pool:
        blocker = pool.submit(helpers.sleep_then, 0.5)
        queued = pool.submit(helpers.append_line, path, "queued")
        assert queued.cancel()
        assert queued.cancelled()
        blocker.result(timeout=30)
    assert not os.path.exists(path)


def test_futures_cancelled_before_a_worker_had_them_never_run(
    start_method: str, tmp_path: Path
) -> None:
    """A cancel storm against freeing workers: what no worker had when cancelled never runs.

    Each cancel aims at the head of the queue, the future a freeing worker is about
    to take, with the GIL handed between threads every microsecond. ``cancel_if_pending``
    cancels only a future no worker has been handed (what ``shutdown(cancel_futures=True)``
    uses). Before the fix, ~100 of ~500 such futures ran under each start method.
    """
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with procpool.Pool(2, context=start_method) as pool:
            futures = [pool.submit(helpers.touch, str(tmp_path / str(i))) for i in range(1500)]
            cancelled: set[int] = set()
            for i in range(2, len(futures), 3):
                before = futures[i - 1]
                while not (before.running() or before.done()):
                    pass
                if futures[i].cancel_if_pending():
                    cancelled.add(i)
    finally:
        sys.setswitchinterval(interval)
    ran = {int(p.name) for p in tmp_path.iterdir()}
    assert cancelled, "the storm came too late to cancel anything"
    assert not ran & cancelled
    assert ran == {i for i, f in enumerate(futures) if not f.cancelled()}


def test_shutdown_cancel_futures_from_another_thread_never_starts_what_it_cancels(
    start_method: str, tmp_path: Path
) -> None:
    pool = procpool.Pool(2, context=start_method)
    futures = [pool.submit(helpers.touch, str(tmp_path / str(i))) for i in range(1500)]
    stopper = threading.Thread(target=pool.shutdown, kwargs={"cancel_futures": True})
    stopper.start()
    stopper.join(30)
    assert pool.join(timeout=30)
    ran = {int(p.name) for p in tmp_path.iterdir()}
    assert ran == {i for i, f in enumerate(futures) if not f.cancelled()}
    assert all(f.done() for f in futures)


def test_cancel_running_future_kills_its_worker_and_spares_others(
    pool: procpool.Pool, tmp_path: object
) -> None:
    marker = os.path.join(str(tmp_path), "pid")
    running = pool.submit(helpers.write_then_sleep, marker, 30)
    other = pool.submit(helpers.sleep_then, 0.5, "other")
    deadline = time.monotonic() + 20
    while not os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert running.running()
    assert running.cancel()
    assert running.cancelled()
    with pytest.raises(concurrent.futures.CancelledError):
        running.result()
    assert other.result(timeout=30) == "other"
    # The pool replaced the killed worker and still works at full size.
    pids = {pool.submit(helpers.getpid_after, 0.2).result(timeout=30) for _ in range(4)}
    assert pool.stats().workers_replaced >= 1
    assert len(pids) >= 1


def test_close_lets_queued_work_finish_and_rejects_new_work(start_method: str) -> None:
    pool = procpool.Pool(2, context=start_method)
    futures = [pool.submit(helpers.sleep_then, 0.05, i) for i in range(6)]
    pool.close()
    with pytest.raises(procpool.PoolClosedError):
        pool.submit(helpers.square, 1)
    with pytest.raises(procpool.PoolClosedError):
        pool.map(helpers.square, [1])
    pool.join()
    assert [f.result() for f in futures] == list(range(6))


def test_terminate_ends_every_future_quickly(start_method: str) -> None:
    pool = procpool.Pool(2, context=start_method)
    futures = [pool.submit(helpers.sleep_then, 30) for _ in range(6)]
    mapped = pool.map(helpers.sleep_item, [30_000] * 4)
    time.sleep(0.2)
    started = time.monotonic()
    pool.terminate()
    pool.join()
    assert time.monotonic() - started < 5
    assert all(f.done() for f in futures)
    assert mapped.done()
    assert all(f.cancelled() for f in futures)
    with pytest.raises(procpool.PoolClosedError):
        pool.submit(helpers.square, 1)


def test_with_block_exit_by_exception_terminates(start_method: str) -> None:
    started = time.monotonic()
    with pytest.raises(KeyError):
        with procpool.Pool(2, context=start_method) as pool:
            fut = pool.submit(helpers.sleep_then, 30)
            raise KeyError("leave")
    assert time.monotonic() - started < 10
    assert fut.done()


def test_with_block_normal_exit_waits_for_every_task(start_method: str) -> None:
    with procpool.Pool(2, context=start_method) as pool:
        futures = [pool.submit(helpers.sleep_then, 0.1, i) for i in range(5)]
    assert [f.result(timeout=0) for f in futures] == list(range(5))


def test_shutdown_cancel_futures_cancels_queued_work(start_method: str) -> None:
    pool = procpool.Pool(1, context=start_method)
    first = pool.submit(helpers.sleep_then, 0.5, "first")
    rest = [pool.submit(helpers.sleep_then, 5) for _ in range(3)]
    time.sleep(0.2)
    pool.shutdown(wait=True, cancel_futures=True)
    assert first.result() == "first"
    assert all(f.cancelled() for f in rest)


def test_bool_counts_are_rejected_in_map_and_imap(pool: procpool.Pool) -> None:
    with pytest.raises(ValueError, match="chunksize"):
        pool.map(helpers.square, [1], chunksize=True)
    with pytest.raises(ValueError, match="buffersize"):
        pool.imap(helpers.square, [1], buffersize=True)


def test_infinite_timeouts_mean_no_limit_and_nan_is_rejected(pool: procpool.Pool) -> None:
    assert pool.submit(helpers.square, 3).result(timeout=math.inf) == 9
    assert pool.submit(helpers.square, 3).exception(timeout=math.inf) is None
    assert pool.map(helpers.square, [1, 2]).result(timeout=math.inf) == [1, 4]
    assert list(pool.map(helpers.square, [1, 2], timeout=math.inf)) == [1, 4]
    assert pool.options(timeout=math.inf).submit(helpers.square, 2).result() == 4
    for waiting in (pool.submit(helpers.sleep_then, 0.2), pool.map(helpers.sleep_item, [200])):
        with pytest.raises(ValueError, match="nan"):
            waiting.result(timeout=math.nan)
        with pytest.raises(ValueError, match="nan"):
            waiting.exception(timeout=math.nan)
    with pytest.raises(ValueError, match="timeout"):
        pool.map(helpers.square, [1], timeout=math.nan)


def test_join_says_whether_the_pool_finished(start_method: str) -> None:
    pool = procpool.Pool(1, context=start_method)
    pool.submit(helpers.sleep_then, 1.0)
    pool.close()
    assert pool.join(timeout=0.05) is False
    assert pool.join(timeout=math.inf) is True
    assert pool.join(timeout=0) is True


def test_stats_snapshots_are_consistent_while_work_runs(start_method: str) -> None:
    """Every snapshot is read at one moment: never more outcomes than submissions."""
    snapshots: list[procpool.PoolStats] = []
    stop = threading.Event()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads interleave inside the reading of a snapshot
    with procpool.Pool(2, context=start_method) as pool:

        def watch() -> None:
            while not stop.is_set():
                snapshots.append(pool.stats())

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            for _ in range(20):
                futures = [pool.submit(helpers.square, i) for i in range(100)]
                pool.map(helpers.square, range(500)).result(timeout=30)
                for f in futures:
                    f.result(timeout=30)
        finally:
            stop.set()
            watcher.join()
            sys.setswitchinterval(interval)
    bad = [s for s in snapshots if s.completed + s.failed + s.cancelled > s.submitted]
    assert snapshots
    assert not bad, bad[:3]


def test_stats_count_a_task_cancelled_as_it_finishes_once(start_method: str) -> None:
    """A task that finished just as it was cancelled counted as completed and cancelled."""
    with procpool.Pool(2, context=start_method) as pool:
        for i in range(200):
            fut = pool.submit(helpers.square, i)
            time.sleep(0.0005 * (i % 3))
            fut.cancel()
        mapped = [pool.map(helpers.square, range(50), chunksize=5) for _ in range(20)]
        for m in mapped:
            time.sleep(0.001)
            m.cancel()
    s = pool.stats()
    assert s.completed + s.failed + s.cancelled == s.submitted, s


def test_long_then_chains_end_when_the_pool_is_terminated(start_method: str) -> None:
    """Once the pool is gone its callbacks run inline: 3,000 links must not recurse.

    Eight chains, so that the callback thread closes while it works through them
    and the rest are cancelled inline.
    """
    pool = procpool.Pool(1, context=start_method)
    heads = [pool.submit(helpers.sleep_then, 30) for _ in range(8)]
    tails: list[procpool.Future[int]] = []
    for head in heads:
        last: procpool.Future[int] = head
        for _ in range(3000):
            last = last.then(lambda x: x + 1)
        tails.append(last)
    pool.terminate()
    assert pool.join(timeout=30)
    for tail in tails:
        with pytest.raises(concurrent.futures.CancelledError):
            tail.result(timeout=30)


def test_a_long_then_chain_on_a_spawned_process_resolves() -> None:
    handle = procpool.spawn(helpers.sleep_then, 0.3, 1)
    last: procpool.Future[int] = handle
    for _ in range(3000):
        last = last.then(lambda x: x + 1)
    assert last.result(timeout=30) == 3001


def test_join_while_running_is_an_error() -> None:
    with procpool.Pool(1) as pool, pytest.raises(ValueError, match="close"):
        pool.join()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"workers": 0}, "workers"),
        ({"workers": -3}, "workers"),
        ({"context": "threads"}, "start method"),
        ({"task_timeout": -1}, "task_timeout"),
        ({"max_tasks_per_worker": 0}, "max_tasks_per_worker"),
        ({"retries": -1}, "retries"),
        ({"workers": True}, "workers"),
        ({"workers": 10**9}, "at most"),
        ({"max_tasks_per_worker": True}, "max_tasks_per_worker"),
        ({"retries": False}, "retries"),
        ({"task_timeout": math.nan}, "task_timeout"),
    ],
)
def test_bad_arguments_raise_value_error_at_once(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        procpool.Pool(**kwargs)


def test_default_workers_is_the_usable_cpu_count() -> None:
    with procpool.Pool() as pool:
        assert pool.workers == len(os.sched_getaffinity(0))


def test_max_tasks_per_worker_replaces_workers(start_method: str) -> None:
    with procpool.Pool(1, context=start_method, max_tasks_per_worker=2) as pool:
        pids = [pool.submit(helpers.getpid).result(timeout=30) for _ in range(6)]
    assert len(set(pids)) == 3


def test_initializer_sets_per_worker_state(start_method: str) -> None:
    with procpool.Pool(
        2, context=start_method, initializer=helpers.init_state, initargs=(42,)
    ) as pool:
        assert pool.map(helpers.read_state, []).result() == []
        assert {pool.submit(helpers.read_state).result(timeout=30) for _ in range(4)} == {42}


def test_process_task_instance_runs_in_a_pool(pool: procpool.Pool) -> None:
    assert pool.submit(helpers.Greet("pool")).result(timeout=30) == "hello pool"


def test_stats_count_what_happened(start_method: str) -> None:
    with procpool.Pool(2, context=start_method) as pool:
        pool.map(helpers.square, range(10)).result(timeout=30)
        with pytest.raises(ValueError, match="x"):
            pool.submit(helpers.raise_value_error, "x").result(timeout=30)
        stats = pool.stats()
    assert stats.submitted == 11
    assert stats.completed == 10
    assert stats.failed == 1
    assert stats.workers_started == 2
    assert len(stats.busy_seconds) == 2
    with pytest.raises(AttributeError):
        stats.completed = 3


def test_stats_count_the_items_of_a_cancelled_map_one_each(start_method: str) -> None:
    with procpool.Pool(2, context=start_method) as pool:
        mapped = pool.map(helpers.sleep_item, [50] * 40, chunksize=1)
        assert helpers.wait_for(lambda: pool.stats().completed >= 2)
        assert mapped.cancel()

        def settled() -> bool:
            s = pool.stats()
            return s.completed + s.failed + s.cancelled == s.submitted

        # Every item ends counted once: run, failed, or cancelled (the running
        # ones, whose workers were killed, and those that never started).
        assert helpers.wait_for(settled)
        stats = pool.stats()
    assert stats.submitted == 40
    assert stats.failed == 0
    assert stats.cancelled >= 30


def test_stats_account_for_every_task_and_item_once(start_method: str) -> None:
    with procpool.Pool(2, context=start_method, retries=1) as pool:
        futures: list[concurrent.futures.Future[object]] = [
            pool.map(helpers.identity, [1, threading.Lock(), 3]),  # an item does not pickle
            pool.map(helpers.fail_on, range(6), chunksize=2),  # an item raises
            pool.submit(helpers.return_unpicklable),
            pool.submit(helpers.exit_with, 1),  # lost twice: retried once, then failed
            pool.options(timeout=0.2).submit(helpers.sleep_then, 5),
        ]
        for future in futures:
            assert future.exception(timeout=60) is not None
        it = pool.imap(helpers.identity, [1, threading.Lock(), 2])
        assert next(it) == 1
        with pytest.raises(procpool.SerializationError):
            next(it)
        assert list(it) == [2]
        stats = pool.stats()
    assert stats.submitted == 3 + 6 + 1 + 1 + 1 + 3
    assert (stats.completed, stats.failed, stats.cancelled) == (9, 6, 0)
    assert (stats.timed_out, stats.retried) == (1, 1)


def test_submit_from_many_threads(start_method: str) -> None:
    with procpool.Pool(2, context=start_method) as pool:
        results: dict[int, list[int]] = {}

        def producer(t: int) -> None:
            futures = [pool.submit(helpers.add, t, i) for i in range(200)]
            results[t] = [f.result(timeout=60) for f in futures]

        threads = [threading.Thread(target=producer, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert results == {t: [t + i for i in range(200)] for t in range(4)}


def test_large_payloads_in_both_directions_do_not_deadlock(pool: procpool.Pool) -> None:
    # Calls and results far larger than a pipe's buffer, several in flight per
    # worker: the dispatcher must never block writing while a worker blocks too.
    blobs = [bytes([i]) * (1 << 20) for i in range(24)]
    assert pool.map(helpers.identity, blobs, chunksize=1).result(timeout=60) == blobs
    assert pool.map(helpers.identity, blobs, chunksize=3).result(timeout=60) == blobs
    futures = [pool.submit(helpers.identity, blob) for blob in blobs[:6]]
    assert [f.result(timeout=60) for f in futures] == blobs[:6]


def test_future_sets_every_field_of_the_standard_future() -> None:
    # procpool.Future sets concurrent.futures.Future's fields itself (with a cheaper
    # condition); a Python that adds one must not leave it missing here.
    ours = procpool.Future[int]()
    theirs = concurrent.futures.Future[int]()
    assert set(vars(theirs)) <= set(vars(ours))
    assert isinstance(ours._condition, threading.Condition)
    waiter = threading.Thread(target=ours.result, args=(10,))
    waiter.start()
    time.sleep(0.05)
    assert ours.try_set_result(1)
    waiter.join(10)
    assert not waiter.is_alive()


@pytest.mark.parametrize(
    "items", [range(10_000), range(-50, 50, 7), range(100, 0, -3), range(0), tuple(range(-9, 9))]
)
def test_map_of_a_range_equals_serial(pool: procpool.Pool, items: range | tuple[int, ...]) -> None:
    # A range travels as ranges (a slice of a range is one), not as pickled ints; a
    # tuple, like a range, is sliced as it is, without a snapshot.
    assert pool.map(abs, items).result() == [abs(x) for x in items]
    assert list(pool.map(abs, items, chunksize=7)) == [abs(x) for x in items]


def test_a_failure_in_a_map_of_a_range_is_its_own_item(pool: procpool.Pool) -> None:
    fut = pool.map(helpers.fail_on, range(1_000), chunksize=100)
    with pytest.raises(ValueError, match="bad item 3"):
        fut.result()

"""An ``imap`` consumer that keeps up reads the result pipes itself (``_assist``: driving).

While it drives, the dispatcher no longer wakes for replies; these tests make sure
that nothing waits for a consumer that stopped coming: other work on the same
workers, a timed task, a worker's death, ``close`` and ``terminate`` in the middle of
a drive. Each first iterates until the pool is seen driving, so that it tests the
drive and not the dispatcher's usual path; under every start method, and some with
CPU burners running.
"""

from __future__ import annotations

import functools
import itertools
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import edge_helpers as eh
import helpers
import procpool

#: Items to look through for a drive before giving up (a few ms of work each 100).
_LOOK_LIMIT = 400_000


def _driven(pool: procpool.Pool) -> list[Any]:
    return list(pool._dispatcher.assist._driven)  # pyright: ignore[reportPrivateUsage]


def _drive(pool: procpool.Pool, it: Iterator[int], start: int = 0) -> int:
    """Iterate ``it`` (squares of ``start``, ``start + 1``...) until the pool drives.

    Returns the next index expected; every value seen is checked on the way.
    """
    for index in range(start, start + _LOOK_LIMIT):
        assert next(it) == index * index
        if _driven(pool):
            return index + 1
    raise AssertionError(f"the consumer never drove the result pipes in {_LOOK_LIMIT} items")


@pytest.fixture
def burners() -> Iterator[list[int]]:
    """Two processes spinning at 100 % CPU for the length of the test."""
    with eh.cpu_burners(2) as pids:
        yield pids


def test_a_consumer_that_keeps_up_drives_and_gives_the_pipes_back_at_the_end(
    pool: procpool.Pool,
) -> None:
    it = pool.imap(helpers.square, range(200_000), chunksize=100)
    start = _drive(pool, it)
    assert list(it) == [i * i for i in range(start, 200_000)]
    # The stream ended: the pipes are the dispatcher's again, at once.
    assert _driven(pool) == []
    assert pool.submit(helpers.square, 7).result(timeout=30) == 49


@pytest.mark.parametrize("ordered", [True, False], ids=["imap", "imap_unordered"])
def test_a_consumer_that_stops_iterating_holds_up_no_other_work(
    pool: procpool.Pool, ordered: bool
) -> None:
    """Without the dispatcher's review, the replies below would wait in driven pipes."""
    run = pool.imap if ordered else pool.imap_unordered
    it = run(helpers.square, itertools.count(), chunksize=100)
    if ordered:
        start = _drive(pool, it)
    else:
        seen = 0
        while not _driven(pool):
            next(it)
            seen += 1
            assert seen < _LOOK_LIMIT, "the consumer never drove the result pipes"
    # The consumer pauses here, its pipes taken; the same thread then waits on others.
    assert pool.submit(helpers.square, 3).result(timeout=30) == 9
    assert pool.map(helpers.square, range(500)).result(timeout=30) == [i * i for i in range(500)]
    assert helpers.wait_for(lambda: not _driven(pool))
    if ordered:
        # Nothing the pause left on the pipes was lost or reordered.
        assert [next(it) for _ in range(5_000)] == [i * i for i in range(start, start + 5_000)]
    it.close()  # type: ignore[attr-defined]


def test_other_threads_tasks_end_while_a_consumer_drives(pool: procpool.Pool) -> None:
    results: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def submitter() -> None:
        try:
            for i in itertools.count():
                if stop.is_set():
                    return
                # Lone submits take the direct path, whose claim skips a driven worker.
                results.append(pool.submit(helpers.square, i).result(timeout=30))
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    it = pool.imap(helpers.square, range(300_000), chunksize=100)
    start = _drive(pool, it)
    thread = threading.Thread(target=submitter)
    thread.start()
    try:
        assert list(it) == [i * i for i in range(start, 300_000)]
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not errors
    assert results == [i * i for i in range(len(results))]
    assert results, "the other thread's tasks never ended"


def test_a_timed_task_takes_the_pipes_back_from_the_consumer(pool: procpool.Pool) -> None:
    """A timed call's reply must not wait for the consumer: its deadline is watched."""
    it = pool.imap(helpers.square, itertools.count(), chunksize=100)
    index = _drive(pool, it)
    timed = pool.options(timeout=30).submit(helpers.sleep_then, 0.5, "done")
    workers = pool._dispatcher.workers  # pyright: ignore[reportPrivateUsage]
    # Until it is sent, the consumer's own looks may send it (the queue is theirs too).
    while not workers.timed and not timed.done():
        assert next(it) == index * index
        index += 1
    while not timed.done():
        assert next(it) == index * index
        index += 1
        assert workers.timed == 0 or _driven(pool) == [], "drove with a timed call out"
    assert timed.result(timeout=30) == "done"
    stats = pool.stats()
    assert stats.workers_replaced == 0
    assert stats.timed_out == 0
    it.close()  # type: ignore[attr-defined]


def test_a_worker_dying_during_a_drive_fails_only_its_item(pool: procpool.Pool) -> None:
    bad = 150_000
    stream = pool.imap(
        functools.partial(helpers.crash_on, bad=bad), range(bad + 20_000), chunksize=100
    )
    for index in range(_LOOK_LIMIT):
        assert next(stream) == index
        if _driven(pool):
            break
    else:
        raise AssertionError("the consumer never drove the result pipes")
    assert index < bad, "drove only after the crash: make the input longer"
    for i in range(index + 1, bad):
        assert next(stream) == i
    with pytest.raises(procpool.WorkerLostError):
        next(stream)
    assert list(stream) == list(range(bad + 1, bad + 20_000))
    assert pool.submit(helpers.square, 4).result(timeout=30) == 16


@pytest.mark.parametrize("how", ["close", "terminate"])
def test_close_or_terminate_during_a_drive_ends_the_stream(pool: procpool.Pool, how: str) -> None:
    it = pool.imap(helpers.square, itertools.count(), chunksize=100)
    start = _drive(pool, it)
    if how == "close":
        pool.close()
        # What went out before the close is still yielded, in order, then the error.
        rest: list[int] = []
        with pytest.raises(procpool.PoolClosedError):
            rest.extend(it)
        assert rest == [i * i for i in range(start, start + len(rest))]
    else:
        pool.terminate()
        with pytest.raises(BaseException):  # noqa: B017, PT011 - cancelled or closed: both end it
            for _ in it:
                pass
    assert pool.join(timeout=30)


@pytest.mark.usefixtures("burners")
def test_with_cpu_burners_a_paused_consumer_holds_up_no_other_work() -> None:
    with procpool.Pool(2) as pool:
        for _ in range(5):
            it = pool.imap(helpers.square, itertools.count(), chunksize=50)
            start = _drive(pool, it)
            assert pool.submit(helpers.square, 5).result(timeout=30) == 25
            assert [next(it) for _ in range(1_000)] == [i * i for i in range(start, start + 1_000)]
            it.close()  # type: ignore[attr-defined]
            assert _driven(pool) == []

"""Callbacks that call anything on their pool: shut it down, join it, wait on its futures.

DESIGN.md: "Callbacks may call anything on the pool, shutdown(wait=True) and join()
included, without deadlock." Each test runs the pool's code from inside a callback
and checks that every caller returns and every future ends; a hang fails through
the test's timeout (and the bounded waits below, which fail faster).
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any

import pytest

import helpers
import procpool

pytestmark = pytest.mark.timeout(60)

#: Long enough for any legitimate wait here; a deadlock fails within it.
PATIENCE = 20


def _run_in_callback(
    pool: procpool.Pool, action: Callable[[], object]
) -> tuple[threading.Event, list[object]]:
    """Run ``action`` in a done-callback of a task; return (finished event, outcome list)."""
    finished = threading.Event()
    outcome: list[object] = []

    def callback(_: procpool.Future[int]) -> None:
        try:
            outcome.append(action())
        except BaseException as exc:
            outcome.append(exc)
        finally:
            finished.set()

    pool.submit(helpers.square, 3).add_done_callback(callback)
    return finished, outcome


@pytest.mark.parametrize(
    "how",
    ["shutdown-wait", "shutdown-cancel", "close-join", "with-block", "terminate-join"],
)
def test_a_callback_can_shut_down_its_own_pool(start_method: str, how: str) -> None:
    pool = procpool.Pool(2, context=start_method)
    others = [pool.submit(helpers.sleep_then, 0.2, i) for i in range(4)]

    def stop() -> object:
        if how == "shutdown-wait":
            pool.shutdown(wait=True)
        elif how == "shutdown-cancel":
            pool.shutdown(wait=True, cancel_futures=True)
        elif how == "close-join":
            pool.close()
            return pool.join()
        elif how == "with-block":
            with pool:
                pass
        else:
            pool.terminate()
            return pool.join()
        return None

    finished, outcome = _run_in_callback(pool, stop)
    assert finished.wait(PATIENCE), f"{how} from a callback did not return"
    assert not any(isinstance(o, BaseException) for o in outcome), outcome
    if how in ("close-join", "terminate-join"):
        assert outcome == [True]
    # The pool is really down, and the caller outside sees it too.
    assert pool.join(timeout=PATIENCE)
    assert all(f.done() for f in others)
    if how in ("shutdown-wait", "close-join", "with-block"):
        assert [f.result() for f in others] == [0, 1, 2, 3]
    with pytest.raises(procpool.PoolClosedError):
        pool.submit(helpers.square, 1)


def test_then_and_catch_functions_can_shut_down_the_pool(start_method: str) -> None:
    pool = procpool.Pool(2, context=start_method)

    def stop_then(value: int) -> int:
        pool.shutdown(wait=True)
        return value + 1

    def stop_catch(exc: BaseException) -> str:
        pool.shutdown(wait=True)
        return type(exc).__name__

    # Both submitted before either function is attached: the first to run closes the pool.
    first, second = pool.submit(helpers.square, 3), pool.submit(helpers.raise_value_error, "x")
    chained = first.then(stop_then)
    caught = second.catch(stop_catch)
    assert chained.result(timeout=PATIENCE) == 10
    assert caught.result(timeout=PATIENCE) == "ValueError"
    assert pool.join(timeout=PATIENCE)


def test_stopping_at_the_first_good_answer(start_method: str) -> None:
    """The program from the bug report: shut the pool down when one answer is in."""
    pool = procpool.Pool(2, context=start_method)
    answers: list[int] = []
    done = threading.Event()

    def first_good(fut: procpool.Future[int]) -> None:
        if fut.cancelled() or fut.result() <= 10 or answers:
            return
        answers.append(fut.result())
        pool.shutdown(wait=True, cancel_futures=True)
        done.set()

    futures = [pool.submit(helpers.sleep_then, 0.05 * i, i * i) for i in range(20)]
    for f in futures:
        f.add_done_callback(first_good)
    assert done.wait(PATIENCE)
    assert pool.join(timeout=PATIENCE)
    assert answers
    assert answers[0] > 10
    assert all(f.done() for f in futures)


def test_a_callback_may_wait_for_a_then_future_of_the_same_pool(start_method: str) -> None:
    """A ``then`` future is resolved by a callback: the waiting one must hand over."""
    with procpool.Pool(2, context=start_method) as pool:
        later = pool.submit(helpers.sleep_then, 0.3, 4)
        derived = later.then(lambda v: v * 10)
        seen: list[object] = []
        finished = threading.Event()

        def wait_for_derived(_: procpool.Future[int]) -> None:
            seen.append(derived.result(timeout=PATIENCE))
            finished.set()

        pool.submit(helpers.square, 1).add_done_callback(wait_for_derived)
        assert finished.wait(PATIENCE)
        assert seen == [40]


def test_a_callback_may_iterate_a_map_of_the_same_pool(start_method: str) -> None:
    with procpool.Pool(2, context=start_method) as pool:
        mapped = pool.map(helpers.square, range(50))
        total = pool.submit(helpers.square, 2).then(lambda _: sum(mapped))
        assert total.result(timeout=PATIENCE) == sum(x * x for x in range(50))


def test_two_callbacks_joining_the_pool_do_not_wait_for_each_other(start_method: str) -> None:
    pool = procpool.Pool(2, context=start_method)
    results: list[bool] = []
    lock = threading.Lock()

    def join_pool(_: procpool.Future[int]) -> None:
        pool.close()
        ended = pool.join()
        with lock:
            results.append(ended)

    # Tasks that outlast the submissions: a task that ended before its callback was
    # added would run it inline, here, and close the pool under the next submit.
    pool.submit(helpers.sleep_then, 0.2, 1).add_done_callback(join_pool)
    pool.submit(helpers.sleep_then, 0.2, 2).add_done_callback(join_pool)
    pool.close()
    # The caller's join waits for both callbacks, each of which joined too.
    assert pool.join(timeout=PATIENCE)
    assert results == [True, True]


def test_a_callback_joining_the_pool_waits_for_the_other_callbacks(start_method: str) -> None:
    pool = procpool.Pool(2, context=start_method)
    ran: list[int] = []
    joined = threading.Event()

    def join_pool(_: procpool.Future[int]) -> None:
        pool.close()
        pool.join()
        # Every other callback ran before join() returned.
        ran.append(-1)
        joined.set()

    slow = [pool.submit(helpers.sleep_then, 0.2, i) for i in range(3)]
    for f in slow:
        f.add_done_callback(lambda f: ran.append(f.result()))
    pool.submit(helpers.square, 1).add_done_callback(join_pool)
    assert joined.wait(PATIENCE)
    assert sorted(ran[:-1]) == [0, 1, 2]
    assert ran[-1] == -1


def test_callbacks_that_chain_more_work_while_the_pool_closes_still_run_it(
    start_method: str,
) -> None:
    pool = procpool.Pool(2, context=start_method)
    chained: list[procpool.Future[int]] = []
    blocker = pool.submit(helpers.sleep_then, 0.3, 1)

    def chain(f: procpool.Future[int]) -> None:
        # Waits on the pool's own work first: the callback thread hands over.
        blocker.result(timeout=PATIENCE)
        chained.append(pool.submit(helpers.square, f.result()))

    pool.submit(helpers.square, 5).add_done_callback(chain)
    pool.close()
    assert pool.join(timeout=PATIENCE)
    assert [f.result(timeout=0) for f in chained] == [625]


def test_wait_from_a_callback_with_concurrent_futures_helpers(start_method: str) -> None:
    with procpool.Pool(2, context=start_method) as pool:
        others = [pool.submit(helpers.square, i) for i in range(5)]
        got: list[Any] = []
        finished = threading.Event()

        def gather(_: procpool.Future[int]) -> None:
            done, _pending = concurrent.futures.wait(others, timeout=PATIENCE)
            got.append(sorted(f.result() for f in done))
            finished.set()

        pool.submit(helpers.square, 0).add_done_callback(gather)
        assert finished.wait(PATIENCE)
        assert got == [[0, 1, 4, 9, 16]]

"""The lone round trip: the thread waiting in ``result()`` reads its reply itself.

A small call sent straight to an idle worker is "claimed" by the first thread
that waits for it (see ``Dispatcher._read_here``). These tests hold that path to
the pool's guarantees: every way a call can end still ends the wait, and the
dispatcher takes the pipe back intact.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
from pathlib import Path

import pytest

import helpers
import procpool
from procpool import WorkerLostError

pytestmark = pytest.mark.timeout(90)


def _claims(pool: procpool.Pool) -> int:
    return sum(w.claims for w in pool._dispatcher.workers.values())  # pyright: ignore[reportPrivateUsage]


def test_waiting_thread_reads_the_reply_of_a_direct_call(start_method: str) -> None:
    with procpool.Pool(2, context=start_method) as pool:
        pool.submit(helpers.square, 0).result(timeout=30)  # workers are up
        before = _claims(pool)
        # Long enough that the caller is waiting before the reply exists.
        values = [pool.submit(helpers.sleep_then, 0.02, i).result(timeout=30) for i in range(10)]
        assert values == list(range(10))
        assert _claims(pool) - before == 10
        # The dispatcher has its pipes back: queued and mapped work still flows.
        futures = [pool.submit(helpers.square, i) for i in range(20)]
        assert [f.result(timeout=30) for f in futures] == [i * i for i in range(20)]
        assert pool.map(helpers.square, range(100)).result(timeout=30)[-1] == 99**2


def test_worker_death_during_the_wait_fails_only_that_call(start_method: str) -> None:
    with procpool.Pool(1, context=start_method) as pool:
        pool.submit(helpers.square, 0).result(timeout=30)
        with pytest.raises(WorkerLostError, match="exited with code 7"):
            pool.submit(helpers.exit_with, 7).result(timeout=30)
        assert pool.submit(helpers.square, 5).result(timeout=30) == 25
        assert pool.stats().workers_replaced == 1


def test_result_timeout_shorter_than_the_claim_then_waiting_again() -> None:
    with procpool.Pool(1, context="fork") as pool:
        fut = pool.submit(helpers.sleep_then, 1.0, "late")
        with pytest.raises(concurrent.futures.TimeoutError):
            fut.result(timeout=0.01)
        assert fut.result(timeout=30) == "late"


def test_call_longer_than_the_claim_is_handed_back_to_the_dispatcher() -> None:
    with procpool.Pool(1, context="fork") as pool:
        fut = pool.submit(helpers.sleep_then, 0.4, "slow")
        assert fut.exception(timeout=30) is None
        assert fut.result(timeout=30) == "slow"


def test_cancel_from_another_thread_ends_the_wait() -> None:
    with procpool.Pool(1, context="fork") as pool:
        pool.submit(helpers.square, 0).result(timeout=30)
        fut = pool.submit(helpers.sleep_then, 30)
        threading.Timer(0.03, fut.cancel).start()
        with pytest.raises(concurrent.futures.CancelledError):
            fut.result(timeout=20)
        assert pool.submit(helpers.square, 3).result(timeout=30) == 9


def test_terminate_from_another_thread_ends_the_wait() -> None:
    pool = procpool.Pool(1, context="fork")
    pool.submit(helpers.square, 0).result(timeout=30)
    fut = pool.submit(helpers.sleep_then, 30)
    threading.Timer(0.03, pool.terminate).start()
    with pytest.raises((concurrent.futures.CancelledError, procpool.ProcpoolError)):
        fut.result(timeout=20)
    pool.join(timeout=20)


def test_log_record_sent_during_the_wait_is_replayed(
    start_method: str, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.WARNING, logger="procpool.tests.worker"),
        procpool.Pool(1, context=start_method, forward_logs=True) as pool,
    ):
        pool.submit(helpers.square, 0).result(timeout=30)
        pid = pool.submit(helpers.log_then_sleep, "logged while awaited", 0.05).result(timeout=30)
    assert [(r.message, r.process) for r in caplog.records] == [("logged while awaited", pid)]


@pytest.mark.parametrize("alone", [False, True], ids=["root-handler", "own-handler"])
def test_a_forwarded_record_is_handled_once(start_method: str, alone: bool, tmp_path: Path) -> None:
    """A handler of the parent's (on the root logger, or on a logger that does not
    propagate) writes each worker record once. Failed under fork before: the worker
    inherited the handler, wrote the line itself, and the parent's replay wrote it
    again (the forkserver and spawn workers had no copy)."""
    name = "procpool.tests.alone" if alone else "procpool.tests.worker"
    logger = logging.getLogger() if not alone else logging.getLogger(name)
    handler = logging.FileHandler(tmp_path / "log.txt")
    handler.setFormatter(logging.Formatter("%(process)d %(message)s"))
    logger.addHandler(handler)
    propagate, logging.getLogger(name).propagate = logging.getLogger(name).propagate, not alone
    try:
        with procpool.Pool(1, context=start_method, forward_logs=True) as pool:  # type: ignore[arg-type]
            pid = pool.submit(helpers.log_to, name, "once only").result(timeout=30)
    finally:
        logger.removeHandler(handler)
        handler.close()
        logging.getLogger(name).propagate = propagate
    assert (tmp_path / "log.txt").read_text().splitlines() == [f"{pid} once only"]


def test_worker_retires_after_an_awaited_call() -> None:
    with procpool.Pool(1, context="fork", max_tasks_per_worker=1) as pool:
        pids = [pool.submit(helpers.getpid_after, 0.01).result(timeout=30) for _ in range(4)]
    assert len(set(pids)) == 4


def test_round_trips_from_many_threads_next_to_a_map() -> None:
    with procpool.Pool(2, context="fork") as pool:

        def caller(base: int) -> list[int]:
            return [pool.submit(helpers.square, base + i).result(timeout=30) for i in range(150)]

        with concurrent.futures.ThreadPoolExecutor(4) as threads:
            runs = [threads.submit(caller, 1000 * t) for t in range(4)]
            mapped = pool.map(helpers.square, range(20_000)).result(timeout=60)
            results = [r.result(timeout=60) for r in runs]
    assert mapped == [i * i for i in range(20_000)]
    assert results == [[(1000 * t + i) ** 2 for i in range(150)] for t in range(4)]


@pytest.mark.timeout(120)
def test_round_trips_under_crashes_cancels_and_short_waits() -> None:
    # Four threads race direct calls, worker deaths, cancels and waits shorter
    # than the call, on two workers: every future must end, each as it should.
    with procpool.Pool(2, context="fork") as pool:

        def caller(seed: int) -> list[str]:
            outcomes: list[str] = []
            for i in range(120):
                kind = (seed + i) % 6
                if kind == 0:
                    fut = pool.submit(helpers.exit_with, 3)
                    try:
                        fut.result(timeout=60)
                    except WorkerLostError:
                        outcomes.append("lost")
                elif kind == 1:
                    fut = pool.submit(helpers.sleep_then, 5.0, i)
                    threading.Timer(0.01, fut.cancel).start()
                    try:
                        fut.result(timeout=60)
                        outcomes.append("finished before the cancel")
                    except concurrent.futures.CancelledError:
                        outcomes.append("cancelled")
                elif kind == 2:
                    fut = pool.submit(helpers.sleep_then, 0.05, i)
                    with contextlib.suppress(concurrent.futures.TimeoutError):
                        fut.result(timeout=0.001)
                    assert fut.result(timeout=60) == i
                    outcomes.append("late")
                else:
                    assert pool.submit(helpers.square, i).result(timeout=60) == i * i
                    outcomes.append("ok")
            return outcomes

        with concurrent.futures.ThreadPoolExecutor(4) as threads:
            runs = [threads.submit(caller, t) for t in range(4)]
            results = [r.result(timeout=100) for r in runs]
        assert pool.map(helpers.square, range(1000)).result(timeout=60)[-1] == 999**2
    assert all(len(r) == 120 for r in results)
    assert sum(r.count("lost") for r in results) == 4 * 20
    assert not any("finished before the cancel" in r for r in results)

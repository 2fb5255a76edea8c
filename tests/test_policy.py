"""Failure policy and scheduling of Pool: retries by exception type with backoff,
priorities, and elastic pools (issues 25 and 26)."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import pytest

import policy_helpers as ph
import procpool

pytestmark = pytest.mark.timeout(60)


# -- retries by exception type ---------------------------------------------------


def test_a_task_raising_a_retried_type_runs_again_until_it_succeeds(
    start_method: str, tmp_path: Path
) -> None:
    with procpool.Pool(1, context=start_method) as pool:
        view = pool.options(retries=3, retry_on=ConnectionError, backoff=0.01)
        assert view.submit(ph.fail_first, str(tmp_path / "a"), 2).result() == 3
        assert pool.stats().retried == 2
        assert pool.stats().failed == 0


def test_other_exception_types_are_not_retried(tmp_path: Path) -> None:
    with procpool.Pool(1, retries=3, retry_on=(ConnectionError,)) as pool:
        fut = pool.submit(ph.fail_first, str(tmp_path / "a"), 1, "ValueError")
        with pytest.raises(ValueError, match="call 1 failed"):
            fut.result()
        assert pool.stats().retried == 0


def test_the_final_error_says_how_many_attempts_were_made(tmp_path: Path) -> None:
    with procpool.Pool(1) as pool:
        fut = pool.options(retries=2, retry_on=ConnectionError).submit(
            ph.fail_first, str(tmp_path / "a"), 10
        )
        with pytest.raises(ConnectionError, match="call 3 failed") as info:
            fut.result()
        assert getattr(info.value, "__notes__", None) == [
            "procpool: 3 attempts were made; this is the error of the last"
        ]
        assert pool.stats().retried == 2


def test_map_items_are_retried_one_by_one_in_their_places(
    start_method: str, tmp_path: Path
) -> None:
    with procpool.Pool(2, context=start_method) as pool:
        view = pool.options(retries=2, retry_on=ConnectionError)
        got = view.map(ph.fail_first_item, range(12), [str(tmp_path)] * 12, [1] * 12, chunksize=4)
        assert got.result() == [(x, 2 if x % 3 == 0 else 0) for x in range(12)]
        assert pool.stats().retried == 4
        assert pool.stats().completed == 12


def test_a_retry_waits_in_the_queue_holding_no_worker(tmp_path: Path) -> None:
    # One worker: while the failed task waits out its backoff, another task runs.
    with procpool.Pool(1) as pool:
        flaky = pool.options(retries=1, retry_on=ConnectionError, backoff=1.0).submit(
            ph.fail_first, str(tmp_path / "a"), 1
        )
        time.sleep(0.3)  # the first attempt has failed by now, the retry waits
        started = time.monotonic()
        assert pool.submit(ph.stamp, "other").result()[0] == "other"
        assert time.monotonic() - started < 0.5  # not behind the retry's wait
        assert not flaky.done()
        assert flaky.result(timeout=10) == 2


def test_backoff_doubles_with_jitter() -> None:
    from procpool._options import MAX_BACKOFF, backoff_delay

    for attempt, base in [(1, 0.1), (2, 0.2), (3, 0.4)]:
        delays = [backoff_delay(0.1, attempt) for _ in range(200)]
        assert base * 0.5 <= min(delays) < max(delays) <= base * 1.5
    assert backoff_delay(0.0, 5) == 0.0
    assert backoff_delay(1.0, 30) <= MAX_BACKOFF * 1.5


def test_a_waiting_retry_can_be_cancelled_and_never_runs_again(tmp_path: Path) -> None:
    marker = tmp_path / "a"
    with procpool.Pool(1) as pool:
        fut = pool.options(retries=1, retry_on=ConnectionError, backoff=0.5).submit(
            ph.fail_first, str(marker), 5
        )
        deadline = time.monotonic() + 10
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fut.cancel()
        with pytest.raises(concurrent.futures.CancelledError):
            fut.result()
        time.sleep(0.8)
    assert marker.read_text() == "1"


def test_retry_options_are_checked() -> None:
    with procpool.Pool(1) as pool:
        with pytest.raises(TypeError, match="retry_on"):
            pool.options(retry_on="ConnectionError")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="retry_on"):
            pool.options(retry_on=(ConnectionError, int))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="backoff"):
            pool.options(backoff=-1)
        with pytest.raises(TypeError, match="priority"):
            pool.options(priority=1.5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="priority"):
            pool.options(priority=True)


# -- priorities ------------------------------------------------------------------


def test_queued_work_starts_highest_priority_first_fifo_within_a_level(
    start_method: str,
) -> None:
    with procpool.Pool(1, context=start_method) as pool:
        pool.submit(ph.nap, 0.5)  # holds the only worker while the rest queue up
        lows = [pool.options(priority=-1).submit(ph.stamp, f"low{i}") for i in range(3)]
        highs = [pool.options(priority=5).submit(ph.stamp, f"high{i}") for i in range(3)]
        mids = [pool.submit(ph.stamp, f"mid{i}") for i in range(3)]
        done = sorted((f.result() for f in lows + highs + mids), key=lambda pair: pair[1])
    assert [tag for tag, _ in done] == [
        *(f"high{i}" for i in range(3)),
        *(f"mid{i}" for i in range(3)),
        *(f"low{i}" for i in range(3)),
    ]


def test_a_maps_items_keep_their_order_under_priorities() -> None:
    with procpool.Pool(1) as pool:
        pool.submit(ph.nap, 0.3)
        low = pool.options(priority=-1).map(ph.stamp, [f"low{i}" for i in range(20)], chunksize=3)
        high = pool.options(priority=1).map(ph.stamp, [f"high{i}" for i in range(20)], chunksize=3)
        lows, highs = low.result(), high.result()
    assert [t for t, _ in highs] == [f"high{i}" for i in range(20)]
    assert [s for _, s in highs] == sorted(s for _, s in highs)
    assert [s for _, s in lows] == sorted(s for _, s in lows)
    assert max(s for _, s in highs) < min(s for _, s in lows)


# -- elastic pools ---------------------------------------------------------------


def test_idle_workers_exit_and_come_back_when_work_arrives(start_method: str) -> None:
    with procpool.Pool(2, context=start_method, idle_timeout=0.2) as pool:
        assert pool.map(ph.nap, [0.05] * 4).result()
        deadline = time.monotonic() + 10
        while pool.stats().idle_exits < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pool.stats().idle_exits == 2
        started = pool.stats().workers_started
        pids = pool.map(ph.nap, [0.2] * 4).result()
        assert len(set(pids)) == 2  # both slots filled again
        assert pool.stats().workers_started == started + 2
        assert pool.stats().workers_replaced == 0


def test_an_elastic_pool_keeps_min_workers() -> None:
    with procpool.Pool(3, idle_timeout=0.1, min_workers=1) as pool:
        pool.submit(ph.nap, 0).result()
        time.sleep(0.8)
        assert pool.stats().idle_exits == 2
        started = pool.stats().workers_started
        pool.submit(ph.nap, 0).result()  # the worker that stayed takes it
        assert pool.stats().workers_started == started


def test_elastic_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="min_workers"):
        procpool.Pool(2, min_workers=3, idle_timeout=1)
    with pytest.raises(ValueError, match="idle_timeout"):
        procpool.Pool(2, idle_timeout=-1)


# -- per-item outcomes -------------------------------------------------------------


def test_return_exceptions_keeps_each_failure_in_its_place(start_method: str) -> None:
    import helpers

    with procpool.Pool(2, context=start_method) as pool:
        got = pool.map(helpers.fail_on, range(6), [frozenset({1, 4})] * 6, return_exceptions=True)
        values = got.result()
        assert got.exception() is None
        assert [v for i, v in enumerate(values) if i not in (1, 4)] == [0, 2, 3, 5]
        for i in (1, 4):
            error = values[i]
            assert isinstance(error, ValueError)
            assert isinstance(error.__cause__, procpool.RemoteTraceback)
            assert "fail_on" in str(error.__cause__)
        streamed = list(
            pool.map(helpers.fail_on, range(6), [frozenset({1})] * 6, return_exceptions=True)
        )
        assert isinstance(streamed[1], ValueError)
        assert streamed[2] == 2


def test_return_exceptions_in_imap_unordered_names_the_failed_item() -> None:
    import helpers

    with procpool.Pool(2) as pool:
        out = list(
            pool.imap_unordered(helpers.fail_on, range(10), chunksize=3, return_exceptions=True)
        )
    errors = [v for v in out if isinstance(v, BaseException)]
    assert len(errors) == 1  # fail_on fails item 3
    notes = getattr(errors[0], "__notes__", [])
    assert notes == ["procpool: raised by item 3 of the input"]
    assert sorted(v for v in out if not isinstance(v, BaseException)) == [0, 1, 2, 4, 5, 6, 7, 8, 9]


def test_return_exceptions_still_cancels_and_terminates() -> None:
    with procpool.Pool(1) as pool:
        pool.submit(ph.nap, 0.3)
        queued = pool.map(ph.nap, [0.0] * 3, return_exceptions=True)
        assert queued.cancel()
        with pytest.raises(concurrent.futures.CancelledError):
            queued.result()
        running = pool.map(ph.nap, [5.0] * 2, return_exceptions=True)
        time.sleep(0.5)
        pool.terminate()
        with pytest.raises(concurrent.futures.CancelledError):
            running.result(timeout=10)

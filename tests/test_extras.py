"""Progress reporting, cloudpickle, statistics: the opt-in extras of Pool."""

from __future__ import annotations

import sys
import threading

import pytest

import helpers
import procpool

pytestmark = pytest.mark.timeout(60)


def test_progress_callback_counts_map_results_as_they_arrive() -> None:
    seen: list[tuple[int, int | None]] = []
    lock = threading.Lock()

    def report(done: int, total: int | None) -> None:
        with lock:
            seen.append((done, total))

    with procpool.Pool(2) as pool:
        assert pool.map(helpers.square, range(50), chunksize=5, progress=report).result(
            timeout=30
        ) == [i * i for i in range(50)]
    assert seen[-1] == (50, 50)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert len(seen) >= 2


def test_progress_callback_on_imap_does_not_need_a_length() -> None:
    seen: list[tuple[int, int | None]] = []

    def endless() -> object:
        i = 0
        while True:
            yield i
            i += 1

    with procpool.Pool(2) as pool:
        it = pool.imap(helpers.square, endless(), progress=lambda d, t: seen.append((d, t)))  # type: ignore[arg-type]
        assert [next(it) for _ in range(10)] == [i * i for i in range(10)]
    assert seen[-1] == (10, None)


def test_imap_progress_shows_the_total_of_an_input_with_a_length() -> None:
    """``operator.length_hint``: a list or range tells its length without being read."""
    seen: list[tuple[int, int | None]] = []
    with procpool.Pool(2) as pool:
        out = list(
            pool.imap(helpers.square, list(range(30)), progress=lambda d, t: seen.append((d, t)))
        )
    assert out == [x * x for x in range(30)]
    assert {total for _, total in seen} == {30}
    assert seen[-1] == (30, 30)


def test_progress_bar_with_tqdm(capsys: pytest.CaptureFixture[str]) -> None:
    with procpool.Pool(2) as pool:
        assert list(pool.imap_unordered(helpers.square, range(20), progress=True)) is not None
        pool.map(helpers.square, range(20), progress=True).result(timeout=30)
    err = capsys.readouterr().err
    assert "20/20" in err


def test_progress_without_tqdm_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with procpool.Pool(1) as pool:
        with pytest.raises(ImportError, match=r"procpool\[progress\]"):
            pool.map(helpers.square, range(3), progress=True)


def test_bad_progress_argument_is_a_type_error() -> None:
    with procpool.Pool(1) as pool:
        with pytest.raises(TypeError, match="progress"):
            pool.map(helpers.square, range(3), progress="yes")  # type: ignore[arg-type]


def test_cloudpickle_is_opt_in_and_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    with procpool.Pool(1) as pool:
        with pytest.raises(procpool.SerializationError, match="cloudpickle"):
            pool.submit(lambda: 1).result(timeout=30)
    monkeypatch.setitem(sys.modules, "cloudpickle", None)
    with pytest.raises(ImportError, match=r"procpool\[cloudpickle\]"):
        procpool.Pool(1, cloudpickle=True)


def test_stats_count_timeouts_retries_cancellations_and_replacements() -> None:
    with procpool.Pool(1, retries=1) as pool:
        with pytest.raises(procpool.WorkerLostError):
            pool.submit(helpers.exit_with, 1).result(timeout=30)
        with pytest.raises(procpool.TaskTimeoutError):
            pool.options(timeout=0.2).submit(helpers.sleep_then, 10).result(timeout=30)
        blocker = pool.submit(helpers.sleep_then, 0.3)
        queued = pool.submit(helpers.square, 2)
        assert queued.cancel()
        blocker.result(timeout=30)
        assert helpers.wait_for(lambda: pool.stats().workers_replaced >= 3)
        stats = pool.stats()
    assert stats.retried == 1
    assert stats.timed_out == 1
    assert stats.cancelled == 1
    assert stats.failed == 2
    assert stats.workers_started == 1 + stats.workers_replaced
    assert isinstance(stats, procpool.PoolStats)

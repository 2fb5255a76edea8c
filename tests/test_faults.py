"""Faults: worker deaths, time limits, retries, pickling failures, callbacks, initializers."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest

import helpers
import procpool
from procpool import SerializationError, TaskTimeoutError, WorkerLostError

pytestmark = pytest.mark.timeout(90)


# -- worker death ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fn", "args", "expect"),
    [
        (helpers.exit_with, (7,), "exited with code 7"),
        (helpers.sigkill_self, (), "SIGKILL"),
        (helpers.crash, (), "SIGSEGV"),
    ],
    ids=["os._exit", "sigkill", "segfault"],
)
def test_worker_death_fails_only_its_future(
    start_method: str, fn: object, args: tuple[object, ...], expect: str
) -> None:
    with procpool.Pool(2, context=start_method) as pool:
        others = [pool.submit(helpers.sleep_then, 0.3, i) for i in range(4)]
        doomed = pool.submit(fn, *args)  # type: ignore[arg-type]
        with pytest.raises(WorkerLostError, match=expect) as info:
            doomed.result(timeout=30)
        assert [f.result(timeout=30) for f in others] == [0, 1, 2, 3]
        # Still two workers, still usable.
        assert pool.map(helpers.square, range(20)).result(timeout=30) == [i * i for i in range(20)]
        assert helpers.wait_for(lambda: pool.stats().workers_replaced >= 1)
    error = info.value
    assert isinstance(error, procpool.ProcpoolError)
    assert isinstance(error, procpool.WorkerLostError)
    assert error.exitcode is not None
    assert fn.__name__ in str(error)  # type: ignore[attr-defined]


def test_worker_lost_error_is_a_broken_process_pool() -> None:
    from concurrent.futures.process import BrokenProcessPool

    assert issubclass(WorkerLostError, BrokenProcessPool)


def test_sigkill_message_names_the_oom_killer(start_method: str) -> None:
    with procpool.Pool(1, context=start_method) as pool:
        fut = pool.submit(helpers.sigkill_self)
        with pytest.raises(WorkerLostError, match="out-of-memory"):
            fut.result(timeout=30)


def test_segfault_message_names_native_code(start_method: str) -> None:
    with procpool.Pool(1, context=start_method) as pool:
        with pytest.raises(WorkerLostError, match="native code"):
            pool.submit(helpers.crash).result(timeout=30)


def test_worker_killed_from_outside_fails_only_its_task(
    start_method: str, tmp_path: object
) -> None:
    marker = os.path.join(str(tmp_path), "pid")
    with procpool.Pool(2, context=start_method) as pool:
        victim = pool.submit(helpers.write_then_sleep, marker, 30)
        bystander = pool.submit(helpers.sleep_then, 1.0, "alive")
        deadline = time.monotonic() + 20
        while not os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
        with open(marker) as f:
            os.kill(int(f.read()), signal.SIGKILL)
        with pytest.raises(WorkerLostError, match="SIGKILL"):
            victim.result(timeout=30)
        assert bystander.result(timeout=30) == "alive"


def _outcomes(fut: procpool.MapFuture[int]) -> list[object]:
    """Each item's value, or the exception it raised, read the public way (iterating)."""
    outcomes: list[object] = []
    it = iter(fut)
    while True:
        try:
            outcomes.append(next(it))
        except StopIteration:
            return outcomes
        except Exception as exc:
            outcomes.append(exc)


def test_death_inside_a_map_chunk_fails_only_the_running_item(start_method: str) -> None:
    with procpool.Pool(2, context=start_method) as pool:
        fut = pool.map(helpers.slow_crash_on, range(12), [5] * 12, chunksize=12)
        outcomes = _outcomes(fut)
    assert [o for i, o in enumerate(outcomes) if i != 5] == [i for i in range(12) if i != 5]
    error = outcomes[5]
    assert isinstance(error, WorkerLostError)
    assert "item 5 of map" in str(error)
    assert "slow_crash_on" in str(error)


def test_items_after_a_crash_in_a_chunk_run_on_another_worker(start_method: str) -> None:
    # With a retry allowed, the worker marks every item, however fast: exactly the
    # item that ran when it died is blamed (twice, then it fails).
    with procpool.Pool(2, context=start_method, retries=1) as pool:
        fut = pool.map(helpers.crash_on, range(200), [100] * 200, chunksize=200)
        outcomes = _outcomes(fut)
    # Items 101..199 never started in the dead worker: they were run again elsewhere.
    assert [outcomes[i] for i in range(101, 200)] == list(range(101, 200))
    # The item that ran when the worker died is blamed, with the worker's pid.
    blamed = outcomes[100]
    assert isinstance(blamed, WorkerLostError)
    assert "item 100 of map" in str(blamed)
    assert "after 2 attempts" in str(blamed)
    assert blamed.exitcode == 13
    assert isinstance(blamed.pid, int)
    assert blamed.pid > 0
    assert f"pid {blamed.pid}" in str(blamed)
    # Fast items finished just before, whose results had not left the worker yet,
    # ran again: no item but the culprit fails.
    assert [i for i, o in enumerate(outcomes) if isinstance(o, BaseException)] == [100]
    assert all(outcomes[i] == i for i in range(200) if i != 100)


def test_a_crash_among_tiny_items_fails_only_the_crasher(start_method: str) -> None:
    # Without retries, items of a few µs run a block at a time (at most
    # _worker.MAX_BLOCK of them), marked once: a death there cannot be blamed on
    # one item, so the block runs again item by item and the crasher is found.
    n, bad = 5_000, 3_000
    with procpool.Pool(2, context=start_method) as pool:
        # A block is cut short after a slow one (a preempted worker); if the
        # culprit lands there it is blamed at once. Three tries make that moot.
        for _ in range(3):
            replaced = pool.stats().workers_replaced
            fut = pool.map(helpers.crash_on, range(n), [bad] * n, chunksize=n)
            outcomes = _outcomes(fut)
            # Replacements follow the result; a second one, if any, within moments.
            target = replaced + 2
            helpers.wait_for(lambda: pool.stats().workers_replaced >= target, timeout=2.0)  # noqa: B023
            crashes = pool.stats().workers_replaced - replaced
            # Only the crasher fails, every time; the others are all delivered.
            assert [i for i, o in enumerate(outcomes) if isinstance(o, BaseException)] == [bad]
            assert all(outcomes[i] == i for i in range(n) if i != bad)
            culprit = outcomes[bad]
            assert isinstance(culprit, WorkerLostError)
            assert culprit.exitcode == 13
            assert f"item {bad} of map(" in str(culprit)
            if crashes == 2:  # it crashed in a block, then alone: it ran twice
                break
    assert crashes == 2


def test_exceptions_among_tiny_items_belong_to_their_own_items(start_method: str) -> None:
    # Blocks of tiny items run through map() in C; an item that raises must still
    # be the one that fails, and the rest of its block must still run.
    n = 5_000
    bad = frozenset({0, 1, 63, 64, 65, 1_000, 1_001, 2_500, 4_998, 4_999})
    with procpool.Pool(2, context=start_method) as pool:
        fut = pool.map(helpers.fail_on, range(n), [bad] * n, chunksize=n)
        outcomes = _outcomes(fut)
    assert [i for i, o in enumerate(outcomes) if isinstance(o, ValueError)] == sorted(bad)
    assert all(outcomes[i] == i for i in range(n) if i not in bad)


# -- time limits ----------------------------------------------------------------------


def test_pool_task_timeout_kills_only_the_late_task(start_method: str) -> None:
    with procpool.Pool(2, context=start_method, task_timeout=0.5) as pool:
        late = pool.submit(helpers.sleep_then, 30)
        on_time = [pool.submit(helpers.sleep_then, 0.1, i) for i in range(4)]
        with pytest.raises(TaskTimeoutError, match=r"time limit of 0\.5 s") as info:
            late.result(timeout=30)
        assert isinstance(info.value, TimeoutError)
        assert info.value.timeout == 0.5
        assert [f.result(timeout=30) for f in on_time] == [0, 1, 2, 3]
        assert helpers.wait_for(lambda: pool.stats().workers_replaced >= 1)
        assert pool.stats().timed_out == 1


def test_time_limit_applies_per_item_of_a_map(start_method: str) -> None:
    with procpool.Pool(2, context=start_method) as pool:
        delays = [50, 50, 5000, 50, 50, 50]
        fut = pool.options(timeout=1.0).map(helpers.sleep_item, delays, chunksize=6)
        outcomes: list[object] = []
        for _ in delays:
            try:
                outcomes.append(next(fut))
            except TaskTimeoutError as exc:
                outcomes.append(type(exc))
    assert outcomes == [50, 50, TaskTimeoutError, 50, 50, 50]


def test_time_limit_counts_from_each_items_own_start(start_method: str) -> None:
    # The fast first item makes the worker run the next ones in a block; the limit
    # must still count from each item's start, not from the block's (40 x 20 ms is
    # far over the limit, each item far under it).
    with procpool.Pool(1, context=start_method) as pool:
        fut = pool.options(timeout=0.25).map(
            helpers.fast_then_slow, range(40), [0.02] * 40, chunksize=40
        )
        assert fut.result(timeout=60) == list(range(40))
        assert pool.stats().timed_out == 0


def test_time_limit_does_not_count_worker_start_up(start_method: str) -> None:
    # The initializer sleeps longer than the limit; only the task's own time counts.
    with procpool.Pool(
        1,
        context=start_method,
        initializer=helpers.sleep_then,
        initargs=(1.0,),
        task_timeout=0.8,
    ) as pool:
        assert pool.submit(helpers.sleep_then, 0.1, "ok").result(timeout=30) == "ok"


# -- retries --------------------------------------------------------------------------


def test_retries_rerun_a_task_whose_worker_died(start_method: str, tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "runs")
    with procpool.Pool(2, context=start_method, retries=2) as pool:
        fut = pool.submit(helpers.exit_with, 1)
        with pytest.raises(WorkerLostError, match="after 3 attempts"):
            fut.result(timeout=60)
        assert pool.stats().retried == 2
        line = pool.options(retries=1).submit(helpers.append_line, path, "x")
        assert line.result(timeout=30) == "x"


def test_retries_skip_timeouts_unless_asked(start_method: str) -> None:
    with procpool.Pool(1, context=start_method, retries=3) as pool:
        with pytest.raises(TaskTimeoutError):
            pool.options(timeout=0.3).submit(helpers.sleep_then, 10).result(timeout=30)
        assert pool.stats().retried == 0
        with pytest.raises(TaskTimeoutError):
            pool.options(timeout=0.3, retries=1, retry_timeouts=True).submit(
                helpers.sleep_then, 10
            ).result(timeout=30)
        assert pool.stats().retried == 1


# -- serialization --------------------------------------------------------------------


def test_unpicklable_argument_fails_only_that_future(pool: procpool.Pool) -> None:
    bad = pool.submit(helpers.identity, helpers.Holder(ok=1, lock=threading.Lock()))
    good = pool.submit(helpers.square, 4)
    with pytest.raises(
        SerializationError, match=r"argument 0 .*Holder.*argument 0\.lock is a lock"
    ) as info:
        bad.result(timeout=30)
    assert "lock" in str(info.value)
    assert good.result(timeout=30) == 16


def test_unpicklable_keyword_argument_is_named(pool: procpool.Pool) -> None:
    fut = pool.submit(helpers.sleep_then, 0, value=helpers.ErrorAtPickle())
    with pytest.raises(SerializationError, match="keyword argument 'value'"):
        fut.result(timeout=30)


def test_unpicklable_function_suggests_the_fix(pool: procpool.Pool) -> None:
    fut = pool.submit(lambda: 1)
    with pytest.raises(SerializationError, match=r"top level.*cloudpickle"):
        fut.result(timeout=30)


def test_cloudpickle_option_sends_lambdas_and_closures(start_method: str) -> None:
    offset = 10
    with procpool.Pool(2, context=start_method, cloudpickle=True) as pool:
        assert pool.submit(lambda: offset + 1).result(timeout=30) == 11
        assert pool.map(lambda x: x + offset, range(3)).result(timeout=30) == [10, 11, 12]


def test_unpicklable_result_fails_only_that_future(pool: procpool.Pool) -> None:
    fut = pool.submit(helpers.return_unpicklable)
    with pytest.raises(
        SerializationError,
        match=r"the result of task helpers\.return_unpicklable could not be pickled",
    ):
        fut.result(timeout=30)
    assert pool.submit(helpers.square, 3).result(timeout=30) == 9


def test_result_that_fails_to_unpickle_in_the_parent(pool: procpool.Pool) -> None:
    fut = pool.submit(helpers.return_error_at_unpickle)
    with pytest.raises(SerializationError, match="unpickled in the parent"):
        fut.result(timeout=30)


def test_result_whose_unpickling_raises_system_exit_fails_only_its_future(
    pool: procpool.Pool,
) -> None:
    """Found by CPython's test_exit_during_result_unpickle_in_result_handler."""
    for _ in range(3):  # read by the dispatcher thread, or by the waiting thread
        with pytest.raises(procpool.SerializationError, match="SystemExit"):
            pool.submit(helpers.return_exit_on_unpickle).result(timeout=30)
    assert pool.map(helpers.square, range(5)).result(timeout=30) == [0, 1, 4, 9, 16]


def test_argument_that_fails_to_unpickle_in_the_worker(pool: procpool.Pool) -> None:
    fut = pool.submit(helpers.identity, helpers.ErrorAtUnpickle())
    with pytest.raises(SerializationError, match="unpickled in the worker"):
        fut.result(timeout=30)


def test_exception_that_cannot_travel_back_keeps_its_traceback(pool: procpool.Pool) -> None:
    fut = pool.submit(helpers.raise_unpicklable_error)
    with pytest.raises(SerializationError, match="UnpicklableError") as info:
        fut.result(timeout=30)
    assert "raise_unpicklable_error" in str(info.value)


def test_unpicklable_map_item_fails_only_that_item(pool: procpool.Pool) -> None:
    items: list[object] = [1, 2, threading.Lock(), 4]
    fut = pool.map(helpers.identity, items)
    with pytest.raises(SerializationError, match="item 2 of map"):
        fut.result(timeout=30)
    assert fut._values[:2] == [1, 2]
    assert fut._values[3] == 4


def test_unpicklable_map_result_fails_only_that_item(pool: procpool.Pool) -> None:
    fut = pool.map(helpers.lock_on, [1, 2, 3, 4], chunksize=4)  # one chunk
    with pytest.raises(
        SerializationError,
        match=r"the result of item 1 of map\(helpers.lock_on, ...\) could not be pickled",
    ):
        fut.result(timeout=30)
    assert fut._values[0] == 1
    assert fut._values[2:] == [3, 4]


# -- callbacks ------------------------------------------------------------------------


def test_raising_callbacks_never_break_the_pool(
    pool: procpool.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    def bad_callback(_: object) -> None:
        raise RuntimeError("callback exploded")

    def worse_callback(_: object) -> None:
        raise SystemExit("callback wants out")

    with caplog.at_level(logging.ERROR, logger="procpool"):
        for _ in range(3):
            fut = pool.submit(helpers.square, 2)
            fut.add_done_callback(bad_callback)
            fut.add_done_callback(worse_callback)
            assert fut.result(timeout=30) == 4
        chained = pool.submit(helpers.square, 2).then(helpers.raise_value_error)
        with pytest.raises(ValueError, match="4"):
            chained.result(timeout=30)
        caught = pool.submit(helpers.raise_value_error, "a").catch(helpers.raise_value_error)
        with pytest.raises(ValueError, match="a"):
            caught.result(timeout=30)
        assert pool.map(helpers.square, range(5)).result(timeout=30) == [0, 1, 4, 9, 16]
        deadline = time.monotonic() + 10
        while "callback exploded" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
    assert "callback exploded" in caplog.text


def test_callbacks_can_submit_and_wait_for_more_work(pool: procpool.Pool) -> None:
    results: list[int] = []
    done = threading.Event()

    def follow_up(fut: procpool.Future[int]) -> None:
        # Blocks on another future of the same pool: must not deadlock.
        results.append(pool.submit(helpers.square, fut.result()).result(timeout=30))
        done.set()

    pool.submit(helpers.square, 3).add_done_callback(follow_up)
    assert done.wait(30)
    assert results == [81]


def test_then_submitting_from_a_callback_while_the_pool_closes(start_method: str) -> None:
    with procpool.Pool(2, context=start_method) as pool:
        fut = pool.submit(helpers.sleep_then, 0.3, 2).then(lambda x: pool.submit(helpers.square, x))
    assert fut.result(timeout=0) == 4


# -- initializer ----------------------------------------------------------------------


def test_initializer_failure_fails_futures_with_the_cause(start_method: str) -> None:
    pool = procpool.Pool(2, context=start_method, initializer=helpers.failing_initializer)
    errors: list[BaseException] = []
    for i in range(4):
        # Depending on how fast the workers start, the pool is broken before or
        # after the submission: the future fails, or submit() raises. Same error.
        try:
            fut = pool.submit(helpers.square, i)
        except procpool.ProcpoolError as exc:
            errors.append(exc)
            continue
        exc_or_none = fut.exception(timeout=30)
        assert exc_or_none is not None
        errors.append(exc_or_none)
    for error in errors:
        assert isinstance(error, procpool.ProcpoolError)
        assert "initializer" in str(error)
        root = error
        while root.__cause__ is not None and not isinstance(root, RuntimeError):
            root = root.__cause__
        assert isinstance(root, RuntimeError)
        assert "exploded" in str(root)
    with pytest.raises(procpool.ProcpoolError, match="broken"):
        pool.submit(helpers.square, 1)
    pool.close()
    pool.join(timeout=30)
    stats = pool.stats()
    assert stats.workers_started <= 2
    # What the broken pool accepted counts as failed, item by item.
    assert (stats.completed, stats.cancelled, stats.failed) == (0, 0, stats.submitted)


def test_workers_dying_at_start_up_break_the_pool_even_with_work_waiting(
    start_method: str,
) -> None:
    # The work is written to each new worker at once; that must not count as the
    # worker having started it, or the pool would replace dying workers forever.
    with procpool.Pool(
        1, context=start_method, initializer=helpers.exit_with, initargs=(1,)
    ) as pool:
        try:
            error = pool.submit(helpers.square, 2).exception(timeout=20)
        except procpool.ProcpoolError as exc:  # broken before the submission
            error = exc
        assert isinstance(error, procpool.ProcpoolError)
        assert "3 workers in a row died before doing any work" in str(error)
        assert pool.stats().workers_started == 3


# -- logging --------------------------------------------------------------------------


def test_forward_logs_replays_worker_records_in_the_parent(
    start_method: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="procpool.tests.worker"):
        with procpool.Pool(1, context=start_method, forward_logs=True) as pool:
            pid = pool.submit(helpers.log_something, "hello from a worker").result(timeout=30)
    records = [r for r in caplog.records if r.name == "procpool.tests.worker"]
    assert [r.getMessage() for r in records] == ["hello from a worker"]
    assert records[0].process == pid
    assert pid != os.getpid()


# -- a main module without `if __name__ == "__main__":` ----------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
@pytest.mark.parametrize("what", ["pool", "spawn"])
def test_an_unguarded_main_module_fails_with_one_message(what: str, method: str) -> None:
    # Every child imports the main module again and would start pools of its own:
    # the standard library printed a RuntimeError traceback per worker, interleaved
    # (271 lines for four workers). Each child now leaves quietly, and the program
    # fails once, saying what to do.
    script = Path(__file__).parent / "scripts" / "unguarded_main.py"
    proc = helpers.run_python(script, what, method, timeout=100)
    assert proc.returncode == 1
    assert "An attempt has been made to start a new process" not in proc.stderr
    assert proc.stderr.count("Traceback (most recent call last)") == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("procpool.ProcpoolError: ")
    assert "unguarded_main.py) starts a pool or a process when it is imported" in last
    assert 'under `if __name__ == "__main__":`' in last
    assert len(proc.stderr.splitlines()) < 15


# -- a post-mortem for crashes --------------------------------------------------------


@pytest.mark.parametrize("task", [helpers.crash_deep, helpers.abort_in])
def test_a_crash_in_native_code_reports_the_tasks_stack(start_method: str, task: object) -> None:
    # Issue 25: the worker's faulthandler writes the stack of the crash to the parent.
    name = getattr(task, "__name__", "")
    with procpool.Pool(1, context=start_method) as pool:
        with pytest.raises(WorkerLostError) as info:
            pool.submit(task, 2).result(timeout=60)  # type: ignore[arg-type]
        error = info.value
        assert error.exitcode in (-signal.SIGSEGV, -signal.SIGABRT)
        assert error.stack is not None
        assert error.stack.count(f"in {name}") == 3
        # The task's frames only: not the worker loop, not multiprocessing's start-up.
        assert "_child" not in error.stack
        assert "_bootstrap" not in error.stack
        assert error.stack in str(error)
        mapped = pool.map(task, [2], chunksize=1)  # type: ignore[arg-type]
        with pytest.raises(WorkerLostError) as in_map:
            mapped.result(timeout=60)
        assert in_map.value.stack is not None
        assert f"in {name}" in in_map.value.stack


def test_a_worker_killed_from_outside_has_no_stack(pool: procpool.Pool) -> None:
    with pytest.raises(WorkerLostError) as info:
        pool.submit(helpers.sigkill_self).result(timeout=60)
    assert info.value.stack is None
    assert "stack" not in str(info.value)

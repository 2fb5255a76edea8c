"""spawn() and ProcessHandle; ProcessTask."""

from __future__ import annotations

import concurrent.futures
import math
import time

import pytest

import helpers
import procpool

pytestmark = pytest.mark.timeout(60)


def test_spawn_returns_the_functions_value() -> None:
    handle = procpool.spawn(helpers.add, 2, y=5)
    assert handle.result(timeout=30) == 7
    handle.join(timeout=30)
    assert handle.exitcode == 0
    assert not handle.is_alive()
    assert isinstance(handle.pid, int)
    assert isinstance(handle.name, str)


def test_spawn_reraises_the_childs_exception_with_its_traceback() -> None:
    handle = procpool.spawn(helpers.raise_value_error, "child failed")
    with pytest.raises(ValueError, match="child failed") as info:
        handle.result(timeout=30)
    assert "raise_value_error" in str(info.value.__cause__)


def test_spawned_process_that_dies_fails_with_worker_lost() -> None:
    handle = procpool.spawn(helpers.exit_with, 3)
    with pytest.raises(procpool.WorkerLostError, match="exited with code 3") as info:
        handle.result(timeout=30)
    assert info.value.exitcode == 3
    handle.join(timeout=30)
    assert handle.exitcode == 3


def test_spawn_terminate_and_kill() -> None:
    handle = procpool.spawn(helpers.sleep_then, 30)
    assert handle.is_alive()
    handle.terminate()
    handle.join(timeout=30)
    assert handle.exitcode == -15
    with pytest.raises(procpool.WorkerLostError, match="SIGTERM"):
        handle.result(timeout=30)
    other = procpool.spawn(helpers.sleep_then, 30)
    other.kill()
    other.join(timeout=30)
    assert other.exitcode == -9


def test_join_with_timeout_returns_while_the_process_runs() -> None:
    handle = procpool.spawn(helpers.sleep_then, 1.0, "late")
    started = time.monotonic()
    handle.join(timeout=0.1)
    assert time.monotonic() - started < 0.9
    assert handle.is_alive()
    assert handle.result(timeout=30) == "late"


def test_join_with_timeout_waits_at_most_that_long_in_all() -> None:
    """Not ``timeout`` for the process and again for the watcher (was up to twice)."""
    handle = procpool.spawn(helpers.sleep_then, 2.0, "done")
    # Callbacks of a spawned process run on its watcher thread: this one holds it.
    handle.add_done_callback(lambda _: time.sleep(6))
    started = time.monotonic()
    handle.join(timeout=3.0)
    # Twice the timeout would be 2 s (the process) + 3 s (the watcher) here.
    assert time.monotonic() - started < 3.0 + 0.8
    assert handle.result(timeout=30) == "done"


def test_join_timeout_inf_waits_and_nan_is_rejected() -> None:
    handle = procpool.spawn(helpers.sleep_then, 0.1, "done")
    with pytest.raises(ValueError, match="nan"):
        handle.join(timeout=math.nan)
    handle.join(timeout=math.inf)
    assert not handle.is_alive()
    assert handle.result(timeout=0) == "done"


def test_cancel_kills_a_spawned_process() -> None:
    handle = procpool.spawn(helpers.sleep_then, 30)
    assert handle.cancel()
    handle.join(timeout=30)
    assert handle.cancelled()
    with pytest.raises(concurrent.futures.CancelledError):
        handle.result()
    assert not handle.is_alive()


def test_spawn_with_unpicklable_argument_fails_the_handle() -> None:
    handle = procpool.spawn(helpers.identity, helpers.ErrorAtPickle())
    with pytest.raises(procpool.SerializationError, match="argument 0"):
        handle.result(timeout=30)
    assert handle.pid is None
    assert not handle.is_alive()


def test_spawn_handle_chains_and_awaits() -> None:
    import asyncio

    assert procpool.spawn(helpers.square, 4).then(str).result(timeout=30) == "16"

    async def main() -> int:
        return await procpool.spawn(helpers.square, 5)

    assert asyncio.run(main()) == 25


def test_process_task_start_join_result(start_method: str) -> None:
    task = helpers.Greet("world")
    assert task.pid is None
    assert not task.is_alive()
    handle = task.start()
    assert task.handle is handle
    task.join(timeout=30)
    assert task.result() == "hello world"
    assert task.exitcode == 0
    assert task.name.startswith("Greet-")
    with pytest.raises(RuntimeError, match="already started"):
        task.start()


def test_process_task_with_name_daemon_and_start_method(start_method: str) -> None:
    class_ = helpers.Greet
    task = class_("x")
    task.name = "greeter"
    task.daemon = True
    task._context = start_method  # type: ignore[assignment]
    task.start()
    assert task.result(timeout=30) == "hello x"
    assert task.daemon is True
    assert task.name == "greeter"


def test_process_task_exception_is_reraised() -> None:
    task = helpers.FailingTask()
    task.start()
    with pytest.raises(KeyError, match="missing"):
        task.result(timeout=30)


def test_process_task_before_start_is_an_error() -> None:
    task = helpers.Greet("x")
    with pytest.raises(RuntimeError, match="start"):
        task.join()
    with pytest.raises(RuntimeError, match="start"):
        task.result()


def test_process_task_is_callable_in_the_parent() -> None:
    assert helpers.Greet("here")() == "hello here"

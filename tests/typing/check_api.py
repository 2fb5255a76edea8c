"""Typing tests: checked by mypy --strict and pyright strict, never executed.

``assert_type`` lines state what must be inferred. Lines that must be rejected
carry ``# type: ignore[code]`` (mypy) and ``# pyright: ignore[rule]`` (pyright);
both checkers report unused ignores as errors, so a line that stops failing
breaks the build.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
from collections.abc import Iterator
from typing import Literal

from typing_extensions import assert_type

import procpool


def square(x: int) -> int:
    return x * x


def add(x: int, y: str) -> str:
    return str(x) + y


def three(a: int, b: float, c: str) -> tuple[int, float, str]:
    return (a, b, c)


def six(a: int, b: int, c: int, d: int, e: int, f: int) -> int:
    return a + b + c + d + e + f


def to_square(x: int) -> procpool.Future[int]:
    raise NotImplementedError


class Greet(procpool.ProcessTask[str]):
    def __init__(self, who: str) -> None:
        super().__init__()
        self.who = who

    def run(self) -> str:
        return f"hello {self.who}"


def check_pool(pool: procpool.Pool) -> None:
    fut = pool.submit(square, 3)
    assert_type(fut, procpool.Future[int])
    assert_type(fut.result(), int)
    assert_type(pool.submit(add, 1, y="a"), procpool.Future[str])

    mapped = pool.map(square, [1, 2, 3])
    assert_type(mapped, procpool.MapFuture[int])
    assert_type(mapped.result(), list[int])
    assert_type(next(mapped), int)
    assert_type(pool.map(add, [1], ["a"]), procpool.MapFuture[str])
    assert_type(pool.map(three, [1], [2.0], ["c"]), procpool.MapFuture[tuple[int, float, str]])
    # Six iterables and more: accepted, as by builtins.map, without checking each.
    assert_type(pool.map(six, [1], [2], [3], [4], [5], [6]), procpool.MapFuture[int])
    assert_type(mapped.then(sum), procpool.Future[int])

    assert_type(pool.imap(square, range(10)), Iterator[int])
    assert_type(pool.imap_unordered(square, range(10), chunksize=4), Iterator[int])

    assert_type(fut.then(str), procpool.Future[str])
    # A callback returning a future is flattened.
    assert_type(fut.then(to_square), procpool.Future[int])
    assert_type(fut.catch(lambda exc: "failed"), procpool.Future[int | str])

    assert_type(pool.options(timeout=1.0).submit(square, 2), procpool.Future[int])
    assert_type(pool.submit(Greet("x")), procpool.Future[str])
    assert_type(pool.stats().completed, int)

    done, _ = concurrent.futures.wait([fut])
    assert_type(done, set[concurrent.futures.Future[int]])

    # Must be rejected.
    pool.submit(square, "three")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    pool.submit(square)  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    pool.submit(square, 1, base=2)  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    pool.map(square, ["a", "b"])  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    pool.map(add, [1], [2])  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    pool.imap(square, ["a"])  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    fut.result().upper()  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]
    procpool.Pool(workers="4")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    procpool.Pool(context="thread")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


def check_executor(pool: procpool.Executor) -> None:
    """procpool.Executor: what users annotate with to take either pool."""
    assert_type(pool.submit(square, 3), procpool.Future[int])
    assert_type(pool.map(add, [1], ["a"]), procpool.MapFuture[str])
    assert_type(pool.imap(square, [1]), Iterator[int])
    assert_type(pool.options(timeout=1.0), procpool.Executor)
    assert_type(pool.stats(), procpool.PoolStats)
    assert_type(pool.workers, int)
    executor: concurrent.futures.Executor = pool
    del executor
    pool.submit(square, "3")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    pool.map(square, ["a"])  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


def check_both_pools_are_executors(pool: procpool.Pool, dask_pool: procpool.DaskPool) -> None:
    check_executor(pool)
    check_executor(dask_pool)
    check_executor(concurrent.futures.ProcessPoolExecutor())  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


def check_spawn_and_task() -> None:
    handle = procpool.spawn(square, 2)
    assert_type(handle, procpool.ProcessHandle[int])
    assert_type(handle.result(), int)
    assert_type(handle.exitcode, int | None)
    assert_type(handle.pid, int | None)
    assert_type(handle.then(str), procpool.Future[str])
    procpool.spawn(square, "2")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]

    task = Greet("world")
    assert_type(task.start(), procpool.ProcessHandle[str])
    assert_type(task.result(), str)
    assert_type(task(), str)
    _ = task.result() + 1  # type: ignore[operator]  # pyright: ignore[reportOperatorIssue, reportUnknownVariableType]


async def check_await(pool: procpool.Pool) -> None:
    assert_type(await pool.submit(square, 2), int)
    assert_type(await pool.map(square, [2]), list[int])
    loop = asyncio.get_running_loop()
    assert_type(await loop.run_in_executor(pool, square, 3), int)


def check_errors() -> None:
    error = procpool.WorkerLostError("x", exitcode=-9)
    assert_type(error.exitcode, int | None)
    assert isinstance(error, concurrent.futures.process.BrokenProcessPool)
    assert_type(procpool.TaskTimeoutError("late").timeout, float | None)


def check_dask_pool(pool: procpool.DaskPool) -> None:
    executor: concurrent.futures.Executor = pool  # a DaskPool is an Executor
    del executor
    assert_type(pool.submit(square, 2), procpool.Future[int])
    assert_type(pool.map(add, [1], ["a"], chunksize=2, timeout=1.0), procpool.MapFuture[str])
    assert_type(pool.map(three, [1], [2.0], ["c"]), procpool.MapFuture[tuple[int, float, str]])
    assert_type(pool.imap(square, iter([1]), buffersize=8), Iterator[int])
    assert_type(pool.imap_unordered(square, [1], chunksize=2), Iterator[int])
    assert_type(pool.options(timeout=math.inf, retries=2), procpool.DaskPool)
    assert_type(pool.options(timeout=1.0).submit(square, 3), procpool.Future[int])
    assert_type(pool.stats(), procpool.PoolStats)
    assert_type(pool.workers, int)
    pool.submit(square, "x")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    pool.map(add, [1], [2])  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    procpool.DaskPool(task_timeout="5")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


def check_ray_pool(pool: procpool.RayPool) -> None:
    executor: concurrent.futures.Executor = pool  # a RayPool is an Executor
    del executor
    assert_type(procpool.RayPool(), procpool.RayPool)
    assert_type(procpool.RayPool("auto", task_timeout=5.0, retries=2), procpool.RayPool)
    assert_type(pool.submit(square, 2), procpool.Future[int])
    assert_type(pool.submit(add, 1, y="a").then(len), procpool.Future[int])
    assert_type(pool.map(add, [1], ["a"], chunksize=2, timeout=1.0), procpool.MapFuture[str])
    assert_type(pool.map(three, [1], [2.0], ["c"]), procpool.MapFuture[tuple[int, float, str]])
    assert_type(pool.imap(square, iter([1]), buffersize=8), Iterator[int])
    assert_type(pool.imap_unordered(square, [1], chunksize=2), Iterator[int])
    assert_type(pool.options(timeout=math.inf, grace=1.0, retries=2), procpool.RayPool)
    assert_type(pool.options(timeout=1.0).submit(square, 3), procpool.Future[int])
    assert_type(pool.stats(), procpool.PoolStats)
    assert_type(pool.workers, int)
    pool.submit(square, "x")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    pool.submit(square, 1, 2)  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    pool.map(add, [1], [2])  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    pool.imap(add, [1])  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    procpool.RayPool(task_timeout="5")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    procpool.RayPool(address=6379)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    procpool.RayPool(workers=2)  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    # Placement and elastic pools are Pool's: the engines have their own means.
    procpool.RayPool(worker_env={"A": "1"})  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    procpool.DaskPool(idle_timeout=30)  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    procpool.DaskPool(cpu_affinity="spread")  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]


async def check_ray_await(pool: procpool.RayPool) -> None:
    assert_type(await pool.submit(square, 2), int)
    assert_type(await pool.map(square, [2]), list[int])
    loop = asyncio.get_running_loop()
    assert_type(await loop.run_in_executor(pool, square, 3), int)


def check_limits(pool: procpool.Pool, dask_pool: procpool.DaskPool) -> None:
    """Issue 17: memory recycling, grace periods, the cause of a loss."""
    assert_type(procpool.Pool(2, max_memory_per_worker="2 GiB", task_grace=2.0), procpool.Pool)
    assert_type(procpool.Pool(max_memory_per_worker=500_000_000), procpool.Pool)
    assert_type(pool.options(timeout=5, grace=2), procpool.Pool)
    assert_type(pool.options(max_memory_per_worker="1 GiB").submit(square, 2), procpool.Future[int])
    assert_type(dask_pool.options(timeout=5, grace=math.inf), procpool.DaskPool)
    assert_type(procpool.DaskPool(task_grace=1.0), procpool.DaskPool)
    assert_type(pool.stats().recycled, int)
    procpool.Pool(max_memory_per_worker=[1])  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    procpool.Pool(task_grace="2")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    pool.options(grace="2")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    pool.options(max_memory_per_worker=2.5)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    lost = procpool.WorkerLostError("gone", cause="oom")
    assert_type(lost.cause, Literal["oom", "signal", "exit", "timeout", "cancel", "unknown"])
    procpool.WorkerLostError("gone", cause="tired")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    assert_type(lost.stack, str | None)
    assert_type(procpool.TaskTimeoutError("late", killed=False).killed, bool)


def check_policy(pool: procpool.Pool) -> None:
    """Issues 25 and 26: retries by exception type, backoff, priority, elastic pools."""
    assert_type(pool.options(retries=3, retry_on=ConnectionError, backoff=0.5), procpool.Pool)
    assert_type(pool.options(retries=3, retry_on=(ConnectionError, TimeoutError)), procpool.Pool)
    assert_type(pool.options(priority=-2).submit(square, 2), procpool.Future[int])
    assert_type(procpool.Pool(4, min_workers=1, idle_timeout=30.0), procpool.Pool)
    assert_type(procpool.Pool(retries=2, retry_on=OSError, backoff=1), procpool.Pool)
    assert_type(pool.stats().idle_exits, int)
    pool.options(retry_on="OSError")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    pool.options(retry_on=(ConnectionError, int))  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    pool.options(retry_on=[ConnectionError])  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    pool.options(priority="high")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    procpool.Pool(idle_timeout="30")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


def check_remote_policy(dask_pool: procpool.DaskPool, ray_pool: procpool.RayPool) -> None:
    """Issue 25.2 on the cluster pools: retry_on= and backoff= as on Pool."""
    assert_type(
        procpool.DaskPool(retries=2, retry_on=ConnectionError, backoff=0.5), procpool.DaskPool
    )
    assert_type(
        procpool.RayPool(retries=2, retry_on=(ConnectionError, OSError), backoff=1),
        procpool.RayPool,
    )
    assert_type(dask_pool.options(retry_on=OSError, backoff=0.1), procpool.DaskPool)
    assert_type(ray_pool.options(retry_on=OSError, backoff=0.1), procpool.RayPool)
    procpool.DaskPool(retry_on="OSError")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    procpool.RayPool(retry_on=[ConnectionError])  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    procpool.RayPool(backoff="1")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


def check_return_exceptions(pool: procpool.Pool, dask_pool: procpool.DaskPool) -> None:
    """Issue 25: per-item outcomes, typed R | BaseException only with the flag."""
    assert_type(pool.map(square, [1]), procpool.MapFuture[int])
    assert_type(
        pool.map(square, [1], return_exceptions=True), procpool.MapFuture[int | BaseException]
    )
    assert_type(
        pool.map(add, [1], ["2"], return_exceptions=True).result(), list[str | BaseException]
    )
    assert_type(pool.map(square, [1], return_exceptions=False), procpool.MapFuture[int])
    assert_type(pool.imap(square, [1], return_exceptions=True), Iterator[int | BaseException])
    assert_type(pool.imap(square, [1]), Iterator[int])
    assert_type(
        pool.imap_unordered(square, [1], return_exceptions=True), Iterator[int | BaseException]
    )
    assert_type(
        dask_pool.map(square, [1], return_exceptions=True), procpool.MapFuture[int | BaseException]
    )
    for item in pool.map(square, [1, 2], return_exceptions=True):
        if isinstance(item, BaseException):
            assert_type(item, BaseException)
        else:
            assert_type(item, int)
    pool.map(square, ["x"], return_exceptions=True)  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue, reportArgumentType]
    pool.map(square, [1], return_exceptions=1)  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue, reportArgumentType]


def check_events() -> None:
    """Issue 25: the on_event hook is typed by the event union."""

    def hook(event: procpool.PoolEvent) -> None:
        if isinstance(event, procpool.TaskFinished):
            assert_type(
                event.outcome, Literal["completed", "failed", "timed_out", "lost", "cancelled"]
            )
            assert_type(event.run_seconds, float)
        elif isinstance(event, procpool.WorkerExited):
            assert_type(event.exitcode, int | None)

    def wrong(event: int) -> None: ...

    assert_type(procpool.Pool(2, on_event=hook), procpool.Pool)
    assert_type(procpool.Pool(2, on_event=print), procpool.Pool)
    assert_type(procpool.DaskPool(on_event=hook), procpool.DaskPool)
    assert_type(procpool.RayPool(on_event=hook), procpool.RayPool)
    procpool.Pool(2, on_event=wrong)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    procpool.DaskPool(on_event=wrong)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    procpool.RayPool(on_event=wrong)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


class Model:
    def predict(self, x: float) -> float:
        return x


class Db:
    def query(self, q: str) -> list[str]:
        return [q]


def load_model() -> Model:
    return Model()


def predict(state: procpool.WorkerState[Model], x: float) -> float:
    return state.get().predict(x)


def check_workers_and_state(pool: procpool.Pool) -> None:
    """Issue 26: who runs a task, typed per-worker state, placement."""
    me = procpool.current_worker()
    assert_type(me, procpool.WorkerInfo | None)
    if me is not None:
        assert_type(me.slot, int)
        assert_type(me.start_method, str)
    model = procpool.WorkerState(load_model)
    assert_type(model, procpool.WorkerState[Model])
    assert_type(model.get(), Model)
    assert_type(pool.submit(predict, model, 1.0), procpool.Future[float])
    assert_type(pool.map(predict, [model], [1.0]), procpool.MapFuture[float])
    db = procpool.WorkerState(Db)
    pool.submit(predict, db, 1.0)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    procpool.WorkerState(42)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    assert_type(
        procpool.Pool(
            2,
            worker_env=lambda slot: {"CUDA_VISIBLE_DEVICES": str(slot)},
            cpu_affinity="spread",
            threads_per_worker=None,
        ),
        procpool.Pool,
    )
    assert_type(
        procpool.Pool(cpu_affinity=[[0, 1], [2, 3]], threads_per_worker="auto"), procpool.Pool
    )
    procpool.Pool(worker_env={"A": 1})  # type: ignore[dict-item]  # pyright: ignore[reportArgumentType]
    procpool.Pool(cpu_affinity="everywhere")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    procpool.Pool(threads_per_worker="many")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]

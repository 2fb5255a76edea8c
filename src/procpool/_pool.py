"""The public ``Pool``: argument checks, lifecycle, submit/map/imap, the with-block.

Scheduling lives in :mod:`procpool._dispatcher`; this module turns calls into
jobs and hands them over. See the dispatcher's docstring for the data flow.
"""

from __future__ import annotations

import importlib
import itertools
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from multiprocessing.context import BaseContext
from typing import Any, Literal, TypeVar, cast

from typing_extensions import ParamSpec

from ._child import messages as m
from ._child.codec import Unpicklable, describe_callable, encode_call
from ._context import StartMethod, resolve_context
from ._dispatcher import Dispatcher
from ._events import EventHook, TraceTask
from ._executor import Executor
from ._future import Future
from ._imap import Launch
from ._jobs import MapJob, SingleJob, Timing, limit_fields, new_call_id, not_picklable
from ._mapfuture import MapFuture
from ._options import (
    Options,
    RetryOn,
    check_count,
    check_timeout,
    check_workers,
    finite,
    memory_bytes,
    retry_types,
)
from ._placement import CpuAffinity, Placer, WorkerEnv
from ._progress import Progress, make_reporter
from ._stats import PoolStats
from ._workers import WorkerSpec

__all__ = ["Pool", "PoolStats"]

P = ParamSpec("P")
R = TypeVar("R")
T1 = TypeVar("T1")


_pool_numbers = itertools.count(1)
_live: weakref.WeakSet[Dispatcher] = weakref.WeakSet()
_exit_hook_installed = False
_exit_lock = threading.Lock()


def _usable_cpus() -> int:
    """CPUs this process may run on (affinity and cgroup-aware where Python is)."""
    counter = getattr(os, "process_cpu_count", None)
    if counter is not None:
        count: int | None = counter()
        if count:
            return count
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _forget_pools_in_child() -> None:
    # A process forked while pools run (a fork worker, or a multiprocessing.Process
    # of the user's) inherits copies of them, whose threads did not survive the
    # fork: at its exit, the hook below would close and wait for them forever.
    _live.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools_in_child)


def _python_exit() -> None:
    # Runs before the interpreter joins non-daemon threads: like
    # ProcessPoolExecutor, an open pool finishes its queued work, then stops.
    for dispatcher in list(_live):
        dispatcher.close()
    for dispatcher in list(_live):
        dispatcher.wait_for_end(None)


def _install_exit_hook() -> None:
    global _exit_hook_installed
    with _exit_lock:
        if _exit_hook_installed:
            return
        register = getattr(threading, "_register_atexit", None)
        if register is not None:
            register(_python_exit)
        else:  # pragma: no cover - every supported CPython has it
            import atexit

            atexit.register(_python_exit)
        _exit_hook_installed = True


class _Handle:
    """Shared by a pool and its ``options()`` views; closes the pool when all are gone."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        weakref.finalize(self, dispatcher.close)


class Pool(Executor):
    """A pool of worker processes; a typed :class:`concurrent.futures.Executor`.

    Args:
        workers: how many processes; None means the CPUs this process may use.
        context: start method ("fork", "spawn", "forkserver"), a multiprocessing
            context, or None: forkserver on Linux, spawn elsewhere.
        initializer: called as ``initializer(*initargs)`` in each worker when it
            starts; if it raises, the pool is broken and its futures fail.
        initargs: arguments for ``initializer``.
        max_tasks_per_worker: replace a worker after this many calls (a map chunk
            counts as one), to bound leaks in task code.
        task_timeout: default time limit per task (per item of a map), in seconds.
            On expiry the worker is killed and replaced and the future fails with
            :class:`TaskTimeoutError`; the other tasks go on.
        task_grace: default grace period, in seconds: at its time limit a task
            is first interrupted (:class:`TimeLimitInterrupt` raised inside it, so
            its ``finally`` blocks and ``with`` blocks run), and killed only if it
            has not stopped ``task_grace`` seconds later. None: killed at the limit.
        max_memory_per_worker: bytes (or ``"2 GiB"``, ``"500 MB"``...): after a
            task, a worker whose resident memory is above this delivers the
            task's result and is replaced before it takes another task. Bounds
            workers that grow (leaks in C extensions, caches, fragmentation).
        retries: run a task again, up to this many times, when its worker dies
            or it raises one of ``retry_on`` (only for tasks that are safe to
            run twice). Default 0.
        retry_timeouts: also retry tasks that ran past their time limit.
        retry_on: exception types (one, or a tuple) after which a task is run
            again, up to ``retries`` times. Default: none (only worker deaths).
        backoff: seconds a retry waits in the queue before it runs again; each
            next retry of the same task waits twice as long (at most 60 s),
            jittered by a factor from 0.5 to 1.5. Default 0: at once.
        min_workers: with ``idle_timeout``, the pool shrinks to this many
            workers when idle (default 0).
        idle_timeout: seconds after which a worker that has had nothing to do
            exits (down to ``min_workers``); a new one starts when work
            arrives, in the lowest free slot. None (default): workers stay.
        cloudpickle: send functions with cloudpickle, so lambdas and closures work
            (arguments and results stay on pickle). Needs ``procpool[cloudpickle]``
            and the same Python version in the workers.
        forward_logs: send log records emitted in workers to the parent's logging
            handlers (the record's ``process`` is the worker's pid).
        on_event: called with each :data:`~procpool.PoolEvent` (a task queued,
            started, finished; a worker started, exited), on the pool's
            callback thread, in order; an exception it raises is logged. See
            docs/production.md.
        worker_env: environment variables set in each worker before it runs
            anything else (its initializer, its first task's module): a
            mapping, or a function of the slot index (``lambda slot:
            {"CUDA_VISIBLE_DEVICES": str(slot)}``).
        cpu_affinity: CPUs each worker may run on (Linux): ``"spread"`` (one
            CPU each, in turn), a sequence of CPU sets (one per slot, in
            turn), or a function of the slot index returning a set.
        threads_per_worker: the thread budget of BLAS and OpenMP libraries in
            each worker (``OMP_NUM_THREADS`` and the like, unless set already),
            so that workers do not oversubscribe the CPUs. ``"auto"``
            (default): the CPUs this process may use divided among the workers;
            None: leave them alone.

    Raises:
        ValueError: ``workers < 1``, an unknown start method, a negative timeout,
            a memory size that is not one.

    Leaving ``with Pool() as pool:`` normally closes the pool and waits for every
    task; leaving it by an exception (KeyboardInterrupt too) terminates it::

        with procpool.Pool(4) as pool:
            squares = pool.map(pow, range(10), [2] * 10).result()
            total = pool.submit(sum, squares).then(str).result()
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        context: StartMethod | BaseContext | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_worker: int | None = None,
        task_timeout: float | None = None,
        task_grace: float | None = None,
        max_memory_per_worker: int | str | None = None,
        retries: int = 0,
        retry_timeouts: bool = False,
        retry_on: RetryOn = (),
        backoff: float = 0.0,
        min_workers: int = 0,
        idle_timeout: float | None = None,
        cloudpickle: bool = False,
        forward_logs: bool = False,
        on_event: EventHook | None = None,
        worker_env: WorkerEnv | None = None,
        cpu_affinity: CpuAffinity | None = None,
        threads_per_worker: int | Literal["auto"] | None = "auto",
    ) -> None:
        check_workers(workers)
        check_count("max_tasks_per_worker", max_tasks_per_worker, 1)
        check_count("retries", retries, 0)
        check_count("min_workers", min_workers, 0)
        check_timeout("task_timeout", task_timeout)
        check_timeout("task_grace", task_grace)
        check_timeout("backoff", backoff)
        check_timeout("idle_timeout", idle_timeout)
        retry_on_types = retry_types(retry_on) or ()
        memory = memory_bytes("max_memory_per_worker", max_memory_per_worker)
        if on_event is not None and not callable(on_event):
            raise TypeError(f"on_event must be callable, not {on_event!r}")
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be callable, not {initializer!r}")
        if not isinstance(initargs, tuple):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"initargs must be a tuple, not {type(initargs).__name__}")
        ctx = resolve_context(context)
        if cloudpickle:
            try:
                importlib.import_module("cloudpickle")
            except ImportError as exc:
                raise ImportError(
                    "Pool(cloudpickle=True) needs cloudpickle: pip install 'procpool[cloudpickle]'"
                ) from exc
        self._workers = workers if workers is not None else _usable_cpus()
        #: ``on_event.trace_task`` (procpool.otel.Tracing): wraps each submission.
        self._trace_task: TraceTask | None = getattr(on_event, "trace_task", None)
        if min_workers > self._workers:
            raise ValueError(
                f"min_workers={min_workers} is more than workers={self._workers}; "
                "min_workers is how far an idle pool shrinks"
            )
        self._cloud = cloudpickle
        self._options = Options(
            finite(task_timeout),
            retries,
            retry_timeouts,
            memory,
            task_grace,
            retry_on_types,
            backoff,
        )
        self._name = f"procpool.Pool-{next(_pool_numbers)}"
        _install_exit_hook()
        placer = Placer(self._workers, worker_env, cpu_affinity, threads_per_worker)
        spec = WorkerSpec(self._name, initializer, initargs, forward_logs, placer)
        dispatcher = Dispatcher(
            ctx,
            self._workers,
            spec,
            max_tasks_per_worker=max_tasks_per_worker,
            min_workers=min_workers,
            idle_timeout=finite(idle_timeout),
            on_event=on_event,
        )
        _live.add(dispatcher)
        self._handle = _Handle(dispatcher)
        self._dispatcher = self._engine = dispatcher

    def __repr__(self) -> str:
        d = self._dispatcher
        return f"<procpool.Pool {self._name} workers={self._workers} state={d.state.value}>"

    @property
    def workers(self) -> int:
        """The number of worker processes the pool keeps running."""
        return self._workers

    # -- submit -----------------------------------------------------------------------

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """Run ``fn(*args, **kwargs)`` in a worker; return its future.

        A :class:`ProcessTask` instance is a ``Callable[[], R]``: ``pool.submit(task)``
        runs ``task.run()`` in a worker. If ``fn`` or an argument cannot be pickled,
        the future fails with :class:`SerializationError` naming the culprit.

        Raises:
            PoolClosedError: after ``close()``, ``terminate()`` or ``shutdown()``.
        """
        if not callable(fn):
            raise TypeError(f"submit() needs a callable, not {fn!r}")
        dispatcher = self._dispatcher
        dispatcher.check_open()
        future: Future[R] = Future()
        opts = self._options
        flags, fields = limit_fields(opts)
        sent: Callable[..., Any] = fn
        if self._trace_task is not None:
            sent = self._trace_task(fn, future, describe_callable(fn))
        call_id = new_call_id()
        try:
            data, lease = encode_call(
                call_id,
                m.CALL | flags,
                sent,
                (args, kwargs),
                self._cloud,
                dispatcher.segments,
                fields,
            )
        except Unpicklable as exc:
            future.try_set_exception(not_picklable(exc))
            return future
        dispatcher.add(SingleJob(future, fn, data, lease=lease, opts=opts, call_id=call_id))
        return future

    # -- what the shared surface (Executor) asks of a pool ------------------------

    def _map(
        self,
        fn: Callable[..., R],
        iterables: tuple[Iterable[Any], ...],
        *,
        timeout: float | None,
        chunksize: int | None,
        progress: Progress,
    ) -> MapFuture[R]:
        dispatcher = self._dispatcher
        dispatcher.check_open()
        star = len(iterables) > 1
        first: Iterable[Any] = iterables[0]
        items: Sequence[Any]
        kind: type = type(first)
        if star:
            items = list(zip(*iterables, strict=False))
        elif kind is range or kind is tuple:
            # A range is immutable, and a slice of it is a range: chunks travel as a
            # few bytes (start, stop, step) instead of pickled ints. A tuple cannot
            # change either. Neither needs a snapshot.
            items = cast("Sequence[Any]", first)
        else:
            items = list(first)
        future: MapFuture[R] = MapFuture(len(items), timeout=timeout)
        reporter = make_reporter(progress, len(items), getattr(fn, "__name__", "map"))
        if reporter is not None:
            future.set_progress(reporter.advance)
        if not items:
            return future
        opts = self._options
        job = MapJob(
            future,
            self._traced(fn, future),
            items,
            star=star,
            chunksize=chunksize,
            opts=opts,
            cloud=self._cloud,
            segments=dispatcher.segments,
            name=self._name_if_traced(fn),
        )
        dispatcher.add(job, len(items))
        return future

    def _imap_launcher(self, fn: Callable[[Any], R]) -> Launch[R]:
        dispatcher, opts, cloud, workers = (
            self._dispatcher,
            self._options,
            self._cloud,
            self._workers,
        )
        # One group: a busy worker may get the next chunk of the same imap ahead
        # of time. One timing: the second chunk knows what the first measured.
        group, timing = object(), Timing()

        def launch(items: list[Any], base_index: int) -> MapFuture[R]:
            # Finished chunks in first: they free room in the workers for this one,
            # which can then go out from this thread (see _assist).
            dispatcher.assist.take_in()
            future: MapFuture[R] = MapFuture(len(items))
            job = MapJob(
                future,
                self._traced(fn, future),
                items,
                star=False,
                chunksize=len(items),
                opts=opts,
                cloud=cloud,
                segments=dispatcher.segments,
                base_index=base_index,
                group=group,
                timing=timing,
                name=self._name_if_traced(fn),
            )
            # Pickled here, in the consumer's thread, not on the dispatcher's.
            job.prepare(workers)
            dispatcher.add(job, len(items))
            return future

        return launch

    def _imap_release(self) -> Callable[[], None]:
        # The result pipes that launch's take_in drove go back (see _assist).
        return self._dispatcher.assist.release

    def _traced(self, fn: Callable[..., R], future: MapFuture[R]) -> Callable[..., R]:
        """``fn`` as a map sends it: wrapped by the tracing hook, if there is one."""
        if self._trace_task is None:
            return fn
        return self._trace_task(fn, future, f"map({describe_callable(fn)}, ...)")

    def _name_if_traced(self, fn: Callable[..., Any]) -> str | None:
        """A traced map sends a wrapper: its errors must still name ``fn``."""
        return describe_callable(fn) if self._trace_task is not None else None

    # -- lifecycle --------------------------------------------------------------------

    def close(self) -> None:
        """Take no new work; the work already queued still runs. Does not wait."""
        self._dispatcher.close()

    def terminate(self) -> None:
        """Stop now: kill the workers; every unfinished future is cancelled. Does not wait."""
        self._dispatcher.terminate()

    def stats(self) -> PoolStats:
        """A snapshot of the pool's counters, all read at one moment."""
        return self._dispatcher.stats.snapshot()

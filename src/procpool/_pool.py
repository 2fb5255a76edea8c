# pyright: reportPrivateUsage=false
# (The executor side of futures and jobs is package-internal, shared across modules.)
"""The public ``Pool``: argument checks, lifecycle, submit/map/imap, the with-block.

Scheduling lives in :mod:`procpool._dispatcher`; this module turns calls into
jobs and hands them over. See the dispatcher's docstring for the data flow.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import wait as _wait_futures
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from typing import Any, Generic, TypeVar, cast

from typing_extensions import ParamSpec

from ._child import messages as m
from ._context import StartMethod, resolve_context
from ._dispatcher import Dispatcher, PoolState
from ._errors import PoolClosedError, SerializationError
from ._executor import Options, TypedExecutor, check_count, check_timeout, check_workers, finite
from ._future import Future, MapFuture
from ._jobs import MapJob, SingleJob, Timing, encode_call, new_call_id
from ._progress import Progress, Reporter, make_reporter

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
        dispatcher.join()


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


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of a pool's counters, from :meth:`Pool.stats`.

    Items of a ``map`` or ``imap`` count one each. Every task or item the pool
    accepted (``submitted``) ends in exactly one of ``completed`` (a result),
    ``failed`` (an exception: its own, a lost worker, a time limit, an input or
    result that does not pickle, a pool broken by its initializer) or
    ``cancelled``; once all work has ended, the three add up to ``submitted``.
    ``timed_out`` counts the tasks and items that passed their time limit (with
    ``retry_timeouts``, a :class:`Pool` counts each attempt); ``retried`` counts
    attempts run again.
    ``busy_seconds`` has one entry per worker slot: time spent running tasks,
    summed over the workers that held the slot.
    """

    submitted: int
    completed: int
    failed: int
    cancelled: int
    timed_out: int
    retried: int
    workers_started: int
    workers_replaced: int
    busy_seconds: tuple[float, ...]


class _Handle:
    """Shared by a pool and its ``options()`` views; closes the pool when all are gone."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        weakref.finalize(self, dispatcher.close)


class Pool(TypedExecutor):
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
        retries: run a task again, up to this many times, when its worker dies
            (only for tasks that are safe to run twice). Default 0.
        retry_timeouts: also retry tasks that ran past their time limit.
        cloudpickle: send functions with cloudpickle, so lambdas and closures work
            (arguments and results stay on pickle). Needs ``procpool[cloudpickle]``
            and the same Python version in the workers.
        forward_logs: send log records emitted in workers to the parent's logging
            handlers (the record's ``process`` is the worker's pid).

    Raises:
        ValueError: ``workers < 1``, an unknown start method, a negative timeout.

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
        retries: int = 0,
        retry_timeouts: bool = False,
        cloudpickle: bool = False,
        forward_logs: bool = False,
    ) -> None:
        check_workers(workers)
        check_count("max_tasks_per_worker", max_tasks_per_worker, 1)
        check_count("retries", retries, 0)
        check_timeout("task_timeout", task_timeout)
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
        self._cloud = cloudpickle
        self._options = Options(finite(task_timeout), retries, retry_timeouts)
        self._name = f"procpool.Pool-{next(_pool_numbers)}"
        _install_exit_hook()
        dispatcher = Dispatcher(
            ctx,
            self._workers,
            initializer=initializer,
            initargs=initargs,
            max_tasks_per_worker=max_tasks_per_worker,
            forward_logs=forward_logs,
            name=self._name,
        )
        _live.add(dispatcher)
        self._handle = _Handle(dispatcher)
        self._dispatcher = dispatcher

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
        try:
            data, lease = encode_call(
                new_call_id(), m.CALL, fn, (args, kwargs), self._cloud, dispatcher.segments
            )
        except SerializationError as exc:
            future._finish(exception=exc)
            return future
        opts = self._options
        job = SingleJob(
            future,
            fn,
            data,
            lease=lease,
            timeout=opts.timeout,
            retries=opts.retries,
            retry_timeouts=opts.retry_timeouts,
        )
        dispatcher.add(job)
        return future

    # -- what the shared surface (TypedExecutor) asks of a pool ------------------------

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
        items: list[Any] = list(zip(*iterables, strict=False)) if star else list(first)
        future: MapFuture[R] = MapFuture(len(items), timeout=timeout)
        reporter = make_reporter(progress, len(items), getattr(fn, "__name__", "map"))
        if reporter is not None:
            future._on_progress = reporter.advance
        if not items:
            return future
        opts = self._options
        job = MapJob(
            future,
            fn,
            items,
            star=star,
            chunksize=chunksize,
            timeout=opts.timeout,
            retries=opts.retries,
            retry_timeouts=opts.retry_timeouts,
            cloud=self._cloud,
            segments=dispatcher.segments,
        )
        dispatcher.add(job, len(items))
        return future

    def _start_imap(
        self,
        fn: Callable[[T1], R],
        iterable: Iterable[T1],
        chunksize: int,
        buffersize: int | None,
        progress: Progress,
        *,
        ordered: bool,
    ) -> Iterator[R]:
        self._dispatcher.check_open()
        if buffersize is None:
            buffersize = 4 * self._workers * chunksize
        reporter = make_reporter(progress, None, getattr(fn, "__name__", "imap"))
        # A buffer smaller than a chunk bounds the chunk, not the other way round.
        feed = _IMapFeed(
            self, fn, iter(iterable), min(chunksize, buffersize), buffersize, ordered, reporter
        )
        return feed.stream()

    # -- lifecycle --------------------------------------------------------------------

    def close(self) -> None:
        """Take no new work; the work already queued still runs. Does not wait."""
        self._dispatcher.close()

    def terminate(self) -> None:
        """Stop now: kill the workers; every unfinished future is cancelled. Does not wait."""
        self._dispatcher.terminate()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the workers have exited, after :meth:`close` or :meth:`terminate`.

        Then every task has ended and the callbacks of its future have run. A
        callback may call ``join()`` (or ``shutdown(wait=True)``) on its own pool:
        it waits for everything but itself.

        Args:
            timeout: seconds to wait at most; None or ``math.inf``: no limit.

        Returns:
            True if the pool has finished, False if ``timeout`` passed first.

        Raises:
            ValueError: if the pool is still running (call close() first).
        """
        check_timeout("timeout", timeout)
        if self._dispatcher.state is PoolState.RUNNING:
            raise ValueError("join() needs close() or terminate() first: the pool is running")
        return self._dispatcher.join(finite(timeout))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """As :meth:`concurrent.futures.Executor.shutdown`: close, optionally wait.

        Args:
            wait: wait until every queued task has finished and the workers exited.
            cancel_futures: first cancel the work that no worker has started. A
                ``map`` is one future: once a worker has started any of its items,
                all of it runs (``cancel()`` its future to stop it).
        """
        dispatcher = self._dispatcher
        dispatcher.close()
        if cancel_futures:
            dispatcher.cancel_queued()
        if wait:
            dispatcher.join()

    def stats(self) -> PoolStats:
        """A snapshot of the pool's counters, all read at one moment."""
        s = self._dispatcher.snapshot()
        return PoolStats(
            submitted=s.submitted,
            completed=s.completed,
            failed=s.failed,
            cancelled=s.cancelled,
            timed_out=s.timed_out,
            retried=s.retried,
            workers_started=s.workers_started,
            workers_replaced=s.workers_replaced,
            busy_seconds=tuple(s.busy),
        )


class _IMapStream(itertools.chain[R]):
    """What ``Pool.imap`` returns: the items of finished chunks, chunk after chunk.

    A :class:`itertools.chain` over the results of each chunk that :class:`_IMapFeed`
    hands out, so the items of a chunk without failures reach the consumer through
    C code alone (about 35 ns per item, against 60-90 ns for a ``__next__`` written
    in Python). Each chunk's list is popped from its end, reversed first, so that
    an item yielded is no longer held here (iteration keeps nothing, bpo-14406).
    A chunk with failures, or with a progress bar to advance, is an :class:`_Items`
    iterator instead: it raises at a failed item, and since ``chain`` keeps its
    current iterator after an exception, ``next()`` goes on after it.
    """

    __slots__ = ("_feed",)
    _feed: _IMapFeed[R]

    def close(self) -> None:
        """Stop: cancel the chunks no worker has started; read no more input."""
        self._feed.close()


class _Items(Iterator[R]):
    """The items of one chunk, one by one: raises at failed items, advances progress."""

    __slots__ = ("_errors", "_pos", "_reporter", "_values")

    def __init__(
        self, values: list[R], errors: dict[int, BaseException], reporter: Reporter | None
    ) -> None:
        self._values = values
        self._errors = errors
        self._reporter = reporter
        self._pos = 0

    def __iter__(self) -> _Items[R]:
        return self

    def __next__(self) -> R:
        pos = self._pos
        if pos >= len(self._values):
            raise StopIteration
        self._pos = pos + 1
        if self._reporter is not None:
            self._reporter.advance(1)
        if pos in self._errors:
            raise self._errors.pop(pos)
        value = self._values[pos]
        self._values[pos] = cast("R", None)  # yielded: not ours to keep
        return value

    def stop(self) -> None:
        self._values = []


class _Popper(Generic[R]):
    """The items of one chunk without failures, yielded and released by C code."""

    __slots__ = ("_tickets", "_values", "items")

    def __init__(self, values: list[R]) -> None:
        values.reverse()
        self._values = values
        # One empty argument tuple per item: starmap calls values.pop() for each.
        self._tickets = itertools.repeat((), len(values))
        self.items: Iterator[R] = itertools.starmap(values.pop, self._tickets)

    def stop(self) -> None:
        # Use up the tickets: the starmap ends before it pops the emptied list.
        deque(self._tickets, maxlen=0)
        self._values.clear()


class _IMapFeed(Generic[R]):
    """Reads the input ahead (at most ``buffersize`` items), submits it in chunks,
    and hands the chunks' results to an :class:`_IMapStream` in order (or as they
    finish)."""

    def __init__(
        self,
        pool: Pool,
        fn: Callable[[Any], R],
        source: Iterator[Any],
        chunksize: int,
        buffersize: int,
        ordered: bool,
        reporter: Reporter | None,
    ) -> None:
        self._pool = pool
        self._fn = fn
        self._source: Iterator[Any] | None = source
        self._chunksize = chunksize
        self._buffersize = buffersize
        self._ordered = ordered
        self._reporter = reporter
        self._ahead = 0  # items read from the source and not yet used up
        self._read = 0
        self._chunks: deque[MapFuture[R]] = deque()
        #: The results being yielded, stopped by close() so that iteration stops.
        self._current: _Popper[R] | _Items[R] | None = None
        self._group = object()
        self._timing = Timing()
        self._source_error: BaseException | None = None

    def stream(self) -> _IMapStream[R]:
        # The first chunks go out now, as Executor.map and DaskPool.imap send theirs:
        # the workers start while the caller is still setting up its loop.
        self._top_up()
        stream = cast("_IMapStream[R]", _IMapStream.from_iterable(self._results()))
        stream._feed = self
        return stream

    def _top_up(self) -> None:
        source = self._source
        while source is not None and self._ahead + self._chunksize <= self._buffersize:
            try:
                chunk = list(itertools.islice(source, self._chunksize))
            except BaseException as exc:
                # Raised when the consumer gets there, after the items read before it,
                # as a serial loop would.
                self._source_error = exc
                self._source = None
                return
            if not chunk:
                self._source = source = None
                break
            future: MapFuture[R] = MapFuture(len(chunk))
            opts = self._pool._options
            job = MapJob(
                future,
                self._fn,
                chunk,
                star=False,
                chunksize=len(chunk),
                timeout=opts.timeout,
                retries=opts.retries,
                retry_timeouts=opts.retry_timeouts,
                cloud=self._pool._cloud,
                segments=self._pool._dispatcher.segments,
                base_index=self._read,
                group=self._group,
                timing=self._timing,
            )
            job.prepare(self._pool._workers)
            try:
                self._pool._dispatcher.add(job, len(chunk))
            except PoolClosedError as exc:
                # Closed meanwhile: what went out before is still yielded, then this.
                self._source_error = exc
                self._source = None
                return
            self._read += len(chunk)
            self._ahead += len(chunk)
            self._chunks.append(future)

    def _results(self) -> Generator[Iterator[R], None, None]:
        """The chain's source: one iterable of results per chunk.

        Resumed when the consumer has used up the previous chunk: only then do its
        items stop counting as read ahead, so the input is read further (before
        waiting on the next chunk, which keeps the workers fed).
        """
        try:
            used = 0
            while True:
                self._ahead -= used
                self._top_up()
                if not self._chunks:
                    source_error, self._source_error = self._source_error, None
                    if source_error is not None:
                        raise source_error
                    return
                if self._ordered:
                    chunk = self._chunks.popleft()
                else:
                    _wait_futures(self._chunks, return_when="FIRST_COMPLETED")
                    chunk = next(c for c in self._chunks if c.done())
                    self._chunks.remove(chunk)
                # A whole chunk at once: its items are then yielded without a lock each.
                values, errors = chunk._take_all()
                used = len(values)
                if not errors and self._reporter is None:
                    popper = self._current = _Popper(values)
                    del values
                    yield popper.items
                else:
                    items = self._current = _Items(values, errors, self._reporter)
                    del values
                    yield items
        finally:
            # Exhausted, or the stream was dropped (a break out of the loop).
            with contextlib.suppress(Exception):
                self.close()

    def close(self) -> None:
        """Stop: cancel the chunks no worker has started; read no more input."""
        self._source = None
        for future in self._chunks:
            if not future.running():
                future.cancel()
        self._chunks.clear()
        if self._current is not None:
            self._current.stop()
        if self._reporter is not None:
            self._reporter.close()


# Public names say procpool.X in reprs, tracebacks, pickles and docs.
for _public in (Pool, PoolStats):
    _public.__module__ = "procpool"

"""The typed surface that :class:`~procpool.Pool` and :class:`~procpool.DaskPool` share.

``options()``, the overloads of ``map``, ``imap``/``imap_unordered`` (and the one
imap engine behind them, :mod:`._imap`), ``shutdown``/``join`` and the with-block
are written once here (the argument checks in :mod:`._options`, the lifecycle in
:mod:`._lifecycle`), so the pools cannot drift apart. Each pool supplies what differs, in the abstract methods at
the end of :class:`Executor`: how to start a map and one imap chunk, how to
stop, and how to wait.

:class:`Executor` is public as ``procpool.Executor``, so that users annotate with
it (``def run(pool: procpool.Executor)`` takes a ``Pool`` or a ``DaskPool``) and
type checkers name it in their messages.
"""

from __future__ import annotations

import abc
import concurrent.futures
import copy
import operator
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

from typing_extensions import ParamSpec, Self

from ._callbacks import before_blocking
from ._future import Future
from ._imap import IMapFeed, Launch
from ._lifecycle import Engine, Lifecycle
from ._mapfuture import MapFuture
from ._options import (
    Options,
    RetryOn,
    check_count,
    check_priority,
    check_timeout,
    finite,
    memory_bytes,
    retry_types,
)
from ._progress import Progress, make_reporter
from ._stats import PoolStats

P = ParamSpec("P")
R = TypeVar("R")
T1 = TypeVar("T1")
T2 = TypeVar("T2")
T3 = TypeVar("T3")
T4 = TypeVar("T4")
T5 = TypeVar("T5")


class Executor(concurrent.futures.Executor, abc.ABC):
    """What every procpool pool is: :class:`Pool`, :class:`DaskPool`. Annotate with it.

    A :class:`concurrent.futures.Executor` whose methods are typed: ``submit``
    returns a :class:`~procpool.Future`, ``map`` a :class:`~procpool.MapFuture`,
    and both check the function's arguments. Code that takes any pool names this
    class, and runs unchanged on local processes or on a Dask cluster::

        def total(pool: procpool.Executor, xs: list[int]) -> int:
            return sum(pool.map(square, xs))

    Not meant to be instantiated or subclassed by programs; a new backend
    subclasses it (see "Writing a backend" in the API reference).
    """

    _options: Options
    #: What runs the work; set by each pool's constructor.
    _engine: Engine

    @property
    @abc.abstractmethod
    def workers(self) -> int:
        """How many tasks the pool runs at once."""

    @abc.abstractmethod
    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """Run ``fn(*args, **kwargs)`` in a worker; return its future.

        mypy and pyright check the arguments against ``fn``'s signature.

        Raises:
            PoolClosedError: after ``close()``, ``terminate()`` or ``shutdown()``.
        """

    @abc.abstractmethod
    def stats(self) -> PoolStats:
        """Return counts of the work so far (a frozen snapshot)."""

    # -- per-submission options -------------------------------------------------------

    def options(
        self,
        *,
        timeout: float | None = None,
        retries: int | None = None,
        retry_timeouts: bool | None = None,
        max_memory_per_worker: int | str | None = None,
        grace: float | None = None,
        retry_on: RetryOn | None = None,
        backoff: float | None = None,
        priority: int | None = None,
    ) -> Self:
        """A view of this pool whose submissions carry their own limits.

        The view shares the workers and the lifecycle of this pool (closing either
        closes both); only the defaults for new work differ. ``None`` keeps the
        pool's setting::

            fut = pool.options(timeout=2.0).submit(slow_call, 10)
            results = pool.options(retries=3).map(flaky, items)

        Args:
            timeout: time limit per task (per item of a map), in seconds;
                ``math.inf`` lifts the pool's ``task_timeout``.
            retries: how many times to run a task again when its worker dies,
                or when it raises one of ``retry_on``.
            retry_timeouts: also run again tasks that ran out of time.
            retry_on: exception types (one, or a tuple) after which a task runs
                again, up to ``retries`` times; its final error, if it keeps
                failing, carries a note saying how many attempts were made.
            backoff: seconds before the first retry; each next retry waits
                twice as long (at most 60 s), times a random factor from 0.5 to
                1.5. The wait is spent in the pool's queue, holding no worker.
            priority: queued work starts highest priority first, in the order
                it came within one priority (default 0; negative is allowed).
                The items of one ``map`` keep their order. ``DaskPool`` passes
                it to Dask's scheduler; ``RayPool`` refuses any but 0 (Ray has
                no task priorities).
            max_memory_per_worker: after each of these tasks, a worker whose
                resident memory is above this many bytes (or ``"2 GiB"``...)
                delivers the result and is replaced before it takes another
                task. ``Pool`` only.
            grace: with a time limit, seconds between interrupting a task at its
                limit (:class:`~procpool.TimeLimitInterrupt` is raised inside it,
                so its ``finally`` blocks run) and killing it if it has not
                stopped. Needs a time limit: ``timeout`` in the same call, or
                the pool's ``task_timeout``.

        Raises:
            TypeError: a number of seconds that is not a number.
            ValueError: a negative number, a memory size that is not one,
                ``grace`` without a time limit, or a setting this pool cannot
                honour (a memory limit on ``DaskPool``, a priority on ``RayPool``).
        """
        check_timeout("timeout", timeout)
        check_count("retries", retries, 0)
        check_timeout("grace", grace)
        check_timeout("backoff", backoff)
        check_priority(priority)
        retry_on_types = retry_types(retry_on)
        memory = memory_bytes("max_memory_per_worker", max_memory_per_worker)
        if memory is not None:
            self._check_memory_limit()
        if priority:
            self._check_priority(priority)
        current = self._options
        if grace is not None and timeout is None and current.timeout is None:
            raise ValueError(
                f"grace={grace!r} needs a time limit: pass timeout= in the same options() "
                "call, or give the pool a task_timeout"
            )
        view = copy.copy(self)
        view._options = Options(
            finite(timeout) if timeout is not None else current.timeout,
            retries if retries is not None else current.retries,
            retry_timeouts if retry_timeouts is not None else current.retry_timeouts,
            memory if memory is not None else current.max_memory,
            grace if grace is not None else current.grace,
            retry_on_types if retry_on_types is not None else current.retry_on,
            backoff if backoff is not None else current.backoff,
            priority if priority is not None else current.priority,
        )
        return view

    def _check_memory_limit(self) -> None:
        """Raise if this pool cannot replace a worker for its memory (DaskPool)."""

    def _check_priority(self, priority: int) -> None:
        """Raise if this pool cannot order its work by ``priority`` (RayPool)."""

    # -- map --------------------------------------------------------------------------

    # concurrent.futures.Executor.map takes any number of iterables and `fn=` by
    # keyword; these overloads check the types of 1-5 iterables against fn's
    # parameters instead, as typeshed's builtins.map does, so a wrong argument type is
    # an error. mypy calls that an incompatible override.
    @overload  # type: ignore[override]
    def map(
        self,
        fn: Callable[[T1], R],
        iterable: Iterable[T1],
        /,
        *,
        timeout: float | None = None,
        chunksize: int | None = None,
        progress: Progress = False,
        return_exceptions: Literal[False] = False,
    ) -> MapFuture[R]: ...
    @overload
    def map(
        self,
        fn: Callable[[T1], R],
        iterable: Iterable[T1],
        /,
        *,
        timeout: float | None = None,
        chunksize: int | None = None,
        progress: Progress = False,
        return_exceptions: Literal[True],
    ) -> MapFuture[R | BaseException]: ...
    @overload
    def map(
        self,
        fn: Callable[[T1, T2], R],
        iterable: Iterable[T1],
        iter2: Iterable[T2],
        /,
        *,
        timeout: float | None = None,
        chunksize: int | None = None,
        progress: Progress = False,
        return_exceptions: Literal[False] = False,
    ) -> MapFuture[R]: ...
    @overload
    def map(
        self,
        fn: Callable[[T1, T2], R],
        iterable: Iterable[T1],
        iter2: Iterable[T2],
        /,
        *,
        timeout: float | None = None,
        chunksize: int | None = None,
        progress: Progress = False,
        return_exceptions: Literal[True],
    ) -> MapFuture[R | BaseException]: ...
    @overload
    def map(
        self,
        fn: Callable[[T1, T2, T3], R],
        iterable: Iterable[T1],
        iter2: Iterable[T2],
        iter3: Iterable[T3],
        /,
        *,
        timeout: float | None = None,
        chunksize: int | None = None,
        progress: Progress = False,
        return_exceptions: Literal[False] = False,
    ) -> MapFuture[R]: ...
    @overload
    def map(
        self,
        fn: Callable[[T1, T2, T3], R],
        iterable: Iterable[T1],
        iter2: Iterable[T2],
        iter3: Iterable[T3],
        /,
        *,
        timeout: float | None = None,
        chunksize: int | None = None,
        progress: Progress = False,
        return_exceptions: Literal[True],
    ) -> MapFuture[R | BaseException]: ...
    @overload
    def map(
        self,
        fn: Callable[[T1, T2, T3, T4], R],
        iterable: Iterable[T1],
        iter2: Iterable[T2],
        iter3: Iterable[T3],
        iter4: Iterable[T4],
        /,
        *,
        timeout: float | None = None,
        chunksize: int | None = None,
        progress: Progress = False,
        return_exceptions: Literal[False] = False,
    ) -> MapFuture[R]: ...
    @overload
    def map(
        self,
        fn: Callable[[T1, T2, T3, T4], R],
        iterable: Iterable[T1],
        iter2: Iterable[T2],
        iter3: Iterable[T3],
        iter4: Iterable[T4],
        /,
        *,
        timeout: float | None = None,
        chunksize: int | None = None,
        progress: Progress = False,
        return_exceptions: Literal[True],
    ) -> MapFuture[R | BaseException]: ...
    @overload
    def map(
        self,
        fn: Callable[[T1, T2, T3, T4, T5], R],
        iterable: Iterable[T1],
        iter2: Iterable[T2],
        iter3: Iterable[T3],
        iter4: Iterable[T4],
        iter5: Iterable[T5],
        /,
        *,
        timeout: float | None = None,
        chunksize: int | None = None,
        progress: Progress = False,
        return_exceptions: Literal[False] = False,
    ) -> MapFuture[R]: ...
    @overload
    def map(
        self,
        fn: Callable[[T1, T2, T3, T4, T5], R],
        iterable: Iterable[T1],
        iter2: Iterable[T2],
        iter3: Iterable[T3],
        iter4: Iterable[T4],
        iter5: Iterable[T5],
        /,
        *,
        timeout: float | None = None,
        chunksize: int | None = None,
        progress: Progress = False,
        return_exceptions: Literal[True],
    ) -> MapFuture[R | BaseException]: ...
    @overload
    def map(
        self,
        fn: Callable[..., R],
        iterable: Iterable[Any],
        iter2: Iterable[Any],
        iter3: Iterable[Any],
        iter4: Iterable[Any],
        iter5: Iterable[Any],
        iter6: Iterable[Any],
        /,
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        progress: Progress = False,
        return_exceptions: Literal[False] = False,
    ) -> MapFuture[R]: ...
    @overload
    def map(
        self,
        fn: Callable[..., R],
        iterable: Iterable[Any],
        iter2: Iterable[Any],
        iter3: Iterable[Any],
        iter4: Iterable[Any],
        iter5: Iterable[Any],
        iter6: Iterable[Any],
        /,
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        progress: Progress = False,
        return_exceptions: Literal[True],
    ) -> MapFuture[R | BaseException]: ...
    def map(
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        progress: Progress = False,
        return_exceptions: bool = False,
    ) -> MapFuture[R] | MapFuture[R | BaseException]:
        """Apply ``fn`` to every item (of zipped iterables), in parallel, in input order.

        The inputs are read at once (as ``Executor.map`` does; use :meth:`imap` for
        endless or huge inputs). The result is a :class:`~procpool.MapFuture`:
        iterate it to stream results in order, or call ``.result()`` for the list,
        which equals ``list(map(fn, *iterables))``; an item that raised raises the
        same exception::

            squares = pool.map(pow, range(5), [2] * 5)
            assert squares.result() == [0, 1, 4, 9, 16]

        Args:
            timeout: as in ``Executor.map``: iteration raises ``TimeoutError`` for a
                result not ready ``timeout`` seconds after this call.
            chunksize: items per message to a worker (per Dask task for
                :class:`~procpool.DaskPool`). None lets the pool choose: ``Pool``
                adapts it to the measured time per item, so tiny items do not cost
                a round trip each; ``DaskPool`` makes about four chunks per worker
                thread.
            progress: True for a tqdm bar, or a callback ``(done, total)``.
            return_exceptions: as in :func:`asyncio.gather`: an item that
                raised gives its exception in its place (with its worker-side
                traceback as ``__cause__``) instead of failing the map, whose
                list then holds ``R | BaseException``. Cancelling the map, or
                ``terminate()``, still cancels it.

        Raises:
            PoolClosedError: after ``close()``, ``terminate()`` or ``shutdown()``.
        """
        if not callable(fn):
            raise TypeError(f"map() needs a callable, not {fn!r}")
        if not iterables:
            raise TypeError("map() needs at least one iterable")
        check_count("chunksize", chunksize, 1)
        check_timeout("timeout", timeout)
        future = self._map(fn, iterables, timeout=timeout, chunksize=chunksize, progress=progress)
        if return_exceptions:
            future.set_return_exceptions()
        return future

    # -- imap -------------------------------------------------------------------------

    @overload
    def imap(
        self,
        fn: Callable[[T1], R],
        iterable: Iterable[T1],
        *,
        chunksize: int = 1,
        buffersize: int | None = None,
        progress: Progress = False,
        return_exceptions: Literal[False] = False,
    ) -> Iterator[R]: ...
    @overload
    def imap(
        self,
        fn: Callable[[T1], R],
        iterable: Iterable[T1],
        *,
        chunksize: int = 1,
        buffersize: int | None = None,
        progress: Progress = False,
        return_exceptions: Literal[True],
    ) -> Iterator[R | BaseException]: ...
    def imap(
        self,
        fn: Callable[[T1], R],
        iterable: Iterable[T1],
        *,
        chunksize: int = 1,
        buffersize: int | None = None,
        progress: Progress = False,
        return_exceptions: bool = False,
    ) -> Iterator[R] | Iterator[R | BaseException]:
        """Lazily apply ``fn`` to each item; yield results in input order.

        At most ``buffersize`` items are read ahead of the consumer (default:
        ``4 * workers * chunksize``; a larger ``chunksize`` is cut down to
        ``buffersize``), so an endless generator works in bounded
        memory. An item that raised raises its exception when reached; the iterator
        can be resumed after it with ``next()``. With ``return_exceptions=True``
        (as in :func:`asyncio.gather`) the exception is yielded in the item's
        place instead. Breaking out of the loop early,
        or dropping the last reference to the iterator, cancels the work not yet
        started; so does the iterator's ``close()``, after which it yields nothing
        more, not even an error still ahead. The first ``buffersize`` items are
        read and sent at once, as :meth:`concurrent.futures.Executor.map` does::

            for line in pool.imap(str.upper, open("big.txt")):
                print(line, end="")

        Raises:
            PoolClosedError: after ``close()``, ``terminate()`` or ``shutdown()``;
                if the pool closes during the loop, once the items sent before are
                yielded.
        """
        return self._imap(
            fn, iterable, chunksize, buffersize, progress, return_exceptions, ordered=True
        )

    @overload
    def imap_unordered(
        self,
        fn: Callable[[T1], R],
        iterable: Iterable[T1],
        *,
        chunksize: int = 1,
        buffersize: int | None = None,
        progress: Progress = False,
        return_exceptions: Literal[False] = False,
    ) -> Iterator[R]: ...
    @overload
    def imap_unordered(
        self,
        fn: Callable[[T1], R],
        iterable: Iterable[T1],
        *,
        chunksize: int = 1,
        buffersize: int | None = None,
        progress: Progress = False,
        return_exceptions: Literal[True],
    ) -> Iterator[R | BaseException]: ...
    def imap_unordered(
        self,
        fn: Callable[[T1], R],
        iterable: Iterable[T1],
        *,
        chunksize: int = 1,
        buffersize: int | None = None,
        progress: Progress = False,
        return_exceptions: bool = False,
    ) -> Iterator[R] | Iterator[R | BaseException]:
        """Like :meth:`imap`, but yield results as they complete, in any order.

        With ``return_exceptions=True`` a failed item's exception is yielded too;
        each such exception carries a note naming its item (``item 17 of
        imap(fn, ...)``), and to know in code which input failed, have ``fn``
        raise an exception that carries its input.
        """
        return self._imap(
            fn, iterable, chunksize, buffersize, progress, return_exceptions, ordered=False
        )

    def _imap(
        self,
        fn: Callable[[T1], R],
        iterable: Iterable[T1],
        chunksize: int,
        buffersize: int | None,
        progress: Progress,
        return_exceptions: bool,
        *,
        ordered: bool,
    ) -> Iterator[R]:
        if not callable(fn):
            raise TypeError(f"imap() needs a callable, not {fn!r}")
        check_count("chunksize", chunksize, 1)
        check_count("buffersize", buffersize, 1)
        self._engine.check_open()
        if buffersize is None:
            buffersize = 4 * self._engine.parallelism() * chunksize
        # A total only if the input tells it without being read (a list, a range).
        total = operator.length_hint(iterable, 0) or None if progress else None
        reporter = make_reporter(progress, total, getattr(fn, "__name__", "imap"))
        # A buffer smaller than a chunk bounds the chunk, not the other way round.
        feed = IMapFeed(
            self._imap_launcher(fn),
            iter(iterable),
            min(chunksize, buffersize),
            buffersize,
            ordered,
            reporter,
            return_exceptions=return_exceptions,
            release=self._imap_release(),
        )
        return feed.stream()

    # -- what each pool supplies ------------------------------------------------------

    @abc.abstractmethod
    def _map(
        self,
        fn: Callable[..., R],
        iterables: tuple[Iterable[Any], ...],
        *,
        timeout: float | None,
        chunksize: int | None,
        progress: Progress,
    ) -> MapFuture[R]:
        """Start a map whose arguments are checked."""

    @abc.abstractmethod
    def _imap_launcher(self, fn: Callable[[Any], R]) -> Launch[R]:
        """The launch hook of one ``imap`` of ``fn`` (see :class:`._imap.IMapFeed`)."""

    def _imap_release(self) -> Callable[[], None] | None:
        """The release hook of an ``imap`` (see :class:`._imap.IMapFeed`), if any."""
        return None

    def _end_in_background(self) -> None:
        """After ``shutdown(wait=False)``: let the pool finish without a caller waiting."""

    @abc.abstractmethod
    def close(self) -> None:
        """Take no new work; the work already submitted still runs. Does not wait."""

    @abc.abstractmethod
    def terminate(self) -> None:
        """Stop now; every unfinished future ends. Does not wait."""

    # -- shutdown and join --------------------------------------------------------------

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every task has ended, after :meth:`close` or :meth:`terminate`.

        Then the callbacks of those futures have run too. A callback may call
        ``join()`` (or ``shutdown(wait=True)``) on its own pool: it waits for
        everything but itself.

        Args:
            timeout: seconds to wait at most; None or ``math.inf``: no limit.

        Returns:
            True if everything has ended, False if ``timeout`` passed first.

        Raises:
            ValueError: if the pool is still running (call close() first).
        """
        check_timeout("timeout", timeout)
        if self._engine.state is Lifecycle.RUNNING:
            raise ValueError("join() needs close() or terminate() first: the pool is running")
        before_blocking()  # on a callback thread: let another take the queue
        return self._engine.wait_for_end(finite(timeout))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """As :meth:`concurrent.futures.Executor.shutdown`: close, optionally wait.

        Args:
            wait: wait until every task has finished (see :meth:`join`).
            cancel_futures: first cancel the work that has not started. A ``map``
                is one future: once any of its items has started, all of it runs
                (``cancel()`` its future to stop it).
        """
        self.close()
        if cancel_futures:
            self._engine.cancel_unstarted()
        if wait:
            self.join()
        else:
            self._end_in_background()

    # -- the with-block ---------------------------------------------------------------

    def __enter__(self) -> Self:
        """Return the pool itself; leaving the block ends it (see ``__exit__``)."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> bool | None:
        """Leave normally: close and wait for all tasks. Leave by an exception: terminate."""
        if exc_type is None:
            try:
                self.close()
                self.join()
            except BaseException:
                # Ctrl-C while waiting for the tasks: stop them instead.
                self.terminate()
                self.join()
                raise
        else:
            self.terminate()
            self.join()
        return None

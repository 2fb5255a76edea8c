"""``DaskPool``: procpool's typed API on a ``dask.distributed`` cluster.

Moving a program from one machine to a cluster changes one line::

    with procpool.Pool() as pool:                            # local processes
    with procpool.DaskPool("tcp://scheduler:8786") as pool:  # a Dask cluster

``submit``, ``map``, ``imap``, ``imap_unordered``, ``options``, ``then``, ``catch``,
``await`` and the ``with`` block keep their types and meaning; docs/scale-out.md
lists every difference (Dask cannot stop a task that is already running, for one).

The data flow of one task::

    DaskPool.submit ── client.submit(partial(fn, *args), key=<name>-<uuid>, pure=False)
         │               the Dask future is kept in ``_Core.jobs`` until the task is
         │               done: Dask forgets a task whose future is garbage-collected
         ▼
    scheduler ──> a worker thread runs fn (inside ``call_limited`` if it has a time limit)
         │
         ▼
    Dask's callback thread: ``_Core.on_dask_done`` hands the Dask future to one of
    the pool's fetch threads, where ``_Core.resolve`` fetches the result or the
    exception, translates it (KilledWorker -> WorkerLostError, the remote traceback
    -> __cause__), submits again if a retry is due, else resolves the procpool
    Future with ``_finish`` and drops the Dask future
         │
         ▼
    the pool's callback thread runs the user's callbacks (then/catch/add_done_callback),
    so a callback that blocks can never stall Dask's own callback thread.

``map`` and ``imap`` send chunks of items to ``run_chunk`` (in :mod:`._child.dask_chunk`),
which runs on the worker,
catches each item's exception separately and returns one outcome per item: items
fail exactly as they would in a serial ``map``.

``distributed`` is imported only when a ``DaskPool`` is built, so ``import procpool``
never needs it, and this module type-checks with or without it (the client is ``Any``).
"""

# The executor side of Future/MapFuture (_finish, _set_batch, _cancel_hook, ...) is
# underscore-named to keep it out of the public API, not out of the executors.
# pyright: reportPrivateUsage=false

from __future__ import annotations

import concurrent.futures
import enum
import functools
import importlib
import itertools
import logging
import math
import queue
import threading
import time
import traceback
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar, cast

from typing_extensions import ParamSpec, Self

from ._callbacks import CallbackRunner, before_blocking
from ._child.dask_chunk import NotSendable, Outcome, TimedOut, call_limited, run_chunk, task_name
from ._errors import (
    PoolClosedError,
    RemoteTraceback,
    SerializationError,
    TaskTimeoutError,
    WorkerLostError,
)
from ._executor import Options, TypedExecutor, check_count, check_timeout, finite
from ._future import Future, MapFuture
from ._pool import PoolStats
from ._progress import Progress, Reporter, make_reporter

__all__ = ["DaskPool"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
T1 = TypeVar("T1")

LOGGER = logging.getLogger("procpool")

INSTALL_HINT = 'DaskPool needs dask.distributed: pip install "procpool[dask]"'

_Outcome = Outcome


def _private_local_cluster(distributed: Any) -> Any:
    """A client of a new ``LocalCluster`` that only this program can use, closed with it.

    Dask's defaults would let every local user run code on the cluster (a plain
    ``tcp://`` scheduler on loopback) and serve its dashboard, with the cluster's
    state and logs, on every network interface. Here the scheduler and workers
    speak TLS with throw-away certificates (``security=True``, which needs the
    ``cryptography`` package that ``procpool[dask]`` installs; without it, plain
    ``tcp://`` on loopback) and the dashboard listens on loopback, on a free port
    (``pool.client.dashboard_link``). set_as_default=False: a library must not take
    over the process-wide default client.
    """
    try:
        importlib.import_module("cryptography")
        tls = True
    except ImportError:
        tls = False
    return distributed.Client(
        security=tls, host="127.0.0.1", dashboard_address="127.0.0.1:0", set_as_default=False
    )


def _import_distributed() -> Any:
    """Import ``distributed`` on first use; typed ``Any`` so no stubs are needed."""
    try:
        return importlib.import_module("distributed")
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc


def _from_worker(exc: BaseException) -> BaseException:
    """Turn the stand-ins a Dask worker raises (see ``_child.dask_chunk``) into procpool's errors."""
    if isinstance(exc, TimedOut):
        return TaskTimeoutError(
            f"{exc.name} ran longer than its time limit of {exc.timeout:g} s (Dask cannot "
            "stop a running task: its thread on the worker goes on until the function "
            "returns, and the result is discarded)",
            timeout=exc.timeout,
        )
    if isinstance(exc, NotSendable):
        return SerializationError(str(exc))
    return exc


# -- the client side ----------------------------------------------------------------------


class _State(enum.Enum):
    RUNNING = "running"
    CLOSED = "closed"
    TERMINATED = "terminated"


class _Threads:
    """A few daemon threads that run thunks from one queue, started on first use.

    They fetch results from the workers: a fetch is a network round trip, and one
    that stalls (Dask can, when a result is released while it is being fetched)
    must not hold up the others, nor Dask's callback thread, which runs the
    done-callbacks of every Dask future in the process. (The user's callbacks run
    on a :class:`CallbackRunner` of their own, for the same reason.)
    """

    def __init__(self, name: str, size: int) -> None:
        self._name = name
        self._size = size
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closed = False

    def __call__(self, thunk: Callable[[], None]) -> None:
        with self._lock:
            if not self._closed:
                if not self._threads:
                    for number in range(self._size):
                        # Daemon: a thunk that never returns must not block interpreter exit.
                        thread = threading.Thread(
                            target=self._loop, name=f"{self._name}-{number}", daemon=True
                        )
                        thread.start()
                        self._threads.append(thread)
                self._queue.put(thunk)
                return
        # After the pool is gone (a late cancel, say) run inline rather than drop it.
        thunk()

    def _loop(self) -> None:
        while True:
            thunk = self._queue.get()
            if thunk is None:
                return
            try:
                thunk()
            except Exception:  # the thunks handle their errors; this is a last resort
                LOGGER.exception("error in %s", self._name)
            # Drop it before waiting for the next one: it may hold a Dask future, and
            # Dask keeps a task (and its result) for as long as a future of it lives.
            del thunk

    def close(self) -> None:
        """Let the threads end once the queue is empty; later thunks run inline."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for _ in self._threads:
                self._queue.put(None)


@dataclass
class _Job:
    """One Dask task in flight, and what is needed to submit it again."""

    name: str
    call: Callable[[], object]
    future: Future[Any]
    retries_left: int
    retry_timeouts: bool
    #: The job's key in ``_Core.jobs``: the Dask key of its first submission. A
    #: retry gets a new Dask key but keeps this one, so that whoever holds it
    #: (a cancel hook, an imap) cancels the retried task too.
    id: str = ""
    dask_future: Any = None
    #: Set (under the core's lock) when a fetch thread starts fetching the result.
    fetching: bool = False


class _Counters:
    """The numbers behind :meth:`DaskPool.stats`; items of a map count one each."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.submitted = 0
        self.completed = 0
        self.failed = 0
        self.cancelled = 0
        self.timed_out = 0
        self.retried = 0

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, count in counts.items():
                setattr(self, name, getattr(self, name) + count)


class _Core:
    """What a pool and its ``options()`` views share: the client, lifecycle, tasks in flight."""

    def __init__(self, distributed: Any, client: Any, owns_client: bool) -> None:
        self.distributed = distributed
        self.client = client
        self.owns_client = owns_client
        self.client_released = False
        self.state = _State.RUNNING
        # Guards state and jobs; ``idle`` is signalled whenever jobs becomes empty.
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)
        # Holding the Dask future is what keeps a task alive (Dask releases a task
        # whose last future is garbage-collected); the entry goes as soon as the task
        # is done, so neither futures nor inputs pile up.
        self.jobs: dict[str, _Job] = {}
        self.callbacks = CallbackRunner(f"procpool-dask-{id(self):x}")
        self.fetchers = _Threads(f"procpool-dask-fetch-{id(self):x}", 4)
        self.counters = _Counters()

    def closed_error(self) -> PoolClosedError:
        return PoolClosedError(f"the DaskPool is {self.state.value}: it accepts no new work")

    def check_open(self) -> None:
        with self.lock:
            if self.state is not _State.RUNNING:
                raise self.closed_error()

    def worker_threads(self) -> int:
        return max(1, int(sum(self.client.nthreads().values())))

    # -- submitting -----------------------------------------------------------------------

    def launch(
        self, name: str, call: Callable[[], object], opts: Options, *, user_facing: bool
    ) -> tuple[str, Future[Any]]:
        """Submit ``call`` to Dask; return its key and a procpool future bridged to it."""
        fut: Future[Any] = Future()
        if user_facing:
            fut._callback_runner = self.callbacks
        job = _Job(name, call, fut, opts.retries, opts.retry_timeouts)
        with self.lock:
            if self.state is not _State.RUNNING:
                raise self.closed_error()
            key = self._submit_locked(job)
        if key is not None:
            fut._cancel_hook = lambda _was_running: self.cancel_keys([key])
            self._watch(key, job)
        return key or "", fut

    def _submit_locked(self, job: _Job) -> str | None:
        """Submit ``job`` (again) and record it under its id; None if it would not pickle."""
        # Explicit unique key: pure=False alone would do, but the key also names the
        # task on the dashboard after the user's function instead of a procpool helper.
        key = f"{job.name}-{uuid.uuid4().hex}"
        try:
            job.dask_future = self.client.submit(job.call, key=key, pure=False)
        except TypeError as exc:
            # distributed pickles the task right here; a TypeError is what it raises
            # for a function or argument that neither pickle nor cloudpickle can take.
            job.future._finish(
                exception=_serialization_error(
                    f"the call of {job.name} (function or arguments)", exc
                )
            )
            return None
        job.id = job.id or key
        self.jobs[job.id] = job
        return job.id

    def _watch(self, key: str, job: _Job) -> None:
        job.dask_future.add_done_callback(functools.partial(self.on_dask_done, key))

    def cancel_keys(self, keys: list[str]) -> None:
        """Cancel these tasks on the cluster and forget them."""
        with self.lock:
            jobs = [job for job in (self.jobs.pop(key, None) for key in keys) if job is not None]
            if not self.jobs:
                self.idle.notify_all()
        self._cancel_jobs(jobs)

    def cancel_all(self, state: _State) -> None:
        """Move to ``state`` and cancel every unfinished task, with one call to Dask."""
        with self.lock:
            if self.state is not _State.TERMINATED:
                self.state = state
            jobs = list(self.jobs.values())
            self.jobs.clear()
            self.idle.notify_all()
        self._cancel_jobs(jobs)

    def _cancel_jobs(self, jobs: list[_Job]) -> None:
        """End the futures of jobs already forgotten, then stop their Dask tasks."""
        for job in jobs:
            # A map's chunk passes this on to its MapFuture; its callback counts the items.
            job.future._abandon()
        self.cancel_dask(_unfetched(jobs))

    def cancel_dask(self, dask_futures: list[Any]) -> None:
        # A finished task has nothing left to stop: dropping our reference releases it.
        dask_futures = [f for f in dask_futures if f.status != "finished"]
        if not dask_futures:
            return
        try:
            self.client.cancel(dask_futures)
        except Exception:  # the client may be closing already; the futures die with it
            LOGGER.debug("could not cancel %d Dask futures", len(dask_futures), exc_info=True)

    # -- results (on Dask's callback thread) ------------------------------------------------

    def on_dask_done(self, key: str, dask_future: Any) -> None:
        """Hand a finished Dask future to the fetch threads (runs on Dask's callback thread)."""
        self.fetchers(functools.partial(self.resolve, key, dask_future))

    def resolve(self, key: str, dask_future: Any) -> None:
        """Resolve a job's future from its finished Dask future, or submit it again."""
        with self.lock:
            job = self.jobs.get(key)
            if job is not None and job.dask_future is not dask_future:
                job = None  # an earlier attempt's, which a retry replaced
            if job is not None:
                job.fetching = True
        if job is None:  # cancelled or terminated meanwhile: its future is already done
            return
        try:
            outcome = self._outcome(job, dask_future)
        except BaseException as exc:  # never leave a future hanging
            outcome = exc
        if isinstance(outcome, BaseException) and self._retry(key, job, outcome):
            return
        if isinstance(outcome, _Cancelled):
            job.future._abandon()  # cancelled from the Dask side (client.cancel, restart)
        elif isinstance(outcome, BaseException):
            job.future._finish(exception=outcome)
        else:
            job.future._finish(outcome.value)
        with self.lock:
            self.jobs.pop(key, None)
            if not self.jobs:
                self.idle.notify_all()

    def _retry(self, key: str, job: _Job, exc: BaseException) -> bool:
        """Submit ``job`` again if its failure calls for it; True if it was."""
        due = isinstance(exc, WorkerLostError) or (
            job.retry_timeouts and isinstance(exc, TaskTimeoutError)
        )
        if not due or job.retries_left <= 0:
            return False
        with self.lock:
            # Under the lock, with the job left in ``jobs``: a cancel either came
            # first (the job is gone) or finds the new Dask future to cancel.
            if self.jobs.get(key) is not job or self.state is _State.TERMINATED:
                return False
            job.retries_left -= 1
            job.fetching = False
            if self._submit_locked(job) is None:
                self.jobs.pop(key, None)
                if not self.jobs:
                    self.idle.notify_all()
                return True  # _submit_locked failed the future
        self.counters.add(retried=1)
        self._watch(key, job)
        return True

    def _outcome(self, job: _Job, dask_future: Any) -> _Value | _Cancelled | BaseException:
        status = dask_future.status
        if status == "cancelled":
            return _Cancelled()
        try:
            if status != "error":
                return _Value(dask_future.result())
            exc: BaseException = dask_future.exception()
            tb: TracebackType | None = dask_future.traceback()
        except concurrent.futures.CancelledError:
            return _Cancelled()
        except TypeError as error:
            # A worker keeps a result it cannot pickle and fails only when we fetch it.
            return _serialization_error(f"the result of {job.name}", error)
        except Exception as error:  # the client lost the scheduler, and the like
            return error
        exc = _from_worker(exc)
        if isinstance(exc, self.distributed.KilledWorker):
            lost = WorkerLostError(
                f"the Dask worker running {job.name} died (or was lost) before it "
                f"answered, and Dask gave up on the task: {exc}"
            )
            lost.__cause__ = exc
            return lost
        if tb is not None:
            # As concurrent.futures does: the worker's frames travel as text on
            # __cause__, and the local traceback starts fresh where result() raises.
            exc.__cause__ = RemoteTraceback("".join(traceback.format_exception(type(exc), exc, tb)))
            exc.__traceback__ = None
        return exc

    # -- shutting down ----------------------------------------------------------------------

    def release_client(self) -> None:
        with self.lock:
            if self.client_released or not self.owns_client:
                return
            self.client_released = True
        try:
            self.client.close()
        except Exception:
            LOGGER.exception("error while closing the Dask client %r", self.client)


def _unfetched(jobs: list[_Job]) -> list[Any]:
    """The Dask futures of these jobs that no fetch thread has started on.

    Cancelling a task whose result is being fetched can leave that fetch waiting
    forever inside distributed (seen with 2026.8), holding a fetch thread and the
    task. Such a job is dropped instead: the fetch ends, finds the job gone, and
    throws the result away. ``fetching`` and the removal from ``jobs`` both happen
    under the core's lock, so each job is either fetched or cancelled, never both.
    """
    return [job.dask_future for job in jobs if not job.fetching]


def _drop(client: Any, *closers: Callable[[], None]) -> None:
    for close in closers:
        close()
    if client is None:
        return
    try:
        client.close()
    except Exception:  # interpreter shutdown, or the client is closing already
        LOGGER.debug("could not close the Dask client %r", client, exc_info=True)


class _Value:
    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value


class _Cancelled:
    __slots__ = ()


class DaskPool(TypedExecutor):
    """A ``concurrent.futures.Executor`` that runs procpool's API on a Dask cluster.

    Args:
        client_or_address: a ``distributed.Client`` (used as it is and left open);
            a scheduler address such as ``"tls://host:8786"``, or a cluster object
            (a client is made for it and closed with the pool); or ``None``: the
            current default Dask client if there is one, else a new ``LocalCluster``
            on this machine that only this program can use (TLS with throw-away
            certificates, dashboard on loopback), closed with the pool.
        task_timeout: default time limit of each task (each item of a map), in
            seconds, counted from the moment a worker starts it. A task over its
            limit fails with :class:`~procpool.TaskTimeoutError`; Dask cannot stop
            it, so its thread on the worker runs on and the result is thrown away.
        retries: submit a task again, up to this many times, when Dask gives up on
            it because workers died running it (``KilledWorker``). Dask itself
            already re-runs such a task ``distributed.scheduler.allowed-failures``
            times (3 by default) first.
        retry_timeouts: also run again, up to ``retries`` times, a task that ran
            out of time.

    Every call returns procpool's own :class:`~procpool.Future` or
    :class:`~procpool.MapFuture`, and every task is submitted with ``pure=False``:
    two submissions of the same call run twice. ``map`` sends ``chunksize`` items
    per Dask task. If the pool is closed before an ``imap`` input runs out, the
    items already sent are yielded, then :class:`~procpool.PoolClosedError` is
    raised. Leaving the ``with`` block normally waits for every task; leaving it by
    an exception cancels them::

        with procpool.DaskPool("tcp://scheduler:8786") as pool:
            squares = pool.map(pow, range(10), [2] * 10).result()

    Raises:
        ImportError: ``distributed`` is not installed (``pip install "procpool[dask]"``).
        ValueError: a negative ``task_timeout`` or ``retries``.
        TypeError: an asynchronous ``distributed.Client``.
    """

    def __init__(
        self,
        client_or_address: object = None,
        *,
        task_timeout: float | None = None,
        retries: int = 0,
        retry_timeouts: bool = False,
    ) -> None:
        check_timeout("task_timeout", task_timeout)
        check_count("retries", retries, 0)
        distributed = _import_distributed()
        owns = True
        client: Any
        if isinstance(client_or_address, distributed.Client):
            client, owns = client_or_address, False
        elif client_or_address is None:
            try:
                client, owns = distributed.get_client(), False
            except ValueError:
                client = _private_local_cluster(distributed)
        else:
            client = distributed.Client(client_or_address, set_as_default=False)
        if getattr(client, "asynchronous", False):
            if owns:
                client.close()
            raise TypeError(
                "DaskPool needs a synchronous distributed.Client (asynchronous=False); "
                "to use it from asyncio, await the procpool futures it returns"
            )
        self._core = _Core(distributed, client, owns)
        self._options = Options(finite(task_timeout), retries, retry_timeouts)
        # A pool dropped without close(): once the pool, its options() views and its
        # tasks in flight (which hold the core) are gone, stop its threads and close
        # the client it made.
        core = self._core
        weakref.finalize(
            core, _drop, client if owns else None, core.fetchers.close, core.callbacks.close
        )

    # -- public -------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The ``distributed.Client`` this pool submits to."""
        return self._core.client

    @property
    def workers(self) -> int:
        """The number of worker threads on the cluster right now (at least 1)."""
        return self._core.worker_threads()

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """Run ``fn(*args, **kwargs)`` on the cluster; return its future::

            fut = pool.submit(pow, 2, 10)   # Future[int]
            assert fut.result() == 1024

        If ``fn`` or an argument cannot be pickled (Dask sends functions with
        cloudpickle, so lambdas are fine), the future fails with
        :class:`~procpool.SerializationError`.

        Raises:
            PoolClosedError: after ``close()``, ``terminate()`` or ``shutdown()``.
        """
        if not callable(fn):
            raise TypeError(f"submit() needs a callable, not {fn!r}")
        opts = self._options
        # functools.partial keeps the arguments opaque to Dask: as task arguments,
        # Dask would compute any Dask collection among them and would take keyword
        # arguments such as key=, workers= or retries= for its own.
        if opts.timeout is None:
            call: Callable[[], object] = functools.partial(fn, *args, **kwargs)
        else:
            call = functools.partial(call_limited, fn, args, kwargs, opts.timeout)
        _, fut = self._core.launch(task_name(fn), call, opts, user_facing=True)
        self._core.counters.add(submitted=1)
        fut.add_done_callback(self._count)
        return fut

    def _map(
        self,
        fn: Callable[..., R],
        iterables: tuple[Iterable[Any], ...],
        *,
        timeout: float | None,
        chunksize: int | None,
        progress: Progress,
    ) -> MapFuture[R]:
        core = self._core
        core.check_open()
        items = list(zip(*iterables))  # noqa: B905 (stops at the shortest, as builtins.map)
        result: MapFuture[R] = MapFuture(len(items), timeout=timeout)
        result._callback_runner = core.callbacks
        reporter = make_reporter(progress, len(items), task_name(fn))
        if reporter is not None:
            result._on_progress = reporter.advance
        if not items:
            return result
        if chunksize is None:
            # As multiprocessing.Pool.map: about four chunks per worker thread, so tiny
            # items do not each pay a scheduler round trip, and the load still balances.
            chunksize = max(1, math.ceil(len(items) / (4 * core.worker_threads())))
        keys: list[str] = []
        launched = 0
        try:
            for start in range(0, len(items), chunksize):
                part = items[start : start + chunksize]
                key, chunk = self._launch_chunk(fn, part)
                keys.append(key)
                launched += len(part)
                chunk.add_done_callback(
                    functools.partial(_deliver_chunk, result, start, len(part), core.counters)
                )
        except PoolClosedError:
            # Closed by another thread meanwhile: all or nothing. What went out counts
            # as submitted, then cancelled, so that the counters still add up.
            core.counters.add(submitted=launched)
            core.cancel_keys(keys)
            raise
        core.counters.add(submitted=len(items))
        # The hook holds keys, not the chunk futures: those hold results, which an
        # iterated MapFuture must not keep alive.
        result._cancel_hook = lambda _was_running: core.cancel_keys(keys)
        return result

    def close(self) -> None:
        """Take no new work; the work already submitted still runs. Does not wait."""
        core = self._core
        with core.lock:
            if core.state is _State.RUNNING:
                core.state = _State.CLOSED

    def terminate(self) -> None:
        """Stop now: cancel every unfinished task; their futures report cancelled.

        Dask drops the tasks that have not started; one already running on a worker
        cannot be stopped and runs on, but its result is discarded. A client the
        pool made is closed (with its cluster, if it started one). Does not wait.
        """
        core = self._core
        core.cancel_all(_State.TERMINATED)
        core.fetchers.close()
        core.callbacks.close()
        core.release_client()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every task is done, after :meth:`close` or :meth:`terminate`.

        Then the callbacks of those futures have run, and a client the pool made is
        closed. A callback may call ``join()`` on its own pool: it waits for
        everything but itself.

        Args:
            timeout: seconds to wait at most; None or ``math.inf``: no limit.

        Returns:
            True if everything has ended, False if ``timeout`` passed first.

        Raises:
            ValueError: if the pool is still running (call close() first).
        """
        check_timeout("timeout", timeout)
        timeout = finite(timeout)
        core = self._core
        deadline = None if timeout is None else time.monotonic() + timeout
        before_blocking()
        core.callbacks.leave_pending()
        with core.lock:
            if core.state is _State.RUNNING:
                raise ValueError("join() needs close() or terminate() first: the pool is running")
            while core.jobs:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                core.idle.wait(remaining)
        core.fetchers.close()
        core.callbacks.close()
        done = core.callbacks.join(
            None if deadline is None else max(0.0, deadline - time.monotonic())
        )
        if done:
            core.release_client()
        return done

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """As :meth:`concurrent.futures.Executor.shutdown`: close, optionally wait.

        Args:
            wait: wait until every task has finished (and a client the pool made is
                closed).
            cancel_futures: first cancel every unfinished task. Dask does not tell
                the client which tasks have started, so running ones are cancelled
                too (their threads run on; the results are discarded).
        """
        if cancel_futures:
            self._core.cancel_all(_State.CLOSED)
        else:
            self.close()
        if wait:
            self.join()
        else:
            # Close a client we made once the work is done, without making the caller wait.
            threading.Thread(target=self.join, name="procpool-dask-shutdown", daemon=True).start()

    def stats(self) -> PoolStats:
        """Return a snapshot of the pool's counters (shared with its ``options()`` views).

        ``workers_started``, ``workers_replaced`` and ``busy_seconds`` stay empty:
        Dask manages the workers, and its dashboard shows their activity.
        """
        c = self._core.counters
        with c.lock:
            return PoolStats(
                submitted=c.submitted,
                completed=c.completed,
                failed=c.failed,
                cancelled=c.cancelled,
                timed_out=c.timed_out,
                retried=c.retried,
                workers_started=0,
                workers_replaced=0,
                busy_seconds=(),
            )

    def __repr__(self) -> str:
        core = self._core
        with core.lock:
            state, jobs = core.state.value, len(core.jobs)
        return f"<procpool.DaskPool {state} tasks={jobs} client={core.client!r}>"

    # -- internals ------------------------------------------------------------------------

    def _count(self, fut: Future[Any]) -> None:
        counters = self._core.counters
        if fut.cancelled():
            counters.add(cancelled=1)
        elif isinstance(fut.exception(), TaskTimeoutError):
            counters.add(failed=1, timed_out=1)
        elif fut.exception() is not None:
            counters.add(failed=1)
        else:
            counters.add(completed=1)

    def _launch_chunk(
        self, fn: Callable[..., object], items: list[tuple[Any, ...]]
    ) -> tuple[str, Future[list[_Outcome]]]:
        opts = self._options
        timeout_retries = opts.retries if opts.retry_timeouts else 0
        call = functools.partial(run_chunk, fn, items, opts.timeout, timeout_retries)
        # Timeouts of single items are retried on the worker; the chunk as a whole
        # is submitted again only when its workers died.
        chunk_opts = Options(None, opts.retries, False)
        return self._core.launch(task_name(fn), call, chunk_opts, user_facing=False)

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
        core = self._core
        core.check_open()
        if buffersize is None:
            buffersize = 4 * core.worker_threads() * chunksize
        reporter = make_reporter(progress, None, task_name(fn))

        def launch(items: list[tuple[Any, ...]]) -> tuple[str, Future[list[_Outcome]]]:
            core.counters.add(submitted=len(items))
            key, chunk = self._launch_chunk(fn, items)
            chunk.add_done_callback(functools.partial(_count_chunk, core.counters, len(items)))
            return key, chunk

        return _IMapIterator(
            core, launch, iterable, chunksize, buffersize, reporter, ordered=ordered
        )


def _serialization_error(what: str, error: BaseException) -> SerializationError:
    err = SerializationError(
        f"{what} could not be pickled for Dask ({type(error).__name__}: {error}); "
        "pass plain data (no locks, open files, sockets or generators)"
    )
    err.__cause__ = error
    return err


def _with_remote_traceback(exc: BaseException, text: str | None) -> BaseException:
    exc = _from_worker(exc)
    if text is not None:
        exc.__cause__ = RemoteTraceback(text)
    return exc


def _count_chunk(counters: _Counters, size: int, chunk: Future[list[_Outcome]]) -> None:
    """Add a finished chunk's items to the pool's counters (on Dask's callback thread)."""
    if chunk.cancelled():
        counters.add(cancelled=size)
    elif chunk.exception() is not None:
        counters.add(failed=size)  # the whole task failed, so every item did
    else:
        failures = [value for ok, value, _ in chunk.result() if not ok]
        timed_out = sum(isinstance(exc, TimedOut) for exc in failures)
        counters.add(completed=size - len(failures), failed=len(failures), timed_out=timed_out)


def _deliver_chunk(
    target: MapFuture[Any],
    start: int,
    size: int,
    counters: _Counters,
    chunk: Future[list[_Outcome]],
) -> None:
    """Copy a finished chunk's outcomes into the MapFuture (on Dask's callback thread)."""
    _count_chunk(counters, size, chunk)
    if chunk.cancelled():
        target._abandon()  # the map as a whole was cancelled, or the pool terminated
        return
    error = chunk.exception()
    if error is not None:
        # The whole task failed (workers lost, a result that cannot be pickled): every item did.
        target._set_batch(start, [None] * size, dict.fromkeys(range(size), error))
        return
    values: list[Any] = []
    errors: dict[int, BaseException] = {}
    for index, (ok, value, text) in enumerate(chunk.result()):
        if ok:
            values.append(value)
        else:
            values.append(None)
            errors[index] = _with_remote_traceback(value, text)
    target._set_batch(start, values, errors)


def _put_done(
    done: queue.SimpleQueue[tuple[int, Future[list[_Outcome]]]],
    size: int,
    chunk: Future[list[_Outcome]],
) -> None:
    done.put((size, chunk))


class _IMapIterator(Iterator[R]):
    """The iterator behind ``imap``/``imap_unordered``: reads its input lazily, in chunks.

    Items read from the input but not yet yielded never exceed ``buffersize``; a
    chunk is sent as soon as there is room for it, so the cluster stays busy while
    the consumer works.
    """

    def __init__(
        self,
        core: _Core,
        launch: Callable[[list[tuple[Any, ...]]], tuple[str, Future[list[_Outcome]]]],
        iterable: Iterable[Any],
        chunksize: int,
        buffersize: int,
        reporter: Reporter | None,
        *,
        ordered: bool,
    ) -> None:
        self._core = core
        self._launch = launch
        self._source: Iterator[Any] | None = iter(iterable)
        self._chunksize = min(chunksize, buffersize)
        self._room = buffersize  # items that may still be read ahead
        self._reporter = reporter
        self._ordered = ordered
        # (items in the chunk, its future): in input order, or in completion order.
        self._pending: deque[tuple[int, Future[list[_Outcome]]]] = deque()
        self._completed: queue.SimpleQueue[tuple[int, Future[list[_Outcome]]]] = queue.SimpleQueue()
        self._keys: dict[Future[list[_Outcome]], str] = {}
        self._in_flight = 0
        self._ready: deque[_Outcome] = deque()  # outcomes of the chunk being yielded
        # Raised once the items already sent are yielded: the input's own exception,
        # or PoolClosedError when the pool closed before the input ran out.
        self._tail_error: BaseException | None = None
        self._fill()

    def _fill(self) -> None:
        while self._source is not None and self._room >= self._chunksize:
            try:
                items = [(item,) for item in itertools.islice(self._source, self._chunksize)]
            except BaseException as exc:
                # Raised when the consumer gets there, after the items read before it,
                # as a serial loop would.
                self._source = None
                self._tail_error = exc
                return
            if len(items) < self._chunksize:
                self._source = None  # exhausted: never call next() on it again
            if not items:
                return
            try:
                key, chunk = self._launch(items)
            except PoolClosedError as exc:
                self._source = None
                self._tail_error = exc
                return
            self._room -= len(items)
            self._in_flight += 1
            self._keys[chunk] = key
            if self._ordered:
                self._pending.append((len(items), chunk))
            else:
                chunk.add_done_callback(functools.partial(_put_done, self._completed, len(items)))

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> R:
        while not self._ready:
            if self._in_flight == 0:
                error, self._tail_error = self._tail_error, None
                if error is not None:
                    raise error
                if self._reporter is not None:
                    self._reporter.close()
                raise StopIteration
            size, chunk = self._pending.popleft() if self._ordered else self._completed.get()
            self._in_flight -= 1
            self._keys.pop(chunk, None)
            try:
                error = chunk.exception()
            except concurrent.futures.CancelledError:
                # The pool was terminated or shut down: nothing more will come.
                self.close()
                raise
            if error is not None:
                self._ready.extend((False, error, None) for _ in range(size))
            else:
                self._ready.extend(chunk.result())
        ok, value, text = self._ready.popleft()
        self._room += 1
        if self._reporter is not None:
            self._reporter.advance(1)
        self._fill()  # keep the workers fed while the consumer works on this item
        if ok:
            return cast("R", value)
        raise _with_remote_traceback(value, text)

    def close(self) -> None:
        """Stop: read no more input and cancel the chunks in flight."""
        self._source = None
        keys = list(self._keys.values())
        self._keys.clear()
        self._pending.clear()
        self._in_flight = 0
        self._ready.clear()
        self._core.cancel_keys(keys)
        if self._reporter is not None:
            self._reporter.close()

    def __del__(self) -> None:
        # Dropped before the end (a `break`): cancel what is in flight. Not here and
        # now: the garbage collector may run this on Dask's event-loop thread, where
        # the blocking client.cancel() would raise.
        try:
            if self._keys:
                threading.Thread(target=self.close, name="procpool-imap-close", daemon=True).start()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass


# Public names say procpool.X in reprs, tracebacks, pickles and docs.
DaskPool.__module__ = "procpool"

"""The client side of ``DaskPool``: tasks in flight, fetching, retries, cancelling.

The data flow of one task::

    DaskPool.submit ── client.submit(partial(fn, *args), key=<name>-<uuid>, pure=False)
         │               the Dask future is kept in ``Core.jobs`` until the task is
         │               done: Dask forgets a task whose future is garbage-collected
         ▼
    scheduler ──> a worker thread runs fn (inside ``call_limited`` if it has a time limit)
         │
         ▼
    Dask's callback thread: ``Core.on_dask_done`` hands the Dask future to one of
    the pool's fetch threads, where ``Core.resolve`` fetches the result or the
    exception, translates it (KilledWorker -> WorkerLostError, the worker's
    stand-ins -> procpool's errors, the remote traceback -> __cause__), submits
    again if a retry is due, else resolves the procpool Future and drops the Dask
    future
         │
         ▼
    the pool's callback runner runs the user's callbacks (then/catch/add_done_callback),
    so a callback that blocks can never stall Dask's own callback thread.

``map`` and ``imap`` send chunks of items to ``run_chunk`` (in
:mod:`._child.dask_chunk`), which runs on the worker, catches each item's
exception separately and returns one outcome per item; :func:`deliver_chunk`
copies them into the map's :class:`MapFuture`, so items fail exactly as they
would in a serial ``map``.

This module owns the client and everything in flight; it calls the futures'
executor methods and nothing of the local pool. ``distributed`` is imported only
when a ``DaskPool`` is built, and this module type-checks without it (the client
is ``Any``).
"""

from __future__ import annotations

import concurrent.futures
import functools
import importlib
import logging
import queue
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from ._callbacks import CallbackRunner
from ._child.dask_chunk import NotSendable, Outcome, TimedOut
from ._errors import (
    PoolClosedError,
    RemoteTraceback,
    SerializationError,
    TaskTimeoutError,
    WorkerLostError,
)
from ._future import Future
from ._lifecycle import Lifecycle
from ._mapfuture import MapFuture
from ._options import Options
from ._stats import Counters

LOGGER = logging.getLogger("procpool")

INSTALL_HINT = 'DaskPool needs dask.distributed: pip install "procpool[dask]"'


def import_distributed() -> Any:
    """Import ``distributed`` on first use; typed ``Any`` so no stubs are needed."""
    try:
        return importlib.import_module("distributed")
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc


def private_local_cluster(distributed: Any) -> Any:
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


def from_worker(exc: BaseException) -> BaseException:
    """Turn the stand-ins a Dask worker raises (see ``_child.dask_chunk``) into procpool's errors."""
    if isinstance(exc, TimedOut):
        if exc.stopped:
            what = (
                "TimeLimitInterrupt was raised inside it, and it stopped within its grace "
                f"period of {exc.grace:g} s"
            )
        elif exc.grace is not None:
            what = (
                f"TimeLimitInterrupt was raised inside it, and it had not stopped {exc.grace:g} s "
                "later; Dask cannot stop a thread: it runs on until the function returns, and "
                "the result is discarded"
            )
        else:
            what = (
                "Dask cannot stop a running task: its thread on the worker goes on until the "
                "function returns, and the result is discarded"
            )
        return TaskTimeoutError(
            f"{exc.name} ran longer than its time limit of {exc.timeout:g} s ({what})",
            timeout=exc.timeout,
            killed=False,
        )
    if isinstance(exc, NotSendable):
        return SerializationError(str(exc))
    return exc


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
        for thunk in iter(self._queue.get, None):
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
    #: The job's key in ``Core.jobs``: the Dask key of its first submission. A
    #: retry gets a new Dask key but keeps this one, so that whoever holds it
    #: (a cancel hook, an imap) cancels the retried task too.
    id: str = ""
    dask_future: Any = None
    #: Set (under the core's lock) when a fetch thread starts fetching the result.
    fetching: bool = False


class Core:
    """What a pool and its ``options()`` views share: the client, lifecycle, tasks in flight."""

    def __init__(self, distributed: Any, client: Any, owns_client: bool) -> None:
        self.distributed = distributed
        self.client = client
        self.owns_client = owns_client
        self.client_released = False
        self.state = Lifecycle.RUNNING
        # Guards state and jobs; ``idle`` is signalled whenever jobs becomes empty.
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)
        # Holding the Dask future is what keeps a task alive (Dask releases a task
        # whose last future is garbage-collected); the entry goes as soon as the task
        # is done, so neither futures nor inputs pile up.
        self.jobs: dict[str, _Job] = {}
        self.callbacks = CallbackRunner(f"procpool-dask-{id(self):x}")
        self.fetchers = _Threads(f"procpool-dask-fetch-{id(self):x}", 4)
        #: Items of a map count one each; Dask keeps the workers, so no busy time.
        self.counters = Counters()

    def closed_error(self) -> PoolClosedError:
        return PoolClosedError(
            f"the DaskPool is {self.state.value}; submit work before close(), terminate() "
            "or the end of its with-block"
        )

    def check_open(self) -> None:
        with self.lock:
            if self.state is not Lifecycle.RUNNING:
                raise self.closed_error()

    def parallelism(self) -> int:
        """The worker threads on the cluster right now (at least 1)."""
        return max(1, int(sum(self.client.nthreads().values())))

    def cancel_unstarted(self) -> None:
        """``shutdown(cancel_futures=True)``: cancel every unfinished task.

        Dask does not tell the client which tasks have started: running ones are
        cancelled too (their threads run on; the results are discarded).
        """
        self.cancel_all()

    def wait_for_end(self, timeout: float | None) -> bool:
        """Wait until no task is in flight and the callbacks have run; then let the client go."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self.callbacks.leave_pending()
        with self.lock:
            while self.jobs:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self.idle.wait(remaining)
        self.fetchers.close()
        self.callbacks.close()
        done = self.callbacks.join(
            None if deadline is None else max(0.0, deadline - time.monotonic())
        )
        if done:
            self.release_client()
        return done

    # -- submitting -----------------------------------------------------------------------

    def launch(
        self, name: str, call: Callable[[], object], opts: Options, *, user_facing: bool
    ) -> tuple[str, Future[Any]]:
        """Submit ``call`` to Dask; return its key and a procpool future bridged to it."""
        fut: Future[Any] = Future()
        if user_facing:
            fut.set_callback_runner(self.callbacks)
        job = _Job(name, call, fut, opts.retries, opts.retry_timeouts)
        with self.lock:
            if self.state is not Lifecycle.RUNNING:
                raise self.closed_error()
            key = self._submit_locked(job)
        if key is not None:
            fut.set_cancel_hook(lambda _was_running: self.cancel_keys([key]))
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
            job.future.try_set_exception(
                serialization_error(f"the call of {job.name} (function or arguments)", exc)
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

    def stop(self, state: Lifecycle) -> None:
        """Move to ``state`` (CLOSED or TERMINATED), never back."""
        with self.lock:
            if self.state is Lifecycle.RUNNING or state is Lifecycle.TERMINATED:
                self.state = state

    def cancel_all(self) -> None:
        """Cancel every unfinished task, with one call to Dask."""
        with self.lock:
            jobs = list(self.jobs.values())
            self.jobs.clear()
            self.idle.notify_all()
        self._cancel_jobs(jobs)

    def _cancel_jobs(self, jobs: list[_Job]) -> None:
        """End the futures of jobs already forgotten, then stop their Dask tasks."""
        for job in jobs:
            # A map's chunk passes this on to its MapFuture; its callback counts the items.
            job.future.abandon()
        # On a fetch thread: a dropped imap may be finalized on Dask's own event-loop
        # thread, where the blocking client.cancel() cannot run.
        self.fetchers(functools.partial(self.cancel_dask, _unfetched(jobs)))

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
            job.future.abandon()  # cancelled from the Dask side (client.cancel, restart)
        elif isinstance(outcome, BaseException):
            job.future.try_set_exception(outcome)
        else:
            job.future.try_set_result(outcome.value)
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
            if self.jobs.get(key) is not job or self.state is Lifecycle.TERMINATED:
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
            return serialization_error(f"the result of {job.name}", error)
        except Exception as error:  # the client lost the scheduler, and the like
            return error
        exc = from_worker(exc)
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


def drop(client: Any, *closers: Callable[[], None]) -> None:
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


def serialization_error(what: str, error: BaseException) -> SerializationError:
    err = SerializationError(
        f"{what} could not be pickled for Dask ({type(error).__name__}: {error}); "
        "pass plain data (no locks, open files, sockets or generators)"
    )
    err.__cause__ = error
    return err


def with_remote_traceback(exc: BaseException, text: str | None) -> BaseException:
    exc = from_worker(exc)
    if text is not None:
        exc.__cause__ = RemoteTraceback(text)
    return exc


def count_chunk(counters: Counters, size: int, chunk: Future[list[Outcome]]) -> None:
    """Add a finished chunk's items to the pool's counters (on Dask's callback thread)."""
    if chunk.cancelled():
        counters.add(cancelled=size)
    elif chunk.exception() is not None:
        counters.add(failed=size)  # the whole task failed, so every item did
    else:
        failures = [value for ok, value, _ in chunk.result() if not ok]
        timed_out = sum(isinstance(exc, TimedOut) for exc in failures)
        counters.add(completed=size - len(failures), failed=len(failures), timed_out=timed_out)


def deliver_chunk(
    target: MapFuture[Any],
    start: int,
    size: int,
    counters: Counters,
    chunk: Future[list[Outcome]],
) -> None:
    """Copy a finished chunk's outcomes into the MapFuture (on Dask's callback thread)."""
    count_chunk(counters, size, chunk)
    if chunk.cancelled():
        target.abandon()  # the map as a whole was cancelled, or the pool terminated
        return
    error = chunk.exception()
    if error is not None:
        # The whole task failed (workers lost, a result that cannot be pickled): every item did.
        target.set_items(start, [None] * size, dict.fromkeys(range(size), error))
        return
    values: list[Any] = []
    errors: dict[int, BaseException] = {}
    for index, (ok, value, text) in enumerate(chunk.result()):
        if ok:
            values.append(value)
        else:
            values.append(None)
            errors[index] = with_remote_traceback(value, text)
    target.set_items(start, values, errors)

"""What the pools on a remote engine share: tasks in flight, retries, cancelling, the lifecycle.

``DaskPool`` and ``RayPool`` hand their work to an engine that runs it on a
cluster (``dask.distributed``, Ray). Everything that does not depend on which
engine lives here, in :class:`RemoteCore`; what does (how to submit a call, learn
that it ended, read its outcome, stop it) is the engine's :class:`Backend`
(``._dask_core.DaskBackend``, ``._ray_core.RayBackend``). The data flow of one task::

    RemotePool.submit ── RemoteCore.launch ── Backend.submit(job) ──> the engine runs it
         │                the job is kept in ``RemoteCore.jobs`` until it is done
         │                (an engine may drop a task whose handle is garbage-collected)
         ▼
    the engine says it ended: Backend.watch calls ``RemoteCore.on_done`` (on the
    engine's thread); ``RemoteCore.resolve`` runs there or on one of the core's
    helper threads (``Backend.resolve_inline``), asks ``Backend.outcome`` for the
    result or the exception (already translated into procpool's errors), submits
    again if a retry (or the rest of a chunk) is due, else resolves the procpool
    Future and forgets the job
         │
         ▼
    the pool's callback runner runs the user's callbacks (then/catch/add_done_callback),
    so a callback that blocks never stalls the engine's own threads.

``map`` and ``imap`` send chunks of items; the engine runs them with
``_child.dask_chunk.run_chunk`` (or the Ray variant), which catches each item's
exception separately and returns one outcome per item; :func:`deliver_chunk`
copies them into the map's :class:`MapFuture`, so items fail exactly as they
would in a serial ``map``.

This module owns the tasks in flight; it calls the futures' executor methods and
nothing of the local pool, and imports no engine.
"""

from __future__ import annotations

import abc
import functools
import heapq
import itertools
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, cast

from ._callbacks import CallbackRunner
from ._child.dask_chunk import Outcome
from ._errors import (
    PoolClosedError,
    SerializationError,
    TaskTimeoutError,
    WorkerLostError,
    add_note,
)
from ._future import Future
from ._lifecycle import Lifecycle
from ._options import Options, backoff_delay
from ._stats import Counters

LOGGER = logging.getLogger("procpool")


class Threads:
    """A few daemon threads that run thunks from one queue, started on first use.

    They run what must not happen on an engine's own threads: fetching a result
    (a network round trip for Dask, which can stall when a result is released
    while it is being fetched), cancelling, submitting again. One that stalls must
    not hold up the others, nor the engine's callback thread, which runs the
    done-callbacks of every task in the process. (The user's callbacks run on a
    :class:`CallbackRunner` of their own, for the same reason.)
    """

    def __init__(self, name: str, size: int) -> None:
        self._name = name
        self._size = size
        self._queue: queue.SimpleQueue[Callable[[], object] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closed = False

    def __call__(self, thunk: Callable[[], object]) -> None:
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
            # Drop it before waiting for the next one: it may hold an engine's
            # handle, and an engine keeps a task (and its result) while one lives.
            del thunk

    def close(self) -> None:
        """Let the threads end once the queue is empty; later thunks run inline."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for _ in self._threads:
                self._queue.put(None)


class Timers:
    """One daemon thread that runs thunks after a delay, started on first use.

    Retries that must wait (``backoff``) wait here, in the client, holding no
    worker: the job stays in :attr:`RemoteCore.jobs` meanwhile, so it can be
    cancelled and ``join()`` waits for it. The thunks only hand work to the
    core's helper threads, so one thread serves every wait.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Callable[[], object]]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    def call_later(self, delay: float, thunk: Callable[[], object]) -> None:
        """Run ``thunk`` (on this thread) ``delay`` seconds from now; dropped after close."""
        with self._cond:
            if self._closed:
                return
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._order), thunk))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        break
                    self._cond.wait(self._heap[0][0] - now if self._heap else None)
                if self._closed:
                    return
                _, _, thunk = heapq.heappop(self._heap)
            try:
                thunk()
            except Exception:  # the thunks handle their errors; this is a last resort
                LOGGER.exception("error in %s", self._name)
            del thunk

    def close(self) -> None:
        """Drop the thunks still waiting and let the thread end."""
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify()


@dataclass
class RemoteJob:
    """One task in flight on the engine, and what is needed to submit it again."""

    name: str
    #: What the backend submits; opaque here (a callable for Dask, a call spec for Ray).
    #: A backend may replace it to go on with the rest of a chunk (see :class:`Continue`).
    call: Any
    future: Future[Any]
    retries_left: int
    retry_timeouts: bool
    #: The job's key in ``RemoteCore.jobs``: the engine's key of its first
    #: submission. A retry gets a new handle but keeps this key, so that whoever
    #: holds it (a cancel hook, an imap) cancels the retried task too.
    id: str = ""
    #: The engine's handle of the current submission (a Dask future, a Ray ObjectRef).
    handle: Any = None
    #: Set (under the core's lock) when a thread starts reading the outcome.
    claimed: bool = False
    #: What the items of a chunk already run by earlier submissions gave.
    done_items: ChunkResult | None = None
    #: Times submitted again after losses to the pool's own cancels (see Resubmit).
    resubmits: int = 0
    #: A ``submit``'s job, whose end the core counts (a chunk's items are counted
    #: when they are delivered); set to False once counted.
    count: bool = False
    #: Exception types after which the task runs again (``retries`` allowing).
    retry_on: tuple[type[BaseException], ...] = ()
    #: Seconds the first retry waits (see ``_options.backoff_delay``).
    backoff: float = 0.0
    #: Times it has been run again so far (for the backoff and the final note).
    attempts: int = 0
    #: Higher runs first, where the engine orders its queue (Dask).
    priority: int = 0


@dataclass
class ChunkResult:
    """What the items of one chunk gave: their values in order and their failures.

    ``values`` has one entry per item (None where it failed); ``errors`` maps an
    item's index to its exception as the worker sent it (a ``_child.dask_chunk``
    stand-in or the item's own exception) and the worker's traceback text.
    """

    values: list[Any]
    errors: dict[int, tuple[BaseException, str | None]]

    @classmethod
    def of(cls, result: object) -> ChunkResult:
        """A chunk's result as a backend returns it: a ChunkResult, a ``(values,
        errors)`` pair, or a list of ``_child.dask_chunk`` outcomes."""
        if isinstance(result, ChunkResult):
            return result
        if isinstance(result, tuple):
            values, errors = cast(
                "tuple[list[Any], dict[int, tuple[BaseException, str | None]]]", result
            )
            return cls(values, errors)
        outcomes = cast("list[Outcome]", result)
        return cls(
            [value if ok else None for ok, value, _ in outcomes],
            {i: (value, text) for i, (ok, value, text) in enumerate(outcomes) if not ok},
        )

    def then(self, more: ChunkResult) -> ChunkResult:
        """This chunk's items followed by ``more``'s."""
        offset = len(self.values)
        errors = dict(self.errors)
        errors.update((offset + i, error) for i, error in more.errors.items())
        return ChunkResult(self.values + more.values, errors)


class Value:
    """A task's result (for a chunk: its :class:`ChunkResult`, or what ``ChunkResult.of`` takes)."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value


class Cancelled:
    """The engine cancelled the task (a restart, a lost client)."""

    __slots__ = ()


class Resubmit:
    """The task was lost to the pool's own stopping of another task: run it again.

    Ray's ``ray.cancel`` can hit the next task of the worker that ran the one
    cancelled. Such a task is submitted again (it may have run in part: as for a
    local pool's neighbours of a killed item) up to :data:`MAX_RESUBMITS` times
    without spending its ``retries``; then it fails with ``error``.
    """

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


#: How many times a task lost to the pool's own cancels is submitted again.
MAX_RESUBMITS = 3


class Continue:
    """A chunk stopped part-way; submit ``call`` (the rest) and keep ``done`` (its outcomes)."""

    __slots__ = ("call", "done", "retried")

    def __init__(self, call: object, done: ChunkResult, *, retried: bool) -> None:
        self.call = call
        self.done = done
        #: The item it stopped at runs again (a time limit, with retry_timeouts).
        self.retried = retried


class Lost:
    """What a chunk's future holds when its worker died after parts of it had run.

    ``done``: the outcomes of the items before the ones lost (see :class:`Continue`);
    ``error``: the :class:`~procpool.WorkerLostError` of the rest.
    """

    __slots__ = ("done", "error")

    def __init__(self, done: ChunkResult, error: BaseException) -> None:
        self.done = done
        self.error = error


#: How much a cancel needs the tasks stopped: ``"stop"``, running ones too
#: (``cancel()`` of a future, ``terminate()``); ``"unstarted"``, the ones that have
#: not started must not start (``shutdown(cancel_futures=True)``); ``"drop"``, the
#: results are not wanted and the rest is up to the engine (the read-ahead of an
#: ``imap`` left early).
CancelMode = Literal["stop", "unstarted", "drop"]

#: What :meth:`Backend.outcome` returns.
Result = Value | Cancelled | Continue | Resubmit | BaseException


class Backend(abc.ABC):
    """What one engine does for :class:`RemoteCore`: submit, watch, read, cancel, release."""

    #: The pool's class name, for messages ("DaskPool").
    label: str = ""
    #: :meth:`outcome` never blocks, so :meth:`RemoteCore.resolve` may run on the
    #: engine's own callback thread (saves a thread hop per task).
    resolve_inline: bool = False
    #: A worker's death can fail tasks other than the one that killed it (a Dask
    #: worker holds several: its threads', and the ones queued there), so a map
    #: item lost on its own is run once more alone before it fails (see
    #: ``_remote_chunks``).
    shares_workers: bool = False

    @abc.abstractmethod
    def submit(self, job: RemoteJob) -> tuple[str, Any]:
        """Send ``job.call`` to the engine; return a unique key and the engine's handle.

        Runs under the core's lock. Raises :class:`~procpool.SerializationError` if
        the call cannot be sent (a function or argument that does not pickle).
        """

    @abc.abstractmethod
    def watch(self, handle: Any, done: Callable[[], None]) -> None:
        """Call ``done()`` (on any thread) once the task of ``handle`` has ended."""

    @abc.abstractmethod
    def outcome(self, job: RemoteJob, handle: Any) -> Result:
        """The outcome of the ended task of ``handle``, translated into procpool's errors.

        An exception is returned, not raised: the task's own (with the remote
        traceback as ``__cause__``), :class:`~procpool.WorkerLostError`,
        :class:`~procpool.TaskTimeoutError`, :class:`~procpool.SerializationError`.
        """

    @abc.abstractmethod
    def cancel(self, handles: list[Any], *, mode: CancelMode) -> None:
        """Stop these tasks on the engine (on a helper thread; errors are logged).

        ``mode`` (see :data:`CancelMode`) says how much the caller needs them
        stopped; an engine does what it can, and may do more.
        """

    @abc.abstractmethod
    def parallelism(self) -> int:
        """How many tasks the cluster runs at once, right now (at least 1)."""

    @abc.abstractmethod
    def release(self) -> None:
        """Let go of what the pool made (a client, a cluster, a Ray instance).

        Called once the pool's work has ended, and again when a dropped pool is
        collected: a second call does nothing. It must not hold the core (a
        ``weakref.finalize`` calls it after the core is gone).
        """

    def from_worker(self, exc: BaseException) -> BaseException:
        """Turn a map item's failure from the worker (``_child.dask_chunk``) into procpool's error."""
        return exc


class RemoteCore:
    """What a pool and its ``options()`` views share: the backend, lifecycle, tasks in flight."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.released = False
        self.state = Lifecycle.RUNNING
        # Guards state and jobs; ``idle`` is signalled whenever jobs becomes empty.
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)
        # Holding the engine's handle is what keeps a task alive (Dask releases a
        # task whose last future is garbage-collected); the entry goes as soon as
        # the task is done, so neither handles nor inputs pile up.
        self.jobs: dict[str, RemoteJob] = {}
        tag = f"procpool-{backend.label.lower().removesuffix('pool')}"
        self.callbacks = CallbackRunner(f"{tag}-{id(self):x}")
        self.helpers = Threads(f"{tag}-fetch-{id(self):x}", 4)
        self.timers = Timers(f"{tag}-timers-{id(self):x}")
        #: Items of a map count one each; the engine keeps the workers, so no busy time.
        self.counters = Counters()

    def closed_error(self) -> PoolClosedError:
        return PoolClosedError(
            f"the {self.backend.label} is {self.state.value}; submit work before close(), "
            "terminate() or the end of its with-block"
        )

    def check_open(self) -> None:
        with self.lock:
            if self.state is not Lifecycle.RUNNING:
                raise self.closed_error()

    def parallelism(self) -> int:
        return self.backend.parallelism()

    def cancel_unstarted(self) -> None:
        """``shutdown(cancel_futures=True)``: cancel every unfinished task.

        Neither engine tells the client which tasks have started: running ones are
        cancelled too (an engine that can stop one gently does).
        """
        self.cancel_all(mode="unstarted")

    def wait_for_end(self, timeout: float | None) -> bool:
        """Wait until no task is in flight and the callbacks have run; then let the engine go."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self.callbacks.leave_pending()
        with self.lock:
            while self.jobs:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self.idle.wait(remaining)
        self.helpers.close()
        self.timers.close()
        self.callbacks.close()
        done = self.callbacks.join(
            None if deadline is None else max(0.0, deadline - time.monotonic())
        )
        if done:
            self.release()
        return done

    # -- submitting -----------------------------------------------------------------------

    def launch(
        self, name: str, call: object, opts: Options, *, user_facing: bool
    ) -> tuple[str, Future[Any]]:
        """Submit ``call``; return its key and a procpool future bridged to it.

        Raises:
            PoolClosedError: the pool is closed or terminated.
        """
        fut: Future[Any] = Future()
        if user_facing:
            fut.set_callback_runner(self.callbacks)
        job = self._job(name, call, fut, opts, count=user_facing)
        with self.lock:
            if self.state is not Lifecycle.RUNNING:
                raise self.closed_error()
            key = self._submit_locked(job)
        if user_facing:
            self.counters.add(submitted=1)
        if key is None:
            self._counted(job)  # it would not pickle: failed at once
        else:
            fut.set_cancel_hook(lambda _was_running: self.cancel_keys([key]))
            self._watch(key, job)
        return key or "", fut

    def launch_later(
        self, name: str, call: object, opts: Options, *, delay: float = 0.0, attempts: int = 0
    ) -> tuple[str, Future[Any]]:
        """Submit ``call`` ``delay`` seconds from now, for work already under way.

        The rest of a map's chunk, run again after a loss, or an item run again
        after its exception: allowed after ``close()`` (the map was accepted
        before), never after ``terminate()``. The job is in :attr:`jobs` at once,
        so ``join()`` waits for it and its key cancels it while it waits; the
        submission itself happens on a helper thread (never on an engine's own
        callback thread). ``attempts``: times the work has been run again already.

        Raises:
            PoolClosedError: the pool is terminated.
        """
        fut: Future[Any] = Future()
        job = self._job(name, call, fut, opts, count=False)
        job.attempts = attempts
        job.claimed = True  # no handle yet: nothing to cancel on the engine
        key = job.id = f"{name}-{uuid.uuid4().hex}"
        with self.lock:
            if self.state is Lifecycle.TERMINATED:
                raise self.closed_error()
            self.jobs[key] = job
        fut.set_cancel_hook(lambda _was_running: self.cancel_keys([key]))
        submit = functools.partial(self._submit_again, key, job, None, False, False)
        if delay > 0:
            self.timers.call_later(delay, functools.partial(self.helpers, submit))
        else:
            self.helpers(submit)
        return key, fut

    @staticmethod
    def _job(name: str, call: object, fut: Future[Any], opts: Options, *, count: bool) -> RemoteJob:
        return RemoteJob(
            name,
            call,
            fut,
            opts.retries,
            opts.retry_timeouts,
            count=count,
            retry_on=opts.retry_on,
            backoff=opts.backoff,
            priority=opts.priority,
        )

    def _counted(self, job: RemoteJob) -> None:
        """Count the end of a ``submit``'s job, once (its future is done)."""
        with self.lock:
            if not job.count:
                return
            job.count = False
        fut = job.future
        if fut.cancelled():
            self.counters.add(cancelled=1)
        elif isinstance(fut.exception(), TaskTimeoutError):
            self.counters.add(failed=1, timed_out=1)
        elif fut.exception() is not None:
            self.counters.add(failed=1)
        else:
            self.counters.add(completed=1)

    def _submit_locked(self, job: RemoteJob) -> str | None:
        """Submit ``job`` (again) and record it under its id; None if it would not pickle."""
        try:
            key, job.handle = self.backend.submit(job)
        except SerializationError as exc:
            job.future.try_set_exception(exc)
            return None
        job.id = job.id or key
        self.jobs[job.id] = job
        return job.id

    def _watch(self, key: str, job: RemoteJob) -> None:
        self.backend.watch(job.handle, functools.partial(self.on_done, key, job.handle))

    def cancel_keys(self, keys: list[str], *, mode: CancelMode = "stop") -> None:
        """Cancel these tasks on the engine and forget them (see :meth:`Backend.cancel`)."""
        with self.lock:
            jobs = [job for job in (self.jobs.pop(key, None) for key in keys) if job is not None]
            if not self.jobs:
                self.idle.notify_all()
        self._cancel_jobs(jobs, mode)

    def stop(self, state: Lifecycle) -> None:
        """Move to ``state`` (CLOSED or TERMINATED), never back."""
        with self.lock:
            if self.state is Lifecycle.RUNNING or state is Lifecycle.TERMINATED:
                self.state = state

    def cancel_all(self, *, mode: CancelMode = "stop") -> None:
        """Cancel every unfinished task, with one call to the engine."""
        with self.lock:
            jobs = list(self.jobs.values())
            self.jobs.clear()
            self.idle.notify_all()
        self._cancel_jobs(jobs, mode)

    def _cancel_jobs(self, jobs: list[RemoteJob], mode: CancelMode) -> None:
        """End the futures of jobs already forgotten, then stop their tasks on the engine."""
        for job in jobs:
            # A map's chunk passes this on to its MapFuture; its callback counts the items.
            job.future.abandon()
            self._counted(job)
        # Cancelling a task whose outcome is being read can leave that read waiting
        # forever inside distributed (seen with 2026.8), holding a helper thread and
        # the task. Such a job is dropped instead: the read ends, finds the job gone,
        # and throws the outcome away. ``claimed`` and the removal from ``jobs`` both
        # happen under the core's lock, so each job is either read or cancelled.
        handles = [job.handle for job in jobs if not job.claimed and job.handle is not None]
        if handles:
            # On a helper thread: a dropped imap may be finalized on the engine's own
            # thread, where a blocking cancel cannot run.
            self.helpers(functools.partial(self._cancel_on_engine, handles, mode))

    def _cancel_on_engine(self, handles: list[Any], mode: CancelMode) -> None:
        try:
            self.backend.cancel(handles, mode=mode)
        except Exception:  # the engine may be closing already; the tasks die with it
            LOGGER.debug("could not cancel %d tasks", len(handles), exc_info=True)

    # -- outcomes ---------------------------------------------------------------------------

    def on_done(self, key: str, handle: Any) -> None:
        """The engine says the task of ``handle`` ended (runs on the engine's thread)."""
        if self.backend.resolve_inline:
            self.resolve(key, handle)
        else:
            self.helpers(functools.partial(self.resolve, key, handle))

    def resolve(self, key: str, handle: Any) -> None:
        """Resolve a job's future from its ended task, or submit it again."""
        with self.lock:
            job = self.jobs.get(key)
            if job is not None and job.handle is not handle:
                job = None  # an earlier attempt's, which a retry replaced
            if job is not None:
                job.claimed = True
        if job is None:  # cancelled or terminated meanwhile: its future is already done
            return
        try:
            outcome = self.backend.outcome(job, handle)
        except BaseException as exc:  # never leave a future hanging
            outcome = exc
        if isinstance(outcome, Resubmit):
            if job.resubmits < MAX_RESUBMITS:
                job.resubmits += 1
                self._again(key, job, outcome.error, spend=False, count=True)
                return
            outcome = outcome.error
        if isinstance(outcome, Continue):
            job.done_items = (
                outcome.done if job.done_items is None else job.done_items.then(outcome.done)
            )
            job.call = outcome.call
            self._again(key, job, None, spend=False, count=outcome.retried)
            return
        if isinstance(outcome, BaseException) and self._retry(key, job, outcome):
            return
        if isinstance(outcome, Cancelled):
            job.future.abandon()  # cancelled from the engine's side (a restart, a lost client)
        elif isinstance(outcome, BaseException) and job.done_items is not None:
            # A chunk that had gone on elsewhere: keep what its items gave before.
            job.future.try_set_result(Lost(job.done_items, outcome))
        elif isinstance(outcome, BaseException):
            job.future.try_set_exception(outcome)
        elif job.done_items is not None:
            # A chunk that went on elsewhere: what it ran before, then the rest.
            job.future.try_set_result(job.done_items.then(ChunkResult.of(outcome.value)))
        else:
            job.future.try_set_result(outcome.value)
        self._counted(job)
        with self.lock:
            self.jobs.pop(key, None)
            if not self.jobs:
                self.idle.notify_all()

    def _retry(self, key: str, job: RemoteJob, exc: BaseException) -> bool:
        """Submit ``job`` again if its failure calls for it; True if it was (or will be).

        Due after a lost worker, a time limit (``retry_timeouts``), or an
        exception of the ``retry_on`` types, while ``retries`` last; each retry
        waits its backoff first. A ``retry_on`` error that is not retried any more
        gets a note saying how many attempts were made, as on ``Pool``.
        """
        of_type = bool(job.retry_on) and isinstance(exc, job.retry_on)
        due = (
            of_type
            or isinstance(exc, WorkerLostError)
            or (job.retry_timeouts and isinstance(exc, TaskTimeoutError))
        )
        if not due:
            return False
        if job.retries_left <= 0:
            if of_type and job.attempts:
                add_note(exc, attempts_note(job.attempts + 1))
            return False
        job.attempts += 1
        delay = backoff_delay(job.backoff, job.attempts)
        self._again(key, job, exc, spend=True, count=True, delay=delay)
        return True

    def _again(
        self,
        key: str,
        job: RemoteJob,
        exc: BaseException | None,
        *,
        spend: bool,
        count: bool,
        delay: float = 0.0,
    ) -> None:
        """Submit ``job.call`` again under the same key (a retry, or the rest of a chunk).

        ``spend``: this uses one of the job's retries; ``count``: it counts in
        ``stats().retried``. If the job was cancelled meanwhile, nothing is
        submitted; if the pool was terminated, the job fails with ``exc`` (or is
        cancelled, without one). ``delay``: seconds to wait first (in :attr:`timers`,
        holding no worker).
        """
        submit = functools.partial(self._submit_again, key, job, exc, spend, count)
        if delay > 0:
            self.timers.call_later(delay, functools.partial(self.helpers, submit))
        elif self.backend.resolve_inline:
            # Not on the engine's callback thread: its other callbacks would wait.
            self.helpers(submit)
        else:
            submit()

    def _submit_again(
        self, key: str, job: RemoteJob, exc: BaseException | None, spend: bool, count: bool
    ) -> None:
        error: BaseException | None = None
        with self.lock:
            # Under the lock, with the job left in ``jobs``: a cancel either came
            # first (the job is gone) or finds the new handle to cancel.
            submitted = self.jobs.get(key) is job and self.state is not Lifecycle.TERMINATED
            if submitted:
                if spend:
                    job.retries_left -= 1
                job.claimed = False
                try:
                    submitted = self._submit_locked(job) is not None  # else it failed the future
                except Exception as failure:  # the engine is going away: never leave it hanging
                    error = failure
                    submitted = False
            if not submitted:
                if self.jobs.get(key) is job:
                    del self.jobs[key]
                if not self.jobs:
                    self.idle.notify_all()
        if not submitted:
            # Outside the lock: a chunk's future delivers into its map right here.
            failed = error if error is not None else exc
            if failed is None:
                job.future.abandon()
            else:
                job.future.try_set_exception(failed)
            self._counted(job)
            return
        if count:
            self.counters.add(retried=1)
        self._watch(key, job)

    # -- shutting down ----------------------------------------------------------------------

    def release(self) -> None:
        with self.lock:
            if self.released:
                return
            self.released = True
        try:
            self.backend.release()
        except Exception:
            LOGGER.exception("error while releasing %s's engine", self.backend.label)


def attempts_note(attempts: int) -> str:
    """The note on the last error of a task (or item) run ``attempts`` times, as on ``Pool``."""
    return f"procpool: {attempts} attempts were made; this is the error of the last"


def drop(release: Callable[[], None], *closers: Callable[[], None]) -> None:
    """Stop a dropped pool's threads, then let its engine go (a ``weakref.finalize``)."""
    for close in closers:
        close()
    try:
        release()
    except Exception:  # interpreter shutdown, or the engine is closing already
        LOGGER.debug("could not release an engine", exc_info=True)

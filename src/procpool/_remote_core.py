"""What the pools on a remote engine share: tasks in flight, retries, cancelling, the lifecycle.

``DaskPool`` and ``RayPool`` hand their work to an engine that runs it on a
cluster (``dask.distributed``, Ray). Everything that does not depend on which
engine lives here, in :class:`RemoteCore`; what does (how to submit a call, learn
that it ended, read its outcome, stop it) is the engine's ``Backend``
(:mod:`._remote_backend`; ``._dask_core.DaskBackend``, ``._ray_core.RayBackend``).
The data flow of one task::

    RemotePool.submit ── RemoteCore.launch ── Backend.submit(job) ──> the engine runs it
         │                the job is kept in ``RemoteCore.jobs`` until it is done
         │                (an engine may drop a task whose handle is garbage-collected)
         ▼
    the engine says it ended: Backend.watch calls ``RemoteCore.on_done`` (on the
    engine's thread); ``RemoteCore.resolve`` runs there or on one of the core's
    helper threads (``Backend.resolve_inline``), asks ``Backend.outcome`` for the
    result or the exception (already translated into procpool's errors), submits
    again if a retry (or the rest of a chunk) is due (after its backoff, held in
    ``RemoteCore.timers``), else resolves the procpool Future and forgets the job
         │
         ▼
    the pool's callback runner runs the user's callbacks (then/catch/add_done_callback),
    so a callback that blocks never stalls the engine's own threads.

``map`` and ``imap`` send chunks of items; the engine runs them with
``_child.dask_chunk.run_chunk`` (or ``_child.ray_chunk``), which catches each
item's exception separately and returns one outcome per item;
``_remote_chunks.Chunks`` copies them into the map's ``MapFuture``, so items fail
exactly as they would in a serial ``map``, runs an item again after a
``retry_on`` error, and cuts a chunk whose worker died into smaller ones.

This module owns the tasks in flight; it calls the futures' executor methods and
nothing of the local pool, and imports no engine.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from ._callbacks import CallbackRunner
from ._errors import (
    PoolClosedError,
    SerializationError,
    TaskTimeoutError,
    WorkerLostError,
    add_note,
)
from ._events import EventHook, Events, TaskFinished, TaskQueued, now
from ._events import Outcome as EventOutcome
from ._future import Future
from ._lifecycle import Lifecycle
from ._options import Options, backoff_delay
from ._remote_backend import (
    MAX_RESUBMITS,
    Backend,
    Cancelled,
    CancelMode,
    ChunkResult,
    Continue,
    Lost,
    RemoteJob,
    Resubmit,
    Result,
    Value,
)
from ._remote_threads import Threads, Timers
from ._stats import Counters

LOGGER = logging.getLogger("procpool")


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
        #: The ``on_event`` hook's deliverer (see :meth:`watch`); None: no events are made.
        self.events: Events | None = None

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
        self,
        name: str,
        call: object,
        opts: Options,
        *,
        user_facing: bool,
        title: str = "",
        items: int = 1,
        future: Future[Any] | None = None,
    ) -> tuple[str, Future[Any]]:
        """Submit ``call``; return its key and a procpool future bridged to it.

        ``user_facing``: a ``submit`` (its future is the caller's), not a map's
        chunk. ``title`` and ``items``: what its ``TaskFinished`` events say.
        ``future``: the one to resolve (made here if None).

        Raises:
            PoolClosedError: the pool is closed or terminated.
        """
        fut: Future[Any] = Future() if future is None else future
        if user_facing:
            fut.set_callback_runner(self.callbacks)
        job = self._job(name, call, fut, opts, count=user_facing, title=title, items=items)
        job.chunk = not user_facing
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
        self,
        name: str,
        call: object,
        opts: Options,
        *,
        delay: float = 0.0,
        attempts: int = 0,
        title: str = "",
        items: int = 1,
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
        job = self._job(name, call, fut, opts, count=False, title=title, items=items)
        job.chunk = True
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
    def _job(
        name: str,
        call: object,
        fut: Future[Any],
        opts: Options,
        *,
        count: bool,
        title: str,
        items: int,
    ) -> RemoteJob:
        return RemoteJob(
            name,
            call,
            fut,
            opts.retries,
            opts.retry_timeouts,
            count=count,
            title=title,
            items=items,
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
        if self.events is not None:
            job.submitted_at, job.stamp = time.time(), None
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
            if self.events is not None and job.handle is not None:
                self._report(job, Cancelled())
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
        if self.events is not None:
            self._report(job, outcome)
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

    # -- events ---------------------------------------------------------------------------------

    def watch(self, pool: str, hook: EventHook) -> None:
        """Send this pool's events to ``hook`` (``on_event``), on the callback thread."""
        self.events = Events(pool, hook, self.callbacks)
        self.backend.watch_workers(self.events)

    def queued(self, title: str, items: int, priority: int) -> None:
        """Tell the hook a submission came (``TaskQueued``); only with :attr:`events`."""
        events = self.events
        assert events is not None
        events.emit(TaskQueued(events.pool, title, items, priority, now()))

    def _report(self, job: RemoteJob, outcome: Result) -> None:
        """Tell the hook that one run of ``job`` ended (``TaskFinished``)."""
        events = self.events
        assert events is not None
        failed = job.items
        if isinstance(outcome, Value):
            failed = len(ChunkResult.of(outcome.value).errors) if job.chunk else 0
            ended: EventOutcome = "failed" if failed else "completed"
        elif isinstance(outcome, Continue):
            ended, failed = "timed_out", 1  # a chunk that stopped at an item past its limit
        elif isinstance(outcome, Cancelled):
            ended, failed = "cancelled", 0
        elif isinstance(outcome, (Resubmit, WorkerLostError)):
            ended = "lost"
        elif isinstance(outcome, TaskTimeoutError):
            ended = "timed_out"
        else:
            ended = "failed"
        queued = ran = 0.0
        pid = None
        if job.stamp is not None:
            started, ran, pid = job.stamp
            # Two clocks (the worker's and the client's) where they are two machines.
            queued = max(0.0, started - job.submitted_at)
        events.emit(
            TaskFinished(events.pool, job.title, ended, job.items, failed, queued, ran, pid, now())
        )

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

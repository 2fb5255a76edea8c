"""The settler: what replies and deaths mean for the futures, the queue and the counters.

A reply resolves a task, or delivers a batch of a map's items. A dead, killed or
timed-out worker fails exactly the item it was running (the shared marker says
which), or runs it again when retries are on. Every other item of its calls
goes back to the queue: those it had not started, those it had finished but
whose results it had not sent yet (they run twice), and a block of tiny items
it ran as one, whose item at fault is then found by running it again item by
item. ``terminate()`` and a broken pool end every
unfinished future at once. Every outcome is counted once, and only if it
reached its future.

The settler owns no state of its own: it changes futures, the queue, the
counters, and the calls of the worker at hand, always on a thread that holds the
dispatcher's lock. It is handed what it uses: the queue, the worker set (the
marker, draining a dead worker's pipe), the counters, the lifecycle and the
staffing (a reply, a retirement, a death); it never writes to a worker.
"""

from __future__ import annotations

import functools
import logging
import pickle
import time
from collections.abc import Callable
from typing import Any

from ._child import messages as m
from ._child.errors import Expired, NotPickled
from ._errors import (
    CRASH_SIGNALS,
    ProcpoolError,
    RemoteTraceback,
    SerializationError,
    TaskTimeoutError,
    WorkerLostError,
    add_note,
    describe_exitcode,
    loss_cause,
)
from ._events import Events, ExitCause, Outcome, TaskFinished, WorkerExited, exit_cause, now
from ._jobs import Call, Job, MapJob, SingleJob
from ._lifecycle import PoolLife
from ._mapfuture import MapFuture
from ._options import backoff_delay
from ._queue import WorkQueue
from ._staffing import Staffing
from ._stats import Counters
from ._tree import kill_tree
from ._workers import UNEXPECTED, Reply, Worker, WorkerSet

LOGGER = logging.getLogger("procpool")

#: A worker's exit cause when procpool killed it, by the reason it was killed.
_KILLED_FOR: dict[str, ExitCause] = {
    "timeout": "timeout",
    "cancelled": "cancel",
    "retired": "stuck",
}
#: The outcome of the call a worker ran when it was stopped, by the reason.
_ENDED_BY: dict[str, Outcome] = {"timeout": "timed_out", "cancelled": "cancelled", "died": "lost"}


class Settler:
    """Turns what workers send, and their deaths, into outcomes (see the module docstring)."""

    def __init__(
        self,
        queue: WorkQueue,
        workers: WorkerSet,
        stats: Counters,
        life: PoolLife,
        staffing: Staffing,
        events: Events,
    ) -> None:
        self._events = events
        self._queue = queue
        self._workers = workers
        self._stats = stats
        self._life = life
        self._staffing = staffing

    def on_reply(self, worker: Worker, reply: Reply) -> None:
        """Apply one reply. Takes its body out: a result yielded by an iterated map
        must not stay alive in a reply the dispatcher still holds (bpo-14406)."""
        call_id, status, elapsed = reply.call_id, reply.status, reply.elapsed
        if status == UNEXPECTED:
            return
        worker.replied = True
        self._staffing.replied()
        if status in (m.RELEASED, m.KEPT):
            lease = worker.leases.pop(call_id, None)
            if lease is not None:
                lease.end(status == m.RELEASED)
            return
        if status == m.RECYCLED:
            # Above its memory limit after a call: it exits before reading another,
            # so whatever it was sent meanwhile goes back to the queue now.
            worker.resident = int(elapsed)
            self._stats.recycled += 1
            self.give_up_calls(worker, "retired", None)
            self._staffing.retire(worker, "recycled")
            return
        if status == m.LOG:
            self._replay_log(reply.data)
            return
        if status == m.INIT_ERROR:
            self.on_init_error(worker, reply.data)
            return
        if worker.dying or not worker.outstanding or worker.outstanding[0].id != call_id:
            return  # a reply to a call we already gave up on
        call = worker.outstanding[0]
        job = call.job
        worker.busy += elapsed
        self._stats.busy[worker.slot] += elapsed
        body: Any = reply.body
        reply.body = None
        if reply.error is not None:
            exc = reply.error
            status = m.BAD_PICKLE
            body = (
                f"the result of {job.describe(call, call.start + call.worker_done)} could not "
                f"be unpickled in the parent ({type(exc).__name__}: {exc})"
            )
        del reply
        if status == m.ITEMS:
            offset, values, errors, final = body
            assert isinstance(job, MapJob)
            job.record_timing(len(values), elapsed)
            call.ran += elapsed
            failures: dict[int, BaseException] | None = None
            retried: list[int] = []
            if errors:
                failures = {}
                for index, e in errors.items():
                    error = self._remote_error(job, call, call.start + index, e)
                    if self._may_retry(job, call.start + index, error):
                        retried.append(index - offset)
                    else:
                        failures[index - offset] = error
            count = len(values)
            call.worker_done = offset + count
            # Counted only if stored: a cancelled map's items count as cancelled.
            if job.map_future.set_items(call.start + offset, values, failures, retried):
                failed = len(failures) if failures else 0
                call.failed += failed + len(retried)
                self._stats.completed += count - failed - len(retried)
                self._stats.failed += failed
                for index in retried:
                    self._retry(job, call, call.start + offset + index)
            if final:
                self.call_done(worker, call)
            return
        call.ran = elapsed
        if status == m.ERROR:
            error = self._remote_error(job, call, call.start, body)
            retry = self._may_retry(job, call.start, error)
            call.failed = 1
            # A task run again needs its call's shared segment as it is: it stays.
            timed_out = isinstance(error, TaskTimeoutError) and isinstance(body[0], Expired)
            self.call_done(
                worker, call, keep_lease=retry, outcome="timed_out" if timed_out else None
            )
            if retry:
                self._retry(job, call, call.start)
            else:
                self.resolve(job, exception=error)
            return
        if status != m.OK:
            call.failed = 1
        self.call_done(worker, call)
        if status == m.OK:
            self.resolve(job, result=body)
        else:  # BAD_PICKLE
            index = call.start + call.worker_done
            self.fail_call(
                job, call, index, SerializationError(f"{job.describe(call, index)}: {body}")
            )

    def _may_retry(self, job: Job, index: int, error: BaseException) -> bool:
        """Whether item ``index`` (the task) runs again after raising ``error``.

        If not, and ``error`` is of a type to retry, it gets a note saying how many
        attempts were made (all of them failed).
        """
        if not job.retry_on or not isinstance(error, job.retry_on):
            return False
        attempts = job.attempts_of(index)
        if attempts < job.retries:
            return True
        if attempts:
            note = f"procpool: {attempts + 1} attempts were made; this is the error of the last"
            add_note(error, note)
        return False

    def _retry(self, job: Job, call: Call, index: int) -> None:
        """Run item ``index`` of ``job`` (the task) again, after its backoff (see ``_queue``)."""
        self._stats.retried += 1
        attempt = job.count_attempt(index)
        resume: Callable[[], None]
        if isinstance(job, SingleJob):
            resume = functools.partial(job.requeue, call)
        else:
            assert isinstance(job, MapJob)
            resume = functools.partial(job.hand_back, index, index + 1)
        delay = backoff_delay(job.backoff, attempt)
        if delay > 0:
            self._queue.park(job, delay, resume)
        else:
            resume()
            self._queue.to_front(job)

    def _remote_error(
        self, job: Job, call: Call, index: int, body: tuple[BaseException | None, str]
    ) -> BaseException:
        exc, tb = body
        if exc is None:
            return SerializationError(
                f"{job.describe(call, index)} raised an exception that could not be sent "
                f"back (it does not pickle); its traceback:\n{tb}"
            )
        if isinstance(exc, NotPickled):
            return SerializationError(
                f"the result of {job.describe(call, index)} could not be pickled ({exc}); "
                "return only picklable data from tasks"
            )
        if isinstance(exc, Expired):
            # Reached its limit, was interrupted by the worker's alarm and stopped
            # within its grace period (see _child.alarm): the worker lives on. Only
            # this report counts as the pool's time limit: a TaskTimeoutError the
            # task raised itself is the task's own error.
            self._stats.timed_out += 1
            error = TaskTimeoutError(
                f"{job.describe(call, index)} ran past its time limit of {call.timeout:g} s: "
                "it was interrupted (TimeLimitInterrupt raised inside it) and stopped "
                f"within its grace period of {call.grace:g} s; its worker lives on",
                timeout=call.timeout,
                killed=False,
            )
            if tb:
                error.__cause__ = RemoteTraceback(tb)
            return error
        exc.__cause__ = RemoteTraceback(tb)
        return exc

    def call_done(
        self,
        worker: Worker,
        call: Call,
        *,
        keep_lease: bool = False,
        outcome: Outcome | None = None,
    ) -> None:
        """A call has ended with its worker's last reply: take it off the worker.

        ``outcome``: for the event, if not told by ``call.failed``.
        """
        worker.outstanding.popleft()
        if self._events.on:
            self._finished(worker, call, outcome or ("failed" if call.failed else "completed"))
        if call.lease is not None and not keep_lease:
            # Reusable once the worker says nothing of the call holds on to it.
            worker.leases[call.id], call.lease = call.lease, None
        if call.timeout is not None:
            self._workers.timed -= 1
        job = call.job
        if isinstance(job, MapJob):
            job.in_flight -= 1
            if job.map_future.done():
                job.release()

    def _finished(self, worker: Worker | None, call: Call, outcome: Outcome) -> None:
        """Tell the event hook that ``call`` ended."""
        job = call.job
        started = call.sent_at or time.monotonic()
        self._events.emit(
            TaskFinished(
                self._events.pool,
                job.title,
                outcome,
                call.stop - call.start,
                call.failed if outcome != "cancelled" else 0,
                started - job.queued_at if call.sent_at else 0.0,
                call.ran,
                worker.process.pid if worker is not None else None,
                now(),
            )
        )

    def resolve(
        self, job: Job, *, result: object = None, exception: BaseException | None = None
    ) -> None:
        job.release()
        # Counted only if it took: a future cancelled meanwhile counts as cancelled.
        future = job.future
        if (
            future.try_set_result(result)
            if exception is None
            else future.try_set_exception(exception)
        ):
            if exception is None:
                self._stats.completed += 1
            else:
                self._stats.failed += 1

    def count_failed_here(self, job: Job) -> None:
        """Count the items a map failed in the parent (unpicklable) while cutting calls."""
        if isinstance(job, MapJob) and job.failed_here:
            self._stats.failed += job.failed_here
            job.failed_here = 0

    def fail_call(self, job: Job, call: Call, first: int, error: BaseException) -> None:
        """Fail a whole call: a single job's future, or every unreported item of a chunk."""
        if isinstance(job, MapJob):
            for index in range(first, call.stop):
                self._stats.failed += job.map_future.set_item_exception(index, error)
            if job.map_future.done():
                job.release()
        else:
            self.resolve(job, exception=error)

    def _replay_log(self, data: bytes) -> None:
        try:
            fields = pickle.loads(memoryview(data)[m.REPLY_HEADER.size :])
            record = logging.makeLogRecord(fields)
            logging.getLogger(record.name).handle(record)
        except BaseException:
            LOGGER.exception("could not replay a log record from a worker")

    def on_init_error(self, worker: Worker, data: bytes) -> None:
        try:
            exc, tb = pickle.loads(memoryview(data)[m.REPLY_HEADER.size :])
        except BaseException as unpickle_error:
            exc, tb = unpickle_error, ""
        if exc is None:
            exc = ProcpoolError(f"the initializer raised an exception that does not pickle:\n{tb}")
        elif tb:
            exc.__cause__ = RemoteTraceback(tb)
        spec = self._workers.spec
        name = getattr(spec.initializer, "__qualname__", repr(spec.initializer))
        error = ProcpoolError(
            f"{spec.name}: the initializer {name} raised {type(exc).__name__}: {exc}; "
            "the pool is broken and starts no more workers (fix the initializer)"
        )
        error.__cause__ = exc
        self._life.break_with(error)
        self.fail_everything(error, cancel=False)

    def on_exit(self, worker: Worker) -> None:
        """A worker's sentinel fired: account for its calls, reap it, let staffing refill
        its slot (or break the pool: then every unfinished future fails)."""
        self._workers.drain(worker, self.on_reply)
        worker.process.join()
        exitcode = worker.process.exitcode
        oom: bool | None = None
        before_work = False
        if not worker.dying:
            # Calls are written to a worker as soon as it starts, so a worker that
            # dies while starting up has calls too; only the marker (reset when the
            # worker was started) says whether it began one.
            began = bool(worker.outstanding) and (
                self._workers.marker(worker)[0] == worker.outstanding[0].id
            )
            oom = worker.oom.killed(exitcode)
            if exitcode is not None and -exitcode in CRASH_SIGNALS:
                worker.crash = self._workers.crash_stack(worker)
            self.give_up_calls(worker, "died", exitcode, oom)
            retired = worker.retiring and exitcode == 0
            before_work = not retired and not worker.replied and not began
        if self._events.on:
            cause = (
                worker.exit_cause
                if worker.exit_cause is not None and (worker.dying or exitcode == 0)
                else exit_cause(loss_cause(exitcode, oom=oom))
            )
            self._events.emit(
                WorkerExited(
                    self._events.pool, worker.slot, worker.process.pid, exitcode, cause, now()
                )
            )
        self._workers.discard(worker)
        broken = self._staffing.exited(worker, exitcode, before_work=before_work, oom=oom)
        if broken is not None:
            self.fail_everything(broken, cancel=False)

    def kill(self, worker: Worker, reason: str) -> None:
        """Kill a worker now and settle its calls; the sentinel reaps it later."""
        if worker.dying:
            return
        self._workers.drain(worker, self.on_reply)
        worker.dying = True
        worker.exit_cause = _KILLED_FOR.get(reason, "unknown")
        kill_tree(worker.process.pid)
        self.give_up_calls(worker, reason, None)

    def give_up_calls(
        self, worker: Worker, reason: str, exitcode: int | None, oom: bool | None = None
    ) -> None:
        """Settle the calls of a worker that is gone: blame one item, hand back the rest.

        ``oom``: whether the out-of-memory killer killed it, where the system can tell.
        """
        calls = list(worker.outstanding)
        worker.outstanding.clear()
        self._workers.timed -= sum(call.timeout is not None for call in calls)
        if not calls:
            return
        mark_call, mark_item, _ = self._workers.marker(worker)
        head = calls[0]
        for call in calls[1:]:
            self._queue.requeue(call)
        job = head.job
        if self._events.on and mark_call == head.id:
            cancelled = reason == "cancelled" or job.future.cancelled()
            head.failed = 0 if cancelled else 1
            head.ran += (time.monotonic_ns() - self._workers.marker(worker)[2]) / 1e9
            self._finished(
                worker, head, "cancelled" if cancelled else _ENDED_BY.get(reason, "lost")
            )
        if job.future.done():
            if isinstance(job, MapJob):
                job.in_flight -= 1
            return
        if mark_call != head.id:
            self._queue.requeue(head)  # it never started
            return
        pid = worker.process.pid
        if isinstance(job, MapJob):
            job.in_flight -= 1
            running = head.start + max(mark_item, head.worker_done)
            # A block of tiny items is marked as a whole (see _worker._run_chunk):
            # any of it may have been the one running. A bound at or below the
            # next item is an earlier block's, left behind by per-item marking.
            block_stop = max(head.start + self._workers.block_stop(worker), running + 1)
            # Handed back back to front: the queue serves them in input order.
            job.hand_back(block_stop, head.stop)
            if block_stop == running + 1:
                self._blame(job, head, running, reason, exitcode, pid, oom, worker.crash)
            else:
                # Never with retries or a time limit: such chunks are marked item
                # by item. Which of the block was at fault is unknown, so none is
                # failed for it: the block runs again marked item by item, and the
                # item at fault is found (it runs twice).
                job.hand_back(running, block_stop, exact=True)
            # Finished, but their results died with the worker: they run again.
            job.hand_back(head.start + head.worker_done, running)
            if job.map_future.done():
                job.release()
            elif not job.exhausted:
                self._queue.to_front(job)
        else:
            self._blame(job, head, head.start, reason, exitcode, pid, oom, worker.crash)

    def _blame(
        self,
        job: Job,
        call: Call,
        index: int,
        reason: str,
        exitcode: int | None,
        pid: int | None,
        oom: bool | None,
        stack: str | None = None,
    ) -> None:
        """Fail (or retry) the one item that was running when its worker was stopped.

        ``stack``: the Python stack of a crash in native code, from the worker's
        faulthandler.
        """
        if reason == "cancelled":
            return
        timed_out = reason == "timeout"
        if timed_out:
            self._stats.timed_out += 1
        attempts = job.attempts_of(index)
        if attempts < job.retries and (not timed_out or job.retry_timeouts):
            self._retry(job, call, index)
            return
        error: BaseException
        if timed_out:
            late = (
                f"; it was interrupted (TimeLimitInterrupt raised inside it) and had not "
                f"stopped {call.grace:g} s later"
                if call.grace is not None
                else ""
            )
            error = TaskTimeoutError(
                f"{job.describe(call, index)} ran longer than its time limit of "
                f"{call.timeout:g} s{late}; its worker (pid {pid}) was killed and replaced",
                timeout=call.timeout,
            )
        else:
            tries = f" (after {attempts + 1} attempts)" if attempts else ""
            at_crash = f"; the task's stack at the crash:\n{stack}" if stack else ""
            error = WorkerLostError(
                f"{job.describe(call, index)}{tries}: its worker (pid {pid}) "
                f"{describe_exitcode(exitcode, oom=oom)}{at_crash}",
                exitcode=exitcode,
                pid=pid,
                cause=loss_cause(exitcode, oom=oom),
                stack=stack,
            )
        if isinstance(job, MapJob):
            self._stats.failed += job.map_future.set_item_exception(index, error)
        else:
            self.resolve(job, exception=error)

    def fail_everything(self, error: BaseException | None, *, cancel: bool) -> None:
        """End every unfinished future: cancel it, or fail it with ``error``."""
        with self._life.lock:
            jobs = {id(job): job for job in self._queue.take_all()}
        for worker in self._workers.values():
            for call in worker.outstanding:
                jobs[id(call.job)] = call.job
                if self._events.on and not call.job.future.done():
                    self._finished(
                        worker, call, "cancelled" if cancel or error is None else "failed"
                    )
                if call.lease is not None:
                    # Its segment goes now, not when the call object is collected
                    # (a future's wait hook may hold it for as long as the future).
                    call.lease.end(False)
                    call.lease = None
            worker.outstanding.clear()
            worker.dying = True
        self._workers.timed = 0
        for job in jobs.values():
            fut = job.future
            if fut.done():
                continue
            if cancel or error is None:
                self._stats.cancelled += items_left(job)
                fut.abandon()
            else:
                self._stats.failed += items_left(job)
                if isinstance(fut, MapFuture):
                    fut.fail_unfinished(error)
                else:
                    fut.try_set_exception(error)
            job.release()


def items_left(job: Job) -> int:
    """What a job still counts for in the stats: its items without an outcome, or 1."""
    fut = job.future
    return fut.unfinished() if isinstance(fut, MapFuture) else 1

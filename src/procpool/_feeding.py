"""Handing out calls: which worker gets which call, and when.

Idle workers first, each given the head of the queue; then, for ``map`` items so
fast that a round trip would idle the worker, one call of read-ahead behind a
busy worker's call of the same map or imap. A worker that has reached
``max_tasks_per_worker`` is sent STOP once idle. Work that no worker has been
handed stays in the queue, where it can still be cancelled: a future is marked
running, under its own lock, just before its call is written (:meth:`Feeder.send`).

The feeder owns no state: it moves calls from the queue to workers'
``outstanding`` lists and back, on a thread that holds the dispatcher's lock. It
is handed what it uses: the queue, the worker set (``write``), the lifecycle, the
staffing (to retire a spent worker) and the settler (``count_failed_here``).
"""

from __future__ import annotations

import contextlib
import time

from ._child import messages as m
from ._events import Events, TaskStarted, now
from ._jobs import Call, MapJob
from ._lifecycle import PoolLife
from ._queue import WorkQueue
from ._settle import Settler
from ._staffing import Staffing
from ._waiting import NONBLOCKING_WRITES
from ._workers import Worker, WorkerSet

#: Where writes block (Windows), calls larger than this go only to an idle worker:
#: a worker blocked writing its result while we are blocked writing its next call
#: would deadlock both. On POSIX the dispatcher never blocks on a write: what the
#: pipe does not take at once waits in the worker's output queue.
PREFETCH_MAX_BYTES = 32 * 1024


class Feeder:
    """Hands queued calls to workers (see the module docstring).

    Args:
        size: the pool's number of workers (a map's chunks are cut for it).
        max_tasks: calls a worker runs before it is replaced (None: no limit).
    """

    def __init__(
        self,
        queue: WorkQueue,
        workers: WorkerSet,
        life: PoolLife,
        staffing: Staffing,
        settler: Settler,
        events: Events,
        *,
        size: int,
        max_tasks: int | None,
    ) -> None:
        self._events = events
        self._queue = queue
        self._workers = workers
        self._life = life
        self._staffing = staffing
        self._settler = settler
        self._size = size
        self._max_tasks = max_tasks

    def send(self, worker: Worker, call: Call) -> bool:
        """Hand ``call`` to ``worker``; False if the worker is gone (the call is queued again).

        The future is marked running *before* the write, under its own lock, and a
        cancelled one is not sent: ``cancel()`` either came first (the call is
        dropped here: a cancelled task never starts) or finds the future running
        (its hook then stops this worker, which we hold the lock to record below).
        """
        if not call.job.future.try_start():
            self.drop(call)
            return True
        # Listed before it is written: a reply is checked against this list, maybe
        # by a thread that does not hold the lock (see _decode).
        worker.outstanding.append(call)
        try:
            self._workers.write(worker, call.data)
        except OSError:
            # The worker is gone; its sentinel will tell us. The call never started.
            worker.outstanding.pop()
            self._queue.requeue(call)
            return False
        if call.timeout is not None:
            self._workers.timed += 1
        worker.sent += 1
        if self._events.on:
            call.sent_at = time.monotonic()
            self._events.emit(
                TaskStarted(
                    self._events.pool,
                    call.job.title,
                    call.stop - call.start,
                    worker.process.pid,
                    worker.slot,
                    call.sent_at - call.job.queued_at,
                    now(),
                )
            )
        return True

    def drop(self, call: Call) -> None:
        """Forget a call that was cut but never sent (its future is done)."""
        job = call.job
        if isinstance(job, MapJob):
            job.in_flight -= 1
        if call.lease is not None:
            call.lease.end(True)  # no worker ever saw it
            call.lease = None

    def usable(self, worker: Worker) -> bool:
        """Whether ``worker`` may be handed more calls (neither dying, retiring nor spent)."""
        return (
            not worker.dying
            and not worker.retiring
            and (self._max_tasks is None or worker.sent < self._max_tasks)
        )

    def spends_workers(self) -> bool:
        """Whether workers retire after ``max_tasks_per_worker`` calls."""
        return self._max_tasks is not None

    def fill(self) -> None:
        """Hand queued calls to workers that have room."""
        if self._life.stopped():
            return
        queue = self._queue
        # Idle workers first, then one call of read-ahead for busy map workers.
        for depth in (0, 1):
            for worker in list(self._workers.values()):
                while queue and self.usable(worker) and len(worker.outstanding) == depth:
                    job = queue.head()
                    if job.future.done():
                        # Cancelled (the command its cancel hook queued comes later)
                        # or failed in the parent: none of it may start.
                        queue.discard(job)
                        continue
                    if depth == 1 and (
                        job.group is not worker.outstanding[0].job.group
                        or not job.read_ahead_pays()
                        or (
                            not NONBLOCKING_WRITES
                            and len(worker.outstanding[0].data) > PREFETCH_MAX_BYTES
                        )
                    ):
                        break
                    # A call read ahead waits in the worker's pipe, beyond the
                    # reach of priorities: where they are in use, it is short.
                    call = job.next_call(self._size, short=depth == 1 and queue.prioritized)
                    self._settler.count_failed_here(job)
                    if call is None or job.exhausted:
                        queue.discard(job)
                    if call is None:
                        continue
                    if (
                        depth == 1
                        and not NONBLOCKING_WRITES
                        and len(call.data) > PREFETCH_MAX_BYTES
                    ):
                        queue.requeue(call)
                        break
                    if not self.send(worker, call):
                        break
            if not queue:
                break
        self.retire_spent()

    def retire_spent(self) -> None:
        """Tell each idle worker that has run its ``max_tasks_per_worker`` calls to exit."""
        if self._max_tasks is None:
            return
        for worker in self._workers.values():
            if (
                not worker.retiring
                and not worker.dying
                and not worker.outstanding
                and worker.sent >= self._max_tasks
            ):
                self._staffing.retire(worker, "stopped")
                with contextlib.suppress(OSError):
                    self._workers.write(worker, m.CALL_HEADER.pack(0, m.STOP))

"""Handing out calls: which worker gets which call, and when.

Idle workers first, each given the head of the queue; then, for ``map`` items so
fast that a round trip would idle the worker, one call of read-ahead behind a
busy worker's call of the same map or imap. A worker that has reached
``max_tasks_per_worker`` is sent STOP once idle. Work that no worker has been
handed stays in the queue, where it can still be cancelled: a future is marked
running, under its own lock, just before its call is written (:meth:`Feeder.send`).

The feeder owns no state: it moves calls from the dispatcher's queue to workers'
``outstanding`` lists and back, on a thread that holds the dispatcher's lock. It
may call the dispatcher (queue, lifecycle, counters), the worker set (``write``)
and the settler (``count_failed_here``).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from ._child import messages as m
from ._executor import Lifecycle
from ._jobs import Call, MapJob, SingleJob
from ._waiting import NONBLOCKING_WRITES
from ._workers import Worker

if TYPE_CHECKING:
    from ._dispatcher import Dispatcher

#: Where writes block (Windows), calls larger than this go only to an idle worker:
#: a worker blocked writing its result while we are blocked writing its next call
#: would deadlock both. On POSIX the dispatcher never blocks on a write: what the
#: pipe does not take at once waits in the worker's output queue.
PREFETCH_MAX_BYTES = 32 * 1024


class Feeder:
    """Hands queued calls to workers (see the module docstring)."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.d = dispatcher

    def send(self, worker: Worker, call: Call) -> bool:
        """Hand ``call`` to ``worker``; False if the worker is gone (the call is queued again).

        The future is marked running *before* the write, under its own lock, and a
        cancelled one is not sent: ``cancel()`` either came first (the call is
        dropped here: a cancelled task never starts) or finds the future running
        (its hook then stops this worker, which we hold the lock to record below).
        """
        d = self.d
        if not call.job.future.try_start():
            self.drop(call)
            return True
        # Listed before it is written: a reply is checked against this list, maybe
        # by a thread that does not hold the lock (see _decode).
        worker.outstanding.append(call)
        try:
            d.workers.write(worker, call.data)
        except OSError:
            # The worker is gone; its sentinel will tell us. The call never started.
            worker.outstanding.pop()
            self.requeue(call)
            return False
        if call.timeout is not None:
            d.timed += 1
        worker.sent += 1
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
        return not worker.dying and not worker.retiring

    def fill(self) -> None:
        """Hand queued calls to workers that have room."""
        d = self.d
        if d.state is Lifecycle.TERMINATED or d.state is Lifecycle.BROKEN:
            return
        # Idle workers first, then one call of read-ahead for busy map workers.
        for depth in (0, 1):
            for worker in list(d.workers.values()):
                while d.queue and self.usable(worker) and len(worker.outstanding) == depth:
                    if d.max_tasks is not None and worker.sent >= d.max_tasks:
                        break
                    job = next(iter(d.queue.values()))
                    if job.future.done():
                        # Cancelled (the command its cancel hook queued comes later)
                        # or failed in the parent: none of it may start.
                        d.queue.pop(id(job), None)
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
                    call = job.next_call(d.size)
                    d.settler.count_failed_here(job)
                    if call is None or job.exhausted:
                        d.queue.pop(id(job), None)
                    if call is None:
                        continue
                    if (
                        depth == 1
                        and not NONBLOCKING_WRITES
                        and len(call.data) > PREFETCH_MAX_BYTES
                    ):
                        self.requeue(call)
                        break
                    if not self.send(worker, call):
                        break
            if not d.queue:
                break
        self._retire_spent()

    def _retire_spent(self) -> None:
        d = self.d
        if d.max_tasks is None:
            return
        for worker in d.workers.values():
            if (
                not worker.retiring
                and not worker.dying
                and not worker.outstanding
                and worker.sent >= d.max_tasks
            ):
                d.retire(worker)
                with contextlib.suppress(OSError):
                    d.workers.write(worker, m.CALL_HEADER.pack(0, m.STOP))

    def requeue(self, call: Call) -> None:
        """Give a call that never started back to its job, at the front of the queue."""
        d = self.d
        job = call.job
        if job.future.done():
            return
        if isinstance(job, SingleJob):
            job.requeue(call)
        elif isinstance(job, MapJob):
            job.in_flight -= 1
            job.hand_back(call.start + call.worker_done, call.stop, exact=call.exact)
        d.queue[id(job)] = job
        d.queue.move_to_end(id(job), last=False)

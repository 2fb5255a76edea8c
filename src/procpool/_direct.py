"""The direct path: a lone ``submit().result()`` that skips the dispatcher thread both ways.

The submitting thread writes a small, untimed call straight to an idle worker
(:meth:`DirectPath.send`, under the dispatcher's lock), and the thread that then
waits for the result reads the reply itself (:meth:`DirectPath.read_here`, the
future's wait hook): it *claims* the worker, so the dispatcher stops watching its
result pipe for at most ``CLAIM_SECONDS``. Each thread hop saved costs a wake-up
and a GIL hand-over, about 15-20 µs apiece here: most of a round trip.

It owns only the ``claimed``/``claims`` fields of a worker. It is handed what it
uses: the queue (it sends only when nothing waits there), the worker set (the
selector, ``decode``), the lifecycle, the feeder (``send``) and the settler
(``on_reply``), and a way to wake the dispatcher; it runs under the dispatcher's
lock but for the wait on the pipe itself.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

from ._feeding import Feeder
from ._jobs import Call, Job, SingleJob
from ._lifecycle import Lifecycle, PoolLife
from ._queue import WorkQueue
from ._settle import Settler
from ._workers import CLAIMS, RESULT, Worker, WorkerSet

#: Calls sent straight from a submitting thread stay below this size.
DIRECT_MAX_BYTES = 32 * 1024
#: How long a waiting thread reads a directly sent call's reply itself before it
#: hands the wait back to the dispatcher. Every way a call ends without a reply
#: (a death, a kill for cancel or terminate) closes the worker's sentinel, which
#: wakes the reader at once: this is only a bound for what nobody foresaw.
CLAIM_SECONDS = 0.1


class DirectPath:
    """Sends from the submitting thread and reads in the waiting one (see the module docstring)."""

    def __init__(
        self,
        queue: WorkQueue,
        workers: WorkerSet,
        life: PoolLife,
        feeder: Feeder,
        settler: Settler,
        *,
        size: int,
        nudge: Callable[[], None],
    ) -> None:
        self._queue = queue
        self._workers = workers
        self._life = life
        self._feeder = feeder
        self._settler = settler
        self._size = size
        #: Wakes the dispatcher if it may have something to do once a worker is free.
        self._nudge = nudge

    def send(self, job: Job) -> bool:
        """Give a small untimed task to an idle worker from the submitting thread.

        Saves the hop through the dispatcher thread (a thread switch and a wake-up),
        which is most of the latency of a lone ``submit().result()``. The caller
        holds ``lock``; the dispatcher sees the reply on the result pipe as usual.
        """
        life = self._life
        if (
            not isinstance(job, SingleJob)
            or job.timeout is not None
            or self._queue
            or life.state is not Lifecycle.RUNNING
            or life.exiting
        ):
            return False
        for worker in self._workers.values():
            if not worker.outstanding and self._feeder.usable(worker):
                call = job.next_call(self._size)
                if call is None or len(call.data) > DIRECT_MAX_BYTES:
                    if call is not None:
                        job.requeue(call)
                    return False
                # On failure send() has queued the call again; the caller wakes us.
                if not self._feeder.send(worker, call):
                    return False
                if CLAIMS:
                    job.future.set_wait_hook(functools.partial(self.read_here, worker, call))
                return True
        return False

    def read_here(self, worker: Worker, call: Call, timeout: float | None) -> None:
        """Wait for the reply to a directly sent call in the waiting thread (thread-safe).

        The future's wait hook: reads and applies the reply here instead of waiting
        for the dispatcher thread to do it and wake us. Returns once the call has
        ended, the worker is gone, or ``CLAIM_SECONDS`` (or ``timeout``) passed;
        the caller then waits on the future as usual.
        """
        life, workers = self._life, self._workers
        with life.lock:
            if not (
                life.state is Lifecycle.RUNNING
                and not life.exiting
                and workers.is_live(worker)
                and not worker.dying
                and not worker.claimed
                # An imap consumer reads its pipe (see _assist): the future is set
                # when it next looks, or when the dispatcher takes the pipe back.
                and not worker.driven
                and len(worker.outstanding) == 1
                and worker.outstanding[0] is call
            ):
                return
            with worker.read_lock:
                # The dispatcher has read a reply it has not applied yet (ours,
                # perhaps): waiting on the pipe for it would wait for nothing.
                if worker.unapplied:
                    return
                worker.claimed = True
                worker.claims += 1
            # By descriptor: the same registration, without asking the Connection.
            workers.waiter.unregister(worker.result_fd)
            poller = worker.wait_poll
            assert poller is not None
        claimed = True
        try:
            deadline = time.monotonic() + (
                CLAIM_SECONDS if timeout is None else min(timeout, CLAIM_SECONDS)
            )
            while True:
                left = deadline - time.monotonic()
                ready = poller.poll(left * 1000) if left > 0 else None
                if not ready:
                    return
                # The pipe itself is ready (not just the sentinel): no need to ask again.
                readable = len(ready) > 1 or ready[0][0] == worker.result_fd
                with life.lock:
                    if self._read_claimed(worker, call, readable):
                        claimed = False
                        self._unclaim(worker)  # under the same hold of the lock
                        return
        finally:
            if claimed:
                with life.lock:
                    self._unclaim(worker)

    def _read_claimed(self, worker: Worker, call: Call, readable: bool) -> bool:
        """Apply what a claimed worker sent; True once there is nothing left to wait for.

        ``readable``: the result pipe has just been seen ready.
        """
        workers = self._workers
        if not workers.is_live(worker) or worker.dying:
            return True
        while True:
            # Only the read means "exiting": an OSError out of applying a reply
            # (an error type of the task's, say) must not pass for a broken pipe.
            try:
                if not readable and not worker.reply_waiting():
                    return False
                readable = False
                data = worker.read()
            except (EOFError, OSError):
                return True  # exiting: the sentinel tells the dispatcher
            self._settler.on_reply(worker, workers.decode(worker, data))
            if not worker.outstanding or worker.outstanding[0] is not call:
                return True

    def _unclaim(self, worker: Worker) -> None:
        """Give a claimed worker's result pipe back to the dispatcher (holding ``lock``)."""
        worker.claimed = False
        if self._life.exiting or not self._workers.is_live(worker) or worker.dying:
            return  # its exit is the dispatcher's business, pipe or not
        # Level-triggered: a reply that came meanwhile wakes the dispatcher at once.
        self._workers.waiter.register(worker.result_fd, (worker, RESULT))
        # The worker is free: work may wait for it, or it may be due to retire, or
        # the pool may be done.
        self._nudge()

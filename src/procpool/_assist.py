"""Dispatcher work done on a user's thread, where that saves a hop between threads.

A thread that queues map work, or consumes an ``imap``, holds the GIL; the
dispatcher thread, woken for that work, gets the GIL only when this thread
blocks or after the interpreter's switch interval (5 ms). An ``imap`` whose
consumer keeps the GIL through 10 chunks of read-ahead in less time than that
found its next chunk not done, its workers idle, about one chunk in six, and
waited each time for two hand-overs of the GIL (B7). So, holding the
dispatcher's lock, such a thread does itself what the dispatcher would do:

* :meth:`Assist.hand_out` gives queued calls to the workers that have room, right after
  a map or an ``imap`` chunk is queued;
* :meth:`Assist.take_in` applies the replies already waiting on the workers' pipes (and
  hands out calls to the workers that frees), before an ``imap`` consumer looks
  at its next chunk.

Both are the dispatcher's own steps (``Feeder.fill``, ``Settler.on_reply``), run
while the pool is running, has no task counts to watch and all its workers
(deadlines, retirements and the start of new workers are the dispatcher's loop's). A reply read here is applied under the lock
before the next read, as the dispatcher applies its own, so each worker's
replies stay in order; a pipe read here counts as a claim (``Worker.claims``),
so the dispatcher looks before it reads one that woke it.

*Driving.* Even so, the dispatcher was woken by every reply, and took the GIL
from the consumer to read a third of them itself: two hand-overs of the GIL per
reply it read, and the consumer's thread on hold meanwhile (in B7 the parent's
time rose with the dispatcher's CPU, from 300 ms with 1 ms of it to 500 ms with
110 ms). So a consumer that keeps up (it found its last chunk done) *drives*:
:meth:`Assist.take_in` takes the workers' result pipes out of the dispatcher's
selector and reads every reply itself. It gives them back (:meth:`Assist.release`)
before it waits for a chunk, and when its ``imap`` ends; and the dispatcher takes
them back itself (:meth:`Assist.review`) once the consumer has not come for
``DRIVE_SECONDS`` (its loop body is slow, or it stopped iterating), or once the
pool has timed calls (whose replies must not wait behind the consumer), is
closing, or is below strength. Only the wake-up on the pipes moves: every read
and every reply applied is still under the lock, and the sentinels stay with the
dispatcher, so deaths are seen at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ._feeding import Feeder
from ._jobs import Job, MapJob
from ._lifecycle import Lifecycle, PoolLife
from ._queue import WorkQueue
from ._settle import Settler
from ._workers import CLAIMS, RESULT, Worker, WorkerSet

#: A consumer drives only if it looks again within this time (a slower one gains
#: nothing), and the dispatcher takes the pipes back once it has stayed away this
#: long: the most a reply waits for a consumer that stopped coming. Of the order
#: of the GIL's switch interval, which a thread waiting for the GIL waits already.
DRIVE_SECONDS = 0.005
#: At most this many rounds of reads per look while driving: a worker that replies
#: faster than they go cannot hold the consumer here.
_DRIVE_ROUNDS = 8


class Assist:
    """The dispatcher's steps that a user's thread may take itself (see the module docstring)."""

    def __init__(
        self,
        queue: WorkQueue,
        workers: WorkerSet,
        life: PoolLife,
        feeder: Feeder,
        settler: Settler,
        *,
        size: int,
        wake: Callable[[], None],
    ) -> None:
        self._queue = queue
        self._workers = workers
        self._life = life
        self._feeder = feeder
        self._settler = settler
        self._size = size
        #: Wakes the dispatcher, so that it starts to review a drive.
        self._wake = wake
        #: The workers whose result pipes a consumer drives (see the module docstring).
        self._driven: list[Worker] = []
        #: When a consumer last looked (``time.monotonic()``).
        self._looked_at = -DRIVE_SECONDS
        #: A consumer waited for a chunk since it last looked: it does not keep up.
        self._waited = False

    def _may_help(self) -> bool:
        """Whether this thread may do the dispatcher's work now (holding ``lock``)."""
        life = self._life
        return (
            life.state is Lifecycle.RUNNING
            and not life.exiting
            and not self._feeder.spends_workers()
            # An elastic pool below strength: starting workers is the dispatcher's.
            and len(self._workers) >= self._size
        )

    def hand_out(self, job: Job) -> bool:
        """After ``job`` was queued: hand out calls here; True if the dispatcher need not wake.

        The caller holds the lock. Only for untimed map work: a deadline is the
        dispatcher's to watch, and a single call has its own direct path.
        """
        if not isinstance(job, MapJob) or job.timeout is not None or not self._may_help():
            return False
        self._feeder.fill()
        # Whatever is still queued goes out when a reply wakes the dispatcher; with
        # nothing in flight, no reply will, so wake it.
        return any(w.outstanding for w in self._workers.values())

    def take_in(self) -> None:
        """Apply the replies waiting on the workers' pipes, then hand out queued calls.

        Drives the result pipes (see the module docstring) if the consumer keeps
        up: it did not wait for its last chunk, and looked last less than
        ``DRIVE_SECONDS`` ago.
        """
        workers = self._workers
        with self._life.lock:
            if not self._may_help():
                return
            now = time.monotonic()
            keeps_up = not self._waited and now - self._looked_at < DRIVE_SECONDS
            self._waited = False
            self._looked_at = now
            if keeps_up and CLAIMS and not workers.timed:
                self._drive()
            elif self._driven:
                self._give_back()
            for _ in range(_DRIVE_ROUNDS):
                read = False
                for worker in workers.with_replies():
                    if worker.dying or worker.claimed:
                        continue
                    with worker.read_lock:
                        # Read by the dispatcher, not yet applied: it applies it. Otherwise
                        # what the look above found is still there (only a holder of the
                        # lock, which we are, could have applied it since).
                        if worker.unapplied:
                            continue
                        worker.claims += 1
                        try:
                            data = worker.read()
                        except (EOFError, OSError):
                            continue  # exiting: its sentinel tells the dispatcher
                    self._settler.on_reply(worker, workers.decode(worker, data))
                    read = True
                # Not driving, one reply per worker: the next look (before the next
                # chunk) finds the rest, without a system call now to ask whether
                # there is more. Driving, nobody else reads them.
                if not read or not self._driven:
                    break
            if self._queue:
                self._feeder.fill()
            if self._driven and workers.timed:
                # That fill sent a timed call: its reply must not wait for us.
                self._give_back()

    def release(self) -> None:
        """A consumer is about to wait, or is done: give the result pipes back."""
        if not self._driven:
            # Unlocked: at worst a consumer elsewhere drives one look longer.
            self._waited = True
            return
        with self._life.lock:
            self._waited = True
            if self._driven:
                self._give_back()

    def review(self) -> float | None:
        """The dispatcher's check of a drive, holding ``lock``: seconds until the next.

        Takes the pipes back if the consumer has stayed away ``DRIVE_SECONDS`` or
        may no longer help; None when nothing is driven (no check is due).
        """
        if not self._driven:
            return None
        left = self._looked_at + DRIVE_SECONDS - time.monotonic()
        if left <= 0 or self._workers.timed or not self._may_help():
            self._give_back()
            return None
        return left

    def _drive(self) -> None:
        """Take the live workers' result pipes from the dispatcher's selector (holding ``lock``)."""
        workers = self._workers
        started = not self._driven
        for worker in workers.values():
            # A claimed worker is a waiting thread's (see _direct); it gives it back.
            if worker.driven or worker.claimed or worker.dying:
                continue
            workers.waiter.unregister(worker.result_fd)
            worker.driven = True
            self._driven.append(worker)
        if started and self._driven:
            # The dispatcher may be waiting with no time limit: it must set one.
            self._wake()

    def _give_back(self) -> None:
        """Put the driven result pipes back in the dispatcher's selector (holding ``lock``)."""
        workers = self._workers
        exiting = self._life.exiting
        for worker in self._driven:
            worker.driven = False
            if not exiting and workers.is_live(worker) and not worker.dying:
                # Level-triggered: a reply that came meanwhile wakes the dispatcher at once.
                workers.waiter.register(worker.result_fd, (worker, RESULT))
        self._driven.clear()

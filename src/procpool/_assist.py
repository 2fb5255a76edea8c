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
"""

from __future__ import annotations

from ._feeding import Feeder
from ._jobs import Job, MapJob
from ._lifecycle import Lifecycle, PoolLife
from ._queue import WorkQueue
from ._settle import Settler
from ._workers import WorkerSet


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
    ) -> None:
        self._queue = queue
        self._workers = workers
        self._life = life
        self._feeder = feeder
        self._settler = settler
        self._size = size

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
        """Apply the replies waiting on the workers' pipes, then hand out queued calls."""
        workers = self._workers
        with self._life.lock:
            if not self._may_help():
                return
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
                # One reply per worker: the next look (before the next chunk) finds the
                # rest, without a system call now to ask whether there is more.
                self._settler.on_reply(worker, workers.decode(worker, data))
            if self._queue:
                self._feeder.fill()

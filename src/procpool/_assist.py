"""Dispatcher work done on a user's thread, where that saves a hop between threads.

A thread that queues map work, or consumes an ``imap``, holds the GIL; the
dispatcher thread, woken for that work, gets the GIL only when this thread
blocks or after the interpreter's switch interval (5 ms). An ``imap`` whose
consumer keeps the GIL through 10 chunks of read-ahead in less time than that
found its next chunk not done, its workers idle, about one chunk in six, and
waited each time for two hand-overs of the GIL (B7). So, holding the
dispatcher's lock, such a thread does itself what the dispatcher would do:

* :func:`hand_out` gives queued calls to the workers that have room, right after
  a map or an ``imap`` chunk is queued;
* :func:`take_in` applies the replies already waiting on the workers' pipes (and
  hands out calls to the workers that frees), before an ``imap`` consumer looks
  at its next chunk.

Both are the dispatcher's own steps (``Feeder.fill``, ``Settler.on_reply``), run
while the pool is running and has no time limits or task counts to watch, which
only the dispatcher's loop keeps. A reply read here is applied under the lock
before the next read, as the dispatcher applies its own, so each worker's
replies stay in order; a pipe read here counts as a claim (``Worker.claims``),
so the dispatcher looks before it reads one that woke it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._executor import Lifecycle
from ._jobs import Job, MapJob

if TYPE_CHECKING:
    from ._dispatcher import Dispatcher


def _may_help(d: Dispatcher) -> bool:
    """Whether this thread may do the dispatcher's work now (holding ``lock``)."""
    return d.state is Lifecycle.RUNNING and not d.exiting and d.max_tasks is None


def hand_out(d: Dispatcher, job: Job) -> bool:
    """After ``job`` was queued: hand out calls here; True if the dispatcher need not wake.

    The caller holds ``d.lock``. Only for untimed map work: a deadline is the
    dispatcher's to watch, and a single call has its own direct path.
    """
    if not isinstance(job, MapJob) or job.timeout is not None or not _may_help(d):
        return False
    d.feeder.fill()
    # Whatever is still queued goes out when a reply wakes the dispatcher; with
    # nothing in flight, no reply will, so wake it.
    return any(w.outstanding for w in d.workers.values())


def take_in(d: Dispatcher) -> None:
    """Apply the replies waiting on the workers' pipes, then hand out queued calls."""
    with d.lock:
        if not _may_help(d):
            return
        for worker in d.workers.with_replies():
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
            d.settler.on_reply(worker, d.workers.decode(worker, data))
        if d.queue:
            d.feeder.fill()

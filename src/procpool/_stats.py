"""The counters behind ``Pool.stats()`` and ``DaskPool.stats()``, and their snapshot.

One type for both pools. The local pool changes its counters under the
dispatcher's lock, which it hands in here, so one reply costs no second lock; the
Dask pool changes them from several threads through :meth:`Counters.add`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of a pool's counters, from :meth:`Pool.stats`.

    Items of a ``map`` or ``imap`` count one each. Every task or item the pool
    accepted (``submitted``) ends in exactly one of ``completed`` (a result),
    ``failed`` (an exception: its own, a lost worker, a time limit, an input or
    result that does not pickle, a pool broken by its initializer) or
    ``cancelled``; once all work has ended, the three add up to ``submitted``.
    ``timed_out`` counts the tasks and items that passed their time limit (with
    ``retry_timeouts``, a :class:`Pool` counts each attempt); ``retried`` counts
    attempts run again; ``recycled`` the workers replaced for their memory.
    ``busy_seconds`` has one entry per worker slot: time spent running tasks,
    summed over the workers that held the slot.
    """

    submitted: int
    completed: int
    failed: int
    cancelled: int
    timed_out: int
    retried: int
    workers_started: int
    workers_replaced: int
    busy_seconds: tuple[float, ...]
    #: Workers retired because their resident memory passed ``max_memory_per_worker``.
    #: Each is replaced (and counted in ``workers_replaced`` too) unless the pool is
    #: closed and has nothing left to run, as after a closed pool's last task.
    recycled: int = 0
    #: Workers that exited after ``idle_timeout`` seconds with nothing to do (an
    #: elastic pool); the workers started again when work came back are counted in
    #: ``workers_started``.
    idle_exits: int = 0


class Counters:
    """What a pool counts. Change the fields holding :attr:`lock`, or through :meth:`add`.

    Args:
        slots: worker slots whose busy time is counted (0 for Dask, whose
            dashboard shows that).
        lock: the lock that guards the fields (a new one by default).
    """

    def __init__(self, slots: int = 0, lock: Any = None) -> None:
        self.lock: Any = threading.Lock() if lock is None else lock
        self.submitted = 0
        self.completed = 0
        self.failed = 0
        self.cancelled = 0
        self.timed_out = 0
        self.retried = 0
        self.workers_started = 0
        self.workers_replaced = 0
        self.recycled = 0
        self.idle_exits = 0
        self.busy = [0.0] * slots

    def add(self, **counts: int) -> None:
        """Add to several counters at once, under the lock."""
        with self.lock:
            for name, count in counts.items():
                setattr(self, name, getattr(self, name) + count)

    def snapshot(self) -> PoolStats:
        """Every counter, read at one moment."""
        with self.lock:
            return PoolStats(
                submitted=self.submitted,
                completed=self.completed,
                failed=self.failed,
                cancelled=self.cancelled,
                timed_out=self.timed_out,
                retried=self.retried,
                workers_started=self.workers_started,
                workers_replaced=self.workers_replaced,
                busy_seconds=tuple(self.busy),
                recycled=self.recycled,
                idle_exits=self.idle_exits,
            )

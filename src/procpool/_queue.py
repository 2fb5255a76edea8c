"""The parent's queue of work: jobs that no worker has been handed all of yet.

Jobs wait here by priority (``options(priority=n)``: highest first), and within
one priority in the order they came (``submit``, ``map``, each ``imap`` chunk); a
job handed back (a call that never started, an item to run again) goes to the
front of its priority. Work that waits here can still be cancelled, and no
worker holds it. A retry that must wait (``backoff``) is *parked* here until it
is due: it holds no worker meanwhile.

Not thread-safe by itself: every method runs holding the dispatcher's lock.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import OrderedDict
from collections.abc import Callable

from ._jobs import Call, Job, MapJob, SingleJob


class WorkQueue:
    """Jobs by priority, in order within one, each at most once; and parked retries."""

    def __init__(self) -> None:
        #: Priority -> jobs in order. Levels are kept only while they hold jobs.
        self._levels: dict[int, OrderedDict[int, Job]] = {}
        #: The highest level (valid while there are jobs).
        self._top = 0
        #: (due, tie-breaker, job, action): retries waiting for their time.
        self._parked: list[tuple[float, int, Job, Callable[[], None]]] = []
        self._ties = itertools.count()
        #: Whether work of another priority than 0 has been queued.
        self.prioritized = False

    def __bool__(self) -> bool:
        return bool(self._levels)

    def __len__(self) -> int:
        return sum(len(level) for level in self._levels.values())

    def _level(self, job: Job) -> OrderedDict[int, Job]:
        level = self._levels.get(job.priority)
        if job.priority:
            self.prioritized = True
        if level is None:
            level = self._levels[job.priority] = OrderedDict()
            if len(self._levels) == 1 or job.priority > self._top:
                self._top = job.priority
        return level

    def add(self, job: Job) -> None:
        """Queue ``job`` at the back of its priority (where it is, if queued already)."""
        self._level(job)[id(job)] = job

    def to_front(self, job: Job) -> None:
        """Queue ``job`` at the front of its priority: it has work handed back."""
        level = self._level(job)
        level[id(job)] = job
        level.move_to_end(id(job), last=False)

    def head(self) -> Job:
        """The job whose calls go out next (the queue must not be empty)."""
        return next(iter(self._levels[self._top].values()))

    def discard(self, job: Job) -> None:
        """Forget ``job`` (done, cancelled, or everything handed out)."""
        level = self._levels.get(job.priority)
        if level is None or level.pop(id(job), None) is None or level:
            return
        del self._levels[job.priority]
        if self._levels and job.priority == self._top:
            self._top = max(self._levels)

    def jobs(self) -> list[Job]:
        """Every job, queued (highest priority first) or parked (a copy)."""
        queued = [
            job for p in sorted(self._levels, reverse=True) for job in self._levels[p].values()
        ]
        return queued + [job for _, _, job, _ in self._parked]

    def take_all(self) -> list[Job]:
        """Every job, queued or parked; the queue is empty afterwards."""
        jobs = self.jobs()
        self._levels.clear()
        self._parked.clear()
        return jobs

    def requeue(self, call: Call) -> None:
        """Give a call that never started back to its job, and its job to the front."""
        job = call.job
        if job.future.done():
            return
        if isinstance(job, SingleJob):
            job.requeue(call)
        elif isinstance(job, MapJob):
            job.in_flight -= 1
            job.hand_back(call.start + call.worker_done, call.stop, exact=call.exact)
        self.to_front(job)

    # -- parked retries ------------------------------------------------------------

    def park(self, job: Job, delay: float, resume: Callable[[], None]) -> None:
        """In ``delay`` s, ``resume()`` (it hands the work back) and queue ``job`` at the front."""
        heapq.heappush(self._parked, (time.monotonic() + delay, next(self._ties), job, resume))

    def parked(self) -> bool:
        """Whether retries wait for their time."""
        return bool(self._parked)

    def next_due(self) -> float | None:
        """Seconds until the next parked retry is due (None: none)."""
        if not self._parked:
            return None
        return max(0.0, self._parked[0][0] - time.monotonic())

    def unpark_due(self) -> None:
        """Queue the parked retries whose time has come (not those cancelled meanwhile)."""
        now = time.monotonic()
        while self._parked and self._parked[0][0] <= now:
            _, _, job, resume = heapq.heappop(self._parked)
            if not job.future.done():
                resume()
                self.to_front(job)

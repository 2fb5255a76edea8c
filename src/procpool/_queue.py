"""The parent's queue of work: jobs that no worker has been handed all of yet.

Jobs wait here in the order they came (``submit``, ``map``, each ``imap`` chunk);
a job handed back (a call that never started, an item to run again) goes to the
front. Work that waits here can still be cancelled, and no worker holds it.

Not thread-safe by itself: every method runs holding the dispatcher's lock.
"""

from __future__ import annotations

from collections import OrderedDict

from ._jobs import Call, Job, MapJob, SingleJob


class WorkQueue:
    """Jobs in order, each at most once."""

    def __init__(self) -> None:
        self._jobs: OrderedDict[int, Job] = OrderedDict()

    def __bool__(self) -> bool:
        return bool(self._jobs)

    def __len__(self) -> int:
        return len(self._jobs)

    def add(self, job: Job) -> None:
        """Queue ``job`` at the back (where it is, if it is queued already)."""
        self._jobs[id(job)] = job

    def to_front(self, job: Job) -> None:
        """Queue ``job`` at the front: it has work handed back, which goes first."""
        self._jobs[id(job)] = job
        self._jobs.move_to_end(id(job), last=False)

    def head(self) -> Job:
        """The job whose calls go out next (the queue must not be empty)."""
        return next(iter(self._jobs.values()))

    def discard(self, job: Job) -> None:
        """Forget ``job`` (done, cancelled, or everything handed out)."""
        self._jobs.pop(id(job), None)

    def jobs(self) -> list[Job]:
        """Every queued job, in order (a copy)."""
        return list(self._jobs.values())

    def take_all(self) -> list[Job]:
        """Every queued job, in order; the queue is empty afterwards."""
        jobs = list(self._jobs.values())
        self._jobs.clear()
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

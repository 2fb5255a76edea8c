"""The procpool errors a child process may raise itself.

A worker raises :class:`TaskTimeoutError` inside a task that passes its time
limit when the task has a grace period (see ``_child.alarm``). These classes
live here, in the package the children import, so that raising one imports
nothing of the parent's side; ``procpool._errors`` re-exports them with the rest
of the hierarchy, and the package names them ``procpool.ProcpoolError`` and
``procpool.TaskTimeoutError``.
"""

from __future__ import annotations


class ProcpoolError(Exception):
    """Raised for failures of procpool itself; the base of all procpool errors."""


class TaskTimeoutError(ProcpoolError, TimeoutError):
    """Raised when a task ran past its time limit.

    Without a grace period the worker is killed at the limit and replaced. With
    one (``options(timeout=..., grace=...)``), this exception is first raised
    *inside* the task, so that its ``finally`` blocks and ``with`` blocks run;
    a task still running ``grace`` seconds later is killed. The future fails with
    this error either way.

    Attributes:
        timeout: the limit, in seconds.
        killed: True if the worker was killed; False if the task stopped on its
            own after being interrupted within its grace period.
    """

    def __init__(self, message: str, *, timeout: float | None = None, killed: bool = True) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.killed = killed

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_timeout, (str(self), self.timeout, self.killed))


def _rebuild_timeout(message: str, timeout: float | None, killed: bool) -> TaskTimeoutError:
    return TaskTimeoutError(message, timeout=timeout, killed=killed)

"""The procpool errors a child process may raise itself.

A worker raises :class:`TimeLimitInterrupt` inside a task that reaches its time
limit when the task has a grace period (see ``_child.alarm``), and reports
:class:`Expired` for it; the parent turns that into :class:`TaskTimeoutError`.
These classes live here, in the package the children import, so that raising
one imports nothing of the parent's side; ``procpool._errors`` re-exports them
with the rest of the hierarchy, and the package names them
``procpool.ProcpoolError``, ``procpool.TaskTimeoutError`` and
``procpool.TimeLimitInterrupt``.
"""

from __future__ import annotations


class ProcpoolError(Exception):
    """Raised for failures of procpool itself; the base of all procpool errors."""


class TaskTimeoutError(ProcpoolError, TimeoutError):
    """Raised when a task ran past its time limit.

    Without a grace period the worker is killed at the limit and replaced. With
    one (``options(timeout=..., grace=...)``), :class:`TimeLimitInterrupt` is
    first raised *inside* the task, so that its ``finally`` blocks and ``with``
    blocks run; a task still running ``grace`` seconds later is killed. The
    future fails with this error either way.

    It is a :class:`TimeoutError` (so an ``OSError``) for the caller's sake, as
    ``concurrent.futures`` timeouts are; that is why the exception raised
    inside a task is another one, which an ``except OSError:`` in the task does
    not catch.

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


class TimeLimitInterrupt(BaseException):
    """Raised inside a task when it reaches its time limit and has a grace period.

    Like :class:`KeyboardInterrupt`, it derives from :class:`BaseException`, so
    the ``except Exception:``, ``except OSError:`` and ``except TimeoutError:``
    clauses of ordinary error handling (an I/O retry loop, say) let it pass and
    the task's ``finally`` and ``with`` blocks run on the way out. Do not catch
    it, or catch it only to clean up and re-raise: a task that swallows it runs
    on until its grace period ends and is then killed. Either way its future
    fails with :class:`TaskTimeoutError`, never with this exception::

        def task(path):
            with open(path, "w") as out:  # closed even when the limit interrupts
                while True:
                    try:
                        out.write(fetch())
                    except OSError:  # a failed fetch; TimeLimitInterrupt passes
                        time.sleep(0.1)
    """


class Expired(BaseException):
    """What a worker reports, in place of a task's exception, for a task past its limit.

    Private to procpool: the parent turns it into :class:`TaskTimeoutError`. A
    type of its own, so that a task raising ``TaskTimeoutError`` itself (from a
    nested pool, say) is reported as the task's own error, not as this pool's
    time limit.
    """


class NotPickled(BaseException):
    """What a worker reports, in place of a result, for a result that does not pickle.

    Private to procpool: the parent turns it into a ``SerializationError`` that
    names the task.
    """

    @classmethod
    def of(cls, error: BaseException) -> NotPickled:
        """The report for a result whose pickling raised ``error``."""
        return cls(f"{type(error).__name__}: {error}")

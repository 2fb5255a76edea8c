"""The exception hierarchy of procpool.

::

    Exception
     └── ProcpoolError
          ├── WorkerLostError      (also concurrent.futures.process.BrokenProcessPool)
          ├── TaskTimeoutError     (also TimeoutError)
          ├── PoolClosedError      (also RuntimeError)
          └── SerializationError
    BaseException
     └── TimeLimitInterrupt        raised inside a task at its time limit (grace period)

A task's own exception is never wrapped: it reaches the caller with its own type,
and the worker-side traceback hangs on ``__cause__`` as a :class:`RemoteTraceback`,
the way :mod:`concurrent.futures` does it.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from typing import Literal

from ._child.errors import ProcpoolError, TaskTimeoutError, TimeLimitInterrupt

__all__ = [
    "CRASH_SIGNALS",
    "LossCause",
    "PoolClosedError",
    "ProcpoolError",
    "RemoteTraceback",
    "SerializationError",
    "TaskTimeoutError",
    "TimeLimitInterrupt",
    "WorkerLostError",
    "add_note",
    "describe_exitcode",
    "loss_cause",
]

# Why a process most often dies of a given signal; shown to the user because
# "exit code -9" alone sends people looking in the wrong place.
_CAUSES = {
    "SIGKILL": "killed from outside, most often by the out-of-memory killer",
    "SIGSEGV": "a crash in native code (a C extension or ctypes)",
    "SIGBUS": "a crash in native code (bad memory access)",
    "SIGABRT": "an abort in native code (a failed C assertion)",
    "SIGTERM": "terminated from outside",
    "SIGFPE": "a floating-point fault in native code",
    "SIGILL": "an illegal instruction in native code",
}
# Only the signals this platform has (Windows lacks SIGKILL and SIGBUS).
_LIKELY_CAUSE = {
    getattr(signal, name): cause for name, cause in _CAUSES.items() if hasattr(signal, name)
}


#: Why a worker was lost: ``WorkerLostError.cause``.
LossCause = Literal["oom", "signal", "exit", "timeout", "cancel", "unknown"]


def describe_exitcode(exitcode: int | None, *, oom: bool | None = None) -> str:
    """Say in words how a process ended, from its ``exitcode``.

    Args:
        oom: whether the system's out-of-memory killer killed it, where procpool
            can tell (see ``_oom``): True, False, or None if it cannot.
    """
    if exitcode is None:
        return "the process ended without an exit code"
    if exitcode < 0:
        try:
            sig = signal.Signals(-exitcode)
        except ValueError:
            return f"killed by signal {-exitcode}"
        text = f"killed by {sig.name} (exit code {exitcode})"
        if oom:
            return (
                f"{text}: by the out-of-memory killer (the oom_kill count of its cgroup "
                "rose while it ran)"
            )
        if oom is False and sig.name == "SIGKILL":
            return (
                f"{text} from outside; not by the out-of-memory killer (the oom_kill count "
                "of its cgroup did not change)"
            )
        cause = _LIKELY_CAUSE.get(sig)
        return f"{text}: {cause}" if cause else text
    return f"exited with code {exitcode} (os._exit in the task, or exit() in native code?)"


def loss_cause(exitcode: int | None, *, oom: bool | None = None) -> LossCause:
    """The ``WorkerLostError.cause`` of a process that ended with ``exitcode``."""
    if oom:
        return "oom"
    if exitcode is None:
        return "unknown"
    return "signal" if exitcode < 0 else "exit"


class WorkerLostError(ProcpoolError, BrokenProcessPool):
    """Raised when the process running a task died before it answered.

    The cause is a signal (SIGKILL from the out-of-memory killer, SIGSEGV from
    native code), ``os._exit``, or a kill from outside. Only the task(s) that
    process was running fail; the pool starts a replacement worker.

    Attributes:
        exitcode: the dead process's exit code (negative: killed by that signal).
        pid: its process id.
        cause: why, in one word: ``"oom"`` (the out-of-memory killer, where the
            system can tell: on Linux, the ``oom_kill`` count of the worker's
            cgroup rose while it ran), ``"signal"`` (another signal, or SIGKILL
            from outside), ``"exit"`` (the process exited), ``"timeout"`` or
            ``"cancel"`` (procpool stopped the worker for another item's time
            limit or a cancel, and this item's result was lost with it), or
            ``"unknown"`` (DaskPool: the cluster does not say).
        stack: for a crash in native code (SIGSEGV, SIGABRT, SIGBUS, SIGFPE,
            SIGILL) of a :class:`Pool` worker, the Python stack of the task at
            the moment of the crash, as the worker's ``faulthandler`` wrote it
            (also at the end of the message); else None.
    """

    def __init__(
        self,
        message: str,
        *,
        exitcode: int | None = None,
        pid: int | None = None,
        cause: LossCause = "unknown",
        stack: str | None = None,
    ):
        super().__init__(message)
        self.exitcode = exitcode
        self.pid = pid
        self.cause: LossCause = cause
        self.stack = stack

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_worker_lost,
            (str(self), self.exitcode, self.pid, self.cause, self.stack),
        )


def _rebuild_worker_lost(
    message: str,
    exitcode: int | None,
    pid: int | None,
    cause: LossCause,
    stack: str | None = None,
) -> WorkerLostError:
    return WorkerLostError(message, exitcode=exitcode, pid=pid, cause=cause, stack=stack)


#: Signals of a crash in native code, after which a worker's faulthandler has
#: written the Python stack of the crash.
CRASH_SIGNALS = frozenset(
    getattr(signal, name)
    for name in ("SIGSEGV", "SIGABRT", "SIGBUS", "SIGFPE", "SIGILL")
    if hasattr(signal, name)
)


class PoolClosedError(ProcpoolError, RuntimeError):
    """Raised when work is submitted to a pool after ``close()``, ``terminate()`` or ``shutdown()``."""


class SerializationError(ProcpoolError):
    """Raised when a function, argument, result or exception could not be pickled or unpickled.

    The message names what failed and suggests the fix: define the function at
    module top level, or send functions with cloudpickle (``Pool(cloudpickle=True)``).
    """


class RemoteTraceback(Exception):
    """Raised never; carries a worker's formatted traceback as an exception's ``__cause__``."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)``, also on Python 3.10 (which has no add_note and shows no notes)."""
    method: Callable[[str], None] | None = getattr(exc, "add_note", None)
    if method is not None:
        method(note)
    else:
        notes: list[str] = [*getattr(exc, "__notes__", ()), note]
        setattr(exc, "__notes__", notes)  # noqa: B010

"""What a pool tells an ``on_event`` hook: frozen event dataclasses, and their delivery.

``Pool(on_event=fn)`` calls ``fn(event)`` for each :data:`PoolEvent`: a task queued,
started on a worker, finished (with its outcome, its time in the queue and its
time running), a worker started or exited (with why). A *task* is one
``submit``, or one call of a ``map``/``imap``: a chunk of its items, which travel
to one worker together (``items`` says how many).

Events are made where they happen (the dispatcher, a submitting thread) but the
hook runs on the pool's callback thread, in order, never on a thread the pool
needs: a slow hook delays other callbacks, never the work. Events wait in a
list, and one thunk delivers all those that came meanwhile, so a busy pool does
not pay a callback hand-off per event. A hook that raises is logged and the pool
goes on. With no hook, nothing here runs: each place that would make an event
first asks :attr:`Events.on`.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from ._errors import LossCause

LOGGER = logging.getLogger("procpool")

#: How a task ended: its value (``completed``), its exception or an error of the
#: pool's (``failed``), past its time limit (``timed_out``), its worker lost
#: (``lost``), or ``cancelled``. A chunk with some failed items is ``failed``.
Outcome: TypeAlias = Literal["completed", "failed", "timed_out", "lost", "cancelled"]
#: Why a worker exited: told to (``stopped``: the pool closed, or
#: ``max_tasks_per_worker``), over its memory limit (``recycled``), idle too long
#: (``idle``), killed by procpool for a time limit (``timeout``) or a cancel
#: (``cancel``) or because it did not exit when told (``stuck``), killed at
#: ``terminate()`` (``terminated``), or lost: ``oom``, ``signal``, ``exit``,
#: ``unknown`` (as :attr:`WorkerLostError.cause`).
ExitCause: TypeAlias = Literal[
    "stopped",
    "recycled",
    "idle",
    "stuck",
    "terminated",
    "oom",
    "signal",
    "exit",
    "timeout",
    "cancel",
    "unknown",
]


@dataclass(frozen=True)
class TaskQueued:
    """A task (a ``submit``, a ``map``, an ``imap`` chunk) entered the pool's queue."""

    pool: str
    #: ``mod.fn`` for a submit, ``map(mod.fn, ...)`` for a map.
    task: str
    #: 1 for a submit; the items of a map.
    items: int
    priority: int
    #: ``time.time()`` when it happened.
    at: float


@dataclass(frozen=True)
class TaskStarted:
    """A task (or a chunk of a map) was handed to a worker."""

    pool: str
    task: str
    items: int
    worker_pid: int | None
    worker_slot: int
    #: Seconds since it was submitted.
    queued_seconds: float
    at: float


@dataclass(frozen=True)
class TaskFinished:
    """A task (or a chunk of a map) ended; see :data:`Outcome`."""

    pool: str
    task: str
    outcome: Outcome
    items: int
    #: Of ``items``, how many failed (their own exception, a time limit, a loss).
    failed: int
    #: Seconds between its submission and its start on a worker (0 if it never started).
    queued_seconds: float
    #: Seconds it ran on its worker, as the worker measured it.
    run_seconds: float
    worker_pid: int | None
    at: float


@dataclass(frozen=True)
class WorkerStarted:
    """A worker process started (at the pool's start, as a replacement, or on demand)."""

    pool: str
    slot: int
    pid: int | None
    at: float


@dataclass(frozen=True)
class WorkerExited:
    """A worker process ended; see :data:`ExitCause`."""

    pool: str
    slot: int
    pid: int | None
    #: Negative: killed by that signal.
    exitcode: int | None
    cause: ExitCause
    at: float


#: Everything an ``on_event`` hook receives.
PoolEvent: TypeAlias = TaskQueued | TaskStarted | TaskFinished | WorkerStarted | WorkerExited
#: The type of ``on_event=``.
EventHook: TypeAlias = Callable[[PoolEvent], object]
#: What a hook may offer besides: ``trace_task(fn, future, title)``, called in the
#: submitting thread, returns the function to send instead (``procpool.otel``).
TraceTask: TypeAlias = Callable[
    [Callable[..., Any], "concurrent.futures.Future[Any]", str], Callable[..., Any]
]


def exit_cause(cause: LossCause) -> ExitCause:
    """The :data:`ExitCause` of a worker lost for ``cause``."""
    return cause


class Events:
    """Delivers a pool's events to its hook on the callback thread (see the module docstring).

    Args:
        hook: the ``on_event`` function, or None (then :attr:`on` is False).
        post: runs a thunk on the pool's callback thread.
    """

    def __init__(
        self, pool: str, hook: EventHook | None, post: Callable[[Callable[[], None]], None]
    ):
        self.pool = pool
        #: Whether anyone listens: check it before making an event.
        self.on = hook is not None
        self._hook = hook
        self._post = post
        self._lock = threading.Lock()
        self._waiting: deque[PoolEvent] = deque()

    def emit(self, event: PoolEvent) -> None:
        """Queue ``event`` for the hook (thread-safe, never blocks on the hook)."""
        with self._lock:
            first = not self._waiting
            self._waiting.append(event)
        if first:
            self._post(self._deliver)

    def _deliver(self) -> None:
        hook = self._hook
        assert hook is not None
        while True:
            with self._lock:
                if not self._waiting:
                    return
                event = self._waiting.popleft()
            try:
                hook(event)
            except Exception:
                LOGGER.exception("the on_event hook of %s raised on %r", self.pool, event)


def now() -> float:
    """The ``at`` of an event: ``time.time()``."""
    return time.time()

"""Where a pool is in its life: the :class:`Lifecycle` states, the :class:`PoolLife`
that a local pool's parts share, and the :class:`Engine` interface that every
pool's engine offers to the shared surface (:mod:`._executor`)."""

from __future__ import annotations

import enum
from typing import Any, Protocol


class Lifecycle(enum.Enum):
    """Where a pool is in its life; it only moves down this list."""

    RUNNING = "running"
    #: close(): no new work; what was submitted still runs.
    CLOSED = "closed"
    #: terminate(): no new work; what was submitted is stopped.
    TERMINATED = "terminated"
    #: Its initializer failed, or its workers kept dying at start-up.
    BROKEN = "broken"


class PoolLife:
    """Where one pool is in its life, and why it broke: shared by the parts of its engine.

    Fields change holding ``lock`` (the engine's lock); they may be read without it.
    """

    def __init__(self, lock: Any) -> None:
        self.lock: Any = lock
        self.state = Lifecycle.RUNNING
        #: Why the pool is broken (set with ``state = BROKEN``).
        self.broken: BaseException | None = None
        #: Set once the engine has decided to stop: nothing more may be queued.
        self.exiting = False

    def break_with(self, error: BaseException) -> None:
        """The pool can run nothing more: an initializer failed, workers cannot start."""
        with self.lock:
            self.broken = error
            self.state = Lifecycle.BROKEN

    def stopped(self) -> bool:
        """Terminated or broken: nothing more may start."""
        return self.state is Lifecycle.TERMINATED or self.state is Lifecycle.BROKEN


class Engine(Protocol):
    """What runs a pool's work (the local dispatcher, Dask's client core).

    :class:`Executor` builds ``imap``'s default, ``join()``, ``shutdown()``
    and the with-block from these.
    """

    @property
    def state(self) -> Lifecycle:
        """Where the pool is in its life."""
        ...

    def check_open(self) -> None:
        """Raise ``PoolClosedError`` (or why the pool is broken) if it takes no new work."""
        ...

    def parallelism(self) -> int:
        """How many items run at once (imap's default read-ahead is four times that)."""
        ...

    def cancel_unstarted(self) -> None:
        """Cancel the work that has not started (``shutdown(cancel_futures=True)``)."""
        ...

    def wait_for_end(self, timeout: float | None) -> bool:
        """Wait, after close or terminate, until everything has ended; False on timeout."""
        ...

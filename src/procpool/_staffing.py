"""Staffing: which workers a pool has. Starting and replacing them, retiring them,
backing off after deaths from outside, and the broken-pool verdict.

Every slot holds a worker while the pool runs. A worker that dies is replaced at
once, except one killed from outside (by a signal that is not a crash) before it
did any work: then the next one starts after a delay that doubles with each such
death in a row (``FIRST_RESTART_DELAY`` to ``MAX_RESTART_DELAY``), so that a pool
does not race whatever kills its workers. Workers that keep dying before doing any
work *by the program's doing* (an exit: an unimportable main module, an
initializer that ends the process; a crash in native code; the out-of-memory
killer) break the pool after ``MAX_STARTUP_FAILURES`` in a row. A worker told to
exit (``max_tasks_per_worker``, a memory limit) that is still there after
``RETIRE_SECONDS`` is killed, and its slot refilled.

An elastic pool (``idle_timeout``) tells a worker that has had nothing to do for
that long to exit, down to ``min_workers``, and leaves its slot empty; when work
waits and no worker is free, it starts workers in the lowest empty slots again.

It owns the retirement and restart timers and the counts of deaths in a row; it
calls the worker set (start) and reads the lifecycle; everything runs holding the
dispatcher's lock.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable

from ._child import messages as m
from ._context import UNGUARDED_MAIN_EXIT, unguarded_main_error
from ._errors import ProcpoolError, describe_exitcode
from ._events import Events, ExitCause, WorkerStarted, now
from ._lifecycle import Lifecycle, PoolLife
from ._stats import Counters
from ._workers import Worker, WorkerSet

#: Consecutive workers that die by the program's doing before answering anything
#: before the pool gives up.
MAX_STARTUP_FAILURES = 3
#: After a worker killed from outside before doing any work, the next one starts
#: this much later (s), doubling with each such death in a row, up to the maximum.
FIRST_RESTART_DELAY = 0.01
MAX_RESTART_DELAY = 1.0
#: How long a worker told to exit may take before it is killed and its slot
#: refilled. Exiting takes milliseconds; only a non-daemon thread a task left
#: running (or an exit handler that hangs) takes longer.
RETIRE_SECONDS = 1.0
#: Signals a process gets by its own fault (native code crashing or aborting).
_CRASH_SIGNALS = frozenset(
    getattr(signal, name)
    for name in ("SIGSEGV", "SIGBUS", "SIGABRT", "SIGFPE", "SIGILL", "SIGSYS", "SIGTRAP")
    if hasattr(signal, name)
)


def caused_by_program(exitcode: int | None, oom: bool | None) -> bool:
    """Whether a process that ended with ``exitcode`` ended by the program's doing.

    An exit (any code), a crash signal, or the out-of-memory killer: yes. Any
    other signal (SIGKILL, SIGTERM...) comes from outside.
    """
    if oom:
        return True
    if exitcode is None:
        return False
    return exitcode >= 0 or -exitcode in _CRASH_SIGNALS


class Staffing:
    """Starts, replaces and retires one pool's workers (see the module docstring).

    Args:
        idle: whether the pool has nothing left to do (a closed, idle pool
            replaces no worker).
        size: the most workers the pool runs.
        min_workers: with ``idle_timeout``, the fewest.
        idle_timeout: seconds after which a worker with nothing to do exits
            (None: workers stay).
    """

    def __init__(
        self,
        workers: WorkerSet,
        stats: Counters,
        life: PoolLife,
        idle: Callable[[], bool],
        events: Events,
        *,
        size: int,
        min_workers: int = 0,
        idle_timeout: float | None = None,
    ) -> None:
        self._workers = workers
        self._stats = stats
        self._life = life
        self._idle = idle
        self._events = events
        self._size = size
        self._min_workers = min_workers
        self.idle_timeout = idle_timeout
        #: Each idle worker: since when, and its count of calls then (a call sent
        #: and finished between two looks means it was not idle all along).
        self._idle_since: dict[Worker, tuple[float, int]] = {}
        #: Workers told to exit for idleness: their slots stay empty.
        self._idled: set[Worker] = set()
        #: Workers told to exit, and when each is killed if it is still there.
        self._retirements: dict[Worker, float] = {}
        #: Emptied slots whose next worker starts later (monotonic time).
        self._restarts: dict[int, float] = {}
        #: Workers in a row that died before doing any work, by the program's doing.
        self._startup_failures = 0
        #: ...and by a signal from outside.
        self._outside_deaths = 0

    def start(self, slot: int) -> None:
        """Start a worker in ``slot``."""
        worker = self._workers.start(slot)
        self._stats.workers_started += 1
        if self._events.on:
            self._events.emit(WorkerStarted(self._events.pool, slot, worker.process.pid, now()))

    def replace(self, slot: int, delay: float = 0.0) -> None:
        """Start a worker in an emptied ``slot`` (``delay`` s from now), unless the pool is stopping."""
        if delay > 0:
            self._restarts[slot] = time.monotonic() + delay
            return
        self._restarts.pop(slot, None)
        state = self._life.state
        if state is not Lifecycle.RUNNING and state is not Lifecycle.CLOSED:
            return
        if slot in self._workers:
            return
        if state is Lifecycle.CLOSED and self._idle():
            return
        self.start(slot)
        self._stats.workers_replaced += 1

    def retire(self, worker: Worker, cause: ExitCause) -> None:
        """``worker`` was told to exit (``cause``): kill it if it has not within ``RETIRE_SECONDS``."""
        worker.retiring = True
        worker.exit_cause = cause
        self._retirements[worker] = time.monotonic() + RETIRE_SECONDS

    def replied(self) -> None:
        """A worker answered: whatever kills workers, the program can run them."""
        self._startup_failures = self._outside_deaths = 0

    def exited(
        self, worker: Worker, exitcode: int | None, *, before_work: bool, oom: bool | None
    ) -> ProcpoolError | None:
        """``worker`` is gone (it ended with ``exitcode``): refill its slot, or break the pool.

        Args:
            before_work: it died before answering anything or starting a call.
            oom: whether the out-of-memory killer killed it, where the system can tell.

        Returns:
            The error the pool broke with, if this death broke it.
        """
        self._retirements.pop(worker, None)
        self._idle_since.pop(worker, None)
        if worker in self._idled:
            self._idled.discard(worker)
            if exitcode == 0 or worker.dying:
                return None  # the slot stays empty until work needs it
        delay = 0.0
        if before_work and exitcode == UNGUARDED_MAIN_EXIT:
            # Every worker will do the same: say why now, once.
            error = ProcpoolError(unguarded_main_error(self._workers.spec.name))
            self._life.break_with(error)
            return error
        if before_work:
            if caused_by_program(exitcode, oom):
                self._startup_failures += 1
            else:
                self._outside_deaths += 1
                delay = min(
                    MAX_RESTART_DELAY, FIRST_RESTART_DELAY * 2 ** (self._outside_deaths - 1)
                )
        if self._startup_failures >= MAX_STARTUP_FAILURES:
            error = ProcpoolError(
                f"{self._workers.spec.name}: {self._startup_failures} workers in a row died "
                f"before doing any work (last one {describe_exitcode(exitcode, oom=oom)}). "
                "Under spawn or forkserver the main module must be importable and guard "
                "its code with `if __name__ == '__main__':`; and an initializer must not "
                "end the process"
            )
            self._life.break_with(error)
            return error
        self.replace(worker.slot, delay)
        return None

    def waiting(self) -> bool:
        """Whether a retirement, a restart or an idle exit may be due later (see :meth:`next_due`)."""
        return bool(self._retirements or self._restarts or self._idle_since)

    def next_due(self) -> float | None:
        """Seconds until the next retirement, restart or idle exit is due (None: none)."""
        dues = [*self._retirements.values(), *self._restarts.values()]
        if self._idle_since and self.idle_timeout is not None:
            dues.append(min(since for since, _ in self._idle_since.values()) + self.idle_timeout)
        return max(0.0, min(dues) - time.monotonic()) if dues else None

    # -- an elastic pool -------------------------------------------------------------

    def watch_idle(self, usable: Callable[[Worker], bool]) -> None:
        """Note which workers have nothing to do; tell those idle too long to exit."""
        timeout = self.idle_timeout
        if timeout is None:
            return
        now = time.monotonic()
        live = [w for w in self._workers.values() if not w.dying and not w.retiring]
        staying = len(live)
        for worker in live:
            if worker.outstanding or not usable(worker):
                self._idle_since.pop(worker, None)
                continue
            since, sent = self._idle_since.get(worker, (now, worker.sent))
            if sent != worker.sent:
                since, sent = now, worker.sent
            self._idle_since[worker] = (since, sent)
            if now - since >= timeout and staying > self._min_workers:
                staying -= 1
                del self._idle_since[worker]
                self._idled.add(worker)
                self._stats.idle_exits += 1
                self.retire(worker, "idle")
                with contextlib.suppress(OSError):  # gone already: its sentinel follows
                    self._workers.write(worker, m.CALL_HEADER.pack(0, m.STOP))

    def grow(self, wanted: int) -> None:
        """Start up to ``wanted`` workers in the lowest empty slots (an elastic pool)."""
        if self.idle_timeout is None or self._life.state is not Lifecycle.RUNNING:
            return
        for slot in range(self._size):
            if wanted <= 0:
                return
            if slot not in self._workers and slot not in self._restarts:
                self.start(slot)
                wanted -= 1

    def run_due(self, kill: Callable[[Worker], None]) -> None:
        """``kill`` the workers overdue to exit; start the workers due to restart."""
        now = time.monotonic()
        for worker, due in list(self._retirements.items()):
            if due <= now:
                del self._retirements[worker]
                kill(worker)
        for slot, due in list(self._restarts.items()):
            if due <= now:
                self.replace(slot)

"""Time limits with a grace period: raise ``TaskTimeoutError`` inside the running task.

Without a grace period the parent kills a worker whose task passes its time limit.
With one, the worker interrupts the task itself at the limit, so that its
``finally`` blocks and ``with`` blocks run, and the parent kills it only if it is
still running ``grace`` seconds later.

A watchdog thread waits for the deadline of the armed task and then sends SIGINT
to the main thread (``pthread_kill``: a real signal, so a blocking call such as
``time.sleep`` or a socket read is interrupted too). The worker's SIGINT handler,
:func:`on_sigint`, raises the exception only when the watchdog asked for it; a
Ctrl-C from the terminal is ignored, as before. On Windows, which has no
``pthread_kill``, ``_thread.interrupt_main`` stands in: it interrupts Python code
but not a blocking call. No signal reaches C code that holds the GIL: such a task
runs on until it returns, and is killed at the end of its grace period.

The exception is raised at most once per armed task. Whatever a task does with
it (it may catch it), a task that the alarm interrupted has timed out:
:meth:`Alarm.disarm` says so, and the worker reports a ``TaskTimeoutError``.
"""

from __future__ import annotations

import signal
import threading
import time

from .errors import TaskTimeoutError


class Alarm:
    """The watchdog of one worker process (one at a time: tasks run one by one)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._deadline: float | None = None
        self._timeout = 0.0
        self._grace = 0.0
        self._fired = False
        #: Read by the signal handler without the lock (a handler must not block).
        self.raise_pending = False
        self._main = threading.main_thread().ident
        threading.Thread(target=self._watch, name="procpool-alarm", daemon=True).start()

    def arm(self, timeout: float, grace: float) -> None:
        """A task starts now; interrupt it ``timeout`` seconds from now."""
        with self._lock:
            self._timeout, self._grace = timeout, grace
            self._fired = False
            self.raise_pending = False
            self._deadline = time.monotonic() + timeout
            self._wake.notify()

    def disarm(self) -> bool:
        """The task has ended; True if it had passed its deadline (it timed out)."""
        with self._lock:
            self._deadline = None
            self.raise_pending = False
            return self._fired

    def error(self) -> TaskTimeoutError:
        """The error of a task interrupted at its limit."""
        return TaskTimeoutError(
            f"the task ran past its time limit of {self._timeout:g} s and was interrupted "
            f"(TaskTimeoutError raised inside it, then {self._grace:g} s of grace before "
            "a kill); it stopped in time, so its worker lives on",
            timeout=self._timeout,
            killed=False,
        )

    def _watch(self) -> None:
        with self._lock:
            while True:
                deadline = self._deadline
                if deadline is None or self._fired:
                    self._wake.wait()
                    continue
                left = deadline - time.monotonic()
                if left > 0:
                    self._wake.wait(left)
                    continue
                self._fired = True
                self.raise_pending = True
                _interrupt(self._main)


def _interrupt(thread_id: int | None) -> None:
    kill = getattr(signal, "pthread_kill", None)
    if kill is not None and thread_id is not None:
        kill(thread_id, signal.SIGINT)
    else:  # pragma: no cover - Windows
        import _thread

        _thread.interrupt_main()


#: This process's alarm, made when the first call with a grace period arrives.
_current: Alarm | None = None


def alarm() -> Alarm:
    """This process's alarm (started on first use)."""
    global _current
    if _current is None:
        _current = Alarm()
    return _current


def on_sigint(signum: int, frame: object) -> None:
    """The worker's SIGINT handler: raise the alarm's error if it asked, else ignore.

    A Ctrl-C reaches every process of the terminal's group; the parent handles
    it for the whole pool. A handler, not ``SIG_IGN``: an ignored signal stays
    ignored across ``exec`` (a program a task starts could not be interrupted).
    """
    current = _current
    if current is not None and current.raise_pending:
        current.raise_pending = False
        raise current.error()

"""Time limits with a grace period: interrupt the running task at its deadline.

Without a grace period the parent kills a worker whose task passes its time limit.
With one, the worker interrupts the task itself at the limit by raising
:class:`~.errors.TimeLimitInterrupt` inside it, so that its ``finally`` blocks and
``with`` blocks run, and the parent kills it only if it is still running
``grace`` seconds later.

The interrupt is a signal that a *kernel* timer sends at the deadline. On Linux
it is a POSIX timer (``timer_create`` with ``SIGEV_THREAD_ID``) that sends
:data:`TIMER_SIGNAL` to the worker's main thread itself; on other POSIX systems
``setitimer`` sends SIGALRM to the process (procpool's own threads block it, so
it reaches the main thread). No Python thread has to win the GIL for the timer
to fire: a watchdog thread had to, and a task that mixes short system calls
with Python work (a line written, a millisecond computed...) kept it waiting
for up to 0.6 s, long enough for a task past its limit to return a result. The
signal interrupts a blocking call (``time.sleep``, a socket read) and CPython
runs the handler at the main thread's next bytecode. C code that holds the GIL
sees it only when it returns. Windows has neither timer: there a watchdog
thread calls ``_thread.interrupt_main``, which interrupts Python code but not a
blocking call.

The handler, :meth:`Alarm.on_signal`, raises only in the task's own code. When
the signal lands in procpool's code (the worker loop between two items, or a
log record the task emits being written to the result pipe: a message cut in
half would corrupt the pipe), it sets the timer again :data:`RETRY_NS` later.

The exception is raised at most once per task. Whatever the task does with it
(it may catch it), a task that reached its deadline has timed out:
:meth:`Alarm.disarm` says so, the worker reports :class:`~.errors.Expired`, and
a value the task returned after its deadline is dropped.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol

from .errors import TimeLimitInterrupt

#: When the signal lands in procpool's own code, the timer fires again this much
#: later (ns): by then the task's code runs again.
RETRY_NS = 1_000_000

#: The signal of the Linux timer: a real-time one high in the range, which
#: applications rarely use (SIGALRM is theirs: ``signal.alarm``, timeout decorators).
TIMER_SIGNAL: int | None = (
    max(signal.valid_signals()) - 2 if sys.platform.startswith("linux") else None
)

#: Frames of this package are procpool's, not the task's (see ``Alarm.on_signal``).
_OWN_PREFIX = __name__.rpartition(".")[0] + "."


class _Timer(Protocol):
    def set(self, deadline_ns: int) -> None:
        """Fire once at ``deadline_ns`` (``time.monotonic_ns()``), replacing any earlier time."""

    def cancel(self) -> None:
        """Do not fire."""


class Alarm:
    """The time limit of the task the worker's main thread runs (one at a time)."""

    def __init__(self) -> None:
        self._armed = False
        self._deadline = 0
        self._timeout = 0.0
        self._raised = False
        #: Set once the deadline has passed (by the handler, or seen by disarm).
        self.expired = False
        #: Above 0 while a thread writes to the result pipe: no place to raise.
        #: Changed under the sender's lock; read by the handler.
        self.critical = 0
        self._timer = _new_timer(self.on_signal)

    def arm(self, since_ns: int, timeout: float) -> None:
        """A task started at ``since_ns``: interrupt it ``timeout`` seconds after that."""
        self.expired = self._raised = False
        self._timeout = timeout
        self._deadline = since_ns + int(timeout * 1e9)
        self._armed = True
        self._timer.set(self._deadline)

    def disarm(self) -> bool:
        """The task has ended; True if it had reached its deadline (it timed out)."""
        self._armed = False
        self._timer.cancel()
        return self.expired or time.monotonic_ns() >= self._deadline

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        """The timer's signal handler: raise :class:`TimeLimitInterrupt` in the task."""
        if not self._armed or self._raised:
            return
        now = time.monotonic_ns()
        if now < self._deadline:
            return  # an earlier task's timer, handled late: this one's is still set
        self.expired = True
        if self.critical or _own(frame):
            self._timer.set(now + RETRY_NS)
            return
        raise self._interrupt()

    def raise_if_due(self) -> None:
        """After procpool's own code inside a task (a log record written to the parent):
        raise the interrupt that waited for it, if one did.

        A task that floods the log spends nearly all its time blocked writing to
        the parent, where the interrupt may not land: it is raised here, as soon
        as the write is done. Only in the thread that runs the task.
        """
        if (
            self._armed
            and self.expired
            and not self._raised
            and not self.critical
            and threading.current_thread() is threading.main_thread()
        ):
            raise self._interrupt()

    def _interrupt(self) -> TimeLimitInterrupt:
        self._raised = True
        return TimeLimitInterrupt(
            f"the task reached its time limit of {self._timeout:g} s; procpool interrupts "
            "it so that its cleanup runs: let this exception propagate"
        )


# The task is called from a function whose frames are not procpool's: a task that
# is itself a C function (``time.sleep`` as the callable) runs with no Python frame
# of its own, and the signal must still count as landing in the task, not in the
# worker loop that called it. Made with its own globals so that its frame's
# module name is not this package's.
_TASK_CALLER: dict[str, Any] = {"__name__": "procpool-task"}
exec(  # its frames show as File "<procpool>" (crash reports cut the stack there)
    compile(
        "def call_task(fn, args, kwargs):\n    return fn(*args, **kwargs)\n", "<procpool>", "exec"
    ),
    _TASK_CALLER,
)
#: ``call_task(fn, args, kwargs)``: ``fn(*args, **kwargs)`` in a frame the alarm may raise in.
call_task: Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], Any] = _TASK_CALLER[
    "call_task"
]


def _own(frame: FrameType | None) -> bool:
    """Whether ``frame`` runs procpool's code (the signal landed between two tasks' calls)."""
    if frame is None:
        return True
    name = frame.f_globals.get("__name__")
    return isinstance(name, str) and name.startswith(_OWN_PREFIX)


def _new_timer(handler: Callable[[int, FrameType | None], None]) -> _Timer:
    """The best kernel timer this platform has, its signal routed to ``handler``."""
    if TIMER_SIGNAL is not None:
        timer = _ThreadTimer.create(TIMER_SIGNAL)
        if timer is not None:
            signal.signal(TIMER_SIGNAL, handler)
            return timer
    if hasattr(signal, "setitimer"):
        signal.signal(signal.SIGALRM, handler)
        return _ProcessTimer()
    return _WatchdogTimer()  # pragma: no cover - Windows


class _ThreadTimer:
    """Linux: a POSIX timer that signals one thread (``SIGEV_THREAD_ID``), via ctypes."""

    def __init__(self, lib: Any, timer_id: Any, itimerspec: Any) -> None:
        self._settime = lib.timer_settime
        self._id = timer_id
        self._spec = itimerspec()
        self._zero = itimerspec()

    @classmethod
    def create(cls, signum: int) -> _ThreadTimer | None:
        """A timer that sends ``signum`` to the calling thread, or None if unavailable."""
        try:
            import ctypes
        except ImportError:  # pragma: no cover - Python built without ctypes
            return None
        lib = None
        for name in (None, "librt.so.1"):  # timer_create is in libc since glibc 2.34
            try:
                candidate = ctypes.CDLL(name, use_errno=True)
                candidate.timer_create  # noqa: B018 - raises AttributeError if missing
            except (OSError, AttributeError):
                continue
            lib = candidate
            break
        if lib is None:
            return None

        class Timespec(ctypes.Structure):
            _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

        class Itimerspec(ctypes.Structure):
            _fields_ = [("it_interval", Timespec), ("it_value", Timespec)]

        header = ctypes.sizeof(ctypes.c_void_p) + 3 * ctypes.sizeof(ctypes.c_int)

        class Sigevent(ctypes.Structure):  # Linux's struct sigevent: 64 bytes
            _fields_ = [
                ("sigev_value", ctypes.c_void_p),
                ("sigev_signo", ctypes.c_int),
                ("sigev_notify", ctypes.c_int),
                ("sigev_notify_thread_id", ctypes.c_int),
                ("_pad", ctypes.c_char * (64 - header)),
            ]

        event = Sigevent()
        event.sigev_signo = signum
        event.sigev_notify = 4  # SIGEV_THREAD_ID
        event.sigev_notify_thread_id = threading.get_native_id()
        timer_id = ctypes.c_void_p()
        clock_monotonic = 1  # time.monotonic_ns() reads this clock on Linux
        if lib.timer_create(clock_monotonic, ctypes.byref(event), ctypes.byref(timer_id)) != 0:
            return None
        lib.timer_settime.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.POINTER(Itimerspec),
            ctypes.POINTER(Itimerspec),
        ]
        return cls(lib, timer_id, Itimerspec)

    def set(self, deadline_ns: int) -> None:
        value = self._spec.it_value
        value.tv_sec, value.tv_nsec = divmod(max(deadline_ns, 1), 1_000_000_000)
        self._settime(self._id, 1, self._spec, None)  # 1: TIMER_ABSTIME

    def cancel(self) -> None:
        self._settime(self._id, 0, self._zero, None)


class _ProcessTimer:
    """Other POSIX systems: ``setitimer`` sends SIGALRM to the process."""

    def set(self, deadline_ns: int) -> None:
        seconds = (deadline_ns - time.monotonic_ns()) / 1e9
        signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-6))

    def cancel(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)


class _WatchdogTimer:  # pragma: no cover - Windows
    """Windows: a thread that interrupts the main thread (``on_sigint`` hands it over)."""

    def __init__(self) -> None:
        self._wake = threading.Condition()
        self._due: int | None = None
        threading.Thread(target=self._watch, name="procpool-alarm", daemon=True).start()

    def set(self, deadline_ns: int) -> None:
        with self._wake:
            self._due = deadline_ns
            self._wake.notify()

    def cancel(self) -> None:
        with self._wake:
            self._due = None
            self._wake.notify()

    def _watch(self) -> None:
        import _thread

        with self._wake:
            while True:
                if self._due is None:
                    self._wake.wait()
                    continue
                left = (self._due - time.monotonic_ns()) / 1e9
                if left > 0:
                    self._wake.wait(left)
                    continue
                self._due = None
                _thread.interrupt_main()


def shield_thread() -> None:
    """Keep the process-directed timer signal away from the calling (procpool) thread."""
    if hasattr(signal, "pthread_sigmask") and hasattr(signal, "SIGALRM"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})


#: This process's alarm, made when the first call with a grace period arrives.
_current: Alarm | None = None


def alarm() -> Alarm:
    """This process's alarm (made on first use, in the main thread)."""
    global _current
    if _current is None:
        _current = Alarm()
    return _current


def current() -> Alarm | None:
    """This process's alarm if it has one (it guards its writes to the parent)."""
    return _current


def _forget_after_fork() -> None:
    # A forked child (a task's own fork pool, say) has no timer of ours (timers are
    # not inherited) and no watchdog thread: it makes its own alarm when it needs one.
    global _current
    _current = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def on_sigint(signum: int, frame: FrameType | None) -> None:
    """The worker's SIGINT handler: ignore a Ctrl-C; on Windows, deliver the alarm.

    A Ctrl-C reaches every process of the terminal's group; the parent handles
    it for the whole pool. A handler, not ``SIG_IGN``: an ignored signal stays
    ignored across ``exec`` (a program a task starts could not be interrupted).
    """
    if sys.platform == "win32" and _current is not None:  # pragma: no cover - Windows
        _current.on_signal(signum, frame)

"""What a Dask worker runs for ``DaskPool``: time-limited calls and map chunks.

These functions travel to the Dask workers by reference
(``procpool._child.dask_chunk.run_chunk``), so procpool must be installed there
too, in the same version as in the client. Unpickling them imports this package
only: a Dask worker never imports the pool, the dispatcher or the client side of
``DaskPool``. Failures travel as two exceptions of this module, which the client
turns into :class:`procpool.TaskTimeoutError` and :class:`procpool.SerializationError`.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
import math
import os
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

from . import identity
from .codec import seal
from .errors import TimeLimitInterrupt

T = TypeVar("T")

#: One item's outcome: (True, value, None), or (False, exception, traceback text).
Outcome = tuple[bool, Any, "str | None"]


class TimedOut(Exception):
    """Raised on a worker for a call past its time limit (the client's TaskTimeoutError).

    ``stopped``: with a grace period, whether the interrupted call ended within it
    (None: no grace period).
    """

    def __init__(
        self, name: str, timeout: float, grace: float | None = None, stopped: bool | None = None
    ) -> None:
        super().__init__(name, timeout, grace, stopped)
        self.name = name
        self.timeout = timeout
        self.grace = grace
        self.stopped = stopped


class _Interrupted(TimeLimitInterrupt):
    """Raised inside a call's thread at its time limit, when it has a grace period."""

    def __init__(self) -> None:
        super().__init__(
            "the task reached its time limit; procpool interrupts it so that its cleanup "
            "runs: let this exception propagate"
        )


def _interrupt(thread: threading.Thread) -> None:
    """Raise :class:`_Interrupted` in ``thread`` at its next bytecode (CPython's async exception)."""
    if thread.ident is not None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(thread.ident), ctypes.py_object(_Interrupted)
        )


class NotSendable(Exception):
    """Stands for an exception that could not be sent back (the client's SerializationError)."""


def task_name(fn: Callable[..., object]) -> str:
    """A readable name for Dask keys (the dashboard shows it), ``partial`` unwrapped."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__name__", None)
    return name if isinstance(name, str) else type(fn).__name__


def call_limited(
    fn: Callable[..., T],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout: float,
    grace: float | None = None,
) -> T:
    """Run ``fn(*args, **kwargs)`` on a worker; raise :class:`TimedOut` after ``timeout`` s.

    The call runs in a helper thread so that the Dask task answers on time even
    when the function is stuck in C code. The clock starts when the worker starts
    the task, so time spent waiting in the scheduler's queue never counts. With a
    ``grace`` period, ``TimeLimitInterrupt`` is first raised inside the call (its
    ``finally`` blocks run) and the task waits up to ``grace`` seconds for it to
    end; a thread cannot be killed, so one that runs on is left to finish.
    """
    outcome: list[tuple[bool, Any]] = []
    finished = threading.Event()
    # The helper thread sees the task's context variables, as the task thread would.
    context = contextvars.copy_context()

    def run() -> None:
        try:
            outcome.append((True, context.run(fn, *args, **kwargs)))
        except BaseException as exc:
            outcome.append((False, exc))
        finally:
            finished.set()

    # Daemon: a task that never returns must not keep the worker process from exiting.
    helper = threading.Thread(target=run, name=f"procpool-{task_name(fn)}", daemon=True)
    helper.start()
    if not finished.wait(timeout):
        if grace is None:
            raise TimedOut(task_name(fn), timeout)
        _interrupt(helper)
        stopped = finished.wait(None if math.isinf(grace) else grace)
        raise TimedOut(task_name(fn), timeout, grace, stopped)
    ok, value = outcome[0]
    if ok:
        return cast("T", value)
    raise value


class Stamped:
    """A call's value, with when it started (``time.time()``), how long it ran, and where.

    What a call returns when its pool has an ``on_event`` hook (:func:`stamped`):
    the client reports the times in ``TaskFinished`` and hands on the value.
    """

    __slots__ = ("pid", "ran", "started", "value")

    def __init__(self, value: object, started: float, ran: float, pid: int) -> None:
        self.value = value
        self.started = started
        self.ran = ran
        self.pid = pid


#: The attribute on which an exception raised by a stamped call carries
#: ``(started, ran, pid)`` to the client, which removes it.
STAMP = "_procpool_stamp"


def stamped(fn: Callable[..., object], /, *args: Any, **kwargs: Any) -> Stamped:
    """Run ``fn(*args, **kwargs)`` and return its value :class:`Stamped` (events on)."""
    started, clock = time.time(), time.perf_counter()
    try:
        value = fn(*args, **kwargs)
    except BaseException as exc:
        # An exception that takes no attributes travels unstamped.
        with contextlib.suppress(Exception):
            setattr(exc, STAMP, (started, time.perf_counter() - clock, os.getpid()))
        raise
    return Stamped(value, started, time.perf_counter() - clock, os.getpid())


def run_call(fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
    """Return ``fn(*args, **kwargs)``, run as a procpool task (for ``current_worker()``)."""
    token = identity.enter("dask")
    try:
        return fn(*args, **kwargs)
    finally:
        identity.leave(token)


def failure(fn: Callable[..., object], exc: BaseException) -> Outcome:
    """Package an item's exception so that it survives the trip back to the client."""
    tb = exc.__traceback__
    # Skip run_chunk's own frame: the user wants to see their function.
    text = "".join(traceback.format_exception(type(exc), exc, tb.tb_next if tb else None))
    try:
        # Sealed (see codec.SealedError: Dask's tblib patches exception pickling in
        # its workers), and a round trip, not just dumps: an exception whose
        # __init__ wants other arguments than its .args pickles fine, then fails to
        # unpickle in the client, which would fail the whole chunk, not this item.
        sealed = seal(exc)
        sealed.open()
    except Exception as error:
        return (
            False,
            NotSendable(
                f"{task_name(fn)} raised {type(exc).__qualname__}: {exc}, which cannot be "
                f"sent back from the worker ({type(error).__name__}: {error}); give the "
                "exception class an __init__ that accepts its .args, or a __reduce__"
            ),
            text,
        )
    return (False, sealed, text)


def run_chunk(
    fn: Callable[..., object],
    items: Sequence[tuple[Any, ...]],
    timeout: float | None,
    timeout_retries: int,
    grace: float | None = None,
) -> list[Outcome]:
    """Run ``fn(*item)`` for each item on a worker; one outcome per item, in order.

    An item's exception is caught and returned with its formatted traceback, so
    the other items of the chunk still run and every item fails or succeeds exactly
    as in a serial ``map``. An item that runs out of time is run again up to
    ``timeout_retries`` times.
    """
    token = identity.enter("dask")
    try:
        return _run_items(fn, items, timeout, timeout_retries, grace)
    finally:
        identity.leave(token)


def _run_items(
    fn: Callable[..., object],
    items: Sequence[tuple[Any, ...]],
    timeout: float | None,
    timeout_retries: int,
    grace: float | None,
) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for args in items:
        attempts = timeout_retries
        while True:
            try:
                value = fn(*args) if timeout is None else call_limited(fn, args, {}, timeout, grace)
            except TimedOut as exc:
                if attempts > 0:
                    attempts -= 1
                    continue
                outcomes.append(failure(fn, exc))
            except Exception as exc:
                outcomes.append(failure(fn, exc))
            else:
                outcomes.append((True, value, None))
            break
    return outcomes

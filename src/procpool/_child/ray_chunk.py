"""What a Ray worker runs for ``RayPool``: plain calls, and time-limited calls and chunks.

These functions travel to the Ray workers by reference
(``procpool._child.ray_chunk.limited``), so procpool must be installed there too, in the
same version as in the driver. Importing this module imports the process
boundary only (``procpool._child``): a Ray worker never loads the pool, the
dispatcher or the driver's side of ``RayPool``, and this module does not import
Ray.

A time-limited call runs in a helper thread (``_child.dask_chunk.call_limited``,
the code ``DaskPool`` uses): at the limit ``TimeLimitInterrupt`` is raised inside it
(with a grace period), and the call ends with ``TimedOut``. A thread cannot be
killed, but a Ray worker process can: so when the helper thread is still running
(no grace period, or the grace period passed) :func:`limited` reports what it has
and waits for the driver to end this worker with ``ray.cancel(force=True)``. The
report must reach the driver before the process goes, hence a streaming
generator: its first (and only) item is sent while the task still runs.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any

from . import identity
from .dask_chunk import Outcome, Stamped, TimedOut, call_limited, failure, stamped

#: How long a worker whose call is stuck waits to be killed by the driver before it
#: ends itself (a lost driver, a cancel that did not arrive): a backstop only.
LINGER_SECONDS = 60.0


def call(fn: Callable[..., object], args: tuple[Any, ...], kwargs: dict[str, Any]) -> object:
    """Return ``fn(*args, **kwargs)``: a call whose arguments Ray must pass on untouched.

    Ray resolves an ObjectRef given as a task's own argument; nested in ``args``
    it reaches ``fn`` as it is, as with the other pools.
    """
    token = identity.enter("ray")
    try:
        return fn(*args, **kwargs)
    finally:
        identity.leave(token)


def as_task(fn: Callable[..., object]) -> Callable[..., object]:
    """``fn`` as the function of a Ray remote function: run as a procpool task.

    The wrapper is exported to Ray once per function (``fn`` travels inside it
    by reference, as a top-level function does), and each call sends only its
    arguments. It sets who runs the call (``current_worker()``) around it.
    """

    def task(*args: Any, **kwargs: Any) -> object:
        token = identity.enter("ray")
        try:
            return fn(*args, **kwargs)
        finally:
            identity.leave(token)

    # Ray names the task after its function (its dashboard, its errors).
    task.__name__ = getattr(fn, "__name__", task.__name__)
    return task


def run_items(
    fn: Callable[..., object], items: Sequence[Any], star: bool, stamp: bool = False
) -> tuple[list[Any], dict[int, tuple[BaseException, str | None]]] | Stamped:
    """Run ``fn`` on each item of a map chunk with no time limit; ``(values, errors)``.

    ``star``: call ``fn(*item)``, else ``fn(item)``. An item's exception is caught
    and packaged (``_child.dask_chunk.failure``), so the other items still run and
    every item fails or succeeds as in a serial ``map``; ``values`` has None in its
    place and ``errors`` its exception and traceback text. The result of a chunk
    that all went well is a plain list, which is what crosses the object store.
    ``stamp``: return it :class:`~.dask_chunk.Stamped` with the chunk's run time.
    """
    if stamp:
        return stamped(run_items, fn, items, star)
    values: list[Any] = []
    errors: dict[int, tuple[BaseException, str | None]] = {}
    token = identity.enter("ray")
    try:
        for index, item in enumerate(items):
            try:
                values.append(fn(*item) if star else fn(item))
            except Exception as exc:
                values.append(None)
                _, error, text = failure(fn, exc)
                errors[index] = (error, text)
    finally:
        identity.leave(token)
    return values, errors


#: The report of a time-limited task: the outcomes of the items it ran, then, if
#: it is stuck, ``(index, attempts_left, timed_out)`` of the item whose thread
#: still runs (its worker must be killed), else None.
Report = tuple[list[Outcome], "tuple[int, int, TimedOut] | None"]


def limited(
    fn: Callable[..., object],
    items: Sequence[tuple[Any, ...]],
    kwargs: dict[str, Any],
    timeout: float,
    grace: float | None,
    timeout_retries: int,
    first_attempts: int,
    stamp: bool = False,
) -> Generator[Report | Stamped, None, None]:
    """Run ``fn(*item, **kwargs)`` for each item with a time limit; yield one report.

    An item's exception is caught and packaged (``_child.dask_chunk.failure``), so
    every item fails or succeeds as in a serial ``map``. An item that stopped
    within its grace period after its limit is run again up to
    ``timeout_retries`` times (``first_attempts`` for the first item: what an
    earlier worker left of its tries). An item whose thread is still running
    after its limit (and grace period) ends the run: the report names it, and
    this worker waits to be killed, because that thread would run on beside the
    next task. ``stamp``: yield the report :class:`~.dask_chunk.Stamped` with the
    task's run time.
    """
    started, clock = time.time(), time.perf_counter()
    token = identity.enter("ray")
    try:
        report = _run_limited(fn, items, kwargs, timeout, grace, timeout_retries, first_attempts)
    finally:
        identity.leave(token)
    if stamp:
        yield Stamped(report, started, time.perf_counter() - clock, os.getpid())
    else:
        yield report
    if report[1] is not None:
        _linger()


def _run_limited(
    fn: Callable[..., object],
    items: Sequence[tuple[Any, ...]],
    kwargs: dict[str, Any],
    timeout: float,
    grace: float | None,
    timeout_retries: int,
    first_attempts: int,
) -> Report:
    outcomes: list[Outcome] = []
    for index, args in enumerate(items):
        attempts = first_attempts if index == 0 else timeout_retries
        while True:
            try:
                value = call_limited(fn, args, kwargs, timeout, grace)
            except TimedOut as exc:
                if exc.stopped is not True:
                    return (outcomes, (index, attempts, exc))
                if attempts > 0:
                    attempts -= 1
                    continue
                outcomes.append(failure(fn, exc))
            except Exception as exc:
                outcomes.append(failure(fn, exc))
            else:
                outcomes.append((True, value, None))
            break
    return (outcomes, None)


def _linger() -> None:
    """Wait for the driver's ``ray.cancel(force=True)``; end the process if it never comes."""
    threading.Event().wait(LINGER_SECONDS)
    # The driver is gone or its cancel was lost, and a thread of a call that
    # passed its limit still runs: this worker must not take another task.
    os._exit(70)

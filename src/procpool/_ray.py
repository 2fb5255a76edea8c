"""``RayPool``: procpool's typed API on a Ray cluster.

Moving a program from one machine to a cluster changes one line::

    with procpool.Pool() as pool:                     # local processes
    with procpool.RayPool("auto") as pool:            # the Ray cluster of this machine

``submit``, ``map``, ``imap``, ``imap_unordered``, ``options``, ``then``, ``catch``,
``await`` and the ``with`` block keep their types and meaning; docs/scale-out.md
lists every difference.

What it shares with ``DaskPool`` (``submit``, ``map``, the lifecycle, tasks in
flight, retries) is in :mod:`._remote` and :mod:`._remote_core`; the Ray side
(submitting, outcomes, cancelling) is in :mod:`._ray_core`, with the connection
in :mod:`._ray_connect`, the calls in :mod:`._ray_calls` and Ray's errors in
:mod:`._ray_errors`; what runs on the Ray workers is in :mod:`._child.ray_chunk`
and :mod:`._child.dask_chunk`.
``ray`` is imported only when a ``RayPool`` is built, so ``import procpool``
never needs it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ._child.dask_chunk import stamped
from ._events import EventHook
from ._options import Options, RetryOn, check_count, check_timeout, finite, retry_types
from ._ray_calls import ChunkCall, LimitedCall, PlainCall
from ._ray_connect import CONNECTION, import_ray
from ._ray_core import RayBackend
from ._remote import RemotePool, check_hook
from ._remote_core import RemoteCore

__all__ = ["RayPool"]


class RayPool(RemotePool):
    """A ``concurrent.futures.Executor`` that runs procpool's API on a Ray cluster.

    Args:
        address: None: Ray as this process already has it (``ray.init`` called by
            the program, left as it is), else a new Ray instance on this machine
            with the CPUs this process may use, no dashboard, listening on
            loopback only, token authentication on, shut down with the last pool
            that uses it. An address (``"auto"``, ``"host:6379"``,
            ``"ray://host:10001"``): this process connects to that cluster, and
            disconnects (``ray.shutdown()``) when the last pool using that
            connection is done; the cluster itself runs on. To give ``ray.init``
            other options (``runtime_env=``, ``namespace=``...), call it yourself
            first and pass no address.
        task_timeout: default time limit of each task (each item of a map), in
            seconds, counted from the moment a worker starts it. A task over its
            limit fails with :class:`~procpool.TaskTimeoutError` and its worker
            process is killed (Ray starts another).
        task_grace: default grace period, in seconds: at its time limit
            ``TimeLimitInterrupt`` is raised inside the task's thread (its
            ``finally`` blocks run); a task still running this long after is
            killed with its worker process.
        retries: run a task (or a map item) again, up to this many times, when
            its worker or node died, or when it raises one of ``retry_on``.
            (Ray's own retries, 3 by default, are turned off: a task runs once
            unless you ask for more.)
        retry_timeouts: also run again, up to ``retries`` times, a task that ran
            out of time.
        retry_on: exception types (one, or a tuple) after which a task (or a map
            item, on its own) is submitted again, up to ``retries`` times; its
            final error carries a note saying how many attempts were made.
        backoff: seconds a retry waits, in this process (holding no Ray worker
            or CPU), before it is submitted again; each next retry of the same
            task waits twice as long (at most 60 s), jittered by 0.5-1.5x.
        on_event: called with each :data:`~procpool.PoolEvent` on the pool's
            callback thread (never Ray's), in order; an exception it raises is
            logged. ``TaskQueued`` and ``TaskFinished`` (with the run time and
            pid the worker measured); no ``TaskStarted`` nor worker events (Ray
            does not tell the driver). See docs/scale-out.md.

    Every call returns procpool's own :class:`~procpool.Future` or
    :class:`~procpool.MapFuture`. ``map`` sends ``chunksize`` items per Ray task
    (by default about four chunks per CPU of the cluster). Results come from
    Ray's object store: a numpy array (in a task's arguments or its result)
    arrives without a copy, read-only, as with ``ray.get``. ``cancel()`` of a
    running task kills its worker process (``ray.cancel(force=True)``). If the
    pool is closed before an ``imap`` input runs out, the items already sent are
    yielded, then :class:`~procpool.PoolClosedError` is raised. Leaving the
    ``with`` block normally waits for every task; leaving it by an exception
    cancels them::

        with procpool.RayPool() as pool:
            squares = pool.map(pow, range(10), [2] * 10).result()

    Raises:
        ImportError: Ray is not installed (``pip install "procpool[ray]"``).
        ValueError: a negative ``task_timeout``, ``retries`` or ``backoff``.
        TypeError: ``retry_on`` that is not an exception type or a tuple of them.
        RuntimeError: an address, while this process is already connected to
            another Ray cluster.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        task_timeout: float | None = None,
        task_grace: float | None = None,
        retries: int = 0,
        retry_timeouts: bool = False,
        retry_on: RetryOn = (),
        backoff: float = 0.0,
        on_event: EventHook | None = None,
    ) -> None:
        check_timeout("task_timeout", task_timeout)
        check_timeout("task_grace", task_grace)
        check_timeout("backoff", backoff)
        check_count("retries", retries, 0)
        retry_on_types = retry_types(retry_on) or ()
        check_hook(on_event)
        if address is not None and not isinstance(address, str):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"RayPool(address=...) takes a str or None, not {address!r}")
        ray = import_ray()
        owns = CONNECTION.acquire(ray, address)
        try:
            backend = RayBackend(ray, owns)
        except BaseException:
            if owns:
                CONNECTION.release(ray)
            raise
        self._start(
            RemoteCore(backend),
            Options(
                finite(task_timeout),
                retries,
                retry_timeouts,
                grace=task_grace,
                retry_on=retry_on_types,
                backoff=backoff,
            ),
            on_event,
        )

    def _describe(self) -> str:
        backend = self._core.backend
        assert isinstance(backend, RayBackend)
        return "(Ray started or connected by procpool)" if backend.owns_connection else ""

    def _check_memory_limit(self) -> None:
        raise ValueError(
            "RayPool cannot replace one worker for its memory: Ray's memory monitor kills "
            "the task using the most memory when a node runs short (a WorkerLostError with "
            "cause='oom'), and RAY_memory_usage_threshold sets when; see docs/scale-out.md"
        )

    def _check_priority(self, priority: int) -> None:
        raise ValueError(
            f"RayPool cannot order its work by priority={priority}: Ray has no task "
            "priorities, and every task goes to Ray's own queue at once. Submit the "
            "urgent work first, or give it a pool (or a Ray cluster) of its own; see "
            "docs/scale-out.md"
        )

    # -- what RemotePool asks of an engine -----------------------------------------------

    def _call(
        self, fn: Callable[..., object], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> PlainCall | LimitedCall:
        opts = self._options
        if opts.timeout is None:
            # Stamped (on_event): a partial, which Ray sends with each call.
            return PlainCall(functools.partial(stamped, fn) if self._stamp else fn, args, kwargs)
        # Retries of a whole submission (retry_timeouts) are the core's, as for Dask.
        return LimitedCall(
            fn, [args], kwargs, opts.timeout, opts.grace, 0, 0, single=True, stamp=self._stamp
        )

    def _chunk_call(
        self, fn: Callable[..., object], items: list[Any], star: bool
    ) -> ChunkCall | LimitedCall:
        opts = self._options
        if opts.timeout is None:
            return ChunkCall(fn, items, star, stamp=self._stamp)
        retries = opts.retries if opts.retry_timeouts else 0
        rows = items if star else [(item,) for item in items]
        return LimitedCall(
            fn,
            rows,
            {},
            opts.timeout,
            opts.grace,
            retries,
            retries,
            single=False,
            stamp=self._stamp,
        )

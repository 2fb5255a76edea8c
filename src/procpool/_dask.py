"""``DaskPool``: procpool's typed API on a ``dask.distributed`` cluster.

Moving a program from one machine to a cluster changes one line::

    with procpool.Pool() as pool:                            # local processes
    with procpool.DaskPool("tcp://scheduler:8786") as pool:  # a Dask cluster

``submit``, ``map``, ``imap``, ``imap_unordered``, ``options``, ``then``, ``catch``,
``await`` and the ``with`` block keep their types and meaning; docs/scale-out.md
lists every difference (Dask cannot stop a task that is already running, for one).

What it shares with ``RayPool`` (``submit``, ``map``, the lifecycle, tasks in
flight, retries) is in :mod:`._remote` and :mod:`._remote_core`; the Dask side
(submitting, fetching, cancelling, the data flow of one task) is in
:mod:`._dask_core`; what runs on the Dask workers is in :mod:`._child.dask_chunk`.
``distributed`` is imported only when a ``DaskPool`` is built, so ``import
procpool`` never needs it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ._child.dask_chunk import call_limited, run_call, run_chunk, stamped
from ._dask_core import DaskBackend, import_distributed, private_local_cluster
from ._events import EventHook
from ._options import Options, RetryOn, check_count, check_timeout, finite, retry_types
from ._remote import RemotePool, check_hook
from ._remote_core import RemoteCore

__all__ = ["DaskPool"]


class DaskPool(RemotePool):
    """A ``concurrent.futures.Executor`` that runs procpool's API on a Dask cluster.

    Args:
        client_or_address: a ``distributed.Client`` (used as it is and left open);
            a scheduler address such as ``"tls://host:8786"``, or a cluster object
            (a client is made for it and closed with the pool); or ``None``: the
            current default Dask client if there is one, else a new ``LocalCluster``
            on this machine that only this program can use (TLS with throw-away
            certificates, dashboard on loopback), closed with the pool.
        task_timeout: default time limit of each task (each item of a map), in
            seconds, counted from the moment a worker starts it. A task over its
            limit fails with :class:`~procpool.TaskTimeoutError`; Dask cannot stop
            it, so its thread on the worker runs on and the result is thrown away.
        task_grace: default grace period, in seconds: at its time limit
            ``TimeLimitInterrupt`` is raised inside the task's thread (its
            ``finally`` blocks run) and the task waits this long for it to end
            before it fails. Dask cannot kill a thread: one that runs on after its
            grace period is left to finish, and its result is thrown away.
        retries: submit a task (or a map item) again, up to this many times,
            when Dask gives up on it because workers died running it
            (``KilledWorker``), or when it raises one of ``retry_on``. Dask itself
            already re-runs such a task ``distributed.scheduler.allowed-failures``
            times (3 by default) first.
        retry_timeouts: also run again, up to ``retries`` times, a task that ran
            out of time.
        retry_on: exception types (one, or a tuple) after which a task (or a map
            item, on its own) is submitted again, up to ``retries`` times; its
            final error carries a note saying how many attempts were made.
        backoff: seconds a retry waits, in this process (holding no Dask
            worker), before it is submitted again; each next retry of the same
            task waits twice as long (at most 60 s), jittered by 0.5-1.5x.
        on_event: called with each :data:`~procpool.PoolEvent` on the pool's
            callback thread (never Dask's), in order; an exception it raises is
            logged. ``TaskQueued`` and ``TaskFinished`` (with the run time and
            pid the worker measured), ``WorkerStarted``/``WorkerExited`` for
            workers joining and leaving the cluster; no ``TaskStarted`` (Dask
            does not tell the client). A :class:`procpool.otel.Tracing` traces
            each task into the Dask worker's tracer provider. See
            docs/scale-out.md.

    Every call returns procpool's own :class:`~procpool.Future` or
    :class:`~procpool.MapFuture`, and every task is submitted with ``pure=False``:
    two submissions of the same call run twice. ``map`` sends ``chunksize`` items
    per Dask task. If the pool is closed before an ``imap`` input runs out, the
    items already sent are yielded, then :class:`~procpool.PoolClosedError` is
    raised. Leaving the ``with`` block normally waits for every task; leaving it by
    an exception cancels them::

        with procpool.DaskPool("tcp://scheduler:8786") as pool:
            squares = pool.map(pow, range(10), [2] * 10).result()

    Raises:
        ImportError: ``distributed`` is not installed (``pip install "procpool[dask]"``).
        ValueError: a negative ``task_timeout``, ``retries`` or ``backoff``.
        TypeError: ``retry_on`` that is not an exception type or a tuple of them.
        TypeError: an asynchronous ``distributed.Client``.
    """

    def __init__(
        self,
        client_or_address: object = None,
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
        distributed = import_distributed()
        owns = True
        client: Any
        if isinstance(client_or_address, distributed.Client):
            client, owns = client_or_address, False
        elif client_or_address is None:
            try:
                client, owns = distributed.get_client(), False
            except ValueError:
                client = private_local_cluster(distributed)
        else:
            client = distributed.Client(client_or_address, set_as_default=False)
        if getattr(client, "asynchronous", False):
            if owns:
                client.close()
            raise TypeError(
                "DaskPool needs a synchronous distributed.Client (asynchronous=False); "
                "to use it from asyncio, await the procpool futures it returns"
            )
        self._backend = DaskBackend(distributed, client, owns)
        self._start(
            RemoteCore(self._backend),
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

    @property
    def client(self) -> Any:
        """The ``distributed.Client`` this pool submits to."""
        return self._backend.client

    def _describe(self) -> str:
        return f"client={self._backend.client!r}"

    def _check_memory_limit(self) -> None:
        raise ValueError(
            "DaskPool cannot replace one worker for its memory: give the Dask workers a "
            "memory limit instead (LocalCluster(memory_limit=...), `dask worker "
            "--memory-limit`), which their nanny enforces; see docs/scale-out.md"
        )

    # -- what RemotePool asks of an engine -----------------------------------------------

    def _call(
        self, fn: Callable[..., object], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Callable[[], object]:
        opts = self._options
        # functools.partial keeps the arguments opaque to Dask: as task arguments,
        # Dask would compute any Dask collection among them and would take keyword
        # arguments such as key=, workers= or retries= for its own.
        inner: Callable[..., object] = fn
        if opts.timeout is not None:
            inner, args, kwargs = call_limited, (fn, args, kwargs, opts.timeout, opts.grace), {}
        if self._stamp:  # on_event: the worker says when the call ran, and how long
            inner, args = stamped, (inner, *args)
        return functools.partial(run_call, inner, args, kwargs)

    def _chunk_call(
        self, fn: Callable[..., object], items: list[Any], star: bool
    ) -> Callable[[], object]:
        opts = self._options
        timeout_retries = opts.retries if opts.retry_timeouts else 0
        rows = items if star else [(item,) for item in items]
        chunk = (fn, rows, opts.timeout, timeout_retries, opts.grace)
        if self._stamp:
            return functools.partial(stamped, run_chunk, *chunk)
        return functools.partial(run_chunk, *chunk)

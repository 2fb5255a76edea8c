"""``DaskPool``: procpool's typed API on a ``dask.distributed`` cluster.

Moving a program from one machine to a cluster changes one line::

    with procpool.Pool() as pool:                            # local processes
    with procpool.DaskPool("tcp://scheduler:8786") as pool:  # a Dask cluster

``submit``, ``map``, ``imap``, ``imap_unordered``, ``options``, ``then``, ``catch``,
``await`` and the ``with`` block keep their types and meaning; docs/scale-out.md
lists every difference (Dask cannot stop a task that is already running, for one).

The machinery behind it (tasks in flight, fetching, retries, cancelling, the
data flow of one task) is in :mod:`._dask_core`; what runs on the Dask workers is
in :mod:`._child.dask_chunk`. ``distributed`` is imported only when a
``DaskPool`` is built, so ``import procpool`` never needs it.
"""

from __future__ import annotations

import functools
import math
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from typing_extensions import ParamSpec

from ._child.dask_chunk import call_limited, run_chunk, task_name
from ._dask_core import (
    Core,
    deliver_chunk,
    drop,
    import_distributed,
    private_local_cluster,
)
from ._errors import PoolClosedError, TaskTimeoutError
from ._executor import Executor
from ._future import Future
from ._imap import Launch
from ._lifecycle import Lifecycle
from ._mapfuture import MapFuture
from ._options import Options, check_count, check_timeout, finite
from ._progress import Progress, make_reporter
from ._stats import PoolStats

__all__ = ["DaskPool"]

P = ParamSpec("P")
R = TypeVar("R")


class DaskPool(Executor):
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
        retries: submit a task again, up to this many times, when Dask gives up on
            it because workers died running it (``KilledWorker``). Dask itself
            already re-runs such a task ``distributed.scheduler.allowed-failures``
            times (3 by default) first.
        retry_timeouts: also run again, up to ``retries`` times, a task that ran
            out of time.

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
        ValueError: a negative ``task_timeout`` or ``retries``.
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
    ) -> None:
        check_timeout("task_timeout", task_timeout)
        check_timeout("task_grace", task_grace)
        check_count("retries", retries, 0)
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
        self._core = self._engine = Core(distributed, client, owns)
        self._options = Options(finite(task_timeout), retries, retry_timeouts, grace=task_grace)
        # A pool dropped without close(): once the pool, its options() views and its
        # tasks in flight (which hold the core) are gone, stop its threads and close
        # the client it made.
        core = self._core
        weakref.finalize(
            core, drop, client if owns else None, core.fetchers.close, core.callbacks.close
        )

    # -- public -------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The ``distributed.Client`` this pool submits to."""
        return self._core.client

    @property
    def workers(self) -> int:
        """The number of worker threads on the cluster right now (at least 1)."""
        return self._core.parallelism()

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """Run ``fn(*args, **kwargs)`` on the cluster; return its future::

            fut = pool.submit(pow, 2, 10)   # Future[int]
            assert fut.result() == 1024

        If ``fn`` or an argument cannot be pickled (Dask sends functions with
        cloudpickle, so lambdas are fine), the future fails with
        :class:`~procpool.SerializationError`.

        Raises:
            PoolClosedError: after ``close()``, ``terminate()`` or ``shutdown()``.
        """
        if not callable(fn):
            raise TypeError(f"submit() needs a callable, not {fn!r}")
        opts = self._options
        # functools.partial keeps the arguments opaque to Dask: as task arguments,
        # Dask would compute any Dask collection among them and would take keyword
        # arguments such as key=, workers= or retries= for its own.
        if opts.timeout is None:
            call: Callable[[], object] = functools.partial(fn, *args, **kwargs)
        else:
            call = functools.partial(call_limited, fn, args, kwargs, opts.timeout, opts.grace)
        _, fut = self._core.launch(task_name(fn), call, opts, user_facing=True)
        self._core.counters.add(submitted=1)
        fut.add_done_callback(self._count)
        return fut

    def _map(
        self,
        fn: Callable[..., R],
        iterables: tuple[Iterable[Any], ...],
        *,
        timeout: float | None,
        chunksize: int | None,
        progress: Progress,
    ) -> MapFuture[R]:
        core = self._core
        core.check_open()
        items = list(zip(*iterables))  # noqa: B905 (stops at the shortest, as builtins.map)
        result: MapFuture[R] = MapFuture(len(items), timeout=timeout)
        result.set_callback_runner(core.callbacks)
        reporter = make_reporter(progress, len(items), task_name(fn))
        if reporter is not None:
            result.set_progress(reporter.advance)
        if not items:
            return result
        if chunksize is None:
            # As multiprocessing.Pool.map: about four chunks per worker thread, so tiny
            # items do not each pay a scheduler round trip, and the load still balances.
            chunksize = max(1, math.ceil(len(items) / (4 * core.parallelism())))
        keys: list[str] = []
        launched = 0
        try:
            for start in range(0, len(items), chunksize):
                part = items[start : start + chunksize]
                keys.append(self._launch_chunk(fn, part, result, start))
                launched += len(part)
        except PoolClosedError:
            # Closed by another thread meanwhile: all or nothing. What went out counts
            # as submitted, then cancelled, so that the counters still add up.
            core.counters.add(submitted=launched)
            core.cancel_keys(keys)
            raise
        core.counters.add(submitted=len(items))
        # The hook holds keys, not the chunk futures: those hold results, which an
        # iterated MapFuture must not keep alive.
        result.set_cancel_hook(lambda _was_running: core.cancel_keys(keys))
        return result

    def close(self) -> None:
        """Take no new work; the work already submitted still runs. Does not wait."""
        self._core.stop(Lifecycle.CLOSED)

    def terminate(self) -> None:
        """Stop now: cancel every unfinished task; their futures report cancelled.

        Dask drops the tasks that have not started; one already running on a worker
        cannot be stopped and runs on, but its result is discarded. A client the
        pool made is closed (with its cluster, if it started one). Does not wait.
        """
        core = self._core
        core.stop(Lifecycle.TERMINATED)
        core.cancel_all()
        core.fetchers.close()
        core.callbacks.close()
        core.release_client()

    def stats(self) -> PoolStats:
        """Return a snapshot of the pool's counters (shared with its ``options()`` views).

        ``workers_started``, ``workers_replaced`` and ``busy_seconds`` stay empty:
        Dask manages the workers, and its dashboard shows their activity.
        """
        return self._core.counters.snapshot()

    def __repr__(self) -> str:
        core = self._core
        with core.lock:
            state, jobs = core.state.value, len(core.jobs)
        return f"<procpool.DaskPool {state} tasks={jobs} client={core.client!r}>"

    # -- internals ------------------------------------------------------------------------

    def _count(self, fut: Future[Any]) -> None:
        counters = self._core.counters
        if fut.cancelled():
            counters.add(cancelled=1)
        elif isinstance(fut.exception(), TaskTimeoutError):
            counters.add(failed=1, timed_out=1)
        elif fut.exception() is not None:
            counters.add(failed=1)
        else:
            counters.add(completed=1)

    def _check_memory_limit(self) -> None:
        raise ValueError(
            "DaskPool cannot replace one worker for its memory: give the Dask workers a "
            "memory limit instead (LocalCluster(memory_limit=...), `dask worker "
            "--memory-limit`), which their nanny enforces; see docs/scale-out.md"
        )

    def _launch_chunk(
        self, fn: Callable[..., object], items: list[tuple[Any, ...]], into: MapFuture[Any], at: int
    ) -> str:
        """Send one chunk as one Dask task; its outcomes go to ``into`` from item ``at``."""
        opts = self._options
        timeout_retries = opts.retries if opts.retry_timeouts else 0
        call = functools.partial(run_chunk, fn, items, opts.timeout, timeout_retries, opts.grace)
        # Timeouts of single items are retried on the worker; the chunk as a whole
        # is submitted again only when its workers died.
        chunk_opts = Options(None, opts.retries, False)
        key, chunk = self._core.launch(task_name(fn), call, chunk_opts, user_facing=False)
        chunk.add_done_callback(
            functools.partial(deliver_chunk, into, at, len(items), self._core.counters)
        )
        return key

    # -- what the shared surface asks of a pool ------------------------------------------

    def _imap_launcher(self, fn: Callable[[Any], R]) -> Launch[R]:
        core = self._core

        def launch(items: list[Any], base_index: int) -> MapFuture[R]:
            chunk: MapFuture[R] = MapFuture(len(items))
            key = self._launch_chunk(fn, [(item,) for item in items], chunk, 0)
            core.counters.add(submitted=len(items))
            chunk.set_cancel_hook(lambda _was_running: core.cancel_keys([key]))
            return chunk

        return launch

    def _end_in_background(self) -> None:
        # Close a client we made once the work is done, without making the caller wait.
        threading.Thread(target=self.join, name="procpool-dask-shutdown", daemon=True).start()

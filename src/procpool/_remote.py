"""``RemotePool``: the typed API of the pools that run on a cluster engine (Dask, Ray).

``DaskPool`` and ``RayPool`` differ only in how a call reaches the engine; what
``submit``, ``map``, ``imap``, ``close``, ``terminate`` and ``stats`` do with it is
written once here, on top of :class:`._remote_core.RemoteCore`. A subclass builds
its core (with its engine's :class:`._remote_core.Backend`) and says what to submit
for one call (:meth:`RemotePool._call`) and for one chunk of a map
(:meth:`RemotePool._chunk_call`).
"""

from __future__ import annotations

import abc
import functools
import itertools
import math
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from typing_extensions import ParamSpec

from ._child.codec import describe_callable
from ._child.dask_chunk import task_name
from ._errors import PoolClosedError
from ._events import EventHook, TraceTask
from ._executor import Executor
from ._future import Future
from ._imap import Launch
from ._lifecycle import Lifecycle
from ._mapfuture import MapFuture
from ._options import Options
from ._progress import Progress, make_reporter
from ._remote_backend import CancelMode
from ._remote_chunks import Chunks
from ._remote_core import RemoteCore, drop
from ._stats import PoolStats

P = ParamSpec("P")
R = TypeVar("R")

#: Numbers the pools of a process, for their names in events (``procpool.DaskPool-1``).
_pool_numbers = itertools.count(1)


def check_hook(on_event: object) -> None:
    """Check ``on_event=``: None or a callable (before a pool connects to anything)."""
    if on_event is not None and not callable(on_event):
        raise TypeError(f"on_event must be callable, not {on_event!r}")


class RemotePool(Executor):
    """Base of the pools on a cluster engine: their shared ``submit``, ``map`` and lifecycle."""

    _core: RemoteCore
    #: ``on_event.trace_task`` (procpool.otel.Tracing): wraps each submission.
    _trace_task: TraceTask | None = None
    #: The workers stamp each call with its run time (``on_event`` is set).
    _stamp: bool = False

    def _start(self, core: RemoteCore, options: Options, on_event: EventHook | None) -> None:
        """Take ``core`` as this pool's engine; stop its threads and let it go when dropped.

        ``on_event``: the hook of :meth:`RemoteCore.watch` (checked here).
        """
        check_hook(on_event)
        self._core = self._engine = core
        self._options = options
        self._name = f"procpool.{core.backend.label}-{next(_pool_numbers)}"
        if on_event is not None:
            self._trace_task = getattr(on_event, "trace_task", None)
            self._stamp = True
            core.watch(self._name, on_event)
        # A pool dropped without close(): once the pool, its options() views and its
        # tasks in flight (which hold the core) are gone, stop its threads and let go
        # of what it started.
        # (Bound methods of the backend and the threads only: none of them holds the core.)
        weakref.finalize(
            core,
            drop,
            core.backend.release,
            core.helpers.close,
            core.timers.close,
            core.callbacks.close,
        )

    # -- what each engine supplies --------------------------------------------------------

    @abc.abstractmethod
    def _call(
        self, fn: Callable[..., object], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> object:
        """What the backend submits for ``fn(*args, **kwargs)`` under this view's options."""

    @abc.abstractmethod
    def _chunk_call(self, fn: Callable[..., object], items: list[Any], star: bool) -> object:
        """What the backend submits for ``fn`` on each item, one outcome each.

        ``star``: each item is a tuple of arguments (``fn(*item)``, a map of several
        iterables); else the item is the one argument (``fn(item)``).
        """

    # -- public -------------------------------------------------------------------------

    @property
    def workers(self) -> int:
        """How many tasks the cluster runs at once right now (at least 1)."""
        return self._core.parallelism()

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """Run ``fn(*args, **kwargs)`` on the cluster; return its future::

            fut = pool.submit(pow, 2, 10)   # Future[int]
            assert fut.result() == 1024

        The arguments reach ``fn`` as they are (a Dask future or a Ray ObjectRef
        among them is not resolved first). If ``fn`` or an argument cannot be
        pickled (functions travel with cloudpickle, so lambdas are fine), the future
        fails with :class:`~procpool.SerializationError`.

        Raises:
            PoolClosedError: after ``close()``, ``terminate()`` or ``shutdown()``.
        """
        if not callable(fn):
            raise TypeError(f"submit() needs a callable, not {fn!r}")
        core, opts = self._core, self._options
        fut: Future[R] = Future()
        sent: Callable[..., object] = fn
        title = ""
        if core.events is not None:
            core.check_open()  # no event (nor span) for a closed pool's work
            title = describe_callable(fn)
            if self._trace_task is not None:
                sent = self._trace_task(fn, fut, title)
            core.queued(title, 1, opts.priority)
        call = self._call(sent, args, kwargs)
        # The core counts it (submitted, then completed, failed or cancelled).
        core.launch(task_name(fn), call, opts, user_facing=True, title=title, future=fut)
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
        # One iterable: its items are the arguments themselves. Engines serialize a
        # list of ints far faster than a list of 1-tuples (Ray: 5x, msgpack).
        star = len(iterables) != 1
        items: list[Any] = list(zip(*iterables)) if star else list(next(iter(iterables)))  # noqa: B905
        result: MapFuture[R] = MapFuture(len(items), timeout=timeout)
        result.set_callback_runner(core.callbacks)
        reporter = make_reporter(progress, len(items), task_name(fn))
        if reporter is not None:
            result.set_progress(reporter.advance)
        if not items:
            return result
        if chunksize is None:
            # As multiprocessing.Pool.map: about four chunks per worker, so tiny items
            # do not each pay a scheduler round trip, and the load still balances.
            chunksize = max(1, math.ceil(len(items) / (4 * core.parallelism())))
        chunks = self._chunks(fn, result, star, "stop")
        if core.events is not None:
            core.queued(chunks.title, len(items), self._options.priority)
        launched = 0
        try:
            for start in range(0, len(items), chunksize):
                part = items[start : start + chunksize]
                chunks.launch(part, start)
                launched += len(part)
        except PoolClosedError:
            # Closed by another thread meanwhile: all or nothing. What went out counts
            # as submitted, then cancelled, so that the counters still add up.
            core.counters.add(submitted=launched)
            core.cancel_keys(chunks.keys, mode="unstarted")
            raise
        core.counters.add(submitted=len(items))
        # The hook holds the chunks' keys, not their futures: those hold results,
        # which an iterated MapFuture must not keep alive.
        result.set_cancel_hook(chunks.cancel)
        return result

    def close(self) -> None:
        """Take no new work; the work already submitted still runs. Does not wait."""
        self._core.stop(Lifecycle.CLOSED)

    def terminate(self) -> None:
        """Stop now: cancel every unfinished task; their futures report cancelled.

        What the pool started (a client, a cluster, a Ray instance) is let go.
        Does not wait.
        """
        core = self._core
        core.stop(Lifecycle.TERMINATED)
        core.cancel_all()
        core.helpers.close()
        core.timers.close()
        core.callbacks.close()
        core.release()

    def stats(self) -> PoolStats:
        """Return a snapshot of the pool's counters (shared with its ``options()`` views).

        ``workers_started``, ``workers_replaced`` and ``busy_seconds`` stay empty:
        the engine manages the workers (see its dashboard).
        """
        return self._core.counters.snapshot()

    def __repr__(self) -> str:
        core = self._core
        with core.lock:
            state, jobs = core.state.value, len(core.jobs)
        return f"<procpool.{core.backend.label} {state} tasks={jobs} {self._describe()}>"

    def _describe(self) -> str:
        """What the repr says about the engine (``client=...``)."""
        return ""

    # -- internals ------------------------------------------------------------------------

    def _chunks(
        self, fn: Callable[..., object], into: MapFuture[Any], star: bool, mode: CancelMode
    ) -> Chunks:
        """The chunks of one map of ``fn`` under this view's options, delivering into ``into``.

        With an ``on_event`` hook they carry the map's title, and with a tracing
        hook each chunk sends ``fn`` wrapped to run in the map's span.
        """
        sent, title = fn, ""
        if self._core.events is not None:
            title = f"map({describe_callable(fn)}, ...)"
            if self._trace_task is not None:
                sent = self._trace_task(fn, into, title)
        return Chunks(
            self._core,
            self._options,
            task_name(fn),
            functools.partial(self._chunk_call, sent),
            into,
            star,
            mode,
            title,
        )

    # -- what the shared surface asks of a pool ------------------------------------------

    def _imap_launcher(self, fn: Callable[[Any], R]) -> Launch[R]:
        core = self._core

        def launch(items: list[Any], base_index: int) -> MapFuture[R]:
            chunk: MapFuture[R] = MapFuture(len(items))
            # Cancelled: the read-ahead of an imap left early, whose results are not wanted.
            if core.events is not None:
                core.check_open()  # no event (nor span) for a closed pool's work
            chunks = self._chunks(fn, chunk, False, "drop")
            if core.events is not None:
                core.queued(chunks.title, len(items), self._options.priority)
            chunks.launch(items, 0)
            core.counters.add(submitted=len(items))
            chunk.set_cancel_hook(chunks.cancel)
            return chunk

        return launch

    def _end_in_background(self) -> None:
        # Let go of what the pool started once the work is done, without making the
        # caller wait.
        name = f"procpool-{self._core.backend.label.lower()}-shutdown"
        threading.Thread(target=self.join, name=name, daemon=True).start()

"""The Dask side of ``DaskPool``: submitting to a ``distributed.Client``, fetching, cancelling.

What every pool on a cluster engine shares (tasks in flight, retries, the
lifecycle) is in :mod:`._remote_core`; this module is the :class:`DaskBackend`
it drives. One task::

    client.submit(partial(fn, *args), key=<name>-<uuid>, pure=False)
         │   the Dask future is kept until the task is done: Dask forgets a task
         │   whose future is garbage-collected
         ▼
    scheduler ──> a worker thread runs fn (inside ``call_limited`` if it has a time limit)
         │
         ▼
    Dask's callback thread: the future is handed to one of the core's helper
    threads, where :meth:`DaskBackend.outcome` fetches the result or the
    exception and translates it (KilledWorker -> WorkerLostError, the worker's
    stand-ins -> procpool's errors, the remote traceback -> __cause__)

``distributed`` is imported only when a ``DaskPool`` is built, and this module
type-checks without it (the client is ``Any``).
"""

from __future__ import annotations

import concurrent.futures
import functools
import importlib
import logging
import threading
import traceback
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Any, ClassVar, cast

from ._child.dask_chunk import NotSendable, TimedOut
from ._errors import RemoteTraceback, SerializationError, TaskTimeoutError, WorkerLostError
from ._events import Events, ExitCause, WorkerExited, WorkerStarted
from ._remote_backend import (
    Backend,
    Cancelled,
    CancelMode,
    RemoteJob,
    Result,
    Value,
    take_error_stamp,
    take_stamp,
)
from ._remote_threads import Threads

LOGGER = logging.getLogger("procpool")

INSTALL_HINT = 'DaskPool needs dask.distributed: pip install "procpool[dask]"'


def import_distributed() -> Any:
    """Import ``distributed`` on first use; typed ``Any`` so no stubs are needed."""
    try:
        return importlib.import_module("distributed")
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc


def private_local_cluster(distributed: Any) -> Any:
    """A client of a new ``LocalCluster`` that only this program can use, closed with it.

    Dask's defaults would let every local user run code on the cluster (a plain
    ``tcp://`` scheduler on loopback) and serve its dashboard, with the cluster's
    state and logs, on every network interface. Here the scheduler and workers
    speak TLS with throw-away certificates (``security=True``, which needs the
    ``cryptography`` package that ``procpool[dask]`` installs; without it, plain
    ``tcp://`` on loopback) and the dashboard listens on loopback, on a free port
    (``pool.client.dashboard_link``). set_as_default=False: a library must not take
    over the process-wide default client.
    """
    try:
        importlib.import_module("cryptography")
        tls = True
    except ImportError:
        tls = False
    return distributed.Client(
        security=tls, host="127.0.0.1", dashboard_address="127.0.0.1:0", set_as_default=False
    )


def from_worker(exc: BaseException) -> BaseException:
    """Turn the stand-ins a Dask worker raises (see ``_child.dask_chunk``) into procpool's errors."""
    if isinstance(exc, TimedOut):
        if exc.stopped:
            what = (
                "TimeLimitInterrupt was raised inside it, and it stopped within its grace "
                f"period of {exc.grace:g} s"
            )
        elif exc.grace is not None:
            what = (
                f"TimeLimitInterrupt was raised inside it, and it had not stopped {exc.grace:g} s "
                "later; Dask cannot stop a thread: it runs on until the function returns, and "
                "the result is discarded"
            )
        else:
            what = (
                "Dask cannot stop a running task: its thread on the worker goes on until the "
                "function returns, and the result is discarded"
            )
        return TaskTimeoutError(
            f"{exc.name} ran longer than its time limit of {exc.timeout:g} s ({what})",
            timeout=exc.timeout,
            killed=False,
        )
    if isinstance(exc, NotSendable):
        return SerializationError(str(exc))
    return exc


class DaskBackend(Backend):
    """A ``distributed.Client`` as a :class:`RemoteCore`'s engine; the call is a thunk."""

    label = "DaskPool"
    # The scheduler counts every task a dying worker held (running, or queued
    # there: ``worker-saturation``) as a suspect, toward KilledWorker.
    shares_workers = True

    def __init__(self, distributed: Any, client: Any, owns_client: bool) -> None:
        self.distributed = distributed
        self.client = client
        self.owns_client = owns_client
        self._workers: WorkerWatch | None = None

    def watch_workers(self, events: Events) -> None:
        self._workers = WorkerWatch(self.client, events)

    def submit(self, job: RemoteJob) -> tuple[str, Any]:
        # Explicit unique key: pure=False alone would do, but the key also names the
        # task on the dashboard after the user's function instead of a procpool helper.
        key = f"{job.name}-{uuid.uuid4().hex}"
        try:
            # Dask's priority: higher runs first, FIFO within one (as procpool's).
            return key, self.client.submit(job.call, key=key, pure=False, priority=job.priority)
        except TypeError as exc:
            # distributed pickles the task right here; a TypeError is what it raises
            # for a function or argument that neither pickle nor cloudpickle can take.
            raise serialization_error(
                f"the call of {job.name} (function or arguments)", exc
            ) from exc

    def watch(self, handle: Any, done: Callable[[], None]) -> None:
        def on_done(_: object) -> None:
            done()

        handle.add_done_callback(on_done)

    def outcome(self, job: RemoteJob, handle: Any) -> Result:
        status = handle.status
        if status == "cancelled":
            return Cancelled()
        try:
            if status != "error":
                return Value(take_stamp(job, handle.result()))
            exc: BaseException = take_error_stamp(job, handle.exception())
            tb: TracebackType | None = handle.traceback()
        except concurrent.futures.CancelledError:
            return Cancelled()
        except TypeError as error:
            # A worker keeps a result it cannot pickle and fails only when we fetch it.
            return serialization_error(f"the result of {job.name}", error)
        except self.distributed.KilledWorker as error:
            # The task had finished, but its result was lost with its worker (killed
            # by a neighbouring task) before we fetched it, and Dask's re-run failed.
            exc, tb = error, None
        except Exception as error:  # the client lost the scheduler, and the like
            return error
        exc = from_worker(exc)
        if isinstance(exc, self.distributed.KilledWorker):
            lost = WorkerLostError(
                f"the Dask worker running {job.name} died (or was lost) before it "
                f"answered, and Dask gave up on the task: {exc}"
            )
            lost.__cause__ = exc
            return lost
        if tb is not None:
            # As concurrent.futures does: the worker's frames travel as text on
            # __cause__, and the local traceback starts fresh where result() raises.
            exc.__cause__ = RemoteTraceback("".join(traceback.format_exception(type(exc), exc, tb)))
            exc.__traceback__ = None
        return exc

    def cancel(self, handles: list[Any], *, mode: CancelMode) -> None:
        # Every mode alike: Dask drops what has not started and cannot stop a
        # running task. A finished task has nothing left to stop: dropping our
        # reference releases it.
        handles = [f for f in handles if f.status != "finished"]
        if handles:
            self.client.cancel(handles)

    def parallelism(self) -> int:
        """The worker threads on the cluster right now (at least 1)."""
        return max(1, int(sum(self.client.nthreads().values())))

    def from_worker(self, exc: BaseException) -> BaseException:
        return from_worker(exc)

    def release(self) -> None:
        watch, self._workers = self._workers, None
        if watch is not None:
            watch.stop()
        if not self.owns_client:
            return
        self.owns_client = False
        try:
            self.client.close()
        except Exception:  # interpreter shutdown, or the client is closing already
            LOGGER.debug("could not close the Dask client %r", self.client, exc_info=True)


#: Dask's scheduler logs workers joining and leaving on this topic of its events.
TOPIC = "all"


class WorkerWatch:
    """Tells a pool's ``on_event`` hook when Dask workers join and leave the cluster.

    Dask's scheduler logs ``add-worker`` and ``remove-worker`` on its ``"all"``
    event topic; a client subscribed to it receives them on its event-loop
    thread. A client has one handler per topic, so one :class:`_Subscription`
    per client serves every pool that watches (and passes the events on to a
    handler the program had set). The events become ``WorkerStarted`` and
    ``WorkerExited`` on a thread of this watch's own, in order, which may ask the
    scheduler for a new worker's name (its ``slot`` when it is an int). Workers
    already there when the pool starts are not reported as started; Dask does not
    tell a worker's pid, nor its exit code, nor why it left unless it was asked to
    (``expected``: cause ``"stopped"``, else ``"unknown"``).
    """

    def __init__(self, client: Any, events: Events) -> None:
        self._client = client
        self._events = events
        self._thread = Threads(f"procpool-dask-workers-{id(self):x}", 1)
        info = client.scheduler_info(n_workers=-1)
        self._names: dict[str, object] = {
            address: worker.get("name") for address, worker in info["workers"].items()
        }
        _Subscription.add(client, self._on_event)

    def _on_event(self, event: tuple[float, Any]) -> None:
        # On the client's event loop: nothing that blocks.
        at, msg = event
        if not isinstance(msg, dict):
            return
        fields = cast("dict[str, Any]", msg)
        if fields.get("action") in ("add-worker", "remove-worker"):
            self._thread(functools.partial(self._report, fields, at))

    def _report(self, msg: dict[str, Any], at: float) -> None:
        events, address = self._events, str(msg.get("worker"))
        if msg["action"] == "add-worker":
            if address not in self._names:
                try:
                    workers = self._client.scheduler_info(n_workers=-1)["workers"]
                    self._names[address] = workers.get(address, {}).get("name")
                except Exception:  # the client is closing: the name stays unknown
                    self._names[address] = None
            events.emit(WorkerStarted(events.pool, _slot(self._names[address]), None, at))
        else:
            name = self._names.pop(address, None)
            cause: ExitCause = "stopped" if msg.get("expected") else "unknown"
            events.emit(WorkerExited(events.pool, _slot(name), None, None, cause, at))

    def stop(self) -> None:
        _Subscription.remove(self._client, self._on_event)
        self._thread.close()


def _slot(name: object) -> int:
    """A Dask worker's name as a slot: the name if it is an int (LocalCluster's), else -1."""
    return name if isinstance(name, int) and not isinstance(name, bool) else -1


class _Subscription:
    """The one handler of a client's ``"all"`` topic, passing events to every watch."""

    _lock = threading.Lock()
    _of: ClassVar[dict[int, _Subscription]] = {}

    def __init__(self, previous: Callable[[Any], object] | None) -> None:
        self.previous = previous
        self.listeners: list[Callable[[tuple[float, Any]], None]] = []

    def __call__(self, event: tuple[float, Any]) -> object:
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:
                LOGGER.exception("error while reading a Dask event")
        return None if self.previous is None else self.previous(event)

    @classmethod
    def add(cls, client: Any, listener: Callable[[tuple[float, Any]], None]) -> None:
        with cls._lock:
            subscription = cls._of.get(id(client))
            if subscription is None:
                handlers: dict[str, Any] = getattr(client, "_event_handlers", {})
                subscription = cls._of[id(client)] = _Subscription(handlers.get(TOPIC))
                client.subscribe_topic(TOPIC, subscription)
            subscription.listeners.append(listener)

    @classmethod
    def remove(cls, client: Any, listener: Callable[[tuple[float, Any]], None]) -> None:
        with cls._lock:
            subscription = cls._of.get(id(client))
            if subscription is None or listener not in subscription.listeners:
                return
            subscription.listeners.remove(listener)
            if subscription.listeners:
                return
            del cls._of[id(client)]
        try:
            if subscription.previous is not None:
                client.subscribe_topic(TOPIC, subscription.previous)
            else:
                client.unsubscribe_topic(TOPIC)
                # distributed 2026.8 keeps the handler after unsubscribing: drop it.
                handlers: dict[str, Any] = getattr(client, "_event_handlers", {})
                if handlers.get(TOPIC) is subscription:
                    del handlers[TOPIC]
        except Exception:  # the client is closed already
            LOGGER.debug("could not unsubscribe from Dask's events", exc_info=True)


def serialization_error(what: str, error: BaseException) -> SerializationError:
    err = SerializationError(
        f"{what} could not be pickled for Dask ({type(error).__name__}: {error}); "
        "pass plain data (no locks, open files, sockets or generators)"
    )
    err.__cause__ = error
    return err

"""The interface of a cluster engine (:class:`Backend`) and what it reads and returns.

``RemoteCore`` (:mod:`._remote_core`) keeps a pool's tasks in flight as
:class:`RemoteJob` s and drives a :class:`Backend` (Dask's in
:mod:`._dask_core`, Ray's in :mod:`._ray_core`): submit a job's call, watch it,
read its outcome (a :data:`Result`: a :class:`Value`, :class:`Cancelled`, an
exception already translated into procpool's errors, or an instruction to
submit again, :class:`Resubmit` and :class:`Continue`), cancel it. A map chunk's
value is read as a :class:`ChunkResult`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast

from ._child.codec import SealedError
from ._child.dask_chunk import STAMP, Outcome, Stamped
from ._events import Events
from ._future import Future


@dataclass
class RemoteJob:
    """One task in flight on the engine, and what is needed to submit it again."""

    name: str
    #: What the backend submits; opaque here (a callable for Dask, a call spec for Ray).
    #: A backend may replace it to go on with the rest of a chunk (see :class:`Continue`).
    call: Any
    future: Future[Any]
    retries_left: int
    retry_timeouts: bool
    #: The job's key in ``RemoteCore.jobs``: the engine's key of its first
    #: submission. A retry gets a new handle but keeps this key, so that whoever
    #: holds it (a cancel hook, an imap) cancels the retried task too.
    id: str = ""
    #: The engine's handle of the current submission (a Dask future, a Ray ObjectRef).
    handle: Any = None
    #: Set (under the core's lock) when a thread starts reading the outcome.
    claimed: bool = False
    #: What the items of a chunk already run by earlier submissions gave.
    done_items: ChunkResult | None = None
    #: Times submitted again after losses to the pool's own cancels (see Resubmit).
    resubmits: int = 0
    #: A ``submit``'s job, whose end the core counts (a chunk's items are counted
    #: when they are delivered); set to False once counted.
    count: bool = False
    #: Exception types after which the task runs again (``retries`` allowing).
    retry_on: tuple[type[BaseException], ...] = ()
    #: Seconds the first retry waits (see ``_options.backoff_delay``).
    backoff: float = 0.0
    #: Times it has been run again so far (for the backoff and the final note).
    attempts: int = 0
    #: Higher runs first, where the engine orders its queue (Dask).
    priority: int = 0
    #: For events (``on_event``): what ``TaskFinished.task`` says, how many items
    #: the task carries, ``time.time()`` of the current submission, and what the
    #: worker told of its run: ``(started, seconds, pid)`` (see :func:`take_stamp`).
    title: str = ""
    #: A map's chunk (its value is the items' outcomes), not a ``submit``.
    chunk: bool = False
    items: int = 1
    submitted_at: float = 0.0
    stamp: tuple[float, float, int] | None = None


def opened(exc: object) -> BaseException:
    """An item's exception as a worker packed it (sealed: see ``_child.codec.SealedError``).

    Unpickled on its way from a worker process it is the exception already; from
    a worker in this process (a Dask cluster of threads) it is still sealed.
    """
    return exc.open() if isinstance(exc, SealedError) else cast("BaseException", exc)


@dataclass
class ChunkResult:
    """What the items of one chunk gave: their values in order and their failures.

    ``values`` has one entry per item (None where it failed); ``errors`` maps an
    item's index to its exception as the worker sent it (a ``_child.dask_chunk``
    stand-in or the item's own exception) and the worker's traceback text.
    """

    values: list[Any]
    errors: dict[int, tuple[BaseException, str | None]]

    @classmethod
    def of(cls, result: object) -> ChunkResult:
        """A chunk's result as a backend returns it: a ChunkResult, a ``(values,
        errors)`` pair, or a list of ``_child.dask_chunk`` outcomes."""
        if isinstance(result, ChunkResult):
            return result
        if isinstance(result, tuple):
            values, errors = cast(
                "tuple[list[Any], dict[int, tuple[BaseException, str | None]]]", result
            )
            return cls(values, {i: (opened(exc), text) for i, (exc, text) in errors.items()})
        outcomes = cast("list[Outcome]", result)
        return cls(
            [value if ok else None for ok, value, _ in outcomes],
            {i: (opened(value), text) for i, (ok, value, text) in enumerate(outcomes) if not ok},
        )

    def then(self, more: ChunkResult) -> ChunkResult:
        """This chunk's items followed by ``more``'s; their values move out of both.

        (Only the map may hold a result once its iterator can see it: see
        ``MapFuture.set_items``.)
        """
        offset = len(self.values)
        errors = dict(self.errors)
        errors.update((offset + i, error) for i, error in more.errors.items())
        values = self.values + more.values
        self.values.clear()
        more.values.clear()
        return ChunkResult(values, errors)


class Value:
    """A task's result (for a chunk: its :class:`ChunkResult`, or what ``ChunkResult.of`` takes)."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value


class Cancelled:
    """The engine cancelled the task (a restart, a lost client)."""

    __slots__ = ()


class Resubmit:
    """The task was lost to the pool's own stopping of another task: run it again.

    Ray's ``ray.cancel`` can hit the next task of the worker that ran the one
    cancelled. Such a task is submitted again (it may have run in part: as for a
    local pool's neighbours of a killed item) up to :data:`MAX_RESUBMITS` times
    without spending its ``retries``; then it fails with ``error``.
    """

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


#: How many times a task lost to the pool's own cancels is submitted again.
MAX_RESUBMITS = 3


class Continue:
    """A chunk stopped part-way; submit ``call`` (the rest) and keep ``done`` (its outcomes)."""

    __slots__ = ("call", "done", "retried")

    def __init__(self, call: object, done: ChunkResult, *, retried: bool) -> None:
        self.call = call
        self.done = done
        #: The item it stopped at runs again (a time limit, with retry_timeouts).
        self.retried = retried


class Lost:
    """What a chunk's future holds when its worker died after parts of it had run.

    ``done``: the outcomes of the items before the ones lost (see :class:`Continue`);
    ``error``: the :class:`~procpool.WorkerLostError` of the rest.
    """

    __slots__ = ("done", "error")

    def __init__(self, done: ChunkResult, error: BaseException) -> None:
        self.done = done
        self.error = error


#: How much a cancel needs the tasks stopped: ``"stop"``, running ones too
#: (``cancel()`` of a future, ``terminate()``); ``"unstarted"``, the ones that have
#: not started must not start (``shutdown(cancel_futures=True)``); ``"drop"``, the
#: results are not wanted and the rest is up to the engine (the read-ahead of an
#: ``imap`` left early).
CancelMode = Literal["stop", "unstarted", "drop"]

#: What :meth:`Backend.outcome` returns.
Result = Value | Cancelled | Continue | Resubmit | BaseException


def take_stamp(job: RemoteJob, value: Any) -> Any:
    """``value`` without the times a stamped call added (``on_event``); they go on ``job``.

    A :class:`~._child.dask_chunk.Stamped` value is unwrapped; anything else is
    returned as it is.
    """
    if isinstance(value, Stamped):
        job.stamp = (value.started, value.ran, value.pid)
        return value.value
    return value


E = TypeVar("E", bound=BaseException)


def take_error_stamp(job: RemoteJob, exc: E) -> E:
    """``exc`` without the attribute on which a stamped call's times travelled."""
    stamp = vars(exc).pop(STAMP, None)
    if isinstance(stamp, tuple):
        job.stamp = cast("tuple[float, float, int]", stamp)
    return exc


class Backend(abc.ABC):
    """What one engine does for :class:`RemoteCore`: submit, watch, read, cancel, release."""

    #: The pool's class name, for messages ("DaskPool").
    label: str = ""
    #: :meth:`outcome` never blocks, so :meth:`RemoteCore.resolve` may run on the
    #: engine's own callback thread (saves a thread hop per task).
    resolve_inline: bool = False
    #: A worker's death can fail tasks other than the one that killed it (a Dask
    #: worker holds several: its threads', and the ones queued there), so a map
    #: item lost on its own is run once more alone before it fails (see
    #: ``_remote_chunks``).
    shares_workers: bool = False

    @abc.abstractmethod
    def submit(self, job: RemoteJob) -> tuple[str, Any]:
        """Send ``job.call`` to the engine; return a unique key and the engine's handle.

        Runs under the core's lock. Raises :class:`~procpool.SerializationError` if
        the call cannot be sent (a function or argument that does not pickle).
        """

    @abc.abstractmethod
    def watch(self, handle: Any, done: Callable[[], None]) -> None:
        """Call ``done()`` (on any thread) once the task of ``handle`` has ended."""

    @abc.abstractmethod
    def outcome(self, job: RemoteJob, handle: Any) -> Result:
        """The outcome of the ended task of ``handle``, translated into procpool's errors.

        An exception is returned, not raised: the task's own (with the remote
        traceback as ``__cause__``), :class:`~procpool.WorkerLostError`,
        :class:`~procpool.TaskTimeoutError`, :class:`~procpool.SerializationError`.
        """

    @abc.abstractmethod
    def cancel(self, handles: list[Any], *, mode: CancelMode) -> None:
        """Stop these tasks on the engine (on a helper thread; errors are logged).

        ``mode`` (see :data:`CancelMode`) says how much the caller needs them
        stopped; an engine does what it can, and may do more.
        """

    def watch_workers(self, events: Events) -> None:
        """Tell ``events`` when workers join and leave, if the engine says (Dask does).

        Stop when :meth:`release` is called. By default nothing is sent.
        """
        return

    @abc.abstractmethod
    def parallelism(self) -> int:
        """How many tasks the cluster runs at once, right now (at least 1)."""

    @abc.abstractmethod
    def release(self) -> None:
        """Let go of what the pool made (a client, a cluster, a Ray instance).

        Called once the pool's work has ended, and again when a dropped pool is
        collected: a second call does nothing. It must not hold the core (a
        ``weakref.finalize`` calls it after the core is gone).
        """

    def from_worker(self, exc: BaseException) -> BaseException:
        """Turn a map item's failure from the worker (``_child.dask_chunk``) into procpool's error."""
        return exc


__all__ = [
    "MAX_RESUBMITS",
    "Backend",
    "CancelMode",
    "Cancelled",
    "ChunkResult",
    "Continue",
    "Lost",
    "RemoteJob",
    "Resubmit",
    "Result",
    "Value",
    "take_error_stamp",
    "take_stamp",
]

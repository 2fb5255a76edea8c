"""What ``RayPool`` submits to Ray, and the handles and threads that follow a task.

The calls (:class:`PlainCall`, :class:`ChunkCall`, :class:`LimitedCall`) are what
``RayPool`` hands the core for one ``submit`` or one chunk of a ``map``; the
backend (:mod:`._ray_core`) turns each into a Ray task running the user's
function as a cached remote function (:data:`REMOTE_FUNCTIONS`) or a procpool
helper of :mod:`._child.ray_chunk`. A :class:`RayTask` is the handle of one
submission: its ObjectRef (or streaming generator) and the future of its outcome,
which Ray's callback thread (:func:`copy_outcome`) or the :class:`LimitLoop` of
time-limited tasks resolves.

Ray is imported only when a ``RayPool`` is built, and this module type-checks
without it (Ray's objects are ``Any``).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from ._child import ray_chunk


@dataclass(frozen=True)
class PlainCall:
    """``fn(*args, **kwargs)`` with no time limit."""

    fn: Callable[..., object]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class ChunkCall:
    """``fn`` on each item (``fn(*item)`` if ``star``), one outcome each, with no time limit."""

    fn: Callable[..., object]
    items: list[Any]
    star: bool
    #: Return the chunk's result ``Stamped`` with its run time (``on_event``).
    stamp: bool = False


@dataclass(frozen=True)
class LimitedCall:
    """``fn(*item, **kwargs)`` for each item with a time limit (``_child.ray_chunk.limited``).

    ``single``: a ``submit`` (its outcome is the value or the exception itself),
    not a map chunk (whose outcome is the list of its items' outcomes).
    """

    fn: Callable[..., object]
    items: list[tuple[Any, ...]]
    kwargs: dict[str, Any]
    timeout: float
    grace: float | None
    timeout_retries: int
    first_attempts: int
    single: bool
    #: Yield the report ``Stamped`` with the task's run time (``on_event``).
    stamp: bool = False


@dataclass
class RayTask:
    """The handle of one submission: what to cancel, and the future of its outcome."""

    #: The ObjectRef, or the ObjectRefGenerator of a time-limited task.
    ref: Any
    #: Resolves with the task's value (a time-limited task's report), or its error.
    result: concurrent.futures.Future[Any]
    #: Stops Ray's watch of ``ref`` (see RayBackend._watch_ready); None: none runs.
    unwatch: Callable[[], object] | None = None


class _RemoteFunctions:
    """``ray.remote(fn)`` of the top-level functions submitted, the most recent 256.

    A remote function is exported to the cluster once, then each call sends only
    its arguments, as ``f.remote(x)`` of a function decorated with ``@ray.remote``
    does. (A procpool helper that took ``fn`` as an argument would pickle it on
    every call: 8-10 % more per round trip, measured on this machine.) Only
    functions defined at the top of a module (its own namespace keeps them alive
    anyway): a lambda or a closure, often made anew for each call and holding
    data, is sent with each call instead of being kept here and exported again.
    """

    SIZE = 256

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: collections.OrderedDict[Callable[..., object], Any] = collections.OrderedDict()

    def __call__(self, ray: Any, fn: Callable[..., object]) -> Any:
        with self._lock:
            remote = self._cache.get(fn)
            if remote is not None:
                self._cache.move_to_end(fn)
                return remote
        # procpool's own retries (retries=) replace Ray's, so that a task whose
        # worker died runs again only when asked to: Ray's default re-runs it 3 times.
        remote = ray.remote(max_retries=0)(ray_chunk.as_task(fn))
        with self._lock:
            self._cache[fn] = remote
            if len(self._cache) > self.SIZE:
                self._cache.popitem(last=False)
        return remote


REMOTE_FUNCTIONS = _RemoteFunctions()


class LimitLoop:
    """One asyncio loop thread that waits for the first item of time-limited tasks.

    A time-limited task reports through a streaming generator whose first item
    arrives while the task still runs (see :mod:`._child.ray_chunk`); Ray lets a client
    wait for that item without a thread per task only from asyncio
    (``await gen.__anext__()``). Started on first use, stopped on release.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def run(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        with self._lock:
            if self._loop is None:
                loop = self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=self._main, args=(loop,), name=self._name, daemon=True
                )
                self._thread.start()
            return asyncio.run_coroutine_threadsafe(coro, self._loop)

    @staticmethod
    def _main(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            # Stopped: cancel what still waits (its futures are done already).
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        finally:
            loop.close()

    def close(self) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            if thread is not threading.current_thread():
                thread.join(10)


def settle(
    future: concurrent.futures.Future[Any], value: object, exc: BaseException | None
) -> None:
    """Set ``future`` unless it is set already (Ray's callback and a waiting thread race)."""
    try:
        if exc is None:
            future.set_result(value)
        else:
            future.set_exception(exc)
    except concurrent.futures.InvalidStateError:
        pass


def copy_outcome(target: concurrent.futures.Future[Any], ray_future: Any) -> None:
    """Ray's callback thread: the task's outcome, from Ray's future into the task's own."""
    exc = ray_future.exception()
    settle(target, None if exc is not None else ray_future.result(), exc)


async def first_item(gen: Any) -> Any:
    """The first item of a streaming generator task (its exception if the task failed)."""
    ref = await gen.__anext__()
    return await ref


def rest_of(call: LimitedCall, items: list[tuple[Any, ...]], first_attempts: int) -> LimitedCall:
    """The same time-limited call for ``items``, the first of which has ``first_attempts`` left."""
    return LimitedCall(
        call.fn,
        items,
        call.kwargs,
        call.timeout,
        call.grace,
        call.timeout_retries,
        first_attempts,
        single=False,
        stamp=call.stamp,
    )


__all__ = [
    "REMOTE_FUNCTIONS",
    "ChunkCall",
    "LimitLoop",
    "LimitedCall",
    "PlainCall",
    "RayTask",
    "copy_outcome",
    "first_item",
    "rest_of",
    "settle",
]

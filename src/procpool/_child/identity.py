"""Who runs this task: :func:`current_worker` and its :class:`WorkerInfo`.

A pool worker is one process running one task at a time: it says who it is when
it starts (:func:`become`, module globals) and counts the calls it finishes
(:func:`count_call`). A Dask worker runs several tasks at once, in threads, and
a Ray worker process runs tasks of any program: there the task itself says it
runs for procpool, around each call or chunk (:func:`enter`, :func:`leave`), in
a context variable, so that it holds for that task's thread only (and for the
helper thread of a time limit, which runs in a copy of the task's context). The
engine's own worker (its name and address) is looked up when the task asks.
Everywhere else :func:`current_worker` returns None.
"""

from __future__ import annotations

import contextvars
import importlib
import os
import threading
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class WorkerInfo:
    """Who runs the current task; from :func:`procpool.current_worker`.

    Attributes:
        slot: the worker's place in its pool, 0 to ``workers - 1``. A worker that
            replaces another (after a crash, a time limit, a recycle) takes its
            slot, so ``slot`` can pick a device: "worker 3 uses GPU 3" stays
            true. For a :class:`DaskPool`, the Dask worker's name if it is a
            number (a ``LocalCluster`` numbers them 0, 1, ...), else -1; for a
            :class:`RayPool`, -1 (Ray's workers have no fixed places).
        pid: the worker's process id.
        pool: the pool's name (``procpool.Pool-1``); the Dask worker's address
            (``tcp://10.0.0.5:40123``); the Ray worker's id.
        tasks_run: calls this worker finished before the current one (a chunk
            of a ``map`` counts as one, as for ``max_tasks_per_worker``). On
            Dask and Ray, the procpool calls this process finished (a Dask
            worker's threads count together).
        start_method: ``"fork"``, ``"spawn"`` or ``"forkserver"``; ``"dask"``
            or ``"ray"`` on those engines.
    """

    slot: int
    pid: int
    pool: str
    tasks_run: int
    start_method: str


_slot = -1
_pool = ""
_method = ""
_calls = 0
_known = False


def become(slot: int, pool: str, start_method: str) -> None:
    """This process is the worker in ``slot`` of ``pool`` (called once, at its start)."""
    global _slot, _pool, _method, _calls, _known
    _slot, _pool, _method, _calls, _known = slot, pool, start_method, 0, True


def count_call() -> None:
    """The worker finished a call."""
    global _calls
    _calls += 1


def forget() -> None:
    """This process is no worker (any more): a process forked by a task, say."""
    global _known
    _known = False
    _engine.set(None)


#: The engine running the current task for procpool ("dask", "ray"), or None.
_engine: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "procpool_engine", default=None
)
#: procpool calls this process finished on an engine (all threads together).
_engine_calls = 0
_engine_lock = threading.Lock()


def enter(engine: str) -> contextvars.Token[str | None]:
    """A Dask or Ray task starts a procpool call here (``engine``: "dask", "ray")."""
    return _engine.set(engine)


def leave(token: contextvars.Token[str | None]) -> None:
    """The call that :func:`enter` started has ended: count it."""
    global _engine_calls
    _engine.reset(token)
    with _engine_lock:
        _engine_calls += 1


def _engine_worker(engine: str) -> tuple[int, str]:
    """(slot, pool) of the engine's worker running this task."""
    if engine == "dask":
        worker: Any = importlib.import_module("distributed").get_worker()
        name = worker.name
        slot = name if isinstance(name, int) and not isinstance(name, bool) else -1
        return slot, str(worker.address)
    context: Any = importlib.import_module("ray").get_runtime_context()
    return -1, str(context.get_worker_id())


def current_worker() -> WorkerInfo | None:
    """Who runs the current task: a :class:`WorkerInfo`, or None outside a worker.

    Call it inside a task::

        def train(shard: int) -> str:
            me = procpool.current_worker()
            device = f"cuda:{me.slot}" if me is not None else "cpu"
            ...
    """
    engine = _engine.get()
    if engine is not None:
        slot, pool = _engine_worker(engine)
        return WorkerInfo(slot, os.getpid(), pool, _engine_calls, engine)
    if not _known:
        return None
    return WorkerInfo(_slot, os.getpid(), _pool, _calls, _method)


if hasattr(os, "register_at_fork"):
    # A process a task forks (its own pool's worker, a multiprocessing child) is
    # not this worker; a pool worker it starts says who it is anew.
    os.register_at_fork(after_in_child=forget)

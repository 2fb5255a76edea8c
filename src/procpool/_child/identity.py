"""Who runs this task: :func:`current_worker` and its :class:`WorkerInfo`.

A pool worker says who it is when it starts (:func:`become`) and counts the
calls it finishes (:func:`count_call`); a Dask or Ray task says it around its
chunk. Everywhere else :func:`current_worker` returns None.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerInfo:
    """Who runs the current task; from :func:`procpool.current_worker`.

    Attributes:
        slot: the worker's place in its pool, 0 to ``workers - 1``. A worker that
            replaces another (after a crash, a time limit, a recycle) takes its
            slot, so ``slot`` can pick a device: "worker 3 uses GPU 3" stays
            true. For a :class:`DaskPool`, the Dask worker's name if it is a
            number (a ``LocalCluster`` numbers them), else -1.
        pid: the worker's process id.
        pool: the pool's name (``procpool.Pool-1``), or the Dask worker's address.
        tasks_run: calls this worker finished before the current one (a chunk
            of a ``map`` counts as one, as for ``max_tasks_per_worker``).
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


def current_worker() -> WorkerInfo | None:
    """Who runs the current task: a :class:`WorkerInfo`, or None outside a worker.

    Call it inside a task::

        def train(shard: int) -> str:
            me = procpool.current_worker()
            device = f"cuda:{me.slot}" if me is not None else "cpu"
            ...
    """
    if not _known:
        return None
    return WorkerInfo(_slot, os.getpid(), _pool, _calls, _method)


if hasattr(os, "register_at_fork"):
    # A process a task forks (its own pool's worker, a multiprocessing child) is
    # not this worker; a pool worker it starts says who it is anew.
    os.register_at_fork(after_in_child=forget)

"""procpool: typed, fault-tolerant process pools.

``multiprocessing`` without the sharp edges: typed futures with ``then``/``catch``/
``await``, ``map`` results in order, ``imap`` in bounded memory, per-task time
limits, a worker crash that fails only its own task, and a ``with`` block that
cleans up. See https://procpool.readthedocs.io.

    >>> import procpool
    >>> with procpool.Pool(2) as pool:           # doctest: +SKIP
    ...     pool.map(abs, [-1, -2, 3]).result()
    [1, 2, 3]
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING

from ._version import __version__ as __version__

if TYPE_CHECKING:
    from ._child.identity import WorkerInfo as WorkerInfo
    from ._child.identity import current_worker as current_worker
    from ._child.state import WorkerState as WorkerState
    from ._context import StartMethod as StartMethod
    from ._dask import DaskPool as DaskPool
    from ._errors import PoolClosedError as PoolClosedError
    from ._errors import ProcpoolError as ProcpoolError
    from ._errors import RemoteTraceback as RemoteTraceback
    from ._errors import SerializationError as SerializationError
    from ._errors import TaskTimeoutError as TaskTimeoutError
    from ._errors import TimeLimitInterrupt as TimeLimitInterrupt
    from ._errors import WorkerLostError as WorkerLostError
    from ._events import PoolEvent as PoolEvent
    from ._events import TaskFinished as TaskFinished
    from ._events import TaskQueued as TaskQueued
    from ._events import TaskStarted as TaskStarted
    from ._events import WorkerExited as WorkerExited
    from ._events import WorkerStarted as WorkerStarted
    from ._executor import Executor as Executor
    from ._future import Future as Future
    from ._mapfuture import MapFuture as MapFuture
    from ._pool import Pool as Pool
    from ._process import ProcessHandle as ProcessHandle
    from ._process import spawn as spawn
    from ._progress import Progress as Progress
    from ._ray import RayPool as RayPool
    from ._stats import PoolStats as PoolStats
    from ._task import ProcessTask as ProcessTask

__all__ = (
    "DaskPool",
    "Executor",
    "Future",
    "MapFuture",
    "Pool",
    "PoolClosedError",
    "PoolEvent",
    "PoolStats",
    "ProcessHandle",
    "ProcessTask",
    "ProcpoolError",
    "Progress",
    "RayPool",
    "RemoteTraceback",
    "SerializationError",
    "StartMethod",
    "TaskFinished",
    "TaskQueued",
    "TaskStarted",
    "TaskTimeoutError",
    "TimeLimitInterrupt",
    "WorkerExited",
    "WorkerInfo",
    "WorkerLostError",
    "WorkerStarted",
    "WorkerState",
    "__version__",
    "current_worker",
    "spawn",
)

# Names are imported on first use: a worker process imports ``procpool._child.worker``,
# which imports this package, and must not pay for the pool, asyncio, Dask or Ray.
_WHERE = {
    "DaskPool": "._dask",
    "Executor": "._executor",
    "Future": "._future",
    "MapFuture": "._mapfuture",
    "Pool": "._pool",
    "PoolClosedError": "._errors",
    "PoolStats": "._stats",
    "ProcessHandle": "._process",
    "ProcessTask": "._task",
    "ProcpoolError": "._errors",
    "Progress": "._progress",
    "RayPool": "._ray",
    "RemoteTraceback": "._errors",
    "SerializationError": "._errors",
    "StartMethod": "._context",
    "TaskTimeoutError": "._errors",
    "TimeLimitInterrupt": "._errors",
    "WorkerLostError": "._errors",
    "spawn": "._process",
    "PoolEvent": "._events",
    "TaskQueued": "._events",
    "TaskStarted": "._events",
    "TaskFinished": "._events",
    "WorkerStarted": "._events",
    "WorkerExited": "._events",
    "WorkerInfo": "._child.identity",
    "WorkerState": "._child.state",
    "current_worker": "._child.identity",
}


def _publish() -> None:
    """Say ``procpool.X`` for every public class and function whose module is loaded.

    The one place where ``__module__`` is set, so that reprs, tracebacks, pickles
    and the docs name ``procpool.Pool``, not ``procpool._pool.Pool``. Run at each
    first use of a name: importing one module (``_pool``) loads others (``_errors``,
    ``_future``) whose classes the program meets without naming them first.
    """
    for name, where in _WHERE.items():
        module = sys.modules.get(__name__ + where)
        if module is None:
            continue
        value: object = getattr(module, name)
        if isinstance(value, (type, types.FunctionType)):  # not the aliases (Progress)
            value.__module__ = __name__
        globals()[name] = value


def __getattr__(name: str) -> object:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'procpool' has no attribute {name!r}")
    importlib.import_module(where, __name__)
    _publish()
    return globals()[name]


def __dir__() -> list[str]:
    """The public names and the module's dunders; not what the package imports for itself.

    ``importlib``, ``sys``, ``types``, ``TYPE_CHECKING`` and ``annotations`` are this
    file's tools, and ``_publish``, ``_WHERE`` and loaded submodules are private.
    """
    dunders = {name for name in globals() if name.startswith("__") and name.endswith("__")}
    return sorted(dunders | set(__all__))

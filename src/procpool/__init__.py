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

from ._dask import DaskPool as DaskPool
from ._errors import PoolClosedError as PoolClosedError
from ._errors import ProcpoolError as ProcpoolError
from ._errors import SerializationError as SerializationError
from ._errors import TaskTimeoutError as TaskTimeoutError
from ._errors import WorkerLostError as WorkerLostError
from ._future import Future as Future
from ._future import MapFuture as MapFuture
from ._pool import Pool as Pool
from ._pool import PoolStats as PoolStats
from ._process import ProcessHandle as ProcessHandle
from ._process import spawn as spawn
from ._task import ProcessTask as ProcessTask
from ._version import __version__ as __version__

__all__ = (
    "DaskPool",
    "Future",
    "MapFuture",
    "Pool",
    "PoolClosedError",
    "PoolStats",
    "ProcessHandle",
    "ProcessTask",
    "ProcpoolError",
    "SerializationError",
    "TaskTimeoutError",
    "WorkerLostError",
    "__version__",
    "spawn",
)


# Public names say procpool.X in reprs, tracebacks, pickles and docs, not the
# private module that defines them.
def _rename_modules() -> None:
    for name in __all__:
        obj = globals()[name]
        if isinstance(obj, type) or callable(obj):
            obj.__module__ = __name__


_rename_modules()
del _rename_modules

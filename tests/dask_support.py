"""The test process's side of the Dask tests: a LocalCluster started the way every
Dask test module needs it, and the cleanup of the threads distributed leaves behind.

Imported by tests/test_dask.py and tests/test_dask_security.py after their
``pytest.importorskip("distributed")``. Dask's workers never import this module:
the functions they run live in tests/dask_helpers.py (kept light on purpose).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import dask
import distributed


@contextlib.contextmanager
def local_cluster(n_workers: int, **kwargs: Any) -> Iterator[Any]:
    """A LocalCluster of ``n_workers`` processes x 1 thread on loopback, no dashboard.

    ``kwargs`` go to LocalCluster (``security=``, for one). On the way out the cluster
    is closed and :func:`stop_dask_threads` runs, so that nothing of Dask is left
    running when the next test module starts.
    """
    cluster = distributed.LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        # Even without a dashboard the scheduler serves its health routes over
        # HTTP, on port 8787 by default: another Dask cluster on this machine would
        # make that a "Port 8787 is already in use" UserWarning (an error here).
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        **kwargs,
    )
    try:
        yield cluster
    finally:
        cluster.close()
        stop_dask_threads()


@contextlib.contextmanager
def client_of_a_new_cluster(n_workers: int = 2) -> Iterator[Any]:
    """A Client of a new :func:`local_cluster`, a task that kills its worker failed at once.

    Its scheduler runs in this process, so ``allowed-failures = 0`` set here makes
    such a task fail with KilledWorker at once (Dask's default is to try it on three
    more workers first).
    """
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        local_cluster(n_workers) as cluster,
    ):
        client = distributed.Client(cluster, set_as_default=False)
        try:
            client.wait_for_workers(n_workers, timeout=60)
            yield client
        finally:
            client.close()


def stop_dask_threads() -> None:
    """Stop the two threads distributed keeps after every client and cluster is closed.

    Dask's callback thread and its offload thread live in process-wide executors. Left
    running, they make every later ``os.fork()`` in this test process (the fork start
    method of other test modules) emit Python 3.12+'s "multi-threaded fork"
    DeprecationWarning, an error under ``filterwarnings = error``. Both executors are
    recreated on demand: a ThreadPoolExecutor starts no thread until its first task.
    """
    callback_executor = getattr(distributed.Future, "_cb_executor", None)
    if callback_executor is not None:
        callback_executor.shutdown(wait=True)
        distributed.Future._cb_executor = None  # Future.add_done_callback makes a new one
    utils = sys.modules.get("distributed.utils")
    offload = getattr(utils, "_offload_executor", None)
    if isinstance(offload, concurrent.futures.ThreadPoolExecutor):
        offload.shutdown(wait=True)
        utils._offload_executor = concurrent.futures.ThreadPoolExecutor(  # type: ignore[union-attr]
            max_workers=1, thread_name_prefix="Dask-Offload"
        )

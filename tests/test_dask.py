"""DaskPool against a real dask.distributed LocalCluster started by this module.

What every pool promises alike (submit, map, imap, time limits, cancelling, the
lifecycle, the Hypothesis properties) is tested on all three pools in
test_contract.py; this module tests what is DaskPool's own: its client, Dask's
keys, and what Dask cannot do (stop a running task). No mocks: two worker processes, one thread each, on loopback, no dashboard. The
cluster's scheduler runs in this process, so ``allowed-failures = 0`` set here makes
a task that kills its worker fail at once with KilledWorker (Dask's default is to
try it on three more workers first).

The functions the workers run live in ``tests/dask_helpers.py``. pytest puts
``tests/`` on ``sys.path`` (rootdir-relative "prepend" imports), and the cluster's
nanny starts the workers with multiprocessing's spawn, which hands the parent's
``sys.path`` to the child, so the workers import ``dask_helpers`` by name.
"""

from __future__ import annotations

import concurrent.futures
import functools
import gc
import itertools
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

distributed = pytest.importorskip(
    "distributed", reason="install the dask extra: pip install 'procpool[dask]'"
)

import dask_helpers as h  # noqa: E402
import dask_support  # noqa: E402
import placement_helpers as plh  # noqa: E402
import policy_helpers as ph  # noqa: E402
import procpool  # noqa: E402
from procpool import DaskPool  # noqa: E402

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    """The module's cluster (see :func:`dask_support.client_of_a_new_cluster`).

    Module scope, not session: the cluster (and the threads Dask leaves behind)
    must be gone before the next test module runs, see dask_support.stop_dask_threads.
    """
    with dask_support.client_of_a_new_cluster() as client:
        yield client


@pytest.fixture
def doomed_client() -> Iterator[Any]:
    """A cluster of its own, for a test whose tasks end Dask workers.

    The nanny restarts a worker that died, but on a loaded machine that has taken
    minutes or not happened at all (150 s in one run of make test-all; Dask's own
    test_repeated_restarts is flaky, dask/distributed#6838). These tests need no
    restart, and the module's cluster must not be left a worker short.
    """
    with dask_support.client_of_a_new_cluster() as client:
        yield client


@pytest.fixture
def pool(dask_client: Any) -> Iterator[DaskPool]:
    """A DaskPool on the session's cluster; terminated if a test leaves it running."""
    p = DaskPool(dask_client)
    try:
        yield p
    finally:
        p.terminate()
        p.join(30)


def _keys(client: Any) -> set[str]:
    """The keys this client holds futures for (Dask forgets a key when none is left)."""
    refcount: dict[str, int] = client.refcount
    return set(refcount)


def _wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``predicate``: Dask drops a released key on its own thread, a moment later."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# Tests that cancel running tasks or let them run out of time use short sleeps: Dask
# cannot stop them, so each one keeps its worker thread busy until it ends.


# -- construction -----------------------------------------------------------------------------


def test_daskpool_is_exported_and_an_executor() -> None:
    assert procpool.DaskPool is DaskPool
    assert issubclass(DaskPool, concurrent.futures.Executor)


def test_missing_distributed_raises_import_error_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r'pip install "procpool\[dask\]"'):
        DaskPool("tcp://127.0.0.1:1")


@pytest.mark.parametrize("bad", [-1.0, math.nan])
def test_negative_task_timeout_is_rejected(dask_client: Any, bad: float) -> None:
    with pytest.raises(ValueError, match="task_timeout"):
        DaskPool(dask_client, task_timeout=bad)


def test_client_given_is_left_open_and_address_given_is_closed(dask_client: Any) -> None:
    with DaskPool(dask_client) as given:
        assert given.submit(h.square, 3).result() == 9
    assert dask_client.status == "running"

    address = dask_client.scheduler.address
    with DaskPool(address) as owned:
        assert owned.client is not dask_client
        assert owned.submit(h.square, 4).result() == 16
    assert owned.client.status == "closed"


def test_a_dropped_pool_closes_the_client_it_made_and_stops_its_threads(
    dask_client: Any,
) -> None:
    pool = DaskPool(dask_client.scheduler.address)
    client = pool.client
    assert pool.submit(h.square, 5).then(str).result(timeout=30) == "25"
    tag = f"{id(pool._core):x}"  # in the names of the pool's threads
    del pool
    gc.collect()
    assert _wait_until(lambda: client.status == "closed")
    assert _wait_until(lambda: not [t for t in threading.enumerate() if tag in t.name])


# -- submit, then, catch, await ---------------------------------------------------------------


def test_submit_sends_lambdas_with_cloudpickle(pool: DaskPool) -> None:
    assert pool.submit(lambda x: x * 2, 21).result(timeout=30) == 42


@pytest.fixture
def retrying_pool(doomed_client: Any) -> Iterator[DaskPool]:
    """A DaskPool that retries a task once, on a cluster of its own (its task ends a
    worker)."""
    pool = DaskPool(doomed_client, retries=1)
    try:
        yield pool
    finally:
        pool.terminate()
        pool.join(30)


def _wait_until_it_runs_again(marker: Path) -> None:
    """Wait (60 s at most) until ``h.die_once_then_nap`` runs again, after its worker died."""
    assert _wait_until(lambda: marker.exists() and marker.read_text() == "again", timeout=60)


def test_cancelling_a_map_reaches_a_chunk_that_was_retried(
    retrying_pool: DaskPool, tmp_path: Path
) -> None:
    pool = retrying_pool
    marker = tmp_path / "died"
    mapped = pool.map(h.die_once_then_nap, [str(marker)], [6.0], chunksize=1)
    _wait_until_it_runs_again(marker)  # a lost item runs again alone first (no retry spent)
    assert mapped.cancel()
    pool.close()
    # Nothing of the map is left to wait for: the retried task was cancelled too.
    assert pool.join(timeout=3)


def test_cancelling_an_imap_reaches_a_chunk_that_was_retried(
    retrying_pool: DaskPool, tmp_path: Path
) -> None:
    pool = retrying_pool
    marker = tmp_path / "died"
    stream = pool.imap(functools.partial(h.die_once_then_nap, str(marker)), [6.0])
    _wait_until_it_runs_again(marker)
    stream.close()  # type: ignore[attr-defined]
    pool.close()
    assert pool.join(timeout=3)


# -- errors -----------------------------------------------------------------------------------


# -- pure=False -------------------------------------------------------------------------------


# -- map --------------------------------------------------------------------------------------


def test_cancelling_a_map_cancels_its_tasks(pool: DaskPool, dask_client: Any) -> None:
    before = _keys(dask_client)
    result = pool.map(h.sleep_then, [1.0] * 8, chunksize=1)
    assert result.cancel()
    assert result.cancelled()
    assert _wait_until(lambda: not _keys(dask_client) - before), _keys(dask_client) - before


# -- imap -------------------------------------------------------------------------------------


# -- time limits and cancellation -------------------------------------------------------------


def test_a_time_limited_task_still_sees_its_dask_worker(pool: DaskPool) -> None:
    # It runs in a helper thread with a copy of the task's context, where Dask keeps
    # the current worker, so get_worker() and worker_client() work as without a limit.
    address = pool.options(timeout=10).submit(h.worker_address).result(timeout=30)
    assert address.startswith("tcp://127.0.0.1:")


def test_daskpool_refuses_a_memory_limit_per_worker(pool: DaskPool) -> None:
    with pytest.raises(ValueError, match="memory_limit"):
        pool.options(max_memory_per_worker="1 GiB")


def test_cancelling_a_future_cancels_the_dask_task(pool: DaskPool, dask_client: Any) -> None:
    before = _keys(dask_client)
    blockers = [pool.submit(h.sleep_then, 1.0) for _ in range(2)]
    queued = pool.submit(h.sleep_then, 1.0, 1)
    assert queued.cancel()
    assert queued.cancelled()
    with pytest.raises(concurrent.futures.CancelledError):
        queued.result(timeout=1)
    running = blockers[0]
    time.sleep(0.3)
    assert running.cancel()  # Dask drops the result; the worker thread runs on
    assert running.cancelled()
    assert blockers[1].result(timeout=30) == 0
    assert _wait_until(lambda: not _keys(dask_client) - before), _keys(dask_client) - before


# -- on_event: workers joining and leaving (issue 25.5) ------------------------------------------


def test_on_event_tells_workers_leaving_and_joining(doomed_client: Any) -> None:
    events: list[procpool.PoolEvent] = []
    pool = DaskPool(doomed_client, on_event=events.append)
    with pytest.raises(procpool.WorkerLostError):
        pool.submit(h.exit_worker, 3).result(timeout=60)

    def seen() -> tuple[list[procpool.WorkerExited], list[procpool.WorkerStarted]]:
        return (
            [e for e in events if isinstance(e, procpool.WorkerExited)],
            [e for e in events if isinstance(e, procpool.WorkerStarted)],
        )

    # The nanny starts another worker in place of the dead one.
    assert _wait_until(lambda: all(seen()), timeout=60), events
    (exited,), (started,) = seen()
    assert (exited.cause, exited.exitcode, exited.pid) == ("unknown", None, None)
    assert exited.slot in (0, 1)  # a LocalCluster names its workers 0, 1
    assert started.slot == exited.slot
    assert started.at >= exited.at
    pool.close()
    assert pool.join(30)
    # The pool no longer listens to the client's events once it is done.
    assert "all" not in doomed_client._event_handlers


# -- who runs a task (issue 26.1) ---------------------------------------------------------------


def test_current_worker_holds_for_procpools_tasks_only(pool: DaskPool, dask_client: Any) -> None:
    # Set per task (a context variable), not per worker process: a Dask task of
    # another program on the same worker, before and after, sees None.
    assert dask_client.submit(plh.who, pure=False).result(timeout=30) is None
    ours = pool.map(plh.who, range(4), chunksize=1).result(timeout=30)
    assert all(info is not None and info[4] == "dask" for info in ours)
    theirs = [dask_client.submit(plh.who, i, pure=False) for i in range(4)]
    assert [f.result(timeout=30) for f in theirs] == [None] * 4


# -- priority (issue 26.4) ---------------------------------------------------------------------


def test_priority_goes_to_dasks_scheduler_higher_first(doomed_client: Any) -> None:
    # A cluster of its own: a thread left running by an earlier test (Dask cannot
    # stop a cancelled task) would hold a worker whose queue the others cannot take.
    pool = DaskPool(doomed_client)
    # Both worker threads busy; then twelve low-priority tasks, then a
    # high-priority task and a high-priority map. Dask orders what waits in its
    # scheduler by priority (higher first, FIFO within one). The first few low
    # tasks are handed to the workers at once (before the group is large enough
    # for the scheduler to queue it): those run first whatever comes later.
    blockers = [pool.submit(h.sleep_then, 1.0) for _ in range(2)]
    low = [pool.options(priority=-1).submit(ph.stamp, f"low{i}") for i in range(12)]
    urgent = pool.options(priority=10)
    high = urgent.submit(ph.stamp, "high")
    mapped = urgent.map(ph.stamp, ["map0", "map1"], chunksize=1)
    started = dict(f.result(timeout=30) for f in [*low, high])
    started.update(mapped.result(timeout=30))
    assert [b.result(timeout=30) for b in blockers] == [0, 0]
    order = sorted(started, key=started.__getitem__)
    # In submission order (no priority) all twelve low tasks would start first.
    assert max(order.index(tag) for tag in ("high", "map0", "map1")) <= 8, order
    assert order.index("high") < order.index("low11"), order
    pool.close()
    assert pool.join(30)


# -- lifecycle --------------------------------------------------------------------------------


def test_leaving_the_with_block_by_an_exception_cancels_everything(
    dask_client: Any,
) -> None:
    before = _keys(dask_client)
    futures: list[procpool.Future[int]] = []
    with pytest.raises(KeyError), DaskPool(dask_client) as pool:
        futures.extend(pool.submit(h.sleep_then, 2.0, i) for i in range(4))
        raise KeyError("leave")
    assert all(f.cancelled() for f in futures)
    assert _wait_until(lambda: not _keys(dask_client) - before), _keys(dask_client) - before


def test_shutdown_cancel_futures_cancels_what_is_unfinished(pool: DaskPool) -> None:
    futures = [pool.submit(h.sleep_then, 2.0, i) for i in range(4)]
    pool.shutdown(wait=True, cancel_futures=True)
    assert all(f.cancelled() for f in futures)


def test_terminate_cancels_maps_and_imaps_in_flight(pool: DaskPool) -> None:
    mapped = pool.map(h.sleep_then, [2.0] * 4, chunksize=1)
    streamed = pool.imap(h.sleep_then, [2.0] * 4)
    pool.terminate()
    assert mapped.cancelled()
    with pytest.raises(concurrent.futures.CancelledError):
        next(streamed)
    with pytest.raises(StopIteration):
        next(streamed)


def test_breaking_out_of_imap_cancels_the_chunks_in_flight(
    pool: DaskPool, dask_client: Any
) -> None:
    before = _keys(dask_client)
    for value in pool.imap(h.sleep_then, itertools.repeat(0.5), buffersize=4):
        assert value == 0
        break
    gc.collect()  # the dropped iterator cancels its chunks (CPython: already at the break)
    assert _wait_until(lambda: not _keys(dask_client) - before), _keys(dask_client) - before


def test_no_argument_uses_the_default_dask_client(dask_client: Any) -> None:
    address = dask_client.scheduler.address
    with distributed.Client(address) as default:  # becomes the default client
        with DaskPool() as pool:
            assert pool.client is default
            assert pool.submit(h.square, 6).result(timeout=30) == 36
        assert default.status == "running"  # not ours to close


def test_cancelling_at_random_moments_leaves_nothing_behind(dask_client: Any) -> None:
    # Cancels land before, during and after each task, and while its result is
    # being fetched: every future must end and every Dask key must be released.
    before = _keys(dask_client)
    with DaskPool(dask_client) as pool:
        futures = [pool.submit(h.sleep_then, 0.002 * (i % 5), i) for i in range(120)]
        for i, fut in enumerate(futures):
            if i % 2:
                time.sleep(0.001 * (i % 7))
                fut.cancel()
    assert all(f.done() for f in futures)
    for i, fut in enumerate(futures):
        assert fut.cancelled() or fut.result() == i
    gc.collect()
    assert _wait_until(lambda: not _keys(dask_client) - before), _keys(dask_client) - before


def test_dask_futures_are_released_once_done(pool: DaskPool, dask_client: Any) -> None:
    before = _keys(dask_client)
    results = pool.map(h.square, range(40), chunksize=5).result(timeout=30)
    assert len(results) == 40
    single = pool.submit(h.square, 3)
    assert single.result(timeout=30) == 9
    gc.collect()
    assert _wait_until(lambda: not _keys(dask_client) - before), _keys(dask_client) - before
    assert "tasks=0" in repr(pool)


# -- properties -------------------------------------------------------------------------------

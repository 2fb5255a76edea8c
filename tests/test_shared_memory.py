"""Large buffers (numpy arrays) through shared memory: correct, private, never left behind."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import arrays
import helpers
import procpool
from procpool import WorkerLostError
from procpool._child import shm as _shm

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not _shm.ENABLED, reason="shared memory transport is Linux-only"),
]


def ours() -> list[str]:
    """This process's segments (call segments and its workers' result segments)."""
    prefix = f"procpool-{os.getpid()}-"
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(prefix))


@pytest.fixture(autouse=True)
def no_segment_left() -> object:
    before = ours()
    yield
    # Dropped results and finished pools unlink at once; allow the dispatcher a moment.
    assert helpers.wait_for(lambda: ours() == before, timeout=10), ours()


def test_arrays_round_trip_through_shared_memory(start_method: str) -> None:
    data = [arrays.make(i) for i in range(12)]
    with procpool.Pool(2, context=start_method) as pool:
        assert pool.submit(arrays.in_shared_memory, data[0]).result()
        out = list(pool.map(arrays.identity, data))
        assert all(np.array_equal(o, a) for o, a in zip(out, data, strict=True))
        # The results are mappings of the workers' segments, writable like any array.
        assert all(arrays.in_shared_memory(o) for o in out)
        out[0][:] = 5.0
        assert not np.array_equal(out[0], data[0])
        assert pool.map(arrays.total, data).result() == [float(a.sum()) for a in data]
        doubled = pool.submit(arrays.double, data[3]).result()
        assert np.array_equal(doubled, data[3] * 2)
        del out, doubled


def test_segments_are_reused_not_recreated() -> None:
    created: list[int] = []
    real = _shm._create

    def counting(name: str, size: int) -> object:
        created.append(size)
        return real(name, size)

    data = [arrays.make(i) for i in range(40)]
    mp = pytest.MonkeyPatch()
    mp.setattr(_shm, "_create", counting)
    try:
        with procpool.Pool(2, context="spawn") as pool:
            assert pool.map(arrays.total, data).result() == [float(a.sum()) for a in data]
    finally:
        mp.undo()
    # One segment per call in flight at most, not one per call.
    assert 0 < len(created) <= 8, created


def test_a_task_modifying_its_argument_changes_no_one_else(start_method: str) -> None:
    a = arrays.make(1)
    with procpool.Pool(1, context=start_method) as pool:
        assert pool.submit(arrays.zero_then_total, a).result() == 0.0
        # The parent's array, and the segment the next call reuses, are intact.
        assert pool.submit(arrays.total, a).result() == float(a.sum())
        assert pool.map(arrays.zero_then_total, [a, a, a]).result() == [0.0, 0.0, 0.0]
        assert pool.map(arrays.total, [a, a]).result() == [float(a.sum())] * 2
    assert float(a[0]) == 1.0


def test_an_argument_a_task_keeps_is_never_overwritten(start_method: str) -> None:
    first, second = arrays.make(100), arrays.make(200)
    with procpool.Pool(1, context=start_method) as pool:
        assert pool.submit(arrays.keep, first).result() == float(first.sum())
        for _ in range(3):
            assert pool.submit(arrays.total, second).result() == float(second.sum())
        # The kept array still holds its own data, not a later call's.
        assert pool.submit(arrays.kept_totals).result() == [float(first.sum())]


def test_a_retried_task_gets_its_original_arguments(start_method: str, tmp_path: Path) -> None:
    a = arrays.make(3)
    flag = str(tmp_path / "died")
    with procpool.Pool(1, context=start_method) as pool:
        # The first attempt wrote -1 into its argument and died; the retry must
        # see the original values, as it would with pickled copies.
        future = pool.options(retries=1).submit(arrays.die_once, a, flag)
        assert future.result() == float(a.sum())


def test_a_worker_dying_with_a_large_call_leaves_nothing(start_method: str) -> None:
    data = [arrays.make(i) for i in range(4)]
    with procpool.Pool(2, context=start_method) as pool:
        with pytest.raises(WorkerLostError):
            pool.submit(arrays.die_with, data[0]).result()
        with pytest.raises(WorkerLostError):
            pool.map(arrays.die_with, data).result()
        assert pool.map(arrays.total, data).result() == [float(a.sum()) for a in data]


def test_no_room_in_shared_memory_falls_back_to_the_pipe() -> None:
    # As with a full /dev/shm: creating a segment fails, in the parent and (fork
    # inherits the patch) in the workers.
    mp = pytest.MonkeyPatch()
    mp.setattr(_shm, "_create", lambda name, size: None)
    try:
        data = [arrays.make(i) for i in range(4)]
        with procpool.Pool(2, context="fork") as pool:
            assert not pool.submit(arrays.in_shared_memory, data[0]).result()
            out = pool.map(arrays.identity, data).result()
            assert all(np.array_equal(o, a) for o, a in zip(out, data, strict=True))
            assert not any(arrays.in_shared_memory(o) for o in out)
    finally:
        mp.undo()


def test_small_buffers_stay_in_the_pickle() -> None:
    small = np.arange(1000, dtype=np.float64)
    with procpool.Pool(1, context="fork") as pool:
        assert not pool.submit(arrays.in_shared_memory, small).result()
        assert pool.submit(arrays.total, small).result() == float(small.sum())


def test_a_forked_child_never_removes_its_parents_segments() -> None:
    import warnings

    segments = _shm.SegmentPool(1)
    lease = segments._lease(1 << 20)
    assert lease is not None
    name = lease.segment.name.lstrip("/")
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a process with threads; this child
        # runs no Python thread code and exits at once.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: what a collected copy of the lease or pool would do
        try:
            lease.end(False)
            segments.close()
            _shm._destroy_all(segments._live, segments._pid)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert name in os.listdir("/dev/shm")
    lease.end(False)
    segments.close()
    assert name not in os.listdir("/dev/shm")

"""Who runs a task, typed per-worker state, and placement before import (issue 26)."""

from __future__ import annotations

import os
import sys

import pytest

import helpers
import placement_helpers as ph
import procpool

pytestmark = pytest.mark.timeout(90)


# -- current_worker ---------------------------------------------------------------


def test_current_worker_is_none_outside_a_worker() -> None:
    assert procpool.current_worker() is None


def test_current_worker_says_slot_pid_pool_count_and_start_method(start_method: str) -> None:
    with procpool.Pool(2, context=start_method) as pool:  # type: ignore[arg-type]
        first = pool.submit(ph.who).result()
        assert first is not None
        slot, _pid, name, tasks_run, method = first
        assert slot in (0, 1)
        assert name == pool._name  # pyright: ignore[reportPrivateUsage]
        assert method == start_method
        assert tasks_run == 0
        seen = pool.map(ph.who, range(8), chunksize=1).result()
        assert {s for s, *_ in seen if s is not None} <= {0, 1}
        by_pid = {pid: slot for slot, pid, *_ in filter(None, seen)}
        assert len(set(by_pid.values())) == len(by_pid)  # one slot per live worker


def test_a_replaced_worker_keeps_its_slot(start_method: str) -> None:
    with procpool.Pool(1, context=start_method) as pool:  # type: ignore[arg-type]
        before = pool.submit(ph.who).result()
        with pytest.raises(procpool.WorkerLostError):
            pool.submit(ph.who_then_die, 1).result()
        after = pool.submit(ph.who).result()
    assert before is not None
    assert after is not None
    assert after[0] == before[0] == 0
    assert after[1] != before[1]
    assert after[3] == 0  # a new process: it has run nothing before


def test_an_elastic_pool_refills_the_lowest_empty_slot() -> None:
    import time

    with procpool.Pool(2, idle_timeout=0.1) as pool:
        pool.map(helpers.square, range(4)).result()
        time.sleep(0.5)
        assert pool.stats().idle_exits == 2
        got = pool.submit(ph.who).result()
        assert got is not None
        assert got[0] == 0


# -- per-worker state -------------------------------------------------------------


def test_worker_state_is_built_once_per_worker(start_method: str) -> None:
    model = procpool.WorkerState(ph.make_model)
    with procpool.Pool(2, context=start_method) as pool:  # type: ignore[arg-type]
        got = pool.map(ph.model_pid, [model] * 20, range(20), chunksize=1).result()
        workers = {pid for pid in pool.map(helpers.getpid, range(20), chunksize=1).result()}
    builders = {built for built, _ in got}
    assert builders <= workers  # built in the workers, not in the parent
    assert os.getpid() not in builders
    assert [x for _, x in got] == list(range(20))


def test_worker_state_is_built_again_in_a_replacement(start_method: str) -> None:
    model = procpool.WorkerState(ph.make_model)
    with procpool.Pool(1, context=start_method) as pool:  # type: ignore[arg-type]
        first, _ = pool.submit(ph.model_pid, model, 0).result()
        with pytest.raises(procpool.WorkerLostError):
            pool.submit(ph.die_with_model, model).result()
        second, _ = pool.submit(ph.model_pid, model, 1).result()
    assert first != second


def test_worker_state_in_the_parent_is_the_parents_own() -> None:
    model = procpool.WorkerState(ph.make_model)
    assert model.get()["pid"] == os.getpid()
    assert model.get() is model.get()
    with pytest.raises(TypeError, match="factory"):
        procpool.WorkerState(42)  # type: ignore[arg-type]


# -- placement --------------------------------------------------------------------


@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_worker_env_is_set_before_the_tasks_module_is_imported(method: str) -> None:
    assert "env_at_import" not in sys.modules  # the workers import it first
    with procpool.Pool(
        2,
        context=method,  # type: ignore[arg-type]
        worker_env=lambda slot: {"PROCPOOL_TEST_DEVICE": f"gpu{slot}"},
    ) as pool:
        seen = pool.map(ph.env_seen_at_import, ["PROCPOOL_TEST_DEVICE"] * 6, chunksize=1)
        slots = pool.map(ph.who, range(6), chunksize=1)
        assert set(seen.result()) <= {"gpu0", "gpu1"}
        pairs = pool.map(ph.env, ["PROCPOOL_TEST_DEVICE"] * 2, chunksize=1).result()
        assert all(p in ("gpu0", "gpu1") for p in pairs)
        assert slots.result()
    assert os.environ.get("PROCPOOL_TEST_DEVICE") is None  # the parent's is untouched


def test_an_initializers_module_sees_the_worker_env() -> None:
    import env_at_import  # in the parent too: the spawned workers import it anew

    try:
        with procpool.Pool(
            1,
            context="spawn",
            worker_env={"PROCPOOL_TEST_DEVICE": "gpu7"},
            initializer=env_at_import.init_reads_env,
        ) as pool:
            assert pool.submit(ph.env_seen_at_import, "PROCPOOL_TEST_DEVICE").result() == "gpu7"
    finally:
        del sys.modules["env_at_import"]  # other tests need the workers to import it first


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux only")
def test_cpu_affinity(start_method: str) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    with procpool.Pool(2, context=start_method, cpu_affinity="spread") as pool:  # type: ignore[arg-type]
        spread = pool.map(ph.affinity, range(6), chunksize=1).result()
    assert all(len(s) == 1 for s in spread)
    assert {s[0] for s in spread} <= set(cpus[:2])
    with procpool.Pool(2, context=start_method, cpu_affinity=[cpus[:1]]) as pool:  # type: ignore[arg-type]
        pinned = pool.map(ph.affinity, range(4), chunksize=1).result()
    assert all(s == cpus[:1] for s in pinned)
    with procpool.Pool(1, cpu_affinity=lambda slot: {cpus[-1]}) as pool:
        assert pool.submit(ph.affinity).result() == [cpus[-1]]


def test_threads_per_worker() -> None:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert cpus is not None
    saved = os.environ.pop("OMP_NUM_THREADS", None)
    try:
        with procpool.Pool(2) as pool:
            assert pool.submit(ph.env, "OMP_NUM_THREADS").result() == str(max(1, cpus // 2))
        with procpool.Pool(1, threads_per_worker=3) as pool:
            assert pool.submit(ph.env, "MKL_NUM_THREADS").result() == "3"
        with procpool.Pool(1, threads_per_worker=None) as pool:
            assert pool.submit(ph.env, "OMP_NUM_THREADS").result() is None
        # An explicit setting wins over the budget.
        with procpool.Pool(1, worker_env={"OMP_NUM_THREADS": "5"}) as pool:
            assert pool.submit(ph.env, "OMP_NUM_THREADS").result() == "5"
    finally:
        if saved is not None:
            os.environ["OMP_NUM_THREADS"] = saved


def test_placement_arguments_are_checked() -> None:
    with pytest.raises(TypeError, match="worker_env"):
        procpool.Pool(1, worker_env={"A": 1})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="cpu_affinity"):
        procpool.Pool(1, cpu_affinity="everywhere")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cpu_affinity"):
        procpool.Pool(1, cpu_affinity=[])
    with pytest.raises(TypeError, match="threads_per_worker"):
        procpool.Pool(1, threads_per_worker=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="threads_per_worker"):
        procpool.Pool(1, threads_per_worker=0)

"""The headline promises at their edges (issue 22): the heavy, many-repetition attacks.

The fast variants are in ``test_edges.py``; these make each worst moment happen
many times, under fork, spawn and forkserver, and again with CPU burners running.
All are ``slow`` (``make test-all``). Task functions live in ``edge_helpers.py``.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import edge_checks as ec
import edge_helpers as eh
import helpers
import procpool
from procpool import TaskTimeoutError, WorkerLostError

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

BURNERS = [0, 2]


# =============================================================================================
# 1. A crash inside a map fails only the crasher: a property, under every start method
# =============================================================================================


@pytest.mark.parametrize("burners", BURNERS, ids=["idle", "burners"])
def test_a_crash_anywhere_in_any_map_fails_only_the_crasher(
    start_method: str, burners: int, tmp_path: Path
) -> None:
    """Any map size, crash position, chunk size, item duration (tiny items run as
    blocks in C, sub-millisecond items are sent in batches, slow ones at once), way
    of dying, with and without a retry: only the crasher fails, with its own error
    (WorkerLostError naming its index and its cause); every other item is delivered.
    With ``retries=1`` the crasher ran exactly twice; one that crashes only the first
    time succeeds. Failed on 0e3ce03 at once (neighbours whose results were not sent
    failed; blocks of tiny items failed whole)."""
    examples = iter(range(1_000_000))
    with (
        eh.cpu_burners(burners),
        procpool.Pool(2, context=start_method) as pool,  # type: ignore[arg-type]
    ):

        @settings(
            max_examples=40,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(
            n=st.integers(2, 400),
            where=st.floats(0, 1, exclude_max=True),
            chunksize=st.sampled_from([None, 1, 7, 64, "all"]),
            ms=st.sampled_from([0.0, 0.0, 0.05, 0.3, 2.0]),
            how=st.sampled_from(["exit", "sigkill", "segv"]),
            retry=st.sampled_from(["none", "always", "once"]),
        )
        def check(n: int, where: float, chunksize: Any, ms: float, how: str, retry: str) -> None:
            bad = int(where * n)
            size = n if chunksize == "all" else chunksize
            folder = tmp_path / f"example{next(examples)}"
            folder.mkdir()
            runs = str(folder / "runs")
            if retry == "once":
                fut = pool.options(retries=1).map(
                    eh.die_once_on,
                    range(n),
                    [bad] * n,
                    [str(folder / "crashed")] * n,
                    [ms] * n,
                    chunksize=size,
                )
                assert fut.result(timeout=120) == list(range(n))
                return
            view = pool.options(retries=1) if retry == "always" else pool
            if how == "exit":
                fut = view.map(
                    eh.die_on_counted, range(n), [bad] * n, [runs] * n, [ms] * n, chunksize=size
                )
            else:
                fut = view.map(
                    eh.slow_die_on, range(n), [bad] * n, [ms] * n, [how] * n, chunksize=size
                )
            error = fut.exception(timeout=120)
            outcomes = ec.outcomes(fut)
            assert set(ec.failed(outcomes)) == {bad}, sorted(ec.failed(outcomes).items())[:3]
            assert all(outcomes[i] == i for i in range(n) if i != bad)
            ec.check_crasher_error(error, bad, how)
            if retry == "always":
                assert "2 attempts" in str(error), str(error)
                if how == "exit":
                    assert len(eh.read_records(runs)) == 2

        check()
        assert pool.map(helpers.square, range(50)).result(timeout=60) == [i * i for i in range(50)]


# =============================================================================================
# 2. Logging at the deadline; the interrupt is no Exception
# =============================================================================================


@pytest.mark.usefixtures("quiet_flood")
@pytest.mark.parametrize("task", [eh.log_flood, eh.log_per_ms], ids=["tight-loop", "one-per-ms"])
@pytest.mark.parametrize("burners", BURNERS, ids=["idle", "burners"])
def test_forty_tasks_logging_at_their_deadline_are_all_interrupted(
    start_method: str, task: Any, burners: int
) -> None:
    """40 tasks log (a tight loop, or a record per ms of work) while their limit passes.
    Failed on 0e3ce03 in 38-40 of 40 (tight loop) and most of the per-ms ones:
    WorkerLostError "exited with code 1". Required: 40 TaskTimeoutError(killed=False),
    one worker throughout."""
    outcomes: dict[str, int] = {}
    with (
        eh.cpu_burners(burners),
        procpool.Pool(1, context=start_method, forward_logs=True) as pool,  # type: ignore[arg-type]
    ):
        pid = pool.submit(helpers.getpid).result(timeout=60)
        limited = pool.options(timeout=0.1, grace=2)
        for _ in range(40):
            try:
                limited.submit(task, 30).result(timeout=60)
            except TaskTimeoutError as exc:
                key = f"timeout killed={exc.killed}"
            except Exception as exc:
                key = f"{type(exc).__name__}: {exc}"[:120]
            else:
                key = "returned"
            outcomes[key] = outcomes.get(key, 0) + 1
        last = pool.submit(helpers.getpid).result(timeout=60)
        replaced = pool.stats().workers_replaced
    assert outcomes == {"timeout killed=False": 40}, outcomes
    assert (last, replaced) == (pid, 0)


@pytest.fixture
def quiet_flood() -> Iterator[None]:
    """Replayed flood records are dropped in the parent (not kept by pytest's capture)."""
    with ec.dropping_flood_records():
        yield


# =============================================================================================
# 3. The interrupt is prompt
# =============================================================================================


@pytest.mark.parametrize("burners", BURNERS, ids=["idle", "burners"])
def test_150_tasks_past_their_limit_never_return_a_result(
    start_method: str, burners: int, tmp_path: Path
) -> None:
    """150 tasks that write and compute 1 ms at a time, 2x-6x past their 0.05 s limit
    (grace 1 s). Failed on 0e3ce03 (issue 22: 8-48 of 150 returned a result at 2x
    their limit; interrupts up to 0.63 s late). Required: none returns a result, each
    is interrupted during its work, none is killed."""
    tasks = 150
    with eh.cpu_burners(burners):
        got, records = ec.interrupt_run(start_method, tmp_path, tasks)
    ec.check_interrupted(got, records, tasks, grace=1.0)
    lateness = sorted(float(r.split()[1]) for r in records if not r.startswith("returned"))
    print(
        f"\n{start_method} burners={burners}: interrupt lateness ms p50 "
        f"{1000 * lateness[len(lateness) // 2]:.1f} max {1000 * lateness[-1]:.1f}"
    )


@pytest.mark.parametrize("burners", BURNERS, ids=["idle", "burners"])
def test_300_deadlines_around_task_ends_never_disturb_the_next_tasks(
    start_method: str, burners: int, tmp_path: Path
) -> None:
    """300 rounds of ``edge_checks.deadlines_around_task_ends``: a task that ends within
    a few ms of its deadline (either side) and returns a float, 64 KiB or 4 MiB (a
    reply still being sent when a late interrupt comes), then two tasks nothing may
    disturb. A kernel timer that fires as the task returns must reach neither the
    next task nor the worker's loop or its pipe, nor let a task past its deadline
    return a result. Failed on 0e3ce03 in every run here: tasks 5-12 ms past their
    deadline returned results (the watchdog thread starved of the GIL)."""
    with eh.cpu_burners(burners):
        counts, wrong = ec.deadlines_around_task_ends(
            start_method, tmp_path, 300, seed=burners, payloads=(0, 0, 2**16, 2**22)
        )
    print(f"\n{start_method} burners={burners}: {counts}")
    assert not wrong, (counts, wrong[:10])
    assert counts["returned"] > 0
    assert counts["interrupted"] > 0


@pytest.mark.parametrize("burners", BURNERS, ids=["idle", "burners"])
def test_deadlines_around_the_ends_of_map_items_never_reach_the_next_item(
    start_method: str, burners: int, tmp_path: Path
) -> None:
    """A map of 300 items with a per-item limit and a grace: items ending within a few
    ms of their deadline (either side) alternate with quick items, ten to a chunk. A
    late interrupt must not fail the next item, and an item past its deadline must
    not return a result. Failed on 0e3ce03 in some runs (items past their deadline
    returned results)."""
    with eh.cpu_burners(burners):
        counts, wrong = ec.deadlines_in_a_map(start_method, tmp_path, 300, seed=burners)
    print(f"\n{start_method} burners={burners}: {counts}")
    assert not wrong, (counts, wrong[:10])
    assert counts["interrupted"] > 0


# =============================================================================================
# 4. and 5. Nested pools
# =============================================================================================


@pytest.mark.parametrize("inner", ["fork", "spawn", "forkserver"])
def test_a_nested_pool_interrupts_its_task_at_the_limit(start_method: str, inner: str) -> None:
    """Every outer start method times every inner one, after the outer worker ran a
    task with a grace period: the inner task is interrupted (``killed=False``), with a
    grace of 3 s and with an endless one. Failed on 0e3ce03 for inner fork pools
    (killed after the grace; with grace=inf the inner task returned its result)."""
    with procpool.Pool(1, context=start_method) as pool:  # type: ignore[arg-type]
        ec.after_a_grace_task(pool)
        reports = [
            pool.submit(eh.nested_interrupt, inner, 0.2, grace, 3.0).result(timeout=120)
            for grace in (3.0, math.inf)
        ]
        # Twice in a row in the same outer worker, and from a task with a limit itself.
        reports.append(
            pool.options(timeout=60, grace=5)
            .submit(eh.nested_interrupt, inner, 0.2, 3.0, 3.0)
            .result(timeout=120)
        )
    for report in reports:
        assert report["outcome"] == "timeout", reports
        assert report["killed"] is False, reports


@pytest.mark.parametrize("inner", ["fork", "spawn", "forkserver"])
def test_a_nested_pools_timeout_error_reaches_the_caller_unchanged(
    start_method: str, inner: str
) -> None:
    """A task with a limit and a grace lets its nested pool's TaskTimeoutError go: the
    caller sees the inner error (limit 0.2 s), and the outer pool counts no timeout.
    Failed on 0e3ce03 (rewritten as the outer limit's; for inner fork, killed after
    the inner grace as well)."""
    with procpool.Pool(1, context=start_method) as pool:  # type: ignore[arg-type]
        fut = pool.options(timeout=60, grace=20).submit(eh.nested_timeout_propagates, inner)
        with pytest.raises(TaskTimeoutError) as info:
            fut.result(timeout=120)
        assert info.value.timeout == 0.2, str(info.value)
        assert info.value.killed is False, str(info.value)
        assert "60 s" not in str(info.value)
        assert pool.stats().timed_out == 0


# =============================================================================================
# 6. Recycled workers that cannot exit
# =============================================================================================


@pytest.mark.parametrize("recycle", ["max_tasks_per_worker", "max_memory_per_worker"])
def test_twenty_recycled_workers_that_cannot_exit_never_hold_up_the_pool(
    start_method: str, recycle: str
) -> None:
    """Two workers; 20 tasks each leave a non-daemon thread running for ever, and each
    worker is recycled after every task. Failed on 0e3ce03: the first two recycled
    workers kept their slots for ever and nothing else ran. Required: every task ends
    (within 150 s in all: ten recycles in a row per slot, each allowed the 10 s of
    the fast test), each on a fresh worker; no stuck worker is left."""
    limit: dict[str, Any] = (
        {"max_tasks_per_worker": 1}
        if recycle == "max_tasks_per_worker"
        else {"max_memory_per_worker": "1 MiB"}
    )
    pool = procpool.Pool(2, context=start_method, **limit)  # type: ignore[arg-type]
    try:
        futures = [pool.submit(eh.leave_thread_running) for _ in range(20)]
        deadline = time.monotonic() + 150
        workers = [f.result(timeout=max(0.1, deadline - time.monotonic())) for f in futures]
        assert len({pid for pid, _ in workers}) == 20
        assert pool.submit(helpers.square, 4).result(timeout=30) == 16
        # By pid and start time: make test-all once found a pid of these alive 30 s
        # later, a number the kernel had handed to a new process (pid_max 32,768).
        assert helpers.wait_for(
            lambda: not any(eh.pid_alive(*worker) for worker in workers), timeout=30
        ), [worker for worker in workers if eh.pid_alive(*worker)]
    finally:
        pool.terminate()
        pool.join(30)


# =============================================================================================
# 7. Outside kills on a loaded machine
# =============================================================================================


def test_outside_kills_on_a_loaded_machine_never_break_the_pool_in_ten_rounds(
    start_method: str,
) -> None:
    """Ten rounds of 4 s each: two CPU burners, workers SIGKILLed at random every
    10-50 ms (starting up, idle, mid-task, mid-reply), submits and maps all along.
    Failed on 0e3ce03 (issue 22: 2 of 15 runs broke under load; here most rounds
    under spawn and forkserver). Required: the pool never declares itself broken,
    every future ends with its correct result or a WorkerLostError."""
    totals = [0, 0, 0]
    with eh.cpu_burners(2):
        for seed in range(10):
            for i, count in enumerate(ec.under_fire(start_method, 4.0, seed)):
                totals[i] += count
    kills, lost_tasks, lost_items = totals
    print(f"\n{start_method}: {kills} kills, {lost_tasks} tasks and {lost_items} items lost")
    assert kills > 0


def test_sigkills_aimed_at_starting_workers_never_break_the_pool(start_method: str) -> None:
    """Each new worker is killed the moment it appears in /proc, 20 times in a row, with
    work waiting (a worker that never got to start anything). Failed on 0e3ce03 at the
    third kill ("3 workers in a row died before doing any work"). Required: the pool
    replaces them (backing off if it likes), then runs the waiting work."""
    before = set(eh.pool_workers(set()))
    with procpool.Pool(1, context=start_method) as pool:  # type: ignore[arg-type]
        assert pool.submit(helpers.square, 2).result(timeout=60) == 4
        seen = set(before)
        waiting = [pool.submit(eh.triple, i, 1.0) for i in range(5)]
        for _ in range(20):
            pid = ec.new_worker(pool, seen, timeout=60)
            seen.add(pid)
            os.kill(pid, signal.SIGKILL)
        for i, fut in enumerate(waiting):
            error = fut.exception(timeout=120)
            if error is None:
                assert fut.result() == 3 * i + 1
            else:
                assert isinstance(error, WorkerLostError), repr(error)
        assert pool.submit(helpers.square, 3).result(timeout=60) == 9

"""What users of every pool ask for: memory-based recycling, time limits with a grace
period, and a death that names its cause (issue 17). Under fork, spawn and forkserver.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import helpers
import procpool
from procpool._options import memory_bytes

SCRIPTS = Path(__file__).parent / "scripts"
pytestmark = pytest.mark.timeout(180)
MiB = 2**20


# -- memory -----------------------------------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_workers_that_grow_are_replaced_and_every_result_arrives(start_method: str) -> None:
    """100 calls keep 50 MiB each; under a 200 MiB limit no worker ever holds more
    than the limit plus one call's growth, and every result arrives."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "memory_recycling.py"), start_method, "200"],
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    readings = report["readings"]
    assert len(readings) == 100
    assert report["completed"] == 100
    worst = max(resident for _, resident in readings)
    # A worker over the limit after a call is replaced before its next one, so it
    # ends a call with at most the limit plus that call's 50 MiB (and some slack
    # for the interpreter's own pages).
    assert worst <= (200 + 50 + 16) * MiB, worst / MiB
    assert report["recycled"] >= 100 * 50 // 200 // 2
    # Every recycled worker is replaced, except one retired after a closed pool's
    # last call (nothing left to run): at most one per worker slot.
    assert report["recycled"] - 2 <= report["replaced"] <= report["recycled"]
    calls_per_worker: dict[int, int] = {}
    for pid, _ in readings:
        calls_per_worker[pid] = calls_per_worker.get(pid, 0) + 1
    assert max(calls_per_worker.values()) <= 200 // 50 + 1


def test_memory_sizes_read_as_bytes() -> None:
    assert memory_bytes("m", "2 GiB") == 2 * 2**30
    assert memory_bytes("m", "500MB") == 500 * 10**6
    assert memory_bytes("m", "1.5 kib") == 1536
    assert memory_bytes("m", 4096) == 4096
    assert memory_bytes("m", None) is None
    for bad in ("2 GB of it", "lots", "-1 MB", 0, True, 1.5):
        with pytest.raises(ValueError, match="max_memory_per_worker"):
            memory_bytes("max_memory_per_worker", bad)  # type: ignore[arg-type]


def test_a_bad_memory_limit_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="max_memory_per_worker"):
        procpool.Pool(1, max_memory_per_worker="twelve")
    with procpool.Pool(1) as pool, pytest.raises(ValueError, match="max_memory_per_worker"):
        pool.options(max_memory_per_worker=-5)


def test_the_memory_limit_of_options_applies_to_its_tasks_only(start_method: str) -> None:
    with procpool.Pool(1, context=start_method) as pool:
        plain = [pool.submit(helpers.getpid).result(timeout=30) for _ in range(3)]
        assert len(set(plain)) == 1
        tight = pool.options(max_memory_per_worker="1 MiB")  # below any interpreter
        pids = [tight.submit(helpers.getpid).result(timeout=30) for _ in range(3)]
        # Each of these calls delivered its result, then its worker was replaced.
        assert len(set(pids)) == 3
        # The notice that a worker passed its limit follows the call's result.
        assert helpers.wait_for(lambda: pool.stats().recycled == 3)


# -- time limits with a grace period ------------------------------------------------------


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "cleaned-up"


def test_a_task_interrupted_at_its_limit_cleans_up(start_method: str, marker: Path) -> None:
    with procpool.Pool(1, context=start_method) as pool:
        late = pool.options(timeout=0.5, grace=10).submit(
            helpers.sleep_with_cleanup, str(marker), 60
        )
        with pytest.raises(procpool.TaskTimeoutError, match="stopped within its grace") as info:
            late.result(timeout=60)
        assert info.value.killed is False
        assert info.value.timeout == 0.5
        assert marker.exists()  # its finally block ran
        # It stopped in time: the same worker goes on, nothing was replaced.
        assert int(marker.read_text()) == pool.submit(helpers.getpid).result(timeout=30)
        assert pool.stats().workers_replaced == 0
        assert pool.stats().timed_out == 1


def test_without_a_grace_period_the_task_is_killed_and_cannot_clean_up(
    start_method: str, marker: Path
) -> None:
    with procpool.Pool(1, context=start_method) as pool:
        late = pool.options(timeout=0.5).submit(helpers.sleep_with_cleanup, str(marker), 60)
        with pytest.raises(procpool.TaskTimeoutError, match="killed") as info:
            late.result(timeout=60)
        assert info.value.killed is True
        assert not marker.exists()
        # The future fails at the kill; the replacement follows once the worker is reaped.
        assert helpers.wait_for(lambda: pool.stats().workers_replaced == 1)


def test_a_task_that_ignores_the_interrupt_is_killed_after_its_grace(start_method: str) -> None:
    with procpool.Pool(1, context=start_method, task_timeout=0.5, task_grace=1.0) as pool:
        started = time.monotonic()
        stubborn = pool.submit(helpers.ignore_the_interrupt, 60)
        with pytest.raises(procpool.TaskTimeoutError, match="had not stopped") as info:
            stubborn.result(timeout=60)
        assert info.value.killed is True
        assert time.monotonic() - started >= 0.5 + 1.0  # the grace period was given
        assert helpers.wait_for(lambda: pool.stats().workers_replaced == 1)


def test_an_interrupted_task_that_returns_anyway_still_timed_out(start_method: str) -> None:
    with procpool.Pool(1, context=start_method) as pool:
        sly = pool.options(timeout=0.5, grace=10).submit(helpers.catch_the_interrupt_and_return, 60)
        with pytest.raises(procpool.TaskTimeoutError) as info:
            sly.result(timeout=60)
        assert info.value.killed is False


def test_items_of_a_map_are_interrupted_one_by_one_in_the_same_worker(start_method: str) -> None:
    with procpool.Pool(1, context=start_method) as pool:
        limited = pool.options(timeout=0.5, grace=10)
        results = limited.map(helpers.sleep_or_pass, [0.01, 60, 0.01, 60, 0.01], chunksize=5)
        outcomes = []
        for _ in range(5):
            try:
                outcomes.append(next(results))
            except procpool.TaskTimeoutError as exc:
                outcomes.append(("timeout", exc.killed))
    assert [o[0] for o in outcomes] == [0.01, "timeout", 0.01, "timeout", 0.01]
    pids = {o[1] for o in outcomes if o[0] != "timeout"}
    assert len(pids) == 1  # no worker was replaced
    assert [o for o in outcomes if o[0] == "timeout"] == [("timeout", False)] * 2


def test_ctrl_c_in_a_worker_is_still_ignored_with_a_grace_period(start_method: str) -> None:
    with procpool.Pool(1, context=start_method) as pool:
        limited = pool.options(timeout=30, grace=5)
        pid = limited.submit(helpers.getpid).result(timeout=30)
        slow = limited.submit(helpers.sleep_then, 0.5, "done")
        time.sleep(0.1)
        os.kill(pid, signal.SIGINT)
        assert slow.result(timeout=30) == "done"


# -- a death that names its cause -------------------------------------------------------------


def test_a_plain_sigkill_from_outside_is_a_signal_not_an_oom(start_method: str) -> None:
    with procpool.Pool(1, context=start_method) as pool:
        pid = pool.submit(helpers.getpid).result(timeout=30)
        victim = pool.submit(helpers.sleep_then, 60)
        assert helpers.wait_for(victim.running)
        time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(procpool.WorkerLostError) as info:
            victim.result(timeout=60)
    assert info.value.cause == "signal"
    assert info.value.exitcode == -signal.SIGKILL
    assert "by the out-of-memory killer (the oom_kill count of its cgroup rose" not in str(
        info.value
    )


def test_exits_and_crashes_name_their_cause(start_method: str) -> None:
    with procpool.Pool(1, context=start_method) as pool:
        exited = pool.submit(helpers.exit_with, 5).exception(timeout=60)
        crashed = pool.submit(helpers.crash).exception(timeout=60)
    assert isinstance(exited, procpool.WorkerLostError)
    assert exited.cause == "exit"
    assert isinstance(crashed, procpool.WorkerLostError)
    assert crashed.cause == "signal"


def test_items_lost_to_another_items_time_limit_say_timeout(start_method: str) -> None:
    with procpool.Pool(1, context=start_method) as pool:
        results = pool.options(timeout=1.0).map(
            helpers.sleep_item, [0] * 50 + [60_000], chunksize=51
        )
        outcome = results.exception(timeout=60)
    assert isinstance(outcome, (procpool.TaskTimeoutError, procpool.WorkerLostError))
    if isinstance(outcome, procpool.WorkerLostError):  # a fast item whose result was lost
        assert outcome.cause == "timeout"


def test_worker_lost_error_pickles_with_its_cause() -> None:
    import pickle

    error = procpool.WorkerLostError("gone", exitcode=-9, pid=12, cause="oom")
    again = pickle.loads(pickle.dumps(error))
    assert (again.cause, again.exitcode, again.pid, str(again)) == ("oom", -9, 12, "gone")
    timeout = procpool.TaskTimeoutError("late", timeout=1.5, killed=False)
    back = pickle.loads(pickle.dumps(timeout))
    assert (back.timeout, back.killed, str(back)) == (1.5, False, "late")


def _memory_cgroup(tmp_name: str) -> Path | None:
    """A new memory cgroup (v1 or v2) under ours, limited to 300 MiB, or None if not allowed."""
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "" and Path("/sys/fs/cgroup/cgroup.controllers").exists():
            base, limit_file, swap_file = (
                Path(f"/sys/fs/cgroup{path}"),
                "memory.max",
                "memory.swap.max",
            )
        elif "memory" in controllers.split(","):
            base = Path(f"/sys/fs/cgroup/memory{path}")
            limit_file, swap_file = "memory.limit_in_bytes", "memory.memsw.limit_in_bytes"
        else:
            continue
        group = base / tmp_name
        try:
            group.mkdir()
            (group / limit_file).write_text(str(300 * MiB))
        except OSError:
            return None
        with contextlib.suppress(OSError):  # no swap accounting: the limit alone must do
            (group / swap_file).write_text(str(300 * MiB) if "memsw" in swap_file else "0")
        return group
    return None


def test_a_worker_killed_by_the_oom_killer_is_called_so(start_method: str) -> None:
    group = _memory_cgroup(f"procpool-test-{os.getpid()}-{start_method}")
    if group is None:
        pytest.skip(
            "no memory cgroup this test may create (needs root and a cgroup memory controller)"
        )
    try:
        proc = subprocess.run(
            [
                sys.executable,
                str(SCRIPTS / "oom_in_cgroup.py"),
                start_method,
                str(group / "cgroup.procs"),
            ],
            capture_output=True,
            text=True,
            timeout=170,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        report = json.loads(proc.stdout)
    finally:
        for _ in range(50):  # the cgroup empties once its processes are reaped
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)
    assert report["type"] == "WorkerLostError", report
    assert report["cause"] == "oom", report
    assert "out-of-memory killer (the oom_kill count" in report["message"]
    assert report["after"] == 49  # the pool replaced the worker and goes on

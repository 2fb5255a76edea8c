"""The parent's side of the attacker tests of issue 22: runs and checks that
``test_edges.py`` (fast) and ``test_edges_stress.py`` (slow) share.

Nothing here is sent to a worker (that is ``edge_helpers.py``), and nothing imports
pytest: plain ``assert`` statements, which pytest rewrites in test modules only,
so each carries its own message.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import edge_helpers as eh
import helpers
import procpool
from procpool import TaskTimeoutError, WorkerLostError


@contextlib.contextmanager
def dropping_flood_records() -> Iterator[None]:
    """Drop the flood tasks' records when the parent replays them (pytest's capture
    would keep them all). The tasks remove the filter in the worker (a fork worker
    inherits it)."""
    log = logging.getLogger(eh.FLOOD_LOGGER)
    log.addFilter(eh.drop_all)
    try:
        yield
    finally:
        log.removeFilter(eh.drop_all)


def outcomes(fut: procpool.MapFuture[Any]) -> list[object]:
    """Each item's value, or the exception it raised, read the public way (iterating)."""
    found: list[object] = []
    it = iter(fut)
    while True:
        try:
            found.append(next(it))
        except StopIteration:
            return found
        except Exception as exc:
            found.append(exc)


def failed(results: list[object]) -> dict[int, str]:
    """The items that failed, with their errors in words (for assertion messages)."""
    return {
        i: f"{type(o).__name__}: {o}"[:300]
        for i, o in enumerate(results)
        if isinstance(o, BaseException)
    }


DEATHS = {
    "exit": ("exited with code 1", 1),
    "sigkill": ("SIGKILL", -signal.SIGKILL),
    "segv": ("SIGSEGV", -signal.SIGSEGV),
}


def check_crasher_error(error: BaseException | None, index: int, how: str) -> None:
    """The map's error is the crasher's: a WorkerLostError naming the item and its cause."""
    words, exitcode = DEATHS[how]
    assert isinstance(error, WorkerLostError), repr(error)
    message = str(error)
    assert re.search(rf"\bitem {index}\b", message), message
    assert words in message, message
    assert error.exitcode == exitcode, message


#: How many times its limit each task would run, in turn (2x is where 0e3ce03 failed most).
FACTORS = [2, 2, 2, 3, 6]


def interrupt_run(
    start_method: str, folder: Path, tasks: int, limit: float = 0.05, grace: float = 1.0
) -> tuple[list[str], list[str]]:
    """Run ``tasks`` I/O-and-compute tasks past their limit; (what each future gave,
    the records the tasks wrote: one per task interrupted during its work)."""
    record = str(folder / "record")
    runs = [FACTORS[i % len(FACTORS)] * limit for i in range(tasks)]
    with procpool.Pool(2, context=start_method) as pool:  # type: ignore[arg-type]
        limited = pool.options(timeout=limit, grace=grace)
        futures = [
            limited.submit(eh.io_and_compute, os.devnull, record, limit, run_for)
            for run_for in runs
        ]
        got = []
        for fut in futures:
            try:
                got.append(f"returned {fut.result(timeout=60):.3f} s")
            except TaskTimeoutError as exc:
                got.append(f"killed={exc.killed}")
            except Exception as exc:
                got.append(f"{type(exc).__name__}: {exc}")
        replaced = pool.stats().workers_replaced
        assert replaced == 0, f"{replaced} workers replaced"
    return got, eh.read_records(record)


def check_interrupted(got: list[str], records: list[str], tasks: int, grace: float) -> None:
    """Every future failed with TaskTimeoutError(killed=False), none returned; every
    task recorded the interrupt during its work, well within the grace."""
    returned = [g for g in got if g.startswith("returned")]
    assert not returned, f"{len(returned)} of {tasks} tasks past 2x their limit returned a result"
    assert got == ["killed=False"] * tasks, [g for g in got if g != "killed=False"]
    interrupted = [r for r in records if not r.startswith("returned")]
    lateness = sorted(float(r.split()[1]) for r in interrupted)
    # Each task records the interrupt when it comes during its work; a task without
    # such a record ran to its end, at least one limit after its deadline.
    assert len(interrupted) == tasks, (
        f"{tasks - len(interrupted)} of {tasks} tasks ran to their end, never interrupted "
        f"(lateness of the others, ms: {[round(x * 1000, 1) for x in lateness[-5:]]})"
    )
    assert lateness[-1] < grace / 2, f"interrupt {lateness[-1] * 1000:.0f} ms late"


def judge_limited(record: str, outcome: object) -> str | None:
    """What is wrong with the ``outcome`` of an ``io_and_compute`` task (or map item)
    under a time limit with a grace period, given its ``record`` (None: nothing).

    The task's record says, by its own clock, when its work ended or the interrupt
    came, relative to its deadline. A result only if its work ended before the
    deadline; an interrupt never before the deadline; a TaskTimeoutError
    (``killed=False``) for a task that ended well before its deadline is another
    task's interrupt. A few ms of slack each way cover the µs between the pool's
    clock and the task's, and a worker descheduled at that very moment.
    """
    lines = eh.read_records(record)
    how, late = (lines[0].split()[0], float(lines[0].split()[1])) if lines else ("none", 0.0)
    if isinstance(outcome, TaskTimeoutError) and not outcome.killed:
        if how == "returned" and late < -0.01:
            return f"ended {-late * 1000:.1f} ms before its deadline, yet timed out: {outcome}"
    elif isinstance(outcome, BaseException):
        return f"{outcome!r}"[:300]
    elif how != "returned" or late > 0.005:
        return f"returned a result, yet its record says {lines}"
    if how not in ("returned", "none") and late < -0.005:
        return f"interrupted {-late * 1000:.1f} ms before its deadline: {lines}"
    return None


def deadlines_around_task_ends(
    start_method: str, folder: Path, rounds: int, seed: int, payloads: tuple[int, ...] = (0,)
) -> tuple[dict[str, int], list[str]]:
    """``rounds`` times on one worker: a task limited to 0.05 s (grace 1 s) that writes
    and computes for 0.8x-1.2x its limit, so that its end and its deadline fall within
    a few ms of each other, in either order, and returns a result of one of
    ``payloads`` bytes (0: a float); then a task with no limit and one with a long
    limit, which nothing may disturb. Returns the limited tasks' outcomes counted,
    and what went wrong."""
    rng = random.Random(seed)
    counts = {"returned": 0, "interrupted": 0}
    wrong: list[str] = []
    limit = 0.05
    with procpool.Pool(1, context=start_method) as pool:  # type: ignore[arg-type]
        pid = pool.submit(helpers.getpid).result(timeout=60)
        limited = pool.options(timeout=limit, grace=1.0)
        long = pool.options(timeout=30, grace=1.0)
        for i in range(rounds):
            record = str(folder / f"record-{i}")
            run_for = limit * rng.uniform(0.8, 1.2)
            payload = payloads[i % len(payloads)]
            edge = limited.submit(
                eh.io_and_compute, os.devnull, record, limit, run_for, 1.0, payload
            )
            plain = pool.submit(eh.triple, i)
            timed = long.submit(eh.triple, i, 0.5)
            try:
                got: object = edge.result(timeout=60)
            except Exception as exc:
                got = exc
            counts["returned" if not isinstance(got, BaseException) else "interrupted"] += 1
            why = judge_limited(record, got)
            if why:
                wrong.append(f"round {i}: {why}")
            for name, fut in (("no limit", plain), ("long limit", timed)):
                try:
                    got = fut.result(timeout=60)
                except Exception as exc:
                    wrong.append(f"round {i}: the next task ({name}) failed: {exc!r}")
                else:
                    if got != 3 * i + 1:
                        wrong.append(f"round {i}: the next task ({name}) gave {got}")
        if pool.submit(helpers.getpid).result(timeout=60) != pid:
            wrong.append("the worker was replaced")
        if pool.stats().workers_replaced:
            wrong.append(f"{pool.stats().workers_replaced} workers replaced")
    return counts, wrong


def after_a_grace_task(pool: procpool.Pool) -> None:
    """Make the worker run one task with a grace period (its alarm is set up)."""
    pool.options(timeout=30, grace=5).submit(helpers.getpid).result(timeout=60)


def new_worker(pool: procpool.Pool, exclude: set[int], timeout: float = 30.0) -> int:
    """Wait for the one worker of a one-worker pool that is not in ``exclude``; if the
    pool breaks meanwhile, raise what its submit() raises."""
    found: list[int] = []

    def appeared() -> bool:
        found[:] = eh.pool_workers(exclude)
        return len(found) == 1 or pool._dispatcher.broken is not None

    helpers.wait_for(appeared, timeout=timeout)
    if pool._dispatcher.broken is not None:
        pool.submit(helpers.square, 1)  # raises the pool's verdict
    assert len(found) == 1, f"no new worker: {found}"
    return found[0]


def under_fire(start_method: str, seconds: float, seed: int) -> tuple[int, int, int]:
    """Submits and maps for ``seconds`` while an outside killer shoots the pool's
    workers every 10-50 ms; check every outcome; return (kills, lost tasks, lost items)."""
    exclude = set(eh.pool_workers(set()))
    lost_tasks = lost_items = 0
    with procpool.Pool(2, context=start_method) as pool:  # type: ignore[arg-type]
        futures: list[tuple[int, procpool.Future[int]]] = []
        maps: list[tuple[list[int], procpool.MapFuture[int]]] = []
        with eh.OutsideKiller(exclude, seed) as killer:
            end = time.monotonic() + seconds
            i = 0
            while time.monotonic() < end:
                # Never raises: a broken pool would raise here (ProcpoolError).
                futures.append((i, pool.submit(eh.triple, i, 1.0)))
                if i % 10 == 0:
                    xs = list(range(i, i + 30))
                    maps.append((xs, pool.map(eh.triple, xs, [0.2] * 30, chunksize=6)))
                i += 1
                time.sleep(0.002)
        for x, fut in futures:
            error = fut.exception(timeout=120)
            if error is None:
                assert fut.result() == 3 * x + 1, f"task {x} gave {fut.result()}"
            else:
                assert isinstance(error, WorkerLostError), repr(error)
                assert error.exitcode == -signal.SIGKILL, repr(error)
                lost_tasks += 1
        for xs, mapped in maps:
            for x, outcome in zip(xs, outcomes(mapped), strict=True):
                if isinstance(outcome, BaseException):
                    assert isinstance(outcome, WorkerLostError), repr(outcome)
                    lost_items += 1
                else:
                    assert outcome == 3 * x + 1, f"item {x} gave {outcome}"
        kills = len(killer.killed)
        after = pool.submit(helpers.square, 7).result(timeout=60)
        assert after == 49, f"square(7) gave {after}"
    return kills, lost_tasks, lost_items


def deadlines_in_a_map(
    start_method: str, folder: Path, items: int, seed: int
) -> tuple[dict[str, int], list[str]]:
    """One map of ``items`` items, each limited to 0.05 s (grace 1 s), in chunks of 10
    on two workers: every even item writes and computes for 0.8x-1.2x the limit (its
    end and its deadline a few ms apart), every odd one for a tenth of it. A late
    interrupt of an item must not land in the next one (see ``judge_limited``).
    Returns the items' outcomes counted, and what went wrong."""
    rng = random.Random(seed)
    limit = 0.05
    runs = [limit * (rng.uniform(0.8, 1.2) if i % 2 == 0 else 0.1) for i in range(items)]
    records = [str(folder / f"item-{i}") for i in range(items)]
    counts = {"returned": 0, "interrupted": 0, "quick items failed": 0}
    wrong: list[str] = []
    with procpool.Pool(2, context=start_method) as pool:  # type: ignore[arg-type]
        fut = pool.options(timeout=limit, grace=1.0).map(
            eh.io_and_compute,
            [os.devnull] * items,
            records,
            [limit] * items,
            runs,
            chunksize=10,
        )
        for i, got in enumerate(outcomes(fut)):
            if i % 2 == 0:
                counts["returned" if not isinstance(got, BaseException) else "interrupted"] += 1
            elif isinstance(got, BaseException):
                # 5 ms of work against a 50 ms limit: only a stall of the worker of
                # 45 ms (a loaded machine) makes this its own timeout; then its record
                # says so (the interrupt came after its own deadline), and the judge
                # below accepts it. Another item's late interrupt would come before.
                counts["quick items failed"] += 1
            why = judge_limited(records[i], got)
            if why:
                wrong.append(f"item {i} (ran {runs[i] * 1000:.0f} ms): {why}")
        replaced = pool.stats().workers_replaced
        if replaced:
            wrong.append(f"{replaced} workers replaced")
    return counts, wrong

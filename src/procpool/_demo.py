"""``python -m procpool demo``: a real parallel job, one crash and one time-out."""

from __future__ import annotations

import math
import os
import time

from ._errors import TaskTimeoutError, WorkerLostError
from ._pool import Pool


def count_primes(start: int, stop: int) -> int:
    """Count the primes in ``range(start, stop)`` by trial division (pure Python)."""
    count = 0
    for n in range(max(start, 2), stop):
        if n % 2 == 0:
            count += n == 2
            continue
        for d in range(3, math.isqrt(n) + 1, 2):
            if n % d == 0:
                break
        else:
            count += 1
    return count


def crash_worker(start: int, stop: int) -> int:
    """Kill the worker running it, as a segfault or the OOM killer would."""
    os._exit(9)


def hang(start: int, stop: int) -> int:
    """Never finish (until the time limit kills the worker)."""
    time.sleep(3600)
    return 0


def main() -> None:
    """Run the demo and print what happens."""
    limit = 600_000
    step = 10_000
    ranges = [(lo, lo + step) for lo in range(0, limit, step)]
    starts = [lo for lo, _ in ranges]
    stops = [hi for _, hi in ranges]

    print(f"Counting primes below {limit:,} in {len(ranges)} ranges of {step:,}.")
    t0 = time.perf_counter()
    serial = sum(count_primes(lo, hi) for lo, hi in ranges)
    serial_time = time.perf_counter() - t0
    print(f"  serial:   {serial:,} primes in {serial_time:.2f} s")

    with Pool() as pool:
        pool.submit(count_primes, 0, 10).result()  # workers are up: time the work only
        # The report at the end counts the demo's own tasks, not this warm-up one.
        before = pool.stats()
        t0 = time.perf_counter()
        parallel = sum(pool.map(count_primes, starts, stops))
        pool_time = time.perf_counter() - t0
        print(
            f"  procpool: {parallel:,} primes in {pool_time:.2f} s with {pool.workers} workers "
            f"-> speed-up {serial_time / pool_time:.2f}x"
        )
        assert parallel == serial

        print("\nNow one task crashes its worker and one runs past its 1 s time limit:")
        good = [pool.submit(count_primes, lo, hi) for lo, hi in ranges[:6]]
        crashed = pool.submit(crash_worker, 0, 0)
        late = pool.options(timeout=1.0).submit(hang, 0, 0)
        more = [pool.submit(count_primes, lo, hi) for lo, hi in ranges[6:12]]
        try:
            crashed.result()
        except WorkerLostError as exc:
            print(f"  crashed task -> WorkerLostError: {exc}")
        try:
            late.result()
        except TaskTimeoutError as exc:
            print(f"  late task    -> TaskTimeoutError: {exc}")
        results = [f.result() for f in good + more]
        print(f"  the other {len(results)} tasks all arrived: {sum(results):,} primes")
        # Replacements start as soon as the dead workers are reaped (milliseconds).
        deadline = time.monotonic() + 5
        while pool.stats().workers_replaced < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        stats = pool.stats()
        completed = stats.completed - before.completed
        failed = stats.failed - before.failed
        timed_out = stats.timed_out - before.timed_out
        print(
            f"  pool still has {pool.workers} workers "
            f"({stats.workers_replaced} replaced; {completed} tasks completed, "
            f"{failed} failed, {timed_out} of them by its time limit)"
        )

"""Per-task time limits: the worker is killed and replaced, all other tasks go on."""

from __future__ import annotations

import time

import procpool


def nap(seconds: float) -> float:
    """Sleep, then return how long."""
    time.sleep(seconds)
    return seconds


def main() -> None:
    with procpool.Pool(2) as pool:
        # One submission with its own limit.
        slow = pool.options(timeout=0.5).submit(nap, 30)
        quick = [pool.submit(nap, 0.01) for _ in range(5)]
        try:
            slow.result(timeout=60)
        except procpool.TaskTimeoutError as exc:
            print(f"slow task: TaskTimeoutError, also TimeoutError={isinstance(exc, TimeoutError)}")
        print(f"other tasks: {[f.result(timeout=60) for f in quick]}")

    # A pool-wide default for every task.
    with procpool.Pool(2, task_timeout=0.5) as pool:
        futures = [pool.submit(nap, s) for s in (0.01, 30, 0.02)]
        outcomes = [
            "timed out" if isinstance(f.exception(timeout=60), procpool.TaskTimeoutError) else "ok"
            for f in futures
        ]
        print(f"pool-wide task_timeout: {outcomes}")
    stats = pool.stats()  # after the block: every task has ended
    print(
        f"stats: submitted={stats.submitted} completed={stats.completed} timed_out={stats.timed_out}"
    )


if __name__ == "__main__":
    main()

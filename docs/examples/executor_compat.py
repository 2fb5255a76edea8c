"""Code written for concurrent.futures.ProcessPoolExecutor keeps working."""

from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, Executor, as_completed, wait
from concurrent.futures.process import BrokenProcessPool

import procpool


def square(x: int) -> int:
    """Square x (runs in a worker)."""
    return x * x


def crash(code: int) -> int:
    """End the worker process without answering."""
    os._exit(code)


def run_with(executor: Executor) -> list[int]:
    """Code that knows only the Executor interface."""
    futures = [executor.submit(square, i) for i in range(5)]
    done, _ = wait(futures, return_when=FIRST_COMPLETED)
    assert done
    return sorted(f.result() for f in as_completed(futures))


def main() -> None:
    with procpool.Pool(2) as pool:
        print(f"is an Executor: {isinstance(pool, Executor)}")
        print(f"submit + as_completed: {run_with(pool)}")
        print(f"map: {list(pool.map(square, range(5), timeout=60))}")

        # except BrokenProcessPool still catches a dead worker, but only its task fails.
        lost = pool.submit(crash, 3)
        try:
            lost.result(timeout=60)
        except BrokenProcessPool as exc:
            exitcode = exc.exitcode if isinstance(exc, procpool.WorkerLostError) else None
            print(f"dead worker: {type(exc).__name__} exitcode={exitcode}")
        print(f"the pool goes on: {pool.submit(square, 12).result(timeout=60)}")

    pool.shutdown(wait=True, cancel_futures=False)  # as on an Executor; already done here
    print("shut down")


if __name__ == "__main__":
    main()

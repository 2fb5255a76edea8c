"""From one machine to a Ray cluster by changing one line (extra procpool[ray]).

`run(pool)` is the program: it knows only procpool's API. The same function runs on
a local procpool.Pool and on a procpool.RayPool. `RayPool()` starts a Ray instance
on this machine (loopback only, no dashboard) and shuts it down with the pool; on a
cluster, pass its address: `procpool.RayPool("auto")` or `"ray://head:10001"`.
"""

from __future__ import annotations

import time
from concurrent.futures import Executor

import procpool


def square(x: int) -> int:
    """Square x (runs in a worker process, local or on the cluster)."""
    return x * x


def describe(total: int) -> str:
    """Runs in the parent, after the results arrived."""
    return f"sum of squares: {total}"


def stuck(seconds: float) -> float:
    """A task that would run far too long."""
    time.sleep(seconds)
    return seconds


def run(pool: procpool.Pool | procpool.RayPool) -> list[str]:
    """The program: the same calls, whichever pool it is given."""
    first = pool.submit(square, 12).result(timeout=120)
    summary = pool.map(square, range(100)).then(sum).then(describe).result(timeout=120)
    streamed = list(pool.imap(square, range(5)))
    late = pool.options(timeout=0.5).submit(stuck, 60).exception(timeout=120)
    assert isinstance(late, procpool.TaskTimeoutError)
    return [
        f"submit: {first}",
        summary,
        f"imap: {streamed}",
        f"time limit: TaskTimeoutError, worker killed: {late.killed}",
    ]


def main() -> None:
    with procpool.Pool(2) as pool:  # before: local worker processes
        for line in run(pool):
            print(f"local: {line}")

    with procpool.RayPool() as pool:  # after: the same program on Ray
        print(f"is an Executor: {isinstance(pool, Executor)}")
        for line in run(pool):
            print(f"ray: {line}")

    import ray

    print(f"Ray still running after the with-block: {ray.is_initialized()}")


if __name__ == "__main__":
    main()

"""From one machine to a Dask cluster by changing one line (extra procpool[dask]).

`run(pool)` is the program: it knows only procpool's API. The same function runs on
a local procpool.Pool and on a procpool.DaskPool; here the DaskPool gets a small
LocalCluster on this machine, where a real deployment passes "tcp://scheduler:8786".
"""

from __future__ import annotations

from concurrent.futures import Executor

import procpool


def square(x: int) -> int:
    """Square x (runs in a worker process, local or on the cluster)."""
    return x * x


def describe(total: int) -> str:
    """Runs in the parent, after the results arrived."""
    return f"sum of squares: {total}"


def run(pool: procpool.Pool | procpool.DaskPool) -> list[str]:
    """The program: the same calls, whichever pool it is given."""
    first = pool.submit(square, 12).result(timeout=120)
    summary = pool.map(square, range(100)).then(sum).then(describe).result(timeout=120)
    streamed = list(pool.imap(square, range(5)))
    return [f"submit: {first}", summary, f"imap: {streamed}"]


def main() -> None:
    with procpool.Pool(2) as pool:  # before: local worker processes
        for line in run(pool):
            print(f"local: {line}")

    from distributed import LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        procpool.DaskPool(cluster) as pool,
    ):  # after: the same program on Dask
        print(f"is an Executor: {isinstance(pool, Executor)}")
        for line in run(pool):
            print(f"dask: {line}")


if __name__ == "__main__":
    main()

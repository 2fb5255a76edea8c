"""B9: numpy matrix products on 2 workers, with procpool's thread budget and without.

Each task multiplies 600 x 600 matrices four times. With ``threads_per_worker``
left at ``"auto"``, each worker's BLAS gets CPUs ÷ workers threads; with
``threads_per_worker=None`` each BLAS starts one thread per CPU, and the workers
oversubscribe the machine. Both are measured interleaved, in fresh pools (spawn:
each worker imports numpy after its placement), and the report says the ratio.

    python benchmarks/oversubscription.py [--reps N] [--tasks N] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import procpool

sys.path.insert(0, os.path.dirname(__file__))

import workloads


def run(threads: str | None, tasks: int) -> float:
    """Seconds for ``tasks`` matrix products on 2 workers (numpy already loaded)."""
    with procpool.Pool(2, context="spawn", threads_per_worker=threads) as pool:  # type: ignore[arg-type]
        pool.map(workloads.matmul, range(2), chunksize=1).result()
        start = time.perf_counter()
        pool.map(workloads.matmul, range(tasks), chunksize=1).result()
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=6)
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--out", default="benchmarks/results/oversubscription.md")
    args = parser.parse_args()
    times: dict[str, list[float]] = {"auto": [], "None": []}
    for _ in range(args.reps):
        times["auto"].append(run("auto", args.tasks))
        times["None"].append(run(None, args.tasks))
    auto, none = statistics.median(times["auto"]), statistics.median(times["None"])
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [
        "# B9: BLAS threads in workers (procpool's thread budget)",
        "",
        f"{args.tasks} tasks of four 600 x 600 matrix products, 2 workers, spawn, {cpus} CPUs, "
        f"{args.reps} interleaved repetitions (median, and lowest-highest).",
        "",
        "| threads_per_worker | seconds |",
        "| --- | --- |",
        f'| `"auto"` (default) | {auto:.2f} ({min(times["auto"]):.2f}-{max(times["auto"]):.2f}) |',
        f"| `None` (each BLAS one thread per CPU) | {none:.2f} ({min(times['None']):.2f}-{max(times['None']):.2f}) |",
        "",
        f"The default is {none / auto:.1f}x as fast.",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

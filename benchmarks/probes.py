"""Two probes behind the breakdowns in notes.md (issue 24): where B2's and B7's time goes.

``python benchmarks/probes.py b2`` runs B2's map (32 tasks of ~50 ms, fork, 2
workers) on procpool and on ``multiprocessing.Pool``, alternated, and lays each
worker's tasks on one time line: the map's time is half the sum of the tasks'
times, the gaps between a worker's tasks, and the tail (how much later one
worker ends than the other).

``python benchmarks/probes.py b6`` does the same with B6's 64 tasks (6 of 150 ms
among 58 of 5-25 ms, in B6's order). Both also time two bare processes spinning
at once against one alone: what running in parallel costs on this machine, with
no pool at all.

``python benchmarks/probes.py b7`` runs B7 (imap over 2,000,000 ints, chunks of
1,000) as ``make bench`` does and prints, per run, the CPU time of each thread of
the parent during the loop (``/proc/self/task/*/schedstat``): whether the
consumer's thread is the whole cost, or another thread takes the GIL from it.

``--src PATH`` measures the procpool in PATH (a ``src`` folder) instead of the
installed one. Linux only (``schedstat``); figures depend on the machine's load.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TASKS = 32


def _b2_once(kind: str, iters: list[int]) -> dict[str, float]:
    import workloads

    if kind == "procpool":
        import procpool

        with procpool.Pool(2, context="fork") as pool:
            pool.submit(workloads.noop, 0).result()  # as measure.py warms up
            t0 = time.perf_counter()
            out = pool.map(workloads.timed_spin, iters).result()
            t1 = time.perf_counter()
    else:
        with multiprocessing.get_context("fork").Pool(2) as mp_pool:
            mp_pool.apply(workloads.noop, (0,))
            t0 = time.perf_counter()
            out = mp_pool.map(workloads.timed_spin, iters)
            t1 = time.perf_counter()
    by_pid: dict[int, list[tuple[float, float]]] = {}
    for pid, start, end, _ in out:
        by_pid.setdefault(pid, []).append((start, end))
    ends, gaps = [], 0.0
    for spans in by_pid.values():
        spans.sort()
        gaps += sum(spans[i + 1][0] - spans[i][1] for i in range(len(spans) - 1))
        ends.append(spans[-1][1])
    return {
        "map": t1 - t0,
        "tasks": sum(end - start for _, start, end, _ in out),
        "cpu": sum(cpu for *_, cpu in out),
        "gaps": gaps,
        "tail": max(ends) - min(ends),
        "uneven": float(len({len(s) for s in by_pid.values()}) > 1 or len(by_pid) < 2),
    }


def _parallel_slowdown(iters: int, rounds: int = 16) -> float:
    """How much slower each of two bare processes spins than one alone (no pool)."""
    import os

    import workloads

    def run(count: int) -> float:
        read, write = os.pipe()
        pids = []
        for _ in range(count):
            pid = os.fork()
            if pid == 0:
                t0 = time.perf_counter()
                for _ in range(rounds):
                    workloads.spin(iters)
                os.write(write, f"{time.perf_counter() - t0}\n".encode())
                os._exit(0)
            pids.append(pid)
        for pid in pids:
            os.waitpid(pid, 0)
        os.close(write)
        times = [float(x) for x in os.read(read, 4096).split()]
        os.close(read)
        return max(times)

    one, two = [], []
    for _ in range(4):
        one.append(run(1))
        two.append(run(2))
    return statistics.median(two) / statistics.median(one)


def b2(reps: int, workload: str = "b2") -> None:
    import workloads

    per_second = workloads.calibrate_spin(1.0)
    if workload == "b2":
        iters = [int(per_second * 0.05)] * TASKS
        title = f"B2 timeline: {TASKS} tasks of ~50 ms"
    else:
        import run

        iters = [int(per_second * d) for d in run.b6_durations(run.FULL)]
        title = "B6 timeline: B6's 64 tasks of 5-150 ms, in B6's order"
    slowdown = _parallel_slowdown(int(per_second * 0.05))
    runs: dict[str, list[dict[str, float]]] = {"procpool": [], "mp.Pool": []}
    for rep in range(reps):
        order = ["procpool", "mp.Pool"] if rep % 2 == 0 else ["mp.Pool", "procpool"]
        for kind in order:
            runs[kind].append(_b2_once(kind, iters))
    print(f"{title}, fork, 2 workers; medians of {reps} (ms)")
    for kind, rows in runs.items():
        med = {k: statistics.median(r[k] for r in rows) * 1e3 for k in rows[0] if k != "uneven"}
        uneven = int(sum(r["uneven"] for r in rows))
        print(
            f"  {kind:9} map {med['map']:7.1f}  tasks {med['tasks']:7.1f} (CPU {med['cpu']:7.1f})"
            f"  gaps {med['gaps']:5.1f}  tail {med['tail']:5.1f}  uneven splits {uneven}/{reps}"
            f"  map / (tasks / 2) {2 * med['map'] / med['tasks']:.3f}"
        )
    print(f"  two bare processes spinning at once: each {slowdown:.3f}x the time of one alone")


def _thread_cpu_ms() -> dict[str, float]:
    out = {}
    for thread in threading.enumerate():
        try:
            with open(f"/proc/self/task/{thread.native_id}/schedstat") as f:
                out[thread.name] = int(f.read().split()[0]) / 1e6
        except OSError:
            pass
    return out


def b7(reps: int) -> None:
    import contenders
    import measure

    spec = {"workload": "B7", "method": "fork", "n": 2_000_000, "chunksize": 1000}
    spec["buffersize"] = 10_000
    seen: dict[str, Any] = {}
    start_rss, end_rss = measure._PeakRss.__init__, measure._PeakRss.growth_mb

    # The loop's clock starts just after _PeakRss() and stops at growth_mb().
    def started(self: Any) -> None:
        start_rss(self)
        seen["cpu"], seen["t"] = _thread_cpu_ms(), time.perf_counter()

    def stopped(self: Any) -> float:
        seen["wall"] = (time.perf_counter() - seen["t"]) * 1e3
        after = _thread_cpu_ms()
        seen["threads"] = {k: v - seen["cpu"].get(k, 0.0) for k, v in after.items()}
        return end_rss(self)

    measure._PeakRss.__init__ = started  # type: ignore[method-assign]
    measure._PeakRss.growth_mb = stopped  # type: ignore[method-assign]
    print("B7, procpool: the loop's wall time and each parent thread's CPU in it (ms)")
    for _ in range(reps):
        measure.b7_imap(contenders.Procpool(), spec)
        threads = "  ".join(f"{k} {v:.1f}" for k, v in seen["threads"].items() if v >= 0.05)
        print(f"  wall {seen['wall']:6.1f}  {threads}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("probe", choices=["b2", "b6", "b7"])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--src", help="measure the procpool in this src folder")
    args = parser.parse_args()
    if args.src:
        sys.path.insert(0, str(Path(args.src).resolve()))
    sys.path.insert(0, str(HERE))
    if args.probe == "b7":
        b7(args.reps)
    else:
        b2(args.reps, args.probe)


if __name__ == "__main__":
    main()

"""How late the grace-period interrupt comes, and whether a task past its limit returns.

Issue 22, item 3. Tasks that mix short system calls with Python work (write a line
to a file, compute about 1 ms, and again) get a time limit and a grace period and
would run several times their limit. Each must fail with ``TaskTimeoutError``
(``killed=False``); none may return a result. Each task writes down, from its
``except BaseException``, how long after its deadline the interrupt came: the
script reports that distribution, and counts the outcomes.

Usage (runs against whatever ``procpool`` this interpreter imports)::

    python tests/scripts/interrupt_lateness.py                 # every start method, 0 and 2 burners
    python tests/scripts/interrupt_lateness.py --tasks 150 --methods fork --burners 2
    python tests/scripts/interrupt_lateness.py --json          # one JSON object per run

Options: ``--tasks N`` (per run, default 150), ``--methods fork,spawn,forkserver``,
``--burners 0,2`` (CPU-spinning processes during the run), ``--limit 0.05``
(seconds), ``--factors 2,3,4,5,6`` (how many times its limit each task would run,
in turn), ``--grace 1.0``, ``--workers 2``, ``--compute-ms 1.0``.
Exit code 0 whatever the numbers; 1 if a run could not be made.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import edge_helpers as eh
import procpool


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def run(
    method: str,
    burners: int,
    tasks: int,
    limit: float,
    factors: list[float],
    grace: float,
    workers: int,
    compute_ms: float,
    out_path: str = "",
) -> dict[str, Any]:
    """One run: ``tasks`` tasks under ``method`` with ``burners`` CPU burners."""
    with tempfile.TemporaryDirectory(prefix="lateness-") as folder:
        out = out_path or os.path.join(folder, "out")
        record = os.path.join(folder, "record")
        counts = {"returned": 0, "interrupted": 0, "killed": 0, "other": 0}
        returned_past_2x = 0
        others: list[str] = []
        started = time.monotonic()
        with eh.cpu_burners(burners), procpool.Pool(workers, context=method) as pool:  # type: ignore[arg-type]
            limited = pool.options(timeout=limit, grace=grace)
            runs = [factors[i % len(factors)] * limit for i in range(tasks)]
            futures = [
                limited.submit(eh.io_and_compute, out, record, limit, run_for, compute_ms)
                for run_for in runs
            ]
            for fut, run_for in zip(futures, runs, strict=True):
                try:
                    fut.result(timeout=120)
                except procpool.TaskTimeoutError as exc:
                    counts["killed" if exc.killed else "interrupted"] += 1
                except Exception as exc:
                    counts["other"] += 1
                    others.append(f"{type(exc).__name__}: {exc}"[:200])
                else:
                    counts["returned"] += 1
                    if run_for >= 2 * limit:
                        returned_past_2x += 1
            stats = pool.stats()
        took = time.monotonic() - started
        lateness: list[float] = []
        interrupted_past_2x = 0
        for line in eh.read_records(record):
            how, seconds, run_for = line.split()
            if how != "returned":
                lateness.append(float(seconds))
                interrupted_past_2x += float(run_for) >= 2 * limit
        # A task records the interrupt in its ``except BaseException`` when it comes
        # during its work; one that records nothing, or "returned", ran to the end
        # of its work (the interrupt came after it, or never), although its
        # deadline was at least one limit before that end.
        tasks_past_2x = sum(1 for f in runs if f >= 2 * limit)
        ran_to_end_past_2x = tasks_past_2x - interrupted_past_2x
    return {
        "method": method,
        "burners": burners,
        "tasks": tasks,
        "limit": limit,
        "grace": grace,
        "factors": factors,
        **counts,
        "returned_past_2x": returned_past_2x,
        "tasks_past_2x": tasks_past_2x,
        "interrupts_recorded": len(lateness),
        "lateness_ms": {
            "max": 1000 * max(lateness, default=float("nan")),
            "p50": 1000 * _percentile(lateness, 50),
            "p90": 1000 * _percentile(lateness, 90),
            "p99": 1000 * _percentile(lateness, 99),
        },
        "ran_to_end_past_2x": ran_to_end_past_2x,
        "workers_replaced": stats.workers_replaced,
        "timed_out": stats.timed_out,
        "others": others[:5],
        "seconds": round(took, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=150)
    parser.add_argument(
        "--methods",
        default=",".join(
            m
            for m in ("fork", "spawn", "forkserver")
            if m in multiprocessing.get_all_start_methods()
        ),
    )
    parser.add_argument("--burners", default="0,2")
    parser.add_argument("--limit", type=float, default=0.05)
    parser.add_argument("--factors", default="2,3,4,5,6")
    parser.add_argument("--grace", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--compute-ms", type=float, default=1.0)
    parser.add_argument(
        "--out", default="", help="where tasks write their lines (default: a temporary file)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per run")
    args = parser.parse_args()
    factors = [float(f) for f in args.factors.split(",")]
    print(f"procpool {procpool.__version__} from {os.path.dirname(procpool.__file__)}", flush=True)
    for method in args.methods.split(","):
        for burners in (int(b) for b in args.burners.split(",")):
            try:
                report = run(
                    method,
                    burners,
                    args.tasks,
                    args.limit,
                    factors,
                    args.grace,
                    args.workers,
                    args.compute_ms,
                    args.out,
                )
            except Exception as exc:
                print(f"{method} burners={burners}: run failed: {exc!r}", flush=True)
                return 1
            if args.json:
                print(json.dumps(report), flush=True)
                continue
            late = report["lateness_ms"]
            print(
                f"{method:10} burners={burners}: past 2x their limit and returned a result: "
                f"{report['returned_past_2x']} of {report['tasks_past_2x']}; ran to their end "
                f"(never interrupted): {report['ran_to_end_past_2x']}; "
                f"interrupted {report['interrupted']}, killed {report['killed']}, "
                f"other {report['other']}; interrupt lateness ms: "
                f"p50 {late['p50']:.1f} p90 {late['p90']:.1f} p99 {late['p99']:.1f} "
                f"max {late['max']:.1f} (of {report['interrupts_recorded']}); "
                f"workers replaced {report['workers_replaced']}; {report['seconds']} s",
                flush=True,
            )
            for other in report["others"]:
                print(f"    other: {other}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

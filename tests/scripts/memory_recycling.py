"""100 calls that each keep 50 MiB alive in their worker, under a memory limit.

Usage: python memory_recycling.py START_METHOD LIMIT_MIB [CALLS]
Prints JSON: one [pid, resident bytes after the call] per call, in order, and the
pool's stats. LIMIT_MIB 0: no limit (the workers only grow).
"""

if __name__ == "__main__":
    import json
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

    import helpers
    import procpool

    method, limit = sys.argv[1], int(sys.argv[2])
    calls = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    with procpool.Pool(
        2,
        context=method,  # type: ignore[arg-type]
        max_memory_per_worker=f"{limit} MiB" if limit else None,
    ) as pool:
        futures = [pool.submit(helpers.retain_mb, 50) for _ in range(calls)]
        readings = [f.result(timeout=120) for f in futures]
    stats = pool.stats()
    print(
        json.dumps(
            {
                "readings": readings,
                "recycled": stats.recycled,
                "replaced": stats.workers_replaced,
                "completed": stats.completed,
            }
        )
    )

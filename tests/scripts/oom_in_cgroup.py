"""Run a pool inside a memory-limited cgroup; one task allocates past the limit.

Usage: python oom_in_cgroup.py START_METHOD CGROUP_PROCS_FILE
Moves itself into the cgroup (so its workers start there), then prints the
WorkerLostError's cause and message as JSON.
"""

if __name__ == "__main__":
    import json
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    with open(sys.argv[2], "w") as f:
        f.write(str(os.getpid()))

    import helpers
    import procpool

    with procpool.Pool(1, context=sys.argv[1]) as pool:  # type: ignore[arg-type]
        error = pool.submit(helpers.allocate_mb, 1024).exception(timeout=120)
        after = pool.submit(helpers.square, 7).result(timeout=60)
    print(
        json.dumps(
            {
                "type": type(error).__name__,
                "cause": getattr(error, "cause", None),
                "message": str(error),
                "after": after,
            }
        )
    )

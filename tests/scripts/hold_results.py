"""Collect and hold N array results (each in shared memory) under a low descriptor limit.

Usage: python hold_results.py START_METHOD N FD_LIMIT
Prints "HELD <n> FDS <open descriptors>" as JSON-free text, or the error.
"""

from __future__ import annotations

import os
import resource
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import arrays
import procpool

if __name__ == "__main__":
    method, count, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    with procpool.Pool(2, context=method) as pool:  # type: ignore[arg-type]
        held = list(pool.map(arrays.make, range(count), [2] * count, chunksize=1))
        assert all(float(a[0]) == i for i, a in enumerate(held))
        print(f"HELD {len(held)} FDS {len(os.listdir('/proc/self/fd'))}", flush=True)

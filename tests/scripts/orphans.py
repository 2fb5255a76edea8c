"""Start busy pool workers and spawned processes, print their pids, then wait to be killed.

Usage: python orphans.py START_METHOD
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import arrays
import helpers
import procpool

if __name__ == "__main__":
    pool = procpool.Pool(2, context=sys.argv[1])  # type: ignore[arg-type]
    pids = {f.result() for f in [pool.submit(helpers.getpid_after, 0.3) for _ in range(4)]}
    # Large arguments: their shared segments must not outlive the killed parent.
    busy = [pool.submit(arrays.sleep_with, arrays.make(i), 600) for i in range(2)]
    handles = [procpool.spawn(helpers.sleep_then, 600) for _ in range(2)]
    pids |= {h.pid for h in handles if h.pid is not None}
    time.sleep(0.3)
    print(" ".join(str(p) for p in sorted(pids)), flush=True)
    time.sleep(600)

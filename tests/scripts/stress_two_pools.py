"""Two pools open at once; print what the second pool's tasks printed, via the pipe.

Usage: python stress_two_pools.py START_METHOD

Pool A stays open while pool B is created, used and closed. B's workers print a
line each without flushing: the lines reach our stdout only if B's workers exit by
themselves when B closes (multiprocessing flushes a process's streams when it
ends). A worker that cannot exit is killed after the pool's grace period, and its
buffered line is lost.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import helpers
import procpool
import stress_helpers as sh


def main() -> None:
    method = sys.argv[1]
    sys.stdout.flush()  # nothing buffered here may be copied into forked workers
    a = procpool.Pool(1, context=method)  # type: ignore[arg-type]
    assert a.submit(helpers.square, 2).result() == 4
    with procpool.Pool(2, context=method) as b:  # type: ignore[arg-type]
        pids = {b.submit(sh.say, f"line {i} from pool b").result() for i in range(20)}
    print(f"POOL B USED {len(pids)} WORKERS", flush=True)
    a.close()
    a.join()


if __name__ == "__main__":
    main()

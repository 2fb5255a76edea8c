"""Run many pool lifecycles and spawn calls; print resource counts before and after as JSON.

Usage: python lifecycles.py START_METHOD POOLS SPAWNS
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import helpers
import procpool
import stress_helpers


def shm_entries() -> set[str]:
    """The /dev/shm entries this process may have made.

    multiprocessing's named semaphores (sem.mp-*) and segments (psm_*) carry no pid:
    an entry another program maps or holds open (a concurrent test run) is not ours.
    """
    if not os.path.isdir("/dev/shm"):
        return set()
    mine = (f"pym-{os.getpid()}-", f"procpool-{os.getpid()}-")
    family = set(stress_helpers.descendants()) | {os.getpid()}
    return {
        n
        for n in os.listdir("/dev/shm")
        if n.startswith(mine)
        or (n.startswith(("sem.mp-", "psm_")) and not stress_helpers.mapped_elsewhere(n, family))
    }


def counts() -> dict[str, int]:
    gc.collect()
    return {
        "children": helpers.count_children(),
        "threads": threading.active_count(),
        "fds": len(os.listdir("/proc/self/fd")),
    }


def one_lifecycle(method: str, i: int) -> None:
    kind = i % 3
    if kind == 0:
        with procpool.Pool(2, context=method) as pool:  # type: ignore[arg-type]
            assert pool.submit(helpers.square, i).result() == i * i
    elif kind == 1:
        try:
            with procpool.Pool(2, context=method) as pool:  # type: ignore[arg-type]
                pool.submit(helpers.sleep_then, 10)
                raise KeyError(i)
        except KeyError:
            pass
    else:
        pool = procpool.Pool(2, context=method)  # type: ignore[arg-type]
        fut = pool.map(helpers.square, range(10))
        pool.terminate()
        pool.join()
        assert fut.done()


def main() -> None:
    method, pools, spawns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    # Warm up: the first pool starts the forkserver and allocates the shared
    # heap arena that multiprocessing keeps for the life of the process.
    one_lifecycle(method, 0)
    procpool.spawn(helpers.square, 1).result()
    time.sleep(0.2)
    before = counts()
    shm_before = shm_entries()
    started = time.perf_counter()
    for i in range(pools):
        one_lifecycle(method, i)
    for i in range(spawns):
        handle = procpool.spawn(helpers.square, i)
        assert handle.result() == i * i
        handle.join()
    elapsed = time.perf_counter() - started
    time.sleep(0.3)
    after = counts()
    # Names, not counts: entries of other programs come and go meanwhile.
    new_shm = sorted(shm_entries() - shm_before)
    print(json.dumps({"before": before, "after": after, "new_shm": new_shm, "seconds": elapsed}))


if __name__ == "__main__":
    main()

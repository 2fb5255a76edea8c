"""Submit 20,000 tasks with 8 KiB arguments and results; print the parent's memory as JSON.

Usage: python stress_rss.py START_METHOD COUNT

The tasks run through a window of at most 64 futures in flight; each finished
future is checked and dropped. If the pool kept finished futures, their results or
their pickled arguments, the parent would grow by about COUNT * 16 KiB (300 MiB for
20,000). A sample of futures is watched through weak references: once dropped, none
may stay alive.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import weakref
from collections import deque

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import procpool
import stress_helpers as sh

PAYLOAD = 8 * 1024
WINDOW = 64


def run(pool: procpool.Pool, start: int, count: int, refs: list[weakref.ref[object]]) -> None:
    in_flight: deque[tuple[int, procpool.Future[bytes]]] = deque()
    for i in range(start, start + count):
        in_flight.append((i, pool.submit(sh.echo_blob, sh.blob(i, PAYLOAD))))
        if i % 200 == 0:
            refs.append(weakref.ref(in_flight[-1][1]))
        if len(in_flight) >= WINDOW:
            j, fut = in_flight.popleft()
            assert fut.result(timeout=120) == bytes(reversed(sh.blob(j, PAYLOAD)))
            del fut
    while in_flight:
        j, fut = in_flight.popleft()
        assert fut.result(timeout=120) == bytes(reversed(sh.blob(j, PAYLOAD)))
        del fut


def main() -> None:
    method, count = sys.argv[1], int(sys.argv[2])
    warm_up = count // 10
    refs: list[weakref.ref[object]] = []
    samples: list[int] = []
    with procpool.Pool(2, context=method) as pool:  # type: ignore[arg-type]
        # Warm-up: the allocator's arenas, the pool's buffers and caches reach their size.
        run(pool, 0, warm_up, [])
        gc.collect()
        base = sh.rss_bytes()
        step = count // 10
        for k in range(10):
            run(pool, warm_up + k * step, step, refs)
            gc.collect()
            samples.append(sh.rss_bytes() - base)
        alive = sum(ref() is not None for ref in refs)
        stats = pool.stats()
    print(
        json.dumps(
            {
                "base_mib": round(base / 2**20, 1),
                "growth_mib": [round(s / 2**20, 2) for s in samples],
                "watched": len(refs),
                "alive": alive,
                "submitted": stats.submitted,
                "completed": stats.completed,
            }
        )
    )


if __name__ == "__main__":
    main()

"""Cancel RayPool futures at random moments: every future must end, none hang.

Run by tests/test_ray.py in a fresh interpreter with a Ray instance of its own:
Ray 2.60 can abort the whole driver process when a cancel meets a task's end
(ray-project/ray#54798), and the test session must survive that to report it.
Prints one JSON report on its last line.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: dask_helpers

import dask_helpers as h
import procpool


def main() -> None:
    with procpool.RayPool() as pool:
        futures = [pool.submit(h.sleep_then, 0.002 * (i % 5), i) for i in range(120)]
        for i, fut in enumerate(futures):
            if i % 2:
                time.sleep(0.001 * (i % 7))
                fut.cancel()
    report = {
        "all_done": all(f.done() for f in futures),
        "wrong": [
            i for i, f in enumerate(futures) if not f.cancelled() and f.exception() is not None
        ],
        "results_right": all(f.cancelled() or f.result() == i for i, f in enumerate(futures)),
        "cancelled": sum(f.cancelled() for f in futures),
        "left": repr(pool),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()

"""Busy pool inside a with-block, for the Ctrl-C test: prints READY, then waits.

Usage: python interrupt.py START_METHOD [inside|at-end]

``inside`` (the default) waits on the futures inside the block; ``at-end`` leaves
the block at once, so the wait is the one the block does when it closes.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import helpers
import procpool

if __name__ == "__main__":
    where = sys.argv[2] if len(sys.argv) > 2 else "inside"
    with procpool.Pool(2, context=sys.argv[1]) as pool:  # type: ignore[arg-type]
        pool.map(helpers.square, range(4)).result()
        futures = [pool.submit(helpers.burn, 60_000) for _ in range(4)]
        helpers.wait_for(lambda: sum(f.running() for f in futures) == 2)
        print("READY", flush=True)
        if where == "inside":
            for fut in futures:
                fut.result()

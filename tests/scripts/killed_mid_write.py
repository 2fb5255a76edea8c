"""A pool whose worker writes a 300 MB result to shared memory; the test kills this process.

Usage: python killed_mid_write.py START_METHOD
Prints READY once the pool runs; the big result is being written from then on.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import arrays
import procpool

if __name__ == "__main__":
    with procpool.Pool(1, context=sys.argv[1]) as pool:  # type: ignore[arg-type]
        pool.submit(arrays.make, 0, 1).result()  # the worker is up
        print("READY", flush=True)
        while True:
            pool.submit(arrays.make, 1, 300).result()
            time.sleep(0.05)

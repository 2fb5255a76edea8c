"""Leaves the interpreter with a pool still open and work queued.

Usage: python exit_open.py START_METHOD PATH -- each task appends a line to PATH.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import helpers
import procpool

if __name__ == "__main__":
    pool = procpool.Pool(1, context=sys.argv[1])  # type: ignore[arg-type]
    pool.submit(helpers.sleep_then, 0.3)  # the rest waits in the queue behind it
    for i in range(3):
        pool.submit(helpers.append_line, sys.argv[2], f"task {i}")
    print("SUBMITTED", flush=True)
    # No close(), no with-block: the end of the program must still run them.

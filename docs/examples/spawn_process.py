"""multiprocessing.Process(target=...) -> procpool.spawn.

The handle has Process's controls (pid, join, is_alive, terminate, exitcode) and is
also a future: result() returns what the function returned.
"""

from __future__ import annotations

import os
import time

import procpool


def total(n: int, *, scale: int = 1) -> int:
    """Add up range(n), times scale (runs in the child)."""
    return sum(range(n)) * scale


def fail(message: str) -> None:
    """Raise in the child; the parent gets the same exception type back."""
    raise ValueError(message)


def main() -> None:
    handle = procpool.spawn(total, 10, scale=2)  # ProcessHandle[int], already started
    handle.join(timeout=60)
    print(f"child pid differs from ours: {handle.pid != os.getpid()}")
    print(f"alive after join: {handle.is_alive()}")
    print(f"exitcode: {handle.exitcode}")
    print(f"result: {handle.result()}")

    failing = procpool.spawn(fail, "bad input")
    try:
        failing.result(timeout=60)
    except ValueError as exc:
        print(f"child raised: {exc!r}")

    sleeper = procpool.spawn(time.sleep, 60)
    sleeper.terminate()
    sleeper.join(timeout=60)
    print(f"terminated, alive: {sleeper.is_alive()}")
    try:
        sleeper.result(timeout=60)
    except procpool.WorkerLostError:
        print("terminated handle fails with WorkerLostError")


if __name__ == "__main__":
    main()

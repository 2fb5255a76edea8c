"""Cancel a task that is already running: its worker is stopped and replaced.

concurrent.futures can only cancel tasks that have not started; procpool stops a
running one too, and the future reports cancelled. Work that no worker has
started yet stays in the parent, so cancelling it costs nothing.
"""

from __future__ import annotations

import time

import procpool


def nap(seconds: float) -> float:
    """Sleep, then return how long."""
    time.sleep(seconds)
    return seconds


def wait_until_running(fut: procpool.Future[float]) -> None:
    """Wait (at most 60 s) until a worker has picked the task up."""
    deadline = time.monotonic() + 60
    while not fut.running() and not fut.done() and time.monotonic() < deadline:
        time.sleep(0.01)


def main() -> None:
    start = time.monotonic()
    with procpool.Pool(1) as pool:
        running = pool.submit(nap, 30)
        wait_until_running(running)
        print(f"running before cancel: {running.running()}")
        print(f"cancel() of a running task: {running.cancel()}")
        print(f"cancelled: {running.cancelled()}")
        print(f"the pool goes on: {pool.submit(nap, 0.01).result(timeout=60)}")
    print(f"did not wait for the 30 s task: {time.monotonic() - start < 25}")
    print(f"stats: cancelled={pool.stats().cancelled}")


if __name__ == "__main__":
    main()

"""Pool close() / join() / terminate() -> the with block (or the same methods)."""

from __future__ import annotations

import time
from concurrent.futures import CancelledError

import procpool


def slow_square(x: int) -> int:
    """Square x after a short nap."""
    time.sleep(0.05)
    return x * x


def main() -> None:
    # Leaving the block normally is close() + join(): every task finishes.
    with procpool.Pool() as pool:  # one worker per CPU this process may use
        futures = [pool.submit(slow_square, i) for i in range(8)]
    print(f"with block: all done={all(f.done() for f in futures)}")
    print(f"with block: results={[f.result() for f in futures]}")

    # The same, by hand.
    pool = procpool.Pool(2)
    futures = [pool.submit(slow_square, i) for i in range(4)]
    pool.close()  # no new work; queued work still runs
    try:
        pool.submit(slow_square, 99)
    except procpool.PoolClosedError as exc:
        print(f"after close: PoolClosedError, also RuntimeError={isinstance(exc, RuntimeError)}")
    pool.join(timeout=60)
    print(f"close+join: results={[f.result() for f in futures]}")

    # terminate(): stop now; every unfinished future ends, none hangs.
    pool = procpool.Pool(2)
    futures = [pool.submit(time.sleep, 30) for _ in range(4)]
    pool.terminate()
    pool.join(timeout=60)
    ended = 0
    for fut in futures:
        try:
            fut.result(timeout=10)
        except (CancelledError, procpool.ProcpoolError):
            ended += 1
    print(f"terminate: {ended} of {len(futures)} futures ended without a result")

    # Leaving the block by an exception means terminate(), then the exception goes on.
    try:
        with procpool.Pool(2) as pool:
            sleeper = pool.submit(time.sleep, 30)
            raise KeyError("stop")
    except KeyError:
        print(f"exception in block: sleeper done={sleeper.done()}")


if __name__ == "__main__":
    main()

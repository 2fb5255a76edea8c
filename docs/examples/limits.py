"""Workers that grow, time limits that let a task clean up, and why a worker died."""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path

import procpool

_cache: list[bytearray] = []


def leaky_step(x: int) -> int:
    """A task that keeps 30 MiB alive for good, as a leaking C extension would."""
    _cache.append(bytearray(b"\x01") * (30 * 2**20))
    return os.getpid()


def export(path: str) -> str:
    """A slow task that must remove its temporary file, however it ends."""
    scratch = Path(path)
    scratch.write_text("half-written")
    try:
        time.sleep(60)
        return "exported"
    finally:
        scratch.unlink()  # runs when the time limit interrupts the task


def nap(pid_file: str) -> None:
    """Say which process runs this, then sleep."""
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(30)


def main() -> None:
    # Replace a worker once it holds more than 150 MiB after a task.
    with procpool.Pool(1, max_memory_per_worker="150 MiB") as pool:
        pids = [pool.submit(leaky_step, i).result() for i in range(8)]
        print(f"8 leaky tasks ran in {len(set(pids))} workers")
    print(f"workers recycled for memory: {pool.stats().recycled}")

    # At 0.5 s the task gets TimeLimitInterrupt raised inside it; its finally block
    # runs. Had it not stopped within the 5 s grace period, it would have been killed.
    scratch = Path(tempfile.mkdtemp()) / "export.tmp"
    with procpool.Pool(1) as pool:
        late = pool.options(timeout=0.5, grace=5).submit(export, str(scratch))
        try:
            late.result()
        except procpool.TaskTimeoutError as exc:
            print(f"timed out, killed: {exc.killed}; temporary file left: {scratch.exists()}")

        # A worker that dies says why, in one word.
        pid_file = scratch.with_name("pid")
        victim = pool.submit(nap, str(pid_file))
        while not pid_file.exists() or not pid_file.read_text():
            time.sleep(0.01)
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
        try:
            victim.result()
        except procpool.WorkerLostError as exc:
            print(f"lost: cause={exc.cause} exitcode={exc.exitcode}")


if __name__ == "__main__":
    main()

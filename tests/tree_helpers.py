"""Tasks that start programs of their own (tests/test_tree.py): a process tree under a worker."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path


def _grandchild(path: str) -> None:
    """A multiprocessing child of the task that starts a program of its own."""
    sleeper = subprocess.Popen(["sleep", "1000"])
    with open(path, "a") as out:
        out.write(f"{os.getpid()}\n{sleeper.pid}\n")
    time.sleep(1000)


def start_tree(path: str, seconds: float = 1000.0) -> int:
    """Start ``sleep 1000``, a shell pipeline, and a multiprocessing child that starts
    another ``sleep``; write every pid to ``path`` (one a line); then sleep."""
    sleeper = subprocess.Popen(["sleep", "1000"])
    pipeline = subprocess.Popen(["sh", "-c", "sleep 1000 | cat"])
    # fork: the task's own child, whatever start method its worker was started with.
    child = multiprocessing.get_context("fork").Process(target=_grandchild, args=(path,))
    child.start()
    with open(path, "a") as out:
        out.write(f"{sleeper.pid}\n{pipeline.pid}\n{child.pid}\n")
    time.sleep(seconds)
    return os.getpid()


def tree_pids(path: str, expected: int = 5) -> list[int]:
    """The pids ``start_tree`` wrote, once all ``expected`` of them are there."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        lines = Path(path).read_text().split() if Path(path).exists() else []
        if len(lines) >= expected:
            return [int(p) for p in lines]
        time.sleep(0.05)
    raise AssertionError(f"the task wrote only {Path(path).read_text()!r}")


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


if __name__ == "__main__":  # pragma: no cover - used by test_tree's parent-death test
    import procpool

    pool = procpool.Pool(1, context=sys.argv[1])  # type: ignore[arg-type]
    pool.submit(start_tree, sys.argv[2])
    tree_pids(sys.argv[2])
    print("ready", flush=True)
    time.sleep(1000)

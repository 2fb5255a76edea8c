"""Top-level helpers for tests/test_stress.py: task functions workers import by name,
and /proc readers that find a pool's processes from the outside.

Kept apart from helpers.py so that the stress suite and the other test modules can
change their helpers independently; only the /proc process table is helpers.py's
(``helpers.count_children`` reads it too).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from typing import Any

from helpers import process_table

# -- /proc: processes seen from outside ---------------------------------------------------


def descendants(root: int | None = None) -> dict[int, str]:
    """Every process below ``root`` (default: this one), grandchildren included,
    as ``pid -> state`` (``"Z"`` for a zombie). Under forkserver the workers are
    children of the server process, so children alone would miss them."""
    root = os.getpid() if root is None else root
    table = process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, str] = {}
    todo = list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        if pid in found or pid not in table:
            continue
        found[pid] = table[pid][1]
        todo.extend(children.get(pid, ()))
    return found


def cmdline(pid: int) -> str:
    """A process's command line with spaces for NULs ("" if it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def is_multiprocessing_helper(pid: int) -> bool:
    """True for multiprocessing's own long-lived helpers, children of this process:
    the resource tracker and the forkserver. Never a pool worker (a forkserver's
    workers are the server's children, and they are not our children)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            ppid = int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError):
        return False
    if ppid != os.getpid():
        return False
    line = cmdline(pid)
    return "multiprocessing.resource_tracker" in line or "multiprocessing.forkserver" in line


def live_descendants(exclude: Iterable[int] = ()) -> set[int]:
    """Descendants that are not zombies and not multiprocessing helpers, minus ``exclude``."""
    skip = set(exclude)
    return {
        pid
        for pid, state in descendants().items()
        if state != "Z" and pid not in skip and not is_multiprocessing_helper(pid)
    }


# -- task functions (run in workers) -----------------------------------------------------

_marked_pid = 0


def _mark_worker(marks: str) -> None:
    """Create ``marks/<pid>`` the first time this process runs a task.

    The outside killer only shoots processes that have such a file: a worker that
    has started a task. A pool counts a worker that dies before it began any task
    as a start-up failure and gives up after three in a row (a broken ``__main__``
    under spawn); shooting newborn workers would test that breaker, not the pool.
    """
    global _marked_pid
    pid = os.getpid()
    if _marked_pid != pid:
        with open(os.path.join(marks, str(pid)), "w"):
            pass
        _marked_pid = pid


def tick(marks: str, x: int, ms: float) -> int:
    """Mark this worker, spin ``ms`` milliseconds, return ``3 * x + 1``."""
    _mark_worker(marks)
    if ms:
        end = time.perf_counter() + ms / 1000
        while time.perf_counter() < end:
            pass
    return 3 * x + 1


def tick_item(marks: str, x: int) -> int:
    """A fast map item: mark this worker, return ``3 * x + 1``."""
    _mark_worker(marks)
    return 3 * x + 1


def touch(folder: str, name: str, ms: float = 0.0) -> str:
    """Record that this task started: append the start time (CLOCK_MONOTONIC, which
    every process on the machine shares) to ``folder/name``; then sleep ``ms``."""
    fd = os.open(os.path.join(folder, name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, f"{time.monotonic_ns()}\n".encode())
    finally:
        os.close(fd)
    if ms:
        time.sleep(ms / 1000)
    return name


def touch_item(folder: str, name: str) -> str:
    """``touch`` for map items (one argument tuple per item through ``map``'s zip)."""
    return touch(folder, name)


def started_at(folder: str, name: str) -> list[int]:
    """The start times ``touch`` recorded for ``name`` (empty: it never ran)."""
    try:
        with open(os.path.join(folder, name)) as f:
            return [int(line) for line in f.read().split()]
    except FileNotFoundError:
        return []


def model(x: int) -> int:
    """The stateful test's task, serially: fails for x % 5 == 4, else x * x + 1."""
    if x % 5 == 4:
        raise ValueError(f"model refuses {x}")
    return x * x + 1


def record(folder: str, tid: int, x: int) -> int:
    """``model(x)`` in a worker, after recording that task ``tid`` started; items with
    x % 3 == 0 sleep a few milliseconds so that some tasks are still queued or running
    when the state machine acts."""
    touch(folder, str(tid))
    if x % 3 == 0:
        time.sleep(0.002 + (x % 7) / 1000)
    return model(x)


def record_item(folder: str, tid: int, x: int) -> int:
    """``record`` for map items."""
    return record(folder, tid, x)


def inc(x: int) -> int:
    """x + 1 (a link of a then-chain; runs in the parent)."""
    return x + 1


def blob(i: int, size: int) -> bytes:
    """``size`` bytes, different for each ``i``."""
    return i.to_bytes(8, "little") * (size // 8)


def echo_blob(payload: bytes) -> bytes:
    """A new bytes object as large as ``payload``."""
    return bytes(reversed(payload))


class Box:
    """A result that supports weak references (bytes and ints do not)."""

    __slots__ = ("__weakref__", "payload")

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def __reduce__(self) -> Any:
        return (Box, (self.payload,))


def boxed(i: int) -> Box:
    """A weak-referenceable result of 4 KiB."""
    return Box(blob(i, 4096))


def rss_bytes() -> int:
    """This process's resident set size, from /proc/self/statm."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def open_fds() -> dict[int, str]:
    """This process's open file descriptors and what they point to."""
    found: dict[int, str] = {}
    for entry in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            found[int(entry)] = os.readlink(f"/proc/self/fd/{entry}")
    return found


def os_threads() -> int:
    """Threads of this process as the kernel counts them (C threads included)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


def shm_names() -> set[str]:
    """Entries of /dev/shm that multiprocessing or procpool may create."""
    if not os.path.isdir("/dev/shm"):
        return set()
    return {n for n in os.listdir("/dev/shm") if n.startswith(("procpool-", "sem.mp-", "psm_"))}


def mapped_elsewhere(name: str, family: set[int]) -> bool:
    """Whether a process outside ``family`` maps or holds /dev/shm/``name`` open
    (another program's segment, e.g. a concurrent test run: not ours to count)."""
    path = f"/dev/shm/{name}"
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in family:
            continue
        with contextlib.suppress(OSError):
            with open(f"/proc/{entry}/maps") as f:
                if path in f.read():
                    return True
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/fd/{fd}") == path:
                        return True
    return False


def sleep_then_raise(seconds: float, message: str) -> None:
    """Sleep, then raise ValueError(message)."""
    time.sleep(seconds)
    raise ValueError(message)


def record_pair(folder: str, pair: tuple[int, int]) -> int:
    """``record`` for imap, whose function takes one item: ``pair`` is (tid, x)."""
    return record(folder, pair[0], pair[1])


def say(text: str) -> int:
    """Print ``text`` to the worker's stdout without flushing it; return the pid.

    The line reaches the pipe only when the worker flushes its streams, which a
    worker that exits by itself does (multiprocessing flushes them at the end of a
    process) and a worker that is SIGKILLed never does.
    """
    print(text)
    return os.getpid()


def gate(path: str, fail: bool) -> str:
    """Wait (at most a minute) until ``path`` exists; then return "trigger", or
    raise ValueError("trigger") if ``fail``. The test creates the file when it
    is ready for the task to finish."""
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.002)
    if fail:
        raise ValueError("trigger")
    return "trigger"

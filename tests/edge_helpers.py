"""Top-level helpers for the attacker tests of issue 22 (tests/test_edges.py and
tests/test_edges_stress.py) and for ``tests/scripts/interrupt_lateness.py``.

Workers import the task functions by name under spawn and forkserver, so they
live here, not in the test modules. Besides the tasks: CPU burners (processes
that spin for the length of a test) and an outside killer (a thread that
SIGKILLs a pool's workers, found through /proc, at random).
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from typing_extensions import Self

import procpool

# -- small tools ---------------------------------------------------------------------------


def append_record(path: str, line: str) -> None:
    """Append one line to ``path`` with a single ``write`` (atomic for short lines)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def read_records(path: str) -> list[str]:
    """The lines ``append_record`` wrote to ``path`` (none if it was never written)."""
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def spin(ms: float) -> None:
    """Run Python code (holding the GIL, as computing does) for ``ms`` milliseconds."""
    end = time.perf_counter() + ms / 1000
    n = 0
    while time.perf_counter() < end:
        n += 1


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def pid_alive(pid: int, started: int | None = None) -> bool:
    """Whether ``pid`` runs and is not a zombie; with ``started`` (see
    :func:`process_identity`), whether it is still that process: pid numbers wrap at
    32,768 here, and a busy machine hands a dead worker's number to a new process
    within seconds."""
    fields = _stat(pid)
    if fields is None or fields[0] == "Z":
        return False
    # starttime is field 22 of stat, the 20th after the command name.
    return started is None or int(fields[19]) == started


def process_identity() -> tuple[int, int]:
    """(pid, start time in clock ticks since boot) of this process."""
    fields = _stat(os.getpid())
    assert fields is not None
    return os.getpid(), int(fields[19])


# -- CPU burners -------------------------------------------------------------------------------

_BURN = "import os, sys\nos.write(1, b'x')\nwhile True:\n    pass\n"


@contextlib.contextmanager
def cpu_burners(count: int = 2) -> Iterator[list[int]]:
    """Run ``count`` processes that spin at 100 % CPU until the block ends; yield their pids.

    Each has started spinning when the block begins (it says so on its stdout),
    and each is killed and reaped when it ends, however it ends.
    """
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(count):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", _BURN],
                    stdout=subprocess.PIPE,
                    stdin=subprocess.DEVNULL,
                )
            )
        for proc in procs:
            assert proc.stdout is not None
            proc.stdout.read(1)  # it runs
        yield [proc.pid for proc in procs]
    finally:
        for proc in procs:
            with contextlib.suppress(OSError):
                proc.kill()
        for proc in procs:
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


# -- processes seen from outside (/proc) -------------------------------------------------------


def _process_table() -> dict[int, tuple[int, str, str]]:
    """Every process as ``pid -> (ppid, state, command line)``."""
    table: dict[int, tuple[int, str, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                line = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        table[int(entry)] = (int(fields[1]), fields[0], line)
    return table


def pool_workers(exclude: set[int]) -> list[int]:
    """Live (not zombie) descendants of this process that are not in ``exclude``, nor
    multiprocessing's own helpers (the forkserver, the resource tracker), nor their
    children's children: for a pool of this process, its worker processes (under
    forkserver they are the server's children, so grandchildren of ours)."""
    me = os.getpid()
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: list[int] = []
    for pid in children.get(me, ()):
        if pid in exclude:
            continue
        _, state, line = table[pid]
        if "multiprocessing.forkserver" in line:
            # Its children are the workers of forkserver pools.
            found.extend(
                kid for kid in children.get(pid, ()) if kid not in exclude and table[kid][1] != "Z"
            )
        elif "multiprocessing.resource_tracker" in line:
            continue
        elif state != "Z":
            found.append(pid)
    return sorted(found)


class OutsideKiller:
    """A thread that SIGKILLs a random worker of this process's pools every
    ``low``-``high`` seconds: a worker starting up, idle, running a task or
    sending its reply, whatever it is doing at that instant (the out-of-memory
    killer or an operator does not wait for a good moment either)."""

    def __init__(self, exclude: set[int], seed: int, low: float = 0.01, high: float = 0.05):
        self.exclude = exclude
        self.rng = random.Random(seed)
        self.low, self.high = low, high
        self.killed: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="edge-killer", daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.rng.uniform(self.low, self.high)):
            targets = pool_workers(self.exclude)
            if not targets:
                continue
            pid = self.rng.choice(targets)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.killed.append(pid)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


# -- item 1: a crash inside a map --------------------------------------------------------------


def _die(how: str) -> None:
    if how == "exit":
        os._exit(1)
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "segv":
        faulthandler.disable()  # no "Fatal Python error" dump on the terminal
        ctypes.string_at(0)
    raise AssertionError(f"unknown way to die: {how}")


def die_on(x: int, bad: int, how: str = "exit") -> int:
    """Return x; for x == bad, die: ``os._exit(1)``, SIGKILL or SIGSEGV (``how``)."""
    if x == bad:
        _die(how)
    return x


def slow_die_on(x: int, bad: int, ms: float, how: str = "exit") -> int:
    """Spin ``ms`` milliseconds, then return x; for x == bad, die at once (``how``)."""
    if x == bad:
        _die(how)
    spin(ms)
    return x


def die_on_counted(x: int, bad: int, runs: str, ms: float = 0.0) -> int:
    """``slow_die_on`` that appends a line to ``runs`` each time the crasher runs."""
    if x == bad:
        append_record(runs, str(os.getpid()))
        os._exit(1)
    if ms:
        spin(ms)
    return x


def die_once_on(x: int, bad: int, marker: str, ms: float = 0.0) -> int:
    """Return x; for x == bad, ``os._exit(1)`` the first time only (``marker`` records
    that it crashed once: created with O_EXCL, so only one run can create it)."""
    if x == bad:
        try:
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            return x
        os._exit(1)
    if ms:
        spin(ms)
    return x


# -- item 2: the interrupt at the deadline -----------------------------------------------------

FLOOD_LOGGER = "procpool.tests.edge.flood"


def drop_all(record: logging.LogRecord) -> bool:
    """A logging filter that drops every record."""
    return False


def _flood_logger() -> logging.Logger:
    """The flood's logger, as the worker should have it: the test drops the replayed
    records in the parent with a filter on it, which a fork worker inherits."""
    log = logging.getLogger(FLOOD_LOGGER)
    log.filters.clear()
    log.propagate = True
    return log


def log_flood(seconds: float) -> str:
    """Log records in a tight loop for ``seconds`` (to be interrupted long before)."""
    log = _flood_logger()
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
        log.warning("record %d", n)
    return "finished"


def log_per_ms(seconds: float) -> str:
    """Compute 1 ms, log one record, and again, for ``seconds``."""
    log = _flood_logger()
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        spin(1.0)
        n += 1
        log.warning("record %d", n)
    return "finished"


def _describe(exc: BaseException) -> dict[str, Any]:
    kind = type(exc)
    return {
        "name": kind.__name__,
        "module": kind.__module__,
        "mro": [c.__name__ for c in kind.__mro__],
        "is_exception": isinstance(exc, Exception),
        "is_oserror": isinstance(exc, OSError),
        "is_timeouterror": isinstance(exc, TimeoutError),
        "is_task_timeout_error": isinstance(exc, procpool.TaskTimeoutError),
    }


def retry_loop(catch: str, seconds: float, path: str) -> str:
    """An I/O retry loop, as tasks write them: sleep 10 ms at a time and swallow the
    errors the loop is written for (``catch``: "OSError", "TimeoutError" or
    "Exception"), for ``seconds``. Whatever ends it from outside the clause is
    described in ``path`` (JSON) before it goes on."""
    caught = {"OSError": OSError, "TimeoutError": TimeoutError, "Exception": Exception}[catch]
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            try:
                time.sleep(0.01)
            except caught as exc:
                append_record(path + ".swallowed", type(exc).__name__)
    except BaseException as exc:
        append_record(path, json.dumps(_describe(exc)))
        raise
    return "finished"


def describe_interrupt(path: str, seconds: float) -> str:
    """Sleep ``seconds``; describe in ``path`` (JSON) what interrupted the sleep, then
    let it go on."""
    try:
        time.sleep(seconds)
    except BaseException as exc:
        append_record(path, json.dumps(_describe(exc)))
        raise
    return "finished"


# -- item 3: the interrupt's promptness --------------------------------------------------------


def io_and_compute(
    out: str,
    record: str,
    limit: float,
    run_for: float,
    compute_ms: float = 1.0,
    payload: int = 0,
) -> Any:
    """Write a line to ``out`` (a system call), compute ``compute_ms``, and again, for
    ``run_for`` seconds; return the time it ran, or with ``payload``, that many bytes
    (a result whose sending takes a while).

    Appends to ``record`` one line, ``<how> <seconds after start + limit> <run_for>``:
    how is the exception that ended it (the interrupt), or ``returned`` if it ran
    to its end (then the interrupt, if any, came too late to stop it).
    """
    start = time.monotonic()
    deadline = start + limit
    end = start + run_for
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    line = b"a line of output, as a task writes to its log file or a pipe\n"
    try:
        while time.monotonic() < end:
            os.write(fd, line)
            spin(compute_ms)
    except BaseException as exc:
        append_record(record, f"{type(exc).__name__} {time.monotonic() - deadline:.6f} {run_for}")
        raise
    finally:
        os.close(fd)
    append_record(record, f"returned {time.monotonic() - deadline:.6f} {run_for}")
    if payload:
        return b"r" * payload
    return time.monotonic() - start


def sleep_across_deadline(seconds: float) -> float:
    """Sleep ``seconds`` in 1 ms steps with Python between them; return ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.001)
    return seconds


# -- item 4: a task's own TaskTimeoutError ----------------------------------------------------


def raise_own_timeout(killed: bool) -> None:
    """Raise a TaskTimeoutError of the task's own, as code that uses a pool may."""
    raise procpool.TaskTimeoutError(
        "mine: the upstream service timed out", timeout=1.0, killed=killed
    )


def raise_own_timeout_item(x: int, killed: bool) -> int:
    """A map item: x, or the task's own TaskTimeoutError for x == 3."""
    if x == 3:
        raise_own_timeout(killed)
    return x


# -- item 5: nested pools ------------------------------------------------------------------------


def nested_interrupt(context: str, timeout: float, grace: float, sleep: float) -> dict[str, Any]:
    """Start a pool (``context``) inside this task and give it a task that sleeps
    past its limit with a grace period; say how that inner task ended."""
    started = time.monotonic()
    with procpool.Pool(1, context=context) as inner:  # type: ignore[arg-type]
        fut = inner.options(timeout=timeout, grace=grace).submit(time.sleep, sleep)
        try:
            fut.result(timeout=120)
        except procpool.TaskTimeoutError as exc:
            return {
                "outcome": "timeout",
                "killed": exc.killed,
                "message": str(exc),
                "elapsed": time.monotonic() - started,
            }
        except BaseException as exc:
            return {
                "outcome": type(exc).__name__,
                "message": str(exc),
                "elapsed": time.monotonic() - started,
            }
    return {"outcome": "returned", "elapsed": time.monotonic() - started}


def nested_timeout_propagates(context: str) -> None:
    """Use a pool inside this task whose task times out (interrupted, grace period);
    let its TaskTimeoutError (limit 0.2 s, ``killed=False``) go on to the caller."""
    with procpool.Pool(1, context=context) as inner:  # type: ignore[arg-type]
        inner.options(timeout=0.2, grace=10).submit(time.sleep, 30).result(timeout=120)


# -- item 6: a worker that cannot exit ---------------------------------------------------------


def leave_thread_running() -> tuple[int, int]:
    """Start a non-daemon thread that sleeps for days; return this worker's
    :func:`process_identity`. The process cannot exit normally while the thread runs."""
    threading.Thread(target=time.sleep, args=(10**6,), name="left-behind").start()
    return process_identity()


# -- item 7: work under fire -------------------------------------------------------------------


def triple(x: int, ms: float = 0.0) -> int:
    """Spin ``ms`` milliseconds, then return ``3 * x + 1``."""
    if ms:
        spin(ms)
    return 3 * x + 1


# -- item 8 ------------------------------------------------------------------------------------


def exit_via_sys(code: int) -> None:
    """Call ``sys.exit(code)`` in the task."""
    sys.exit(code)


def install_tblib() -> None:
    """Initializer: patch exception pickling as Dask's workers do (tblib, every class)."""
    from tblib import pickling_support

    pickling_support.install()


def raise_os_error(errno: int, text: str, filename: str) -> None:
    """Raise ``OSError(errno, text, filename)``."""
    raise OSError(errno, text, filename)

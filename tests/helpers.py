"""Tiny top-level functions for tests: workers import them by name under spawn."""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import gc
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterable
from typing import Any

import procpool


def square(x: int) -> int:
    """Return x * x."""
    return x * x


def add(x: int, y: int) -> int:
    """Return x + y."""
    return x + y


def identity(x: Any) -> Any:
    """Return x unchanged."""
    return x


def fail_on(x: int, bad: frozenset[int] = frozenset({3})) -> int:
    """Return x, or raise ValueError if x is in ``bad``."""
    if x in bad:
        raise ValueError(f"bad item {x}")
    return x


def raise_value_error(message: str) -> None:
    """Raise ValueError(message)."""
    raise ValueError(message)


def exit_with(code: int) -> None:
    """Leave the process at once with ``os._exit(code)``."""
    os._exit(code)


def sigkill_self() -> None:
    """Kill the process with SIGKILL, as the out-of-memory killer would."""
    os.kill(os.getpid(), signal.SIGKILL)


def crash() -> None:
    """Segfault by reading address 0 through ctypes."""
    # pytest's faulthandler_timeout enables faulthandler on the terminal's stderr and
    # forked workers inherit it: a deliberate crash would print a "Fatal Python error"
    # dump to the terminal of a passing run.
    faulthandler.disable()
    ctypes.string_at(0)


def crash_on(x: int, bad: int) -> int:
    """Return x, or die with os._exit(13) when x == bad."""
    if x == bad:
        os._exit(13)
    return x


def sleep_then(seconds: float, value: Any = None) -> Any:
    """Sleep, then return value."""
    time.sleep(seconds)
    return value


def sleep_item(x: int) -> int:
    """Sleep x milliseconds, then return x."""
    time.sleep(x / 1000)
    return x


def slow_crash_on(x: int, bad: int) -> int:
    """Sleep 20 ms per item; die with os._exit(13) when x == bad."""
    if x == bad:
        os._exit(13)
    time.sleep(0.02)
    return x


def getpid(_: object = None) -> int:
    """Return the worker's pid."""
    return os.getpid()


def getpid_after(seconds: float) -> int:
    """Sleep, then return the worker's pid."""
    time.sleep(seconds)
    return os.getpid()


def write_then_sleep(path: str, seconds: float) -> None:
    """Write our pid to ``path``, then sleep (a task that is visibly running)."""
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)


def append_line(path: str, line: str) -> str:
    """Append a line to a file (to count how often a task really ran)."""
    with open(path, "a") as f:
        f.write(line + "\n")
    return line


class ErrorAtPickle:
    """An object whose pickling fails."""

    def __reduce__(self) -> Any:
        raise TypeError("ErrorAtPickle refuses to be pickled")


def _unpickle_fails() -> None:
    raise RuntimeError("ErrorAtUnpickle refuses to be unpickled")


class ErrorAtUnpickle:
    """An object that pickles but fails to unpickle."""

    def __reduce__(self) -> Any:
        return (_unpickle_fails, ())


def return_unpicklable() -> Any:
    """Return a lock, which does not pickle."""
    return threading.Lock()


def lock_on(x: int, bad: int = 2) -> Any:
    """Return x, or a lock (which does not pickle) for ``bad``."""
    return threading.Lock() if x == bad else x


def return_error_at_unpickle() -> Any:
    """Return an object that fails to unpickle in the parent."""
    return ErrorAtUnpickle()


class UnpicklableError(Exception):
    """An exception that cannot make the trip back to the parent.

    Its __init__ needs two arguments, so it does not unpickle; and it holds a
    lock, so it does not pickle either where tblib's exception reducer is
    installed (importing ``distributed`` does that, and forked workers inherit it).
    """

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}-{b}")
        self.lock = threading.Lock()


def raise_unpicklable_error() -> None:
    """Raise an exception that cannot make the trip back."""
    raise UnpicklableError(1, 2)


class Holder:
    """A plain object with attributes (for attribute-path diagnostics)."""

    def __init__(self, **attrs: Any) -> None:
        self.__dict__.update(attrs)


_state: dict[str, Any] = {}


def init_state(value: Any) -> None:
    """Initializer: remember a value in the worker."""
    _state["value"] = value


def read_state() -> Any:
    """Return what init_state stored in this worker."""
    return _state.get("value")


def failing_initializer() -> None:
    """Initializer that raises."""
    raise RuntimeError("initializer exploded")


def log_something(message: str) -> int:
    """Log a warning in the worker; return the worker's pid."""
    logging.getLogger("procpool.tests.worker").warning(message)
    return os.getpid()


def log_to(name: str, message: str) -> int:
    """Log a warning on logger ``name`` in the worker; return the worker's pid."""
    logging.getLogger(name).warning(message)
    return os.getpid()


def nested_pool_sum(n: int) -> int:
    """Create a pool inside a task and use it."""
    with procpool.Pool(2) as pool:
        return sum(pool.map(square, range(n)).result())


def nested_spawn(x: int) -> int:
    """Spawn a process inside a task."""
    return procpool.spawn(square, x).result(timeout=30)


def process_table() -> dict[int, tuple[int, str]]:
    """Every process on the machine as ``pid -> (ppid, state)``, read from /proc."""
    table: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        table[int(entry)] = (int(fields[1]), fields[0])
    return table


def count_children() -> int:
    """How many child processes this process has right now (Linux /proc)."""
    pid = os.getpid()
    return sum(1 for ppid, _ in process_table().values() if ppid == pid)


def burn(ms: float) -> float:
    """Spin the CPU for ``ms`` milliseconds; return the time spent."""
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass
    return ms


class Greet(procpool.ProcessTask[str]):
    """A ProcessTask that greets."""

    def __init__(self, who: str) -> None:
        super().__init__()
        self.who = who

    def run(self) -> str:
        return f"hello {self.who}"


class FailingTask(procpool.ProcessTask[int]):
    """A ProcessTask whose run() raises."""

    def run(self) -> int:
        raise KeyError("missing")


def wait_for(predicate: Any, timeout: float = 20.0) -> bool:
    """Poll ``predicate()`` until it is true or ``timeout`` passes (test use only)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


def run_python(*args: object, timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run ``python *args`` (this interpreter) with its output captured as text.

    ``kwargs`` go to subprocess.run (``cwd=``, ``env=``); the exit code is the
    caller's to check.
    """
    return subprocess.run(
        [sys.executable, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )


def run_script_cleanly(
    script: object, *args: object, timeout: float, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run ``python -W error script *args``; check that it exited 0 and said nothing on
    stderr. Returns the finished process (its stdout is the script's report)."""
    proc = run_python("-W", "error", script, *args, timeout=timeout, **kwargs)
    assert proc.returncode == 0, proc.stderr
    # No ResourceWarning, no resource_tracker complaint, nothing at all on stderr.
    assert proc.stderr == ""
    return proc


def poly(x: int) -> int:
    """A deterministic function that raises on some inputs (multiples of 7 minus 1)."""
    if x % 7 == 6:
        raise ArithmeticError(f"no {x}")
    return 3 * x * x - x + 1


def outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    """Run fn serially; return ("ok", value) or ("error", (type, message))."""
    try:
        return ("ok", fn(*args))
    except Exception as exc:
        return ("error", (type(exc), str(exc)))


def log_then_sleep(message: str, seconds: float) -> int:
    """Log a warning, then sleep: the record reaches the parent before the reply."""
    logging.getLogger("procpool.tests.worker").warning(message)
    time.sleep(seconds)
    return os.getpid()


def fast_then_slow(x: int, seconds: float) -> int:
    """Item 0 returns at once; every other item sleeps ``seconds``."""
    if x > 0:
        time.sleep(seconds)
    return x


def touch(path: str) -> str:
    """Create an empty file at ``path`` (a visible trace that the task ran)."""
    with open(path, "x"):
        pass
    return path


class Blob:
    """A weak-referenceable result (bpo-14406: the pool must not keep it alive)."""

    def __init__(self, n: int) -> None:
        self.n = n


def make_blob(n: int) -> Blob:
    """Return Blob(n)."""
    return Blob(n)


def kept_alive(results: Iterable[object]) -> list[bool]:
    """Iterate ``results``, dropping each item as it comes: whether something else
    (the pool, its iterator) still held it after a garbage collection, item by item."""
    alive = []
    for item in results:
        ref = weakref.ref(item)
        del item
        gc.collect()
        alive.append(ref() is not None)
    return alive


class TouchOnUnpickle:
    """Unpickling it creates the file at ``path``: shows whether a body was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (touch, (self.path,))


def interrupt_a_child_process() -> int | None:
    """Start ``sleep 30``, send it SIGINT, return its exit code (None: SIGINT was ignored)."""
    child = subprocess.Popen(["sleep", "30"])
    time.sleep(0.2)
    child.send_signal(signal.SIGINT)
    try:
        return child.wait(timeout=5)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        return None


def sigterm_is_default(_: object = None) -> bool:
    """Whether SIGTERM has its default disposition in this process."""
    return signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def open_descriptors(_: object = None) -> list[tuple[str, int]]:
    """This process's open descriptors as (what they are, access mode) pairs."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
            with open(f"/proc/self/fdinfo/{fd}") as info:
                flags = int(next(line for line in info if line.startswith("flags:")).split()[1], 8)
        except (OSError, StopIteration):
            continue
        found.append((link, flags & os.O_ACCMODE))
    return found


class _ExitOnUnpickle:
    """Unpickling it raises SystemExit (CPython's test_exit_during_result_unpickle...)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (sys.exit, (1,))


def return_exit_on_unpickle() -> Any:
    """Return an object whose unpickling in the parent raises SystemExit."""
    return _ExitOnUnpickle()


def exit_quietly() -> None:
    """Do nothing: the target of a plain multiprocessing.Process."""


_retained: list[bytearray] = []


def retain_mb(megabytes: int) -> tuple[int, int]:
    """Keep ``megabytes`` MiB alive in this worker for good (a leak); return (pid, RSS bytes)."""
    _retained.append(bytearray(b"\x01") * (megabytes * 2**20))  # filled: the pages are touched
    with open("/proc/self/statm") as f:
        resident = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return os.getpid(), resident


def sleep_with_cleanup(path: str, seconds: float) -> str:
    """Sleep; write ``path`` in a finally block, as a task cleaning up would."""
    try:
        time.sleep(seconds)
    finally:
        with open(path, "w") as f:
            f.write(str(os.getpid()))
    return "slept"


def ignore_the_interrupt(seconds: float) -> str:
    """Sleep ``seconds``, swallowing TimeLimitInterrupt and sleeping on."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(procpool.TimeLimitInterrupt):
            time.sleep(max(0.0, deadline - time.monotonic()))
    return "ignored"


def catch_the_interrupt_and_return(seconds: float) -> str:
    """Sleep; on TimeLimitInterrupt return normally (the future still times out)."""
    try:
        time.sleep(seconds)
    except procpool.TimeLimitInterrupt:
        return "caught"
    return "slept"


def sleep_or_pass(x: float) -> tuple[float, int]:
    """Sleep x seconds; return (x, pid)."""
    time.sleep(x)
    return x, os.getpid()


def allocate_mb(megabytes: int) -> int:
    """Allocate and touch ``megabytes`` MiB (past a cgroup's limit: an OOM kill)."""
    block = bytearray(b"\x01") * (megabytes * 2**20)
    return len(block)


def sleep_in_steps_with_cleanup(path: str, seconds: float) -> str:
    """Sleep in 10 ms steps (Python code between them); write ``path`` in a finally block."""
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        with open(path, "w") as f:
            f.write("cleaned up")
    return "slept"


def crash_deep(depth: int) -> None:
    """Recurse ``depth`` frames, then segfault (faulthandler left on: the stack is wanted)."""
    if depth:
        crash_deep(depth - 1)
    ctypes.string_at(0)


def abort_in(depth: int) -> None:
    """Recurse ``depth`` frames, then abort (SIGABRT)."""
    if depth:
        abort_in(depth - 1)
    os.abort()

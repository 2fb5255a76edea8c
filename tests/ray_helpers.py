"""Top-level task functions for the RayPool tests; the Ray workers import them by name.

(tests/ is on the workers' ``PYTHONPATH``: see tests/ray_support.py.)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any


def is_object_ref(value: object) -> bool:
    """Whether ``value`` reached the task as a Ray ObjectRef (not resolved by Ray)."""
    import ray

    return isinstance(value, ray.ObjectRef)


def get_and_add(ref: Any, x: int) -> int:
    """``ray.get(ref) + x``: a task reading an object it was handed by reference."""
    import ray

    value: int = ray.get(ref)
    return value + x


def array_view(array: Any) -> tuple[bool, bool, float]:
    """(writeable, owns its data, sum) of an argument array, as the worker sees it."""
    return bool(array.flags.writeable), bool(array.flags.owndata), float(array.sum())


def ones(n: int) -> Any:
    """A float64 numpy array of ``n`` ones, made on the worker."""
    import numpy as np

    return np.ones(n)


def pid_then_sleep(path: str, seconds: float) -> int:
    """Write this worker's pid to ``path``, then sleep ``seconds`` (in C: no interrupt)."""
    Path(path).write_text(str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()


def pid_of(path: str) -> int:
    """The pid a task wrote to ``path``, once it is there (0 if it never is)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            return int(Path(path).read_text())
        except (FileNotFoundError, ValueError):
            time.sleep(0.02)
    return 0


def sleep_then_pid(seconds: float) -> int:
    """Sleep ``seconds``, then return this worker's pid."""
    time.sleep(seconds)
    return os.getpid()


def spin_then_pid(seconds: float) -> int:
    """Spin in pure Python for ``seconds`` (an interrupt arrives at once); return the pid."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return os.getpid()


def is_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (and, on Linux, is not a zombie)."""
    if sys.platform == "win32":
        # os.kill(pid, 0) would terminate it there: ask the kernel for its exit code.
        import ctypes

        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        code = ctypes.c_ulong()
        kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if sys.platform == "linux":
        try:
            with open(f"/proc/{pid}/stat") as stat:
                return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False
    return True


def wait_gone(pid: int, timeout: float = 15.0) -> bool:
    """Wait until process ``pid`` has exited; True if it did within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_alive(pid):
            return True
        time.sleep(0.05)
    return not is_alive(pid)


def raise_unpicklable_error_of(_: object) -> None:
    """``helpers.raise_unpicklable_error`` for ``map``: an exception that cannot travel back."""
    import helpers

    helpers.raise_unpicklable_error()

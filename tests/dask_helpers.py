"""Top-level task functions for the DaskPool tests; the Dask workers import them by name."""

from __future__ import annotations

import os
import threading
import time


class DaskHelperError(Exception):
    """Raised by :func:`fail_on_multiples` for the inputs it rejects."""


def square(x: int) -> int:
    """Return ``x * x``."""
    return x * x


def add(a: int, b: int) -> int:
    """Return ``a + b``."""
    return a + b


def add3(a: int, b: int, c: int) -> int:
    """Return ``a + b + c``."""
    return a + b + c


def kwargs_echo(a: int, *, key: str, workers: int, retries: int) -> tuple[int, str, int, int]:
    """Return its arguments, whose keyword names Dask would take for its own."""
    return (a, key, workers, retries)


def fail_on_multiples(x: int, of: int = 3) -> int:
    """Return ``x + 1``, or raise DaskHelperError when ``x`` is a multiple of ``of``."""
    if x % of == 0:
        raise DaskHelperError(f"{x} is a multiple of {of}")
    return x + 1


def raise_value_error(message: str) -> None:
    """Raise ``ValueError(message)``."""
    raise ValueError(message)


def random_token() -> bytes:
    """Return 16 fresh random bytes: an impure call that must never be cached."""
    return os.urandom(16)


def random_token_of(_: int) -> bytes:
    """Return 16 fresh random bytes, whatever the argument: impure, for ``map``."""
    return os.urandom(16)


def sleep_then(seconds: float, value: int = 0) -> int:
    """Sleep ``seconds``, then return ``value``."""
    time.sleep(seconds)
    return value


def busy_loop(seconds: float) -> int:
    """Spin in pure Python for ``seconds``; return the number of rounds."""
    rounds = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        rounds += 1
    return rounds


def exit_worker(code: int = 3) -> None:
    """End the worker process at once, the way a crash or an OOM kill would."""
    os._exit(code)


def unpicklable_result() -> threading.Lock:
    """Return a lock, which cannot be pickled back to the client."""
    return threading.Lock()


def pid() -> int:
    """Return the worker's process id."""
    return os.getpid()


def cpu_work(n: int) -> int:
    """About 50 ms of pure-Python work for n=200_000 (benchmark B2)."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def identity(x: int) -> int:
    """Return ``x`` (benchmark B3: round-trip latency)."""
    return x


def worker_address() -> str:
    """Return the address of the Dask worker running this task (needs its context)."""
    import distributed

    return str(distributed.get_worker().address)


def die_once_then_sleep(marker: str, seconds: float) -> float:
    """End the worker the first time (``marker`` does not exist yet); then sleep."""
    if not os.path.exists(marker):
        with open(marker, "x"):
            pass
        os._exit(3)
    time.sleep(seconds)
    return seconds


def exit_on(x: int, bad: int) -> int:
    """Return ``x * x``, or end the worker at once when ``x == bad`` (a crash inside a map)."""
    if x == bad:
        os._exit(3)
    return x * x


def die_once_then_nap(marker: str, seconds: float) -> float:
    """End the worker the first time; the next time write "again" to ``marker``, then sleep."""
    if not os.path.exists(marker):
        with open(marker, "x"):
            pass
        os._exit(3)
    with open(marker, "w") as note:
        note.write("again")
    time.sleep(seconds)
    return seconds

"""What a submission carries besides its function: :class:`Options`, and the checks
of every argument the pools share (time limits, counts, memory sizes, retries,
priorities), each raising at once with a message that names the argument."""

from __future__ import annotations

import math
import numbers
import random
from dataclasses import dataclass
from typing import TypeAlias


def check_timeout(name: str, value: float | None) -> None:
    """Reject anything but None or a number of seconds >= 0, naming the argument.

    Raises:
        TypeError: not a number (a bool or a string such as ``"1"`` included).
        ValueError: a negative number, or NaN.
    """
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be None or a number of seconds, not {value!r}")
    if not value >= 0:  # `not >=` also rejects NaN
        raise ValueError(f"{name} must be None or a number of seconds >= 0, not {value!r}")


def check_count(name: str, value: int | None, minimum: int) -> None:
    """Reject anything but an int of at least ``minimum`` (a bool too), naming the argument."""
    if value is not None and (
        not isinstance(value, int)  # pyright: ignore[reportUnnecessaryIsInstance]
        or isinstance(value, bool)
        or value < minimum
    ):
        raise ValueError(f"{name} must be an int >= {minimum}, not {value!r}")


#: More workers than this is a mistake, not a plan: each is a process with two
#: pipes and a slot in the dispatcher's tables.
MAX_WORKERS = 4096


def check_workers(workers: int | None) -> None:
    """Check ``Pool(workers=...)``: None, or an int from 1 to :data:`MAX_WORKERS`."""
    check_count("workers", workers, 1)
    if workers is not None and workers > MAX_WORKERS:
        raise ValueError(
            f"workers={workers} is more processes than one pool can hold (at most "
            f"{MAX_WORKERS}); use None for one per CPU, or DaskPool to spread work "
            "over several machines"
        )


def finite(timeout: float | None) -> float | None:
    """``math.inf`` means no limit: then no deadline needs watching."""
    return None if timeout is None or math.isinf(timeout) else timeout


_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


#: The largest memory limit a worker can be told (a signed 64-bit field, 8 EiB).
MAX_MEMORY_BYTES = 2**63 - 1


def memory_bytes(name: str, value: int | str | None) -> int | None:
    """Read a memory size: bytes as an int, or a string such as ``"2 GiB"`` or ``"500MB"``.

    Units: B, kB, MB, GB, TB (powers of 1000) and KiB, MiB, GiB, TiB (powers of
    1024), in any case.

    Raises:
        ValueError: naming the argument, for anything else, a size below 1 byte,
            or one above :data:`MAX_MEMORY_BYTES`.
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = text[len(number) :] or "b"
        try:
            size = float(number) * _UNITS[unit]
        except (KeyError, ValueError):
            size = math.nan
        if not math.isfinite(size):  # "1e400 B", "nan MB"
            raise ValueError(
                f"{name} must be a number of bytes or a size such as '2 GiB' or '500 MB', "
                f"not {value!r}"
            )
        value = min(int(size), MAX_MEMORY_BYTES + 1)
    elif isinstance(value, bool) or not isinstance(value, int):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise ValueError(
            f"{name} must be a number of bytes or a size such as '2 GiB', not {value!r}"
        )
    if value < 1:
        raise ValueError(f"{name} must be at least 1 byte, not {value!r}")
    if value > MAX_MEMORY_BYTES:
        raise ValueError(f"{name} must be at most 2**63 - 1 bytes (8 EiB), not {value!r}")
    return value


@dataclass(frozen=True)
class Options:
    """The defaults a pool (or an ``options()`` view of it) gives new work."""

    timeout: float | None
    retries: int
    retry_timeouts: bool
    #: Resident bytes above which a worker is replaced after a call (None: no limit).
    max_memory: int | None = None
    #: Seconds between interrupting a task at its time limit and killing it (None:
    #: kill at the limit; ``math.inf``: never kill an interrupted task).
    grace: float | None = None
    #: Exception types a task may raise and still be run again (``retries`` times).
    retry_on: tuple[type[BaseException], ...] = ()
    #: Seconds before the first retry; each next one waits twice as long (jittered).
    backoff: float = 0.0
    #: Queued work starts highest priority first (FIFO within a level).
    priority: int = 0


#: What ``retry_on=`` accepts: one exception type, or a tuple of them.
RetryOn: TypeAlias = "type[BaseException] | tuple[type[BaseException], ...]"
#: The longest a retry waits, however many came before it (s).
MAX_BACKOFF = 60.0


def retry_types(value: RetryOn | None) -> tuple[type[BaseException], ...] | None:
    """Check ``retry_on=``: an exception type or a tuple of them (None: not given)."""
    if value is None:
        return None
    types = value if isinstance(value, tuple) else (value,)
    for kind in types:
        if not (isinstance(kind, type) and issubclass(kind, BaseException)):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"retry_on must be an exception type or a tuple of them, not {value!r}")
    return types


def check_priority(value: int | None) -> None:
    """Check ``priority=``: an int (negative ones included), not a bool."""
    if value is not None and (
        not isinstance(value, int) or isinstance(value, bool)  # pyright: ignore[reportUnnecessaryIsInstance]
    ):
        raise TypeError(f"priority must be an int, not {value!r}")


def backoff_delay(backoff: float, attempt: int) -> float:
    """Seconds to wait before retry number ``attempt`` (1, 2, ...): exponential, jittered.

    ``backoff * 2**(attempt - 1)``, at most :data:`MAX_BACKOFF`, times a random factor
    from 0.5 to 1.5 so that tasks that failed together do not all retry together.
    """
    if backoff <= 0:
        return 0.0
    longest: float = min(MAX_BACKOFF, backoff * 2.0 ** (attempt - 1))
    return longest * random.uniform(0.5, 1.5)

"""Top-level functions for tests/test_policy.py (workers import them by name)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def fail_first(path: str, failures: int, error: str = "ConnectionError") -> int:
    """Raise ``error`` on the first ``failures`` calls (counted in ``path``); then return the call's number."""
    marker = Path(path)
    calls = int(marker.read_text()) + 1 if marker.exists() else 1
    marker.write_text(str(calls))
    if calls <= failures:
        raise {"ConnectionError": ConnectionError, "ValueError": ValueError}[error](
            f"call {calls} failed"
        )
    return calls


def fail_first_item(x: int, folder: str, failures: int) -> tuple[int, int]:
    """Items divisible by 3 fail their first ``failures`` runs with ConnectionError."""
    if x % 3:
        return x, 0
    return x, fail_first(os.path.join(folder, f"item-{x}"), failures)


def stamp(tag: str) -> tuple[str, float]:
    """Return ``tag`` and when this ran (monotonic; shared by processes on one machine)."""
    return tag, time.monotonic()


def nap(seconds: float) -> int:
    """Sleep; return this worker's pid."""
    time.sleep(seconds)
    return os.getpid()

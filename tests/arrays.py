"""Functions on numpy arrays that the shared-memory tests send to workers."""

from __future__ import annotations

import mmap
import os
import pickle
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]

#: Arrays a task kept after it returned (see ``keep``).
_KEPT: list[Array] = []


def make(i: int, mb: int = 2) -> Array:
    """A distinct array of ``mb`` MB: ``i, i+1, i+2, ...``."""
    return np.arange(mb * 1024 * 1024 // 8, dtype=np.float64) + i


def identity(a: Array) -> Array:
    return a


def total(a: Array) -> float:
    return float(a.sum())


def double(a: Array) -> Array:
    return a * 2


def in_shared_memory(a: Array) -> bool:
    """Whether ``a``'s memory is a mapping (shared memory), not a pickled copy."""
    base: Any = a
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, pickle.PickleBuffer):
        base = memoryview(base)
    while isinstance(base, memoryview):
        base = base.obj
        if isinstance(base, pickle.PickleBuffer):
            base = memoryview(base)
    return isinstance(base, mmap.mmap)


def zero_then_total(a: Array) -> float:
    """Modify the argument in place, then sum it."""
    a[:] = 0.0
    return float(a.sum())


def keep(a: Array) -> float:
    """Keep the argument after returning (its memory must not be reused)."""
    _KEPT.append(a)
    return float(a.sum())


def kept_totals() -> list[float]:
    return [float(a.sum()) for a in _KEPT]


def die_with(a: Array) -> float:
    """Exit the worker abruptly in the middle of a large call."""
    os._exit(9)


def die_once(a: Array, flag: str) -> float:
    """Modify the argument in place and die, the first time only; then sum it."""
    if not os.path.exists(flag):
        with open(flag, "w"):
            pass
        a[:] = -1.0
        os._exit(9)
    return float(a.sum())


def sleep_with(a: Array, seconds: float) -> float:
    """Hold a large argument for ``seconds`` (its segment stays in use)."""
    import time

    time.sleep(seconds)
    return float(a.sum())

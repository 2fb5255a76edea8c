"""Where a worker runs and with how many threads: applied first thing in the worker.

:class:`Placement` is what the parent decided for one worker slot (see
``procpool._placement``): environment variables, a set of CPUs, and a thread
budget for BLAS and OpenMP libraries. :func:`apply` sets them before the worker
runs its initializer or unpickles its first call, so the task's modules (and the
libraries they import, which read ``CUDA_VISIBLE_DEVICES``, ``OMP_NUM_THREADS``
and the like when they load) see them.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from dataclasses import dataclass

#: The variables through which BLAS, OpenMP and numexpr take their thread count.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
#: Modules whose presence means a thread pool may be loaded already.
_NATIVE_POOLS = ("numpy", "scipy", "torch", "sklearn")


@dataclass(frozen=True)
class Placement:
    """What one worker slot gets (None: leave it as the process inherited it)."""

    env: dict[str, str] | None = None
    cpus: frozenset[int] | None = None
    threads: int | None = None


def apply(placement: Placement) -> None:
    """Set ``placement`` in this (worker) process."""
    if placement.env:
        os.environ.update(placement.env)
    if placement.cpus and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):  # a CPU set this machine cannot give
            os.sched_setaffinity(0, placement.cpus)
    if placement.threads is not None:
        for name in THREAD_VARIABLES:
            # A value set on purpose (worker_env, or the program's environment) wins.
            os.environ.setdefault(name, str(placement.threads))
        if any(name in sys.modules for name in _NATIVE_POOLS):
            _limit_loaded_pools(placement.threads)


def _limit_loaded_pools(threads: int) -> None:
    """Libraries loaded before the worker started (fork, or the main module under
    spawn) read the variables already: limit their pools now, if threadpoolctl is
    installed (as loky does)."""
    try:
        threadpoolctl = importlib.import_module("threadpoolctl")
    except ImportError:
        return
    with contextlib.suppress(Exception):
        threadpoolctl.threadpool_limits(limits=threads)

"""Reads the environment when imported, as CUDA and OpenMP libraries do (tests/test_placement.py)."""

import os

SEEN = {name: os.environ.get(name) for name in ("PROCPOOL_TEST_DEVICE", "OMP_NUM_THREADS")}


def init_reads_env() -> None:
    """An initializer whose module read the environment at import."""

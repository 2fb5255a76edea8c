"""Tasks for tests/test_placement.py: who runs them, what they see, per-worker state."""

from __future__ import annotations

import os
import time
from typing import Any

import procpool


def who(_: object = None) -> tuple[int, int, str, int, str] | None:
    """The current worker as a tuple, or None outside one."""
    me = procpool.current_worker()
    if me is None:
        return None
    return (me.slot, me.pid, me.pool, me.tasks_run, me.start_method)


def who_then_die(code: int) -> None:
    """Die (os._exit): the replacement must take the same slot."""
    os._exit(code)


def env_seen_at_import(name: str) -> str | None:
    """What ``env_at_import`` saw of ``name`` when the worker imported it."""
    import env_at_import  # imported here, in the worker, for the first time

    seen: str | None = env_at_import.SEEN.get(name)
    return seen


def env(name: str) -> str | None:
    """``os.environ.get(name)`` in the worker."""
    return os.environ.get(name)


def affinity(_: object = None) -> list[int]:
    """The CPUs this worker may run on."""
    return sorted(os.sched_getaffinity(0))


def make_model() -> dict[str, Any]:
    """A factory: a 'model' that says which process built it, and when."""
    return {"pid": os.getpid(), "built": time.monotonic()}


def model_pid(state: procpool.WorkerState[dict[str, Any]], x: int) -> tuple[int, int]:
    """The pid that built this worker's model, and ``x``."""
    return state.get()["pid"], x


def die_with_model(state: procpool.WorkerState[dict[str, Any]]) -> None:
    """Build the model, then die."""
    state.get()
    os._exit(1)


def model_seen(state: procpool.WorkerState[dict[str, Any]], x: int) -> tuple[int, float, int, int]:
    """(pid that built the model, when, this process's pid, ``x``)."""
    model = state.get()
    return model["pid"], model["built"], os.getpid(), x

"""Functions that the benchmarks send to worker processes.

They live in this importable module, not in ``run.py`` or ``measure.py``, because
under the ``spawn`` and ``forkserver`` start methods a worker re-imports the
function by its module name: a function defined in ``__main__`` would either not
be found or re-run the harness in every child.  ``run.py`` puts this folder on
``PYTHONPATH`` so every child (of every library) can import it.

Nothing here imports numpy at module level: quick mode must work in the
development venv, which has no numpy.
"""

from __future__ import annotations

import os
from typing import Any

# --------------------------------------------------------------------------- B1 / B7


def square(x: int) -> int:
    """The tiny task of B1 and B7: so cheap that only the pool's overhead shows."""
    return x * x


def noop(x: int = 0) -> int:
    """A trivial task (B3 round trips, B4 start-up, warm-ups)."""
    return x


def procpool_origin(delay: float = 0.0) -> dict[str, Any]:
    """This process's pid and the files of the procpool modules it has loaded.

    The warm-up task of ``procpool_base`` (contenders.ProcpoolBase): proves that
    a worker runs the other source tree's procpool, not this one's.  ``delay``
    keeps a worker busy so that a second task goes to the other worker.
    """
    import sys
    import time

    time.sleep(delay)
    files = [
        str(m.__file__)
        for name, m in list(sys.modules.items())
        if (name == "procpool" or name.startswith("procpool.")) and getattr(m, "__file__", None)
    ]
    return {"pid": os.getpid(), "files": sorted(files)}


# --------------------------------------------------------------------------- B2 / B6


def spin(iterations: int) -> int:
    """Pure-Python CPU work: ``iterations`` loop turns, holding the GIL throughout.

    Returns a value that depends on every turn so no layer can skip the work.
    """
    acc = 0
    for i in range(iterations):
        acc = (acc + i * i) & 0xFFFF
    return acc


def timed_spin(iterations: int) -> tuple[int, float, float, float]:
    """``spin``, and when it ran: (pid, start, end, CPU seconds) for ``probes.py``.

    ``time.perf_counter`` is one clock for every process of the machine (Linux's
    CLOCK_MONOTONIC), so the parent can lay the workers' tasks on one time line.
    """
    import time

    cpu = time.thread_time()
    start = time.perf_counter()
    spin(iterations)
    end = time.perf_counter()
    return os.getpid(), start, end, time.thread_time() - cpu


def calibrate_spin(target_seconds: float, rounds: int = 7) -> int:
    """Return the ``spin`` iteration count that takes ``target_seconds`` here.

    The fastest of ``rounds`` timings is used: it is the one least disturbed by
    other processes, i.e. closest to what a worker on an idle core will see.
    """
    import time

    probe = 1_000_000  # ~50 ms: long enough that timer and scheduler noise vanish
    spin(probe // 10)  # warm up (first call pays for bytecode specialisation)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        spin(probe)
        best = min(best, time.perf_counter() - t0)
    return max(1, int(probe * target_seconds / best))


# --------------------------------------------------------------------------- B5


def identity(x: Any) -> Any:
    """Send the payload back unchanged (B5 identity: data moves both ways)."""
    return x


def array_sum(x: Any) -> float:
    """Reduce the payload to one float (B5 sum: data moves one way only)."""
    return float(x.sum())


# --------------------------------------------------------------------------- B8
#
# procpool's (and multiprocessing's) way: an initializer stores the big object in
# a module global of this worker-side module, once per worker; tasks read it.

_STATE: Any = None
"""The per-worker object of B8, set by :func:`init_state` in each worker."""


def init_state(obj: Any) -> None:
    """Pool initializer for B8: keep ``obj`` for the tasks of this worker."""
    global _STATE
    _STATE = obj


def use_state(i: int) -> int:
    """B8 task: look one element up in the per-worker object."""
    state = _STATE
    if state is None:
        raise RuntimeError("init_state() did not run in this worker")
    return int(state[(i * 7919) % len(state)])


def use_shared(obj: Any, i: int) -> int:
    """B8 task for libraries whose idiom passes the object as an argument
    (mpire ``shared_objects``, joblib auto-memmapping)."""
    return int(obj[(i * 7919) % len(obj)])


def use_worker_state(worker_state: dict[str, Any], i: int) -> int:
    """B8 task for mpire's ``worker_state`` idiom (object set by ``worker_init``)."""
    obj = worker_state["obj"]
    return int(obj[(i * 7919) % len(obj)])


def make_big_object(nbytes: int) -> Any:
    """The ~200 MB object of B8: a numpy array if numpy is there, else ``bytes``.

    A numpy array lets joblib use its idiom (automatic memory-mapping); without
    numpy (quick mode in the development venv) plain bytes stand in.
    """
    try:
        import numpy as np
    except ImportError:
        return os.urandom(1024) * (nbytes // 1024)
    # arange, not random: filling 200 MB with random numbers costs seconds and
    # the contents do not matter to any transport.
    return np.arange(nbytes // 8, dtype=np.int64)


# --------------------------------------------------------------------------- B3 floor


def pipe_echo_server(conn: Any) -> None:
    """Child side of the bare ``multiprocessing.Pipe`` round trip: echo until None."""
    while True:
        msg = conn.recv()
        if msg is None:
            break
        conn.send(msg)
    conn.close()


def matmul(seed: int) -> float:
    """B9: four 600 x 600 matrix products (numpy's BLAS, multithreaded unless limited)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    a = rng.random((600, 600))
    b = rng.random((600, 600))
    for _ in range(4):
        a = a @ b
        a /= a.max()
    return float(a.sum())


# --------------------------------------------------------------------------- Ray (issue 27)


def apply_batch(fn: Any, batch: list[Any]) -> list[Any]:
    """``[fn(x) for x in batch]``: raw Ray's B1, batched by hand as Ray's docs advise."""
    return [fn(x) for x in batch]

"""The test process's side of the Ray tests: one local Ray instance for the whole session.

``conftest.py``'s session-scoped ``ray_session`` fixture starts it the first time a
test needs it and shuts it down at the end of the session; ``conftest.py`` also
moves every ``ray``-marked test to the end of the session, because a Ray driver
keeps native threads after ``ray.shutdown()``, and ``os.fork()`` in a process with
threads is a DeprecationWarning on Python 3.12+ (an error here) for every
fork-based test that would follow.

The instance is started the way ``RayPool()`` starts its own (loopback only, no
dashboard, token authentication as Ray 2.60 sets it for a local instance), with two
CPUs, the logs of its workers kept out of pytest's output, and ``tests/`` on the
workers' ``PYTHONPATH``, so that they import ``helpers`` and ``dask_helpers`` by
name as Pool's and Dask's workers do.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import ray

from procpool._ray_connect import init_local

TESTS = Path(__file__).resolve().parent
#: CPUs of the session's Ray instance: two worker processes run at once.
CPUS = 2


@contextlib.contextmanager
def local_ray() -> Iterator[None]:
    """Start a local Ray instance of :data:`CPUS` CPUs; shut it down on the way out."""
    path = os.environ.get("PYTHONPATH")
    # The raylet (and through it every worker) inherits this environment at start.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), path) if p)
    try:
        init_local(ray, CPUS, log_to_driver=False)
    finally:
        if path is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = path
    try:
        yield
    finally:
        ray.shutdown()

"""The public surface: every name exported, documented, and presented as procpool.X."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import procpool

API_DOC = (Path(__file__).parent.parent / "docs" / "api.md").read_text()
DESIGN_NAMES = {
    "Future",
    "MapFuture",
    "Pool",
    "ProcessTask",
    "ProcessHandle",
    "spawn",
    "ProcpoolError",
    "WorkerLostError",
    "TaskTimeoutError",
    "PoolClosedError",
    "SerializationError",
    "__version__",
}


def test_every_design_name_is_exported() -> None:
    assert set(procpool.__all__) >= DESIGN_NAMES
    for name in procpool.__all__:
        assert getattr(procpool, name) is not None


def test_every_public_name_is_in_the_api_docs() -> None:
    for name in procpool.__all__:
        if name != "__version__":
            assert f"procpool.{name}" in API_DOC, f"procpool.{name} is missing from docs/api.md"


def test_public_names_present_themselves_as_procpool() -> None:
    for name in procpool.__all__:
        value = getattr(procpool, name)
        if isinstance(value, (type, types.FunctionType)):
            assert value.__module__ == "procpool", name


def test_classes_met_before_they_are_named_say_procpool() -> None:
    """A WorkerLostError raised by a pool says procpool.WorkerLostError in its traceback,
    though the program never named it (``__module__`` is set in one place, __init__)."""
    code = (
        "import os, procpool\n"
        "with procpool.Pool(1, context='fork') as pool:\n"
        "    error = pool.submit(os._exit, 3).exception(timeout=30)\n"
        "print(type(error).__module__, type(error).__name__, type(pool.stats()).__module__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["procpool", "WorkerLostError", "procpool"], out.stderr


def test_errors_form_one_hierarchy() -> None:
    for name in ("WorkerLostError", "TaskTimeoutError", "PoolClosedError", "SerializationError"):
        assert issubclass(getattr(procpool, name), procpool.ProcpoolError)
    assert issubclass(procpool.TaskTimeoutError, TimeoutError)
    assert issubclass(procpool.PoolClosedError, RuntimeError)


def test_importing_the_worker_loop_stays_light() -> None:
    # A worker process imports procpool._child.worker: it must not drag in the pool,
    # asyncio, Dask or Ray (start-up time under spawn and forkserver), nor logging,
    # traceback or concurrent.futures.process, which it loads only when it
    # forwards logs or a task fails (together ~11 ms of every worker's start).
    heavy = (
        "asyncio",
        "procpool._pool",
        "procpool._dask",
        "distributed",
        "procpool._ray",
        "ray",
        "logging",
        "traceback",
        "concurrent.futures.process",
    )
    code = f"import sys, procpool._child.worker; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_dir_shows_the_public_names_not_the_package_tools() -> None:
    names = dir(procpool)
    assert set(procpool.__all__) <= set(names)
    for tool in ("importlib", "sys", "types", "annotations", "TYPE_CHECKING", "_publish", "_WHERE"):
        assert tool not in names
    assert [n for n in names if not n.startswith("__")] == sorted(
        n for n in procpool.__all__ if not n.startswith("__")
    )


def test_importing_procpool_and_its_pool_loads_no_cluster_engine() -> None:
    """Dask and Ray are optional: imported only when a DaskPool or RayPool is built."""
    code = (
        "import sys, procpool\n"
        "procpool.Pool, procpool.DaskPool, procpool.RayPool, procpool.Future\n"
        "print(sorted(m for m in ('distributed', 'dask', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

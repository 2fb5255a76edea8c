"""One adapter per library, so every workload runs the same way on each of them.

An adapter opens a *session* (a running pool) and offers the four operations the
workloads need — ``map``, ``call`` (one round trip), ``imap`` and ``close`` —
each written the way that library's own documentation does it.  B8 (expensive
worker set-up) is different per library on purpose, so each adapter also has
``run_with_state``: its idiomatic way of giving every worker a big object.

Every library is imported lazily, inside the adapter: a measurement process only
pays for (and only needs) the library it measures, and quick mode runs in a venv
that has none of the peers.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import workloads

WORKERS = 2
"""Every pool in every workload has two workers (issue 4)."""


def tuned_chunksize(n: int, workers: int = WORKERS) -> int:
    """``multiprocessing.Pool``'s own heuristic: about four chunks per worker."""
    return max(1, math.ceil(n / (workers * 4)))


class Session:
    """A running pool.  Subclasses override what their library supports."""

    def map(self, fn: Callable[[Any], Any], xs: list[Any], chunksize: int | None) -> list[Any]:
        """Apply ``fn`` to every item; results in input order."""
        raise NotImplementedError

    def call(self, fn: Callable[[Any], Any], x: Any) -> Any:
        """One task, waited for: a full round trip."""
        raise NotImplementedError

    def imap(
        self, fn: Callable[[Any], Any], it: Iterable[Any], chunksize: int, buffersize: int | None
    ) -> Iterator[Any]:
        """Lazy ordered map over a (possibly endless) iterable.

        ``buffersize`` is the read-ahead for libraries that take one (B7);
        ``None`` means the library's default, as for a caller who passes nothing
        (B7d).  Libraries without a buffersize ignore it.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Graceful shutdown: wait for the workers to exit."""


class Contender:
    """A library under test.  ``key`` names it on the command line and in JSON."""

    key = ""
    label = ""
    #: Start methods the library can be asked for; others are reported as n/a.
    methods: tuple[str, ...] = ("fork", "spawn", "forkserver")
    #: What the library uses when the comparison asks for ``fork`` but it cannot.
    fallback_note = ""
    #: ``map`` with the library's default chunksize sends one item per message
    #: (B1 over 200,000 items would take minutes): measure on fewer items.
    slow_default_map = False
    #: Chunksize used when the caller passes ``None`` (library default = None).
    tuned = False
    #: One round trip costs milliseconds: B3 takes its median over fewer calls.
    slow_round_trip = False
    #: Its ``imap`` takes a ``buffersize`` (B7d measures it with the default).
    imap_buffersize = False
    #: The name a user knows it by, for the summary at the top of the report.
    name = ""

    @property
    def long_label(self) -> str:
        """``name``, or ``label`` where the two are the same."""
        return self.name or self.label

    def import_check(self) -> None:
        """Import the library, raising ImportError/AttributeError if unusable."""

    def warm(self, session: Session) -> None:
        """One trivial task, so every worker process exists before the clock starts."""
        session.call(workloads.noop, 0)

    def version(self) -> str:
        """Installed version of the library, for the machine description."""
        return ""

    def open(
        self,
        method: str | None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> Session:
        """Start a pool of ``WORKERS`` with start method ``method`` (None: default)."""
        raise NotImplementedError

    def run_with_state(self, method: str | None, obj: Any, tasks: int) -> list[int]:
        """B8: start a pool whose workers all hold ``obj``, run ``tasks`` lookups, stop.

        Default idiom: an initializer storing the object in a module global.
        """
        session = self.open(method, workloads.init_state, (obj,))
        try:
            return session.map(workloads.use_state, list(range(tasks)), None)
        finally:
            session.close()


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def _ctx(method: str | None) -> Any:
    return mp.get_context(method)


# --------------------------------------------------------------------------- serial


class _SerialSession(Session):
    def map(self, fn: Callable[[Any], Any], xs: list[Any], chunksize: int | None) -> list[Any]:
        return list(map(fn, xs))

    def call(self, fn: Callable[[Any], Any], x: Any) -> Any:
        return fn(x)

    def imap(
        self, fn: Callable[[Any], Any], it: Iterable[Any], chunksize: int, buffersize: int | None
    ) -> Iterator[Any]:
        return map(fn, it)


class Serial(Contender):
    """No pool: the same work in the measuring process, as the baseline."""

    key = "serial"
    label = "serial"

    def open(
        self,
        method: str | None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> Session:
        if initializer is not None:
            initializer(*initargs)
        return _SerialSession()


# --------------------------------------------------------------------------- multiprocessing


class _MpSession(Session):
    def __init__(self, pool: Any) -> None:
        self.pool = pool

    def map(self, fn: Callable[[Any], Any], xs: list[Any], chunksize: int | None) -> list[Any]:
        return self.pool.map(fn, xs, chunksize)  # type: ignore[no-any-return]

    def call(self, fn: Callable[[Any], Any], x: Any) -> Any:
        return self.pool.apply_async(fn, (x,)).get()

    def imap(
        self, fn: Callable[[Any], Any], it: Iterable[Any], chunksize: int, buffersize: int | None
    ) -> Iterator[Any]:
        return self.pool.imap(fn, it, chunksize)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.pool.close()
        self.pool.join()


class MpPool(Contender):
    """``multiprocessing.Pool``: ``map`` / ``apply_async`` / ``imap``."""

    key = "mp"
    label = "mp.Pool"
    name = "multiprocessing.Pool"

    def version(self) -> str:
        return "stdlib"

    def open(
        self,
        method: str | None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> Session:
        return _MpSession(_ctx(method).Pool(WORKERS, initializer, initargs))


# --------------------------------------------------------------------------- concurrent.futures


class _ExecutorSession(Session):
    """Works for ``concurrent.futures.ProcessPoolExecutor`` and loky's executor."""

    def __init__(self, executor: Any, tuned: bool) -> None:
        self.executor = executor
        self.tuned = tuned

    def map(self, fn: Callable[[Any], Any], xs: list[Any], chunksize: int | None) -> list[Any]:
        if chunksize is None:
            chunksize = tuned_chunksize(len(xs)) if self.tuned else 1
        return list(self.executor.map(fn, xs, chunksize=chunksize))

    def call(self, fn: Callable[[Any], Any], x: Any) -> Any:
        return self.executor.submit(fn, x).result()

    def imap(
        self, fn: Callable[[Any], Any], it: Iterable[Any], chunksize: int, buffersize: int | None
    ) -> Iterator[Any]:
        # Executor.map has no buffersize before Python 3.14: it reads all input.
        return self.executor.map(fn, it, chunksize=chunksize)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.executor.shutdown(wait=True)


class Executor(Contender):
    """``concurrent.futures.ProcessPoolExecutor`` with its default chunksize (1)."""

    key = "ppe"
    label = "PPE"
    name = "ProcessPoolExecutor"
    slow_default_map = True

    def version(self) -> str:
        return "stdlib"

    def open(
        self,
        method: str | None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> Session:
        from concurrent.futures import ProcessPoolExecutor

        ex = ProcessPoolExecutor(
            WORKERS, mp_context=_ctx(method), initializer=initializer, initargs=initargs
        )
        return _ExecutorSession(ex, self.tuned)


class ExecutorTuned(Executor):
    """``ProcessPoolExecutor`` with ``chunksize`` set as ``multiprocessing.Pool`` sets it."""

    key = "ppe_tuned"
    label = "PPE tuned"
    name = "ProcessPoolExecutor (tuned chunksize)"
    slow_default_map = False
    tuned = True


# --------------------------------------------------------------------------- loky


class Loky(Contender):
    """loky's ``ProcessPoolExecutor`` (the engine under joblib)."""

    key = "loky"
    label = "loky"
    # loky refuses to fork (not POSIX-safe with threads); its own "loky" method
    # is fork+exec, i.e. spawn-like.  It stands in wherever fork is asked for.
    methods = ("spawn", "forkserver", "loky")
    fallback_note = "loky start method (loky cannot fork)"
    slow_default_map = True

    def import_check(self) -> None:
        import loky  # noqa: F401

    def version(self) -> str:
        return _version("loky")

    def _method(self, method: str | None) -> str:
        """loky's own method where fork (or the default) is asked for."""
        return method if method in self.methods and method is not None else "loky"

    def open(
        self,
        method: str | None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> Session:
        import loky
        from loky.backend.context import get_context

        ctx = get_context(self._method(method))
        ex = loky.ProcessPoolExecutor(
            WORKERS, context=ctx, initializer=initializer, initargs=initargs
        )
        return _ExecutorSession(ex, self.tuned)


# --------------------------------------------------------------------------- pebble


class _PebbleSession(Session):
    def __init__(self, pool: Any) -> None:
        self.pool = pool

    def map(self, fn: Callable[[Any], Any], xs: list[Any], chunksize: int | None) -> list[Any]:
        return list(self.pool.map(fn, xs, chunksize=chunksize or 1).result())

    def call(self, fn: Callable[[Any], Any], x: Any) -> Any:
        return self.pool.schedule(fn, args=(x,)).result()

    def imap(
        self, fn: Callable[[Any], Any], it: Iterable[Any], chunksize: int, buffersize: int | None
    ) -> Iterator[Any]:
        return iter(self.pool.map(fn, it, chunksize=chunksize).result())

    def close(self) -> None:
        self.pool.close()
        self.pool.join()


class Pebble(Contender):
    """pebble's ``ProcessPool``: ``schedule`` / ``map``."""

    key = "pebble"
    label = "pebble"
    slow_default_map = True

    def import_check(self) -> None:
        import pebble  # noqa: F401

    def version(self) -> str:
        return _version("pebble")

    def open(
        self,
        method: str | None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> Session:
        import pebble

        pool = pebble.ProcessPool(
            max_workers=WORKERS, initializer=initializer, initargs=initargs, context=_ctx(method)
        )
        return _PebbleSession(pool)


# --------------------------------------------------------------------------- mpire


class _MpireSession(Session):
    def __init__(self, pool: Any) -> None:
        self.pool = pool

    def map(self, fn: Callable[[Any], Any], xs: list[Any], chunksize: int | None) -> list[Any]:
        # concatenate_numpy_output=False: by default mpire glues array results
        # into one big array, an extra copy the other libraries do not make.
        return self.pool.map(  # type: ignore[no-any-return]
            fn, xs, chunk_size=chunksize, concatenate_numpy_output=False
        )

    def call(self, fn: Callable[[Any], Any], x: Any) -> Any:
        return self.pool.apply(fn, args=(x,))

    def imap(
        self, fn: Callable[[Any], Any], it: Iterable[Any], chunksize: int, buffersize: int | None
    ) -> Iterator[Any]:
        return self.pool.imap(fn, it, chunk_size=chunksize)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.pool.stop_and_join()


class Mpire(Contender):
    """mpire's ``WorkerPool`` (kept alive between calls, as its docs advise)."""

    key = "mpire"
    label = "mpire"

    def import_check(self) -> None:
        import mpire  # noqa: F401

    def version(self) -> str:
        return _version("mpire")

    def open(
        self,
        method: str | None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> Session:
        from mpire import WorkerPool

        if initializer is not None:
            raise NotImplementedError("mpire has no pool-wide initializer; see run_with_state")
        pool = WorkerPool(n_jobs=WORKERS, start_method=method or "fork", keep_alive=True)
        return _MpireSession(pool)

    def run_with_state(self, method: str | None, obj: Any, tasks: int) -> list[int]:
        """mpire's idiom: ``shared_objects`` (copy-on-write under fork)."""
        from mpire import WorkerPool

        with WorkerPool(n_jobs=WORKERS, shared_objects=obj, start_method=method or "fork") as pool:
            out: list[int] = pool.map(workloads.use_shared, list(range(tasks)))
            pool.stop_and_join()
        return out


# --------------------------------------------------------------------------- joblib


class _JoblibSession(Session):
    def __init__(self) -> None:
        from joblib import Parallel

        # Entering Parallel once keeps its workers for all calls (joblib's idiom
        # for many small Parallel calls); batch_size="auto" is its default.
        self.parallel = Parallel(n_jobs=WORKERS)
        self.parallel.__enter__()

    def map(self, fn: Callable[[Any], Any], xs: list[Any], chunksize: int | None) -> list[Any]:
        from joblib import Parallel, delayed

        if chunksize is None:
            return list(self.parallel(delayed(fn)(x) for x in xs))
        return list(Parallel(n_jobs=WORKERS, batch_size=chunksize)(delayed(fn)(x) for x in xs))

    def call(self, fn: Callable[[Any], Any], x: Any) -> Any:
        from joblib import delayed

        return self.parallel([delayed(fn)(x)])[0]

    def imap(
        self, fn: Callable[[Any], Any], it: Iterable[Any], chunksize: int, buffersize: int | None
    ) -> Iterator[Any]:
        from joblib import Parallel, delayed

        par = Parallel(n_jobs=WORKERS, batch_size=chunksize, return_as="generator")
        return iter(par(delayed(fn)(x) for x in it))

    def close(self) -> None:
        from joblib.externals.loky import get_reusable_executor

        self.parallel.__exit__(None, None, None)
        # joblib keeps loky workers for the next call; stop them so start-up
        # figures include a shutdown, as for every other library.
        get_reusable_executor().shutdown(wait=True)


class Joblib(Contender):
    """joblib ``Parallel`` / ``delayed`` (default loky backend)."""

    key = "joblib"
    label = "joblib"
    methods = ()
    fallback_note = "loky backend (start method not selectable)"
    slow_round_trip = True

    def import_check(self) -> None:
        import joblib  # noqa: F401

    def version(self) -> str:
        return _version("joblib")

    def open(
        self,
        method: str | None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> Session:
        if initializer is not None:
            raise NotImplementedError("joblib has no initializer; see run_with_state")
        return _JoblibSession()

    def run_with_state(self, method: str | None, obj: Any, tasks: int) -> list[int]:
        """joblib's idiom: pass the object; arrays over 1 MB are memory-mapped once."""
        from joblib import Parallel, delayed
        from joblib.externals.loky import get_reusable_executor

        out = Parallel(n_jobs=WORKERS)(delayed(workloads.use_shared)(obj, i) for i in range(tasks))
        get_reusable_executor().shutdown(wait=True)
        return list(out)


# --------------------------------------------------------------------------- procpool


class _ProcpoolSession(Session):
    def __init__(self, pool: Any) -> None:
        self.pool = pool

    def map(self, fn: Callable[[Any], Any], xs: list[Any], chunksize: int | None) -> list[Any]:
        return self.pool.map(fn, xs, chunksize=chunksize).result()  # type: ignore[no-any-return]

    def call(self, fn: Callable[[Any], Any], x: Any) -> Any:
        return self.pool.submit(fn, x).result()

    def imap(
        self, fn: Callable[[Any], Any], it: Iterable[Any], chunksize: int, buffersize: int | None
    ) -> Iterator[Any]:
        if buffersize is None:  # what a caller who passes nothing gets
            return self.pool.imap(fn, it, chunksize=chunksize)  # type: ignore[no-any-return]
        return self.pool.imap(  # type: ignore[no-any-return]
            fn, it, chunksize=chunksize, buffersize=buffersize
        )

    def close(self) -> None:
        self.pool.close()
        self.pool.join()


class Procpool(Contender):
    """procpool's ``Pool`` (this project), automatic chunking by default."""

    key = "procpool"
    label = "procpool"
    imap_buffersize = True

    def import_check(self) -> None:
        import procpool

        # Until the core lands, ``procpool`` is only a namespace: say so.
        if not hasattr(procpool, "Pool"):
            raise ImportError("procpool.Pool does not exist yet (core not on main)")

    def version(self) -> str:
        import procpool

        return str(getattr(procpool, "__version__", "?"))

    def open(
        self,
        method: str | None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> Session:
        import procpool

        pool = procpool.Pool(
            workers=WORKERS, context=method, initializer=initializer, initargs=initargs
        )
        return _ProcpoolSession(pool)


BASE_ENV = "PROCPOOL_BENCH_BASE"
"""Set by run.py (``--procpool-base``) for procpool_base's processes only: the
``src`` folder of the other procpool, which run.py also puts first on their
``PYTHONPATH``."""


def _base_src() -> Path:
    base = os.environ.get(BASE_ENV)
    if not base:
        raise ImportError("no second source tree: pass --procpool-base PATH to run.py")
    return Path(base).resolve()


def check_origin(origin: dict[str, Any], where: str) -> None:
    """Raise unless every procpool module loaded in ``origin``'s process is the base's."""
    base = _base_src()
    files: list[str] = origin["files"]
    wrong = [f for f in files if not Path(f).resolve().is_relative_to(base)]
    if not files or wrong:
        raise ImportError(
            f"{where} (pid {origin['pid']}) runs procpool from "
            f"{', '.join(wrong[:3]) or 'nowhere'}, not from {base}"
        )


class ProcpoolBase(Procpool):
    """procpool from another source tree (``run.py --procpool-base PATH``).

    Measured as one more contender, interleaved with this tree's procpool in the
    same run: PATH is typically the ``src`` folder of a git worktree of the
    commit before a change (``make -C benchmarks compare BASE=<rev>``).  run.py
    puts PATH first on the ``PYTHONPATH`` of these measurement processes, ahead
    of this tree's editable install; their workers get it too (fork: the
    parent's modules; spawn and forkserver: the environment and the parent's
    ``sys.path``).  Checked rather than assumed: the measuring process in
    ``import_check``, a worker at every warm-up, and both workers under fork,
    spawn and forkserver in ``check_workers`` (run once per run, by the probe).
    """

    key = "procpool_base"
    label = "procpool base"

    def import_check(self) -> None:
        super().import_check()
        check_origin(workloads.procpool_origin(), "the measuring process")

    def version(self) -> str:
        return f"{super().version()} from {_base_src()}"

    def warm(self, session: Session) -> None:
        # The warm-up task of every other contender, with a check in the worker.
        check_origin(session.call(workloads.procpool_origin, 0), "a worker")

    def check_workers(self) -> str:
        """Run two tasks at once in a fresh pool per start method; check both workers."""
        seen: list[str] = []
        for method in ("fork", "spawn", "forkserver"):
            session = self.open(method)
            try:
                # Two slow tasks, one item per chunk: each idle worker takes one.
                origins = session.map(workloads.procpool_origin, [0.2] * WORKERS, 1)
            finally:
                session.close()
            for origin in origins:
                check_origin(origin, f"a {method} worker")
            seen.append(f"{method} ({len({o['pid'] for o in origins})} workers)")
        return "workers checked under " + ", ".join(seen)


# --------------------------------------------------------------------------- dask hook
#
# HOOK (issue 6): procpool.DaskPool on a dask LocalCluster, for B2 and B3 only
# (run.py's build_jobs adds it to those two).  It runs when ``distributed`` is
# installed and procpool has DaskPool; otherwise the probe says why it is skipped.


class _DaskSession(_ProcpoolSession):
    def __init__(self, pool: Any, client: Any, cluster: Any) -> None:
        super().__init__(pool)
        self.client = client
        self.cluster = cluster

    def close(self) -> None:
        super().close()  # DaskPool.close() + join(): every task done
        self.client.close()
        self.cluster.close()


class DaskPool(Contender):
    """``procpool.DaskPool`` over ``distributed.LocalCluster`` (2 worker processes)."""

    key = "dask"
    label = "procpool Dask"
    methods = ()
    fallback_note = "dask nanny processes (start method not selectable)"
    slow_round_trip = True

    def import_check(self) -> None:
        import distributed  # noqa: F401

        import procpool

        if not hasattr(procpool, "DaskPool"):
            raise ImportError("procpool.DaskPool does not exist yet (issue 6)")

    def version(self) -> str:
        return "distributed " + _version("distributed")

    def open(
        self,
        method: str | None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> Session:
        import distributed

        import procpool

        cluster = distributed.LocalCluster(
            n_workers=WORKERS, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = distributed.Client(cluster)
        return _DaskSession(procpool.DaskPool(client), client, cluster)


# --------------------------------------------------------------------------- ray hook
#
# HOOK (issue 27): procpool.RayPool against raw Ray (``ray.get(f.remote(x))``) and
# Ray's own ``ray.util.multiprocessing.Pool``, for B1, B3 and B5 only, run by
# ``ray_bench.py`` (``make -C benchmarks bench-ray``), not by ``run.py``.  Every
# session starts the same local Ray instance: WORKERS CPUs, loopback, no dashboard
# (procpool's ``init_local``, what ``RayPool()`` starts), and shuts it down.


def _start_ray() -> Any:
    import ray

    from procpool._ray_connect import init_local

    init_local(ray, WORKERS, log_to_driver=False)
    return ray


class _RayPoolSession(_ProcpoolSession):
    def close(self) -> None:
        import ray

        super().close()
        ray.shutdown()


class _RawRaySession(Session):
    """Ray's own idiom: ``ray.get([f.remote(x) for x in xs])``, one task per item.

    A ``map`` of more than 1,000 items is batched by hand (``workloads.apply_batch``
    over about four batches per CPU, as Ray's docs advise against tiny tasks): one
    task per item would take minutes for B1's 200,000.
    """

    def __init__(self) -> None:
        self.ray = _start_ray()
        self._remote: dict[Any, Any] = {}

    def _of(self, fn: Callable[..., Any]) -> Any:
        if fn not in self._remote:
            self._remote[fn] = self.ray.remote(fn)
        return self._remote[fn]

    def map(self, fn: Callable[[Any], Any], xs: list[Any], chunksize: int | None) -> list[Any]:
        if len(xs) <= 1000 and chunksize is None:
            remote = self._of(fn)
            return list(self.ray.get([remote.remote(x) for x in xs]))
        size = chunksize or tuned_chunksize(len(xs))
        batch = self._of(workloads.apply_batch)
        parts = self.ray.get([batch.remote(fn, xs[i : i + size]) for i in range(0, len(xs), size)])
        return [y for part in parts for y in part]

    def call(self, fn: Callable[[Any], Any], x: Any) -> Any:
        return self.ray.get(self._of(fn).remote(x))

    def close(self) -> None:
        self.ray.shutdown()


class _RayMpSession(Session):
    def __init__(self) -> None:
        self.ray = _start_ray()
        from ray.util.multiprocessing import Pool

        self.pool = Pool(processes=WORKERS)

    def map(self, fn: Callable[[Any], Any], xs: list[Any], chunksize: int | None) -> list[Any]:
        return list(self.pool.map(fn, xs, chunksize=chunksize))

    def call(self, fn: Callable[[Any], Any], x: Any) -> Any:
        return self.pool.apply(fn, (x,))

    def close(self) -> None:
        self.pool.close()
        self.pool.join()
        self.ray.shutdown()


class _RayContender(Contender):
    methods = ()
    fallback_note = "Ray's raylet starts the workers (start method not selectable)"

    def import_check(self) -> None:
        import ray  # noqa: F401

    def version(self) -> str:
        return "ray " + _version("ray")

    def warm(self, session: Session) -> None:
        # Ray starts workers (and Pool actors) on demand: busy every one first.
        session.map(workloads.noop, list(range(4 * WORKERS)), 1)


class RayPool(_RayContender):
    """``procpool.RayPool`` on a local Ray instance (WORKERS CPUs)."""

    key = "ray"
    label = "procpool RayPool"
    name = "procpool.RayPool"

    def import_check(self) -> None:
        import ray  # noqa: F401

        import procpool

        if not hasattr(procpool, "RayPool"):
            raise ImportError("procpool.RayPool does not exist yet (issue 27)")

    def open(
        self,
        method: str | None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> Session:
        import procpool

        _start_ray()
        return _RayPoolSession(procpool.RayPool())


class RawRay(_RayContender):
    """Raw Ray tasks: ``ray.get(f.remote(x))``."""

    key = "ray_raw"
    label = "raw Ray"
    name = "raw Ray tasks"

    def open(
        self,
        method: str | None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> Session:
        return _RawRaySession()


class RayMpPool(_RayContender):
    """``ray.util.multiprocessing.Pool`` (Ray's copy of multiprocessing.Pool, on actors)."""

    key = "ray_mp"
    label = "Ray Pool"
    name = "ray.util.multiprocessing.Pool"

    def open(
        self,
        method: str | None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> Session:
        return _RayMpSession()


CONTENDERS: dict[str, Contender] = {
    c.key: c
    for c in (
        Serial(),
        MpPool(),
        Executor(),
        ExecutorTuned(),
        Loky(),
        Pebble(),
        Mpire(),
        Joblib(),
        Procpool(),
        ProcpoolBase(),
        DaskPool(),
        RayPool(),
        RawRay(),
        RayMpPool(),
    )
}
"""Every contender, in table column order."""

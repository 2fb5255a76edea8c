"""The Ray side of ``RayPool``: the Ray connection, submitting, reading outcomes, cancelling.

What every pool on a cluster engine shares (tasks in flight, retries, the
lifecycle) is in :mod:`._remote_core`; this module is the :class:`RayBackend` it
drives. One task::

    RayBackend.submit ── ray.remote(fn).remote(*args, **kwargs)    (a plain call)
         │               or a procpool helper of ._ray_task:
         │                 call(fn, args, kwargs)       ObjectRefs among the arguments
         │                 run_items(fn, items, star)   a map chunk
         │                 limited(fn, items, ...)      a time limit: a streaming generator
         ▼
    a Ray worker process runs it; the ObjectRef (or the generator) is kept in the
    job until the task is done, and its result stays in Ray's object store until
    the procpool future is done with it
         │
         ▼
    a submit: a thread waiting in ``result()`` fetches the value itself (``ray.get``);
    else Ray says the object exists (``ObjectRef._on_ready``) and a fetch thread
    gets it. A chunk: ``ref.future()`` calls back on Ray's own thread with the
    value. A time-limited task: its first item is awaited on the backend's asyncio
    loop thread, and a worker stuck past its limit is killed (``ray.cancel(force=True)``)
    before the rest of its chunk goes on elsewhere. Either way the core resolves
    the procpool future from :meth:`RayBackend.outcome`; numpy arrays come from the
    object store without a copy, read-only.

Ray is imported only when a ``RayPool`` is built, and this module type-checks
without it (Ray's objects are ``Any``).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import importlib
import inspect
import logging
import math
import os
import pickle
import re
import secrets
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _ray_task
from ._child.dask_chunk import NotSendable, Outcome, TimedOut, task_name
from ._errors import RemoteTraceback, SerializationError, TaskTimeoutError, WorkerLostError
from ._remote_core import (
    Backend,
    Cancelled,
    CancelMode,
    ChunkResult,
    Continue,
    RemoteJob,
    Resubmit,
    Result,
    Threads,
    Value,
)

LOGGER = logging.getLogger("procpool")

INSTALL_HINT = 'RayPool needs Ray: pip install "procpool[ray]"'


def import_ray() -> Any:
    """Import ``ray`` on first use; typed ``Any`` so no stubs are needed."""
    try:
        return importlib.import_module("ray")
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the system tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def init_local(ray: Any, num_cpus: int, **kwargs: Any) -> Any:
    """Start a new Ray instance on this machine that only this user can reach.

    ``ray.init(address="local")`` always starts a new instance (with no address
    Ray would join a cluster that ``ray start`` left running, or one named by
    ``RAY_ADDRESS``), here without the dashboard. On Linux Ray's servers (GCS,
    raylet, object manager, every worker) listen on the machine's own IP address,
    which other machines can reach; a local-only instance, the mode Ray uses on
    macOS and Windows, binds them all to 127.0.0.1. Ray 2.60 decides which by a
    module constant read when it picks the node's address, so it is switched for
    the duration of ``ray.init``. Other users of this machine can still reach
    loopback: Ray's token authentication (on by default for a local instance
    since Ray 2.59) keeps them out, provided they cannot read the token, which Ray
    writes with the process's umask; see :func:`private_token`.
    """
    private_token()
    constants: Any = importlib.import_module("ray._private.ray_constants")
    cluster_mode = constants.ENABLE_RAY_CLUSTER
    constants.ENABLE_RAY_CLUSTER = False
    try:
        return ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **kwargs)
    finally:
        constants.ENABLE_RAY_CLUSTER = cluster_mode


#: Seconds a cancel waits for the tasks' replies already on their way (see RayBackend._stop).
CANCEL_SETTLE = 0.005
#: The same for ``shutdown(cancel_futures=True)``, which does not need the running
#: tasks stopped: the short ones end meanwhile and are not cancelled at all.
UNSTARTED_SETTLE = 0.1

#: A worker that dies this soon after the pool cancelled a task may have died of it
#: (see RayBackend._translate); a collateral death reaches the driver within
#: milliseconds of the kill, and a task that crashes by itself in this window runs
#: again (MAX_RESUBMITS times at most) before it fails.
KILL_WINDOW = 0.5

#: Where Ray 2.60 keeps the token of local instances when nothing else names one.
TOKEN_FILE = Path("~/.ray/auth_token")


def private_token() -> None:
    """Make Ray's default token file readable by this user only, before Ray writes it.

    Ray creates ``~/.ray/auth_token`` on the first ``ray.init()`` that needs a token,
    with the process's umask (usually 0644: readable by every local user who can
    enter the home folder, and the token is all it takes to run code on the
    instance). When token authentication is on and the token comes from that
    file, create it first (a 0700 folder, a 0600 file, 64 random hex digits as Ray
    makes them), and warn on the ``procpool`` logger about an existing one that
    others can read. A token set by ``RAY_AUTH_TOKEN``/``RAY_AUTH_TOKEN_PATH`` is
    left alone.
    """
    mode = os.environ.get("RAY_AUTH_MODE", "token").lower()
    if mode != "token" or "RAY_AUTH_TOKEN" in os.environ or "RAY_AUTH_TOKEN_PATH" in os.environ:
        return
    path = TOKEN_FILE.expanduser()
    try:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if os.name == "posix" and path.stat().st_mode & 0o077:
            LOGGER.warning(
                "%s can be read by other users, and it lets anyone who reads it run code "
                "on your local Ray instances: chmod 600 %s",
                path,
                path,
            )
        return
    except OSError:  # no home folder, read-only: Ray will say what it needs
        return
    with os.fdopen(fd, "w") as token:
        token.write(secrets.token_hex(32))


class _Connection:
    """The Ray connection procpool made in this process, shared by the pools that use it.

    Ray connects a process to one cluster at a time. A ``RayPool`` that finds Ray
    already initialized by the program uses that connection and never shuts it
    down; one that has to connect (or start a local instance) does so here, and
    the last pool using that connection shuts it down when it is released.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.address: str | None = None

    def acquire(self, ray: Any, address: str | None) -> bool:
        """Connect (or start Ray) if needed; True if the caller must :meth:`release` it."""
        with self.lock:
            if ray.is_initialized():
                if self.users and address in (None, self.address):
                    self.users += 1  # procpool's own connection: shared, counted
                    return True
                if address is None:
                    return False  # the program's own connection: used, never shut down
                raise RuntimeError(
                    f"RayPool({address!r}): this process is already connected to a Ray "
                    "cluster (ray.init), and Ray connects a process to one cluster at a "
                    "time; use RayPool() to submit to that cluster, or ray.shutdown() first"
                )
            if address is None:
                init_local(ray, usable_cpus())
            else:
                ray.init(address=address)
            self.users, self.address = 1, address
            return True

    def release(self, ray: Any) -> None:
        with self.lock:
            self.users -= 1
            if self.users > 0:
                return
            self.address = None
        try:
            ray.shutdown()
        except Exception:  # interpreter shutdown, or Ray is going away already
            LOGGER.debug("could not shut Ray down", exc_info=True)


CONNECTION = _Connection()


# -- what RayBackend submits -----------------------------------------------------------------


@dataclass(frozen=True)
class PlainCall:
    """``fn(*args, **kwargs)`` with no time limit."""

    fn: Callable[..., object]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class ChunkCall:
    """``fn`` on each item (``fn(*item)`` if ``star``), one outcome each, with no time limit."""

    fn: Callable[..., object]
    items: list[Any]
    star: bool


@dataclass(frozen=True)
class LimitedCall:
    """``fn(*item, **kwargs)`` for each item with a time limit (``_ray_task.limited``).

    ``single``: a ``submit`` (its outcome is the value or the exception itself),
    not a map chunk (whose outcome is the list of its items' outcomes).
    """

    fn: Callable[..., object]
    items: list[tuple[Any, ...]]
    kwargs: dict[str, Any]
    timeout: float
    grace: float | None
    timeout_retries: int
    first_attempts: int
    single: bool


@dataclass
class RayTask:
    """The handle of one submission: what to cancel, and the future of its outcome."""

    #: The ObjectRef, or the ObjectRefGenerator of a time-limited task.
    ref: Any
    #: Resolves with the task's value (a time-limited task's report), or its error.
    result: concurrent.futures.Future[Any]
    #: Stops Ray's watch of ``ref`` (see RayBackend._watch_ready); None: none runs.
    unwatch: Callable[[], object] | None = None


class _RemoteFunctions:
    """``ray.remote(fn)`` of the top-level functions submitted, the most recent 256.

    A remote function is exported to the cluster once, then each call sends only
    its arguments, as ``f.remote(x)`` of a function decorated with ``@ray.remote``
    does. (A procpool helper that took ``fn`` as an argument would pickle it on
    every call: 8-10 % more per round trip, measured on this machine.) Only
    functions defined at the top of a module (its own namespace keeps them alive
    anyway): a lambda or a closure, often made anew for each call and holding
    data, is sent with each call instead of being kept here and exported again.
    """

    SIZE = 256

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: collections.OrderedDict[Callable[..., object], Any] = collections.OrderedDict()

    def __call__(self, ray: Any, fn: Callable[..., object]) -> Any:
        with self._lock:
            remote = self._cache.get(fn)
            if remote is not None:
                self._cache.move_to_end(fn)
                return remote
        # procpool's own retries (retries=) replace Ray's, so that a task whose
        # worker died runs again only when asked to: Ray's default re-runs it 3 times.
        remote = ray.remote(max_retries=0)(fn)
        with self._lock:
            self._cache[fn] = remote
            if len(self._cache) > self.SIZE:
                self._cache.popitem(last=False)
        return remote


REMOTE_FUNCTIONS = _RemoteFunctions()


class _LimitLoop:
    """One asyncio loop thread that waits for the first item of time-limited tasks.

    A time-limited task reports through a streaming generator whose first item
    arrives while the task still runs (see :mod:`._ray_task`); Ray lets a client
    wait for that item without a thread per task only from asyncio
    (``await gen.__anext__()``). Started on first use, stopped on release.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def run(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        with self._lock:
            if self._loop is None:
                loop = self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=self._main, args=(loop,), name=self._name, daemon=True
                )
                self._thread.start()
            return asyncio.run_coroutine_threadsafe(coro, self._loop)

    @staticmethod
    def _main(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            # Stopped: cancel what still waits (its futures are done already).
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        finally:
            loop.close()

    def close(self) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            if thread is not threading.current_thread():
                thread.join(10)


def _settle(
    future: concurrent.futures.Future[Any], value: object, exc: BaseException | None
) -> None:
    """Set ``future`` unless it is set already (Ray's callback and a waiting thread race)."""
    try:
        if exc is None:
            future.set_result(value)
        else:
            future.set_exception(exc)
    except concurrent.futures.InvalidStateError:
        pass


def _copy_outcome(target: concurrent.futures.Future[Any], ray_future: Any) -> None:
    """Ray's callback thread: the task's outcome, from Ray's future into the task's own."""
    exc = ray_future.exception()
    _settle(target, None if exc is not None else ray_future.result(), exc)


async def _first_item(gen: Any) -> Any:
    """The first item of a streaming generator task (its exception if the task failed)."""
    ref = await gen.__anext__()
    return await ref


class RayBackend(Backend):
    """Ray as a :class:`RemoteCore`'s engine (see the module docstring)."""

    label = "RayPool"
    # The value is fetched and unpickled by Ray before its callback runs.
    resolve_inline = True

    def __init__(self, ray: Any, owns_connection: bool) -> None:
        self.ray = ray
        self.exceptions = importlib.import_module("ray.exceptions")
        self.owns_connection = owns_connection
        self.limits = _LimitLoop(f"procpool-ray-limits-{id(self):x}")
        #: Fetch the values of tasks nobody waits for (see _watch_ready).
        self.fetchers = Threads(f"procpool-ray-fetch-{id(self):x}", 2)
        #: Cancels running on helper threads (release waits for them).
        self._cancels = threading.Condition()
        self._cancelling = 0
        #: time.monotonic() of this pool's last ray.cancel (see _translate).
        self._cancelled_at = -math.inf
        # Ray's procpool helpers, exported once (procpool's retries replace Ray's).
        self._call = ray.remote(max_retries=0)(_ray_task.call)
        self._chunk = ray.remote(max_retries=0)(_ray_task.run_items)
        self._limited = ray.remote(max_retries=0, num_returns="streaming")(_ray_task.limited)

    # -- submitting -------------------------------------------------------------------------

    def submit(self, job: RemoteJob) -> tuple[str, Any]:
        call: PlainCall | ChunkCall | LimitedCall = job.call
        try:
            if isinstance(call, PlainCall):
                ref = self._submit_plain(call)
            elif isinstance(call, ChunkCall):
                ref = self._chunk.remote(call.fn, call.items, call.star)
            else:
                gen = self._limited.remote(
                    call.fn,
                    call.items,
                    call.kwargs,
                    call.timeout,
                    call.grace,
                    call.timeout_retries,
                    call.first_attempts,
                )
                task = RayTask(gen, self.limits.run(_first_item(gen)))
                return gen.completed().hex(), task
        except (TypeError, pickle.PicklingError, AttributeError) as exc:
            # Ray pickles the call right here; these are what it raises for a
            # function or argument that neither pickle nor cloudpickle can take.
            raise self._not_sendable(job.name, call, exc) from exc
        task = RayTask(ref, concurrent.futures.Future())
        if isinstance(call, PlainCall) and hasattr(ref, "_on_ready"):
            self._watch_ready(task)
            job.future.set_wait_hook(functools.partial(self._wait_here, task))
        else:  # a chunk (whose value nobody waits for with ray.get), or Ray Client's refs
            ref.future().add_done_callback(functools.partial(_copy_outcome, task.result))
        return ref.hex(), task

    def _watch_ready(self, task: RayTask) -> None:
        """Have Ray say when the task's object exists; fetch it then, on a fetch thread.

        ``ObjectRef._on_ready`` (Ray 2.60; what ``await ref`` builds on) calls back
        without fetching or unpickling, and the wait can be withdrawn: a thread that
        waits in ``result()`` withdraws it and fetches the value itself, so Ray's
        callback thread does nothing for that task. (With ``ref.future()`` it
        unpickled every value and called into Python as the waiting thread did:
        a quarter of a round trip on this machine.)
        """

        withdrawn = threading.Event()

        def ready(exc: BaseException | None) -> None:
            if withdrawn.is_set():
                return  # Ray calls back a withdrawn wait too ("WaitAsync cancelled")
            if exc is None:  # the object exists (a value or the task's error)
                self.fetchers(functools.partial(self._fetch, task))
            else:
                _settle(task.result, None, exc)

        cancel = task.ref._on_ready(ready)

        def unwatch() -> None:
            withdrawn.set()
            cancel()

        task.unwatch = unwatch

    def _fetch(self, task: RayTask, timeout: float | None = None) -> bool:
        """``ray.get`` the task's value and settle it; False if ``timeout`` passed first."""
        if task.result.done():
            return True
        try:
            value = self.ray.get(task.ref, timeout=timeout)
        except self.exceptions.GetTimeoutError:
            return False
        except Exception as exc:  # the task's failure, as ray.get raises it
            _settle(task.result, None, exc)
        else:
            _settle(task.result, value, None)
        return True

    def _wait_here(self, task: RayTask, timeout: float | None) -> None:
        """A ``result()`` of a submit: fetch the value on the waiting thread, as ``ray.get`` does."""
        if task.result.done():
            return
        unwatch, task.unwatch = task.unwatch, None
        if unwatch is not None:
            unwatch()
        fetched = False
        try:
            fetched = self._fetch(task, timeout)
        finally:
            if not fetched:  # a timeout (or Ctrl-C): the future must still resolve
                self._watch_ready(task)

    def _submit_plain(self, call: PlainCall) -> Any:
        fn, args, kwargs = call.fn, call.args, call.kwargs
        object_ref = self.ray.ObjectRef
        if (
            not inspect.isfunction(fn)
            or fn.__qualname__ != fn.__name__
            or fn.__name__ == "<lambda>"
            or any(isinstance(arg, object_ref) for arg in (*args, *kwargs.values()))
        ):
            # ray.remote takes functions only (not a builtin, a partial or a
            # ProcessTask), only top-level ones are worth exporting (see
            # _RemoteFunctions), and Ray would resolve an ObjectRef given as an argument.
            return self._call.remote(fn, args, kwargs)
        return REMOTE_FUNCTIONS(self.ray, fn).remote(*args, **kwargs)

    def _not_sendable(
        self, name: str, call: PlainCall | ChunkCall | LimitedCall, error: BaseException
    ) -> SerializationError:
        """Name the part of ``call`` that cannot be pickled (Ray's message names the whole)."""
        dumps = importlib.import_module("ray.cloudpickle").dumps
        parts: list[tuple[str, object]] = [(f"the function {name}", call.fn)]
        if isinstance(call, PlainCall):
            parts += [(f"argument {i} of {name}", arg) for i, arg in enumerate(call.args)]
        elif isinstance(call, ChunkCall) and not call.star:
            parts += [(f"item {n} of the map of {name}", arg) for n, arg in enumerate(call.items)]
        else:
            parts += [
                (f"argument {i} of item {n} of {name}", arg)
                for n, item in enumerate(call.items)
                for i, arg in enumerate(item)
            ]
        if not isinstance(call, ChunkCall):
            parts += [(f"argument {k}= of {name}", arg) for k, arg in call.kwargs.items()]
        what, cause = f"the call of {name} (function or arguments)", error
        for label, part in parts:
            try:
                dumps(part)
            except Exception as exc:
                what, cause = f"{label}, {_short_repr(part)},", exc
                break
        err = SerializationError(
            f"{what} could not be pickled for Ray ({type(cause).__name__}: "
            f"{_first_line(cause)}); pass plain data (no locks, open files, sockets or "
            "generators), or an ObjectRef of data put in Ray's object store"
        )
        err.__cause__ = cause
        return err

    def watch(self, handle: Any, done: Callable[[], None]) -> None:
        def on_done(_: object) -> None:
            done()

        task: RayTask = handle
        task.result.add_done_callback(on_done)

    # -- outcomes ---------------------------------------------------------------------------

    def outcome(self, job: RemoteJob, handle: Any) -> Result:
        task: RayTask = handle
        future = task.result
        if future.cancelled():
            return Cancelled()
        error = future.exception()
        if error is not None:
            return self._translate(job.name, error)
        value = future.result()
        call = job.call
        if not isinstance(call, LimitedCall):
            return Value(value)
        outcomes, stuck = value
        if stuck is not None:
            return self._after_stuck(job.name, task, call, outcomes, stuck)
        if not call.single:
            return Value(outcomes)
        ok, result, text = outcomes[0]
        if ok:
            return Value(result)
        exc = self.from_worker(result)
        if text is not None:
            exc.__cause__ = RemoteTraceback(text)
        return exc

    def _after_stuck(
        self,
        name: str,
        task: RayTask,
        call: LimitedCall,
        outcomes: list[Outcome],
        stuck: tuple[int, int, TimedOut],
    ) -> Result:
        """A worker is stuck in a call past its limit: kill it, go on with the rest."""
        index, attempts, timed_out = stuck
        self._stop([task], force=True, settle=0)
        killed = TimedOut(timed_out.name, timed_out.timeout, timed_out.grace, False)
        if call.single:
            return self.from_worker(killed)
        rest = call.items[index:]
        if attempts > 0:  # the item runs again, on another worker
            return Continue(_rest(call, rest, attempts - 1), ChunkResult.of(outcomes), retried=True)
        outcomes = [*outcomes, (False, killed, None)]
        if len(rest) == 1:
            return Value(outcomes)
        done = ChunkResult.of(outcomes)
        return Continue(_rest(call, rest[1:], call.timeout_retries), done, retried=False)

    def from_worker(self, exc: BaseException) -> BaseException:
        """Turn the stand-ins of ``_child.dask_chunk`` into procpool's errors."""
        if isinstance(exc, TimedOut):
            if exc.stopped:
                what = (
                    "TimeLimitInterrupt was raised inside it, and it stopped within its grace "
                    f"period of {exc.grace:g} s"
                )
            elif exc.grace is not None:
                what = (
                    f"TimeLimitInterrupt was raised inside it, and it had not stopped {exc.grace:g} "
                    "s later: its Ray worker process was killed"
                )
            else:
                what = "its Ray worker process was killed"
            return TaskTimeoutError(
                f"{exc.name} ran longer than its time limit of {exc.timeout:g} s ({what})",
                timeout=exc.timeout,
                killed=not exc.stopped,
            )
        if isinstance(exc, NotSendable):
            return SerializationError(str(exc))
        return exc

    def _translate(self, name: str, error: BaseException) -> Result:
        """Ray's exception for a task into procpool's outcome.

        The core asks only for the tasks it has not cancelled itself. Ray's
        ``ray.cancel`` acts on the worker running the task it names, and a cancel
        that lands as that task ends can reach the worker's next task instead: a
        plain cancel interrupts it (TaskCancelledError), a forced one kills its
        process (WorkerCrashedError). Such a task was lost to the pool's own cancel
        of a neighbour, as a local pool's neighbours of a killed item are: it runs
        again (:class:`Resubmit`), and fails with ``cause="cancel"`` only if that
        keeps happening.
        """
        ex = self.exceptions
        task_error: Any = error
        if isinstance(error, ex.RayTaskError) and not isinstance(
            task_error.cause, ex.TaskCancelledError
        ):
            return self._task_error(name, error)
        if isinstance(error, (ex.TaskCancelledError, ex.RayTaskError)):
            interrupted = WorkerLostError(
                f"{name} was interrupted by a cancel meant for another task of its Ray "
                "worker (Ray's ray.cancel reached the worker's next task)",
                cause="cancel",
            )
            interrupted.__cause__ = error
            return Resubmit(interrupted)
        if isinstance(error, ex.UnserializableException):
            return SerializationError(
                f"{name} raised an exception that could not be unpickled here; its "
                f"traceback on the Ray worker:\n{error}"
            )
        lost = self._lost(name, error)
        if lost is None:
            return error
        lost.__cause__ = error
        if (
            isinstance(error, ex.WorkerCrashedError)
            and time.monotonic() - self._cancelled_at < KILL_WINDOW
        ):
            # Most likely killed by the pool's own ray.cancel of another task.
            collateral = WorkerLostError(
                f"{lost} (just after a cancel of this pool)", cause="cancel"
            )
            collateral.__cause__ = error
            return Resubmit(collateral)
        return lost

    def _task_error(self, name: str, error: Any) -> BaseException:
        cause: BaseException = error.cause
        # The worker's traceback, as Ray formatted it (its own frames left out).
        text = _ANSI.sub("", str(error))
        if type(cause) is self.exceptions.RayError:
            # What the worker sends in place of an exception it cannot pickle.
            return SerializationError(
                f"{name} raised an exception that cannot be sent back from the Ray worker "
                f"(give the exception class an __init__ that accepts its .args, or a "
                f"__reduce__): {cause}"
            )
        if isinstance(cause, (TypeError, pickle.PicklingError)) and _failed_to_send_result(
            text, name
        ):
            err = SerializationError(
                f"the result of {name} could not be pickled for Ray ({type(cause).__name__}: "
                f"{cause}); return plain data (no locks, open files, sockets or generators)"
            )
            err.__cause__ = RemoteTraceback(text)
            return err
        cause.__cause__ = RemoteTraceback(text)
        cause.__traceback__ = None
        return cause

    def _lost(self, name: str, error: BaseException) -> WorkerLostError | None:
        """A worker, a node or a result lost: WorkerLostError (``cause`` where Ray says why)."""
        ex = self.exceptions
        if isinstance(error, ex.OutOfMemoryError):
            return WorkerLostError(
                f"Ray killed the worker running {name} to free memory (its memory monitor "
                f"found the node short of memory): {_first_line(error)}",
                cause="oom",
            )
        if isinstance(error, ex.WorkerCrashedError):
            what = "the Ray worker running it died (a signal, os._exit or an out-of-memory kill)"
        elif isinstance(error, (ex.NodeDiedError, ex.LocalRayletDiedError)):
            what = "the Ray node running it died"
        elif isinstance(error, ex.ObjectLostError) and not isinstance(error, ex.ObjectFreedError):
            what = "its result was lost with the Ray node that held it"
        else:
            return None
        return WorkerLostError(f"{name}: {what} before it answered: {_first_line(error)}")

    # -- cancelling, shutting down ----------------------------------------------------------

    def cancel(self, handles: list[Any], *, mode: CancelMode) -> None:
        if mode == "drop":
            # The read-ahead of an imap left early: at most its buffersize of items,
            # left to finish (their results are dropped) rather than risk Ray's
            # abort below for tasks that end as they are cancelled, which tiny
            # read-ahead items do all the time.
            return
        with self._cancels:
            self._cancelling += 1
        try:
            if mode == "stop":
                self._stop(handles, force=True, settle=CANCEL_SETTLE)
            else:
                self._stop(handles, force=False, settle=UNSTARTED_SETTLE)
        finally:
            with self._cancels:
                self._cancelling -= 1
                self._cancels.notify_all()

    def _stop(self, tasks: list[RayTask], *, force: bool, settle: float) -> None:
        """``ray.cancel`` the tasks that have not ended (one that has is left alone).

        Ray 2.60 aborts the whole driver process ("Check failed: ... Tried to
        complete task that was not pending", the race of ray-project/ray#54798)
        when a task is cancelled while the reply that it ended is on its way to
        the driver, and often did here when the task had ended. So a task whose
        result is there is never cancelled, and the others get ``settle`` seconds
        to land a reply already sent or about to be (one wait for all of them)
        before they are. ``force=True`` kills the worker process, so the work
        stops; a plain cancel drops a task that has not started, and raises
        KeyboardInterrupt in a running one at its next Python bytecode (a sleep or
        C code never sees it).
        """
        ray = self.ray
        ends = {
            (
                task.ref.completed() if isinstance(task.ref, ray.ObjectRefGenerator) else task.ref
            ): task
            for task in tasks
        }
        try:
            _, running = ray.wait(
                list(ends), num_returns=len(ends), timeout=settle, fetch_local=False
            )
        except Exception:  # Ray is going away
            LOGGER.debug("could not wait for %d tasks", len(ends), exc_info=True)
            return
        for end in running:
            self._cancelled_at = time.monotonic()
            try:
                ray.cancel(ends[end].ref, force=force)
            except Exception:  # Ray is going away
                LOGGER.debug("could not cancel %r", ends[end].ref, exc_info=True)

    def parallelism(self) -> int:
        """The CPUs of the Ray cluster right now (at least 1): one task each."""
        return max(1, int(self.ray.cluster_resources().get("CPU", 1)))

    def release(self) -> None:
        self.limits.close()
        self.fetchers.close()
        if self.owns_connection:
            self.owns_connection = False
            # Let the cancels of terminate() reach Ray before it goes: a thread that
            # waits for a cancelled task in ray.get returns only once it is cancelled.
            with self._cancels:
                self._cancels.wait_for(lambda: self._cancelling == 0, timeout=10)
            CONNECTION.release(self.ray)


def _rest(call: LimitedCall, items: list[tuple[Any, ...]], first_attempts: int) -> LimitedCall:
    return LimitedCall(
        call.fn,
        items,
        call.kwargs,
        call.timeout,
        call.grace,
        call.timeout_retries,
        first_attempts,
        single=False,
    )


#: Ray colours the task's name in its tracebacks.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _failed_to_send_result(text: str, name: str) -> bool:
    """Whether a task's TypeError came from pickling its result, not from its own code.

    Ray reports a result it cannot pickle as the task's exception, with a traceback
    that ends in cloudpickle and holds no frame of the function itself.
    """
    return "cloudpickle" in text and f", in {name}\n" not in text


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _short_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


__all__ = [
    "CONNECTION",
    "ChunkCall",
    "LimitedCall",
    "PlainCall",
    "RayBackend",
    "import_ray",
    "init_local",
    "task_name",
]

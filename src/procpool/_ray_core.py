"""The Ray side of ``RayPool``: submitting, reading outcomes, cancelling.

What every pool on a cluster engine shares (tasks in flight, retries, the
lifecycle) is in :mod:`._remote_core`; this module is the :class:`RayBackend` it
drives. One task::

    RayBackend.submit ── ray.remote(fn).remote(*args, **kwargs)    (a plain call)
         │               or a procpool helper of ._child.ray_chunk:
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

The connection to Ray is in :mod:`._ray_connect`, what is submitted (and the
handles) in :mod:`._ray_calls`, and the translation of Ray's exceptions in
:mod:`._ray_errors`. Ray is imported only when a ``RayPool`` is built, and this
module type-checks without it (Ray's objects are ``Any``).
"""

from __future__ import annotations

import concurrent.futures
import functools
import inspect
import logging
import math
import pickle
import threading
import time
from collections.abc import Callable
from typing import Any

from ._child import ray_chunk
from ._child.dask_chunk import Outcome, TimedOut
from ._errors import RemoteTraceback
from ._ray_calls import (
    REMOTE_FUNCTIONS,
    ChunkCall,
    LimitedCall,
    LimitLoop,
    PlainCall,
    RayTask,
    copy_outcome,
    first_item,
    rest_of,
    settle,
)
from ._ray_connect import CONNECTION
from ._ray_errors import RayErrors
from ._remote_backend import (
    Backend,
    Cancelled,
    CancelMode,
    ChunkResult,
    Continue,
    RemoteJob,
    Result,
    Value,
    take_error_stamp,
    take_stamp,
)
from ._remote_threads import Threads

LOGGER = logging.getLogger("procpool")

#: Seconds a cancel waits for the tasks' replies already on their way (see RayBackend._stop).
CANCEL_SETTLE = 0.005
#: The same for ``shutdown(cancel_futures=True)``, which does not need the running
#: tasks stopped: the short ones end meanwhile and are not cancelled at all.
UNSTARTED_SETTLE = 0.1

#: A worker that dies this soon after the pool cancelled a task may have died of it
#: (see ._ray_errors.RayErrors.translate); a collateral death reaches the driver within
#: milliseconds of the kill, and a task that crashes by itself in this window runs
#: again (MAX_RESUBMITS times at most) before it fails.
KILL_WINDOW = 0.5


class RayBackend(Backend):
    """Ray as a :class:`RemoteCore`'s engine (see the module docstring)."""

    label = "RayPool"
    # The value is fetched and unpickled by Ray before its callback runs.
    resolve_inline = True

    def __init__(self, ray: Any, owns_connection: bool) -> None:
        self.ray = ray
        self.errors = RayErrors()
        self.owns_connection = owns_connection
        self.limits = LimitLoop(f"procpool-ray-limits-{id(self):x}")
        #: Fetch the values of tasks nobody waits for (see _watch_ready).
        self.fetchers = Threads(f"procpool-ray-fetch-{id(self):x}", 2)
        #: Cancels running on helper threads (release waits for them).
        self._cancels = threading.Condition()
        self._cancelling = 0
        #: time.monotonic() of this pool's last ray.cancel (see RayErrors.translate).
        self._cancelled_at = -math.inf
        # Ray's procpool helpers, exported once (procpool's retries replace Ray's).
        self._call = ray.remote(max_retries=0)(ray_chunk.call)
        self._chunk = ray.remote(max_retries=0)(ray_chunk.run_items)
        self._limited = ray.remote(max_retries=0, num_returns="streaming")(ray_chunk.limited)

    # -- submitting -------------------------------------------------------------------------

    def submit(self, job: RemoteJob) -> tuple[str, Any]:
        call: PlainCall | ChunkCall | LimitedCall = job.call
        try:
            if isinstance(call, PlainCall):
                ref = self._submit_plain(call)
            elif isinstance(call, ChunkCall):
                ref = self._chunk.remote(call.fn, call.items, call.star, call.stamp)
            else:
                gen = self._limited.remote(
                    call.fn,
                    call.items,
                    call.kwargs,
                    call.timeout,
                    call.grace,
                    call.timeout_retries,
                    call.first_attempts,
                    call.stamp,
                )
                task = RayTask(gen, self.limits.run(first_item(gen)))
                return gen.completed().hex(), task
        except (TypeError, pickle.PicklingError, AttributeError) as exc:
            # Ray pickles the call right here; these are what it raises for a
            # function or argument that neither pickle nor cloudpickle can take.
            raise self.errors.not_sendable(job.name, call, exc) from exc
        task = RayTask(ref, concurrent.futures.Future())
        if isinstance(call, PlainCall) and hasattr(ref, "_on_ready"):
            self._watch_ready(task)
            job.future.set_wait_hook(functools.partial(self._wait_here, task))
        else:  # a chunk (whose value nobody waits for with ray.get), or Ray Client's refs
            ref.future().add_done_callback(functools.partial(copy_outcome, task.result))
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
                settle(task.result, None, exc)

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
        except self.errors.exceptions.GetTimeoutError:
            return False
        except Exception as exc:  # the task's failure, as ray.get raises it
            settle(task.result, None, exc)
        else:
            settle(task.result, value, None)
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
            after_a_cancel = time.monotonic() - self._cancelled_at < KILL_WINDOW
            result = self.errors.translate(job.name, error, after_a_cancel=after_a_cancel)
            if isinstance(result, BaseException):
                take_error_stamp(job, result)
            return result
        value = take_stamp(job, future.result())
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
        exc = take_error_stamp(job, self.errors.from_worker(result))
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
            return self.errors.from_worker(killed)
        rest = call.items[index:]
        if attempts > 0:  # the item runs again, on another worker
            return Continue(
                rest_of(call, rest, attempts - 1), ChunkResult.of(outcomes), retried=True
            )
        outcomes = [*outcomes, (False, killed, None)]
        if len(rest) == 1:
            return Value(outcomes)
        done = ChunkResult.of(outcomes)
        return Continue(rest_of(call, rest[1:], call.timeout_retries), done, retried=False)

    def from_worker(self, exc: BaseException) -> BaseException:
        return self.errors.from_worker(exc)

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


__all__ = ["RayBackend"]

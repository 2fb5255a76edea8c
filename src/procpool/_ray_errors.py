"""Ray's failures into procpool's: the exceptions a ``RayPool`` future fails with.

Ray reports a task's end as an exception of its own (``RayTaskError`` around the
task's exception, ``WorkerCrashedError``, ``OutOfMemoryError``,
``TaskCancelledError``...); :class:`RayErrors` turns each into what procpool
promises on every pool: the task's own exception with the worker's traceback as
``__cause__``, :class:`~procpool.WorkerLostError` (``cause="oom"`` where Ray says
so), :class:`~procpool.TaskTimeoutError`, :class:`~procpool.SerializationError`
naming what did not pickle. Ray is imported only when a ``RayPool`` is built.
"""

from __future__ import annotations

import importlib
import pickle
import re
from typing import Any

from ._child.dask_chunk import NotSendable, TimedOut
from ._errors import RemoteTraceback, SerializationError, TaskTimeoutError, WorkerLostError
from ._ray_calls import ChunkCall, LimitedCall, PlainCall
from ._remote_backend import Resubmit, Result


class RayErrors:
    """Translates Ray's exceptions (of ``ray.exceptions``) into procpool's outcomes."""

    def __init__(self) -> None:
        self.exceptions: Any = importlib.import_module("ray.exceptions")

    def not_sendable(
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

    def translate(self, name: str, error: BaseException, *, after_a_cancel: bool) -> Result:
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
            return self.task_error(name, error)
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
        lost = self.lost(name, error)
        if lost is None:
            return error
        lost.__cause__ = error
        if isinstance(error, ex.WorkerCrashedError) and after_a_cancel:
            # Most likely killed by the pool's own ray.cancel of another task.
            collateral = WorkerLostError(
                f"{lost} (just after a cancel of this pool)", cause="cancel"
            )
            collateral.__cause__ = error
            return Resubmit(collateral)
        return lost

    def task_error(self, name: str, error: Any) -> BaseException:
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

    def lost(self, name: str, error: BaseException) -> WorkerLostError | None:
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


__all__ = ["RayErrors"]

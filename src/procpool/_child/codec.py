"""Serialization for the pipes, and the diagnosis of what would not pickle.

Imported by the worker, so it imports nothing heavy (``traceback`` loads on first
use: a worker that never fails never needs it). A call that does not pickle
raises :class:`Unpicklable`, which the parent turns into a ``SerializationError``
for the one call concerned, with a message that names the culprit (function,
argument position or keyword, attribute path inside it) and the usual fix.
"""

from __future__ import annotations

import copyreg
import importlib
import io
import pickle
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, cast

from .messages import (
    CALL,
    CALL_HEADER,
    CLOUDPICKLED,
    KIND_MASK,
    REPLY_HEADER,
    SHARED,
    SHARED_REPLY,
)

if TYPE_CHECKING:
    from .shm import Lease, ReplySegments, SegmentPool

PROTOCOL = pickle.HIGHEST_PROTOCOL

_FIX = (
    "define it at module top level (workers import functions by name), "
    "or pass Pool(cloudpickle=True) to send functions with cloudpickle"
)


class Unpicklable(Exception):
    """Raised when a call cannot be pickled; the message names the culprit and the fix.

    The parent turns it into :class:`procpool.SerializationError` (the error
    classes are parent-side: this package imports none of them).
    """


def describe_callable(fn: object) -> str:
    """A short name for ``fn`` in messages: ``module.qualname``."""
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if name is None:
        return f"{type(fn).__module__}.{type(fn).__qualname__} instance"
    return f"{module}.{name}" if module else str(name)


def _find_unpicklable(obj: object, path: str, depth: int = 0) -> tuple[str, object, str] | None:
    """Find the innermost part of ``obj`` that does not pickle: (path, part, error)."""
    whole = obj  # before isinstance() narrows ``obj``
    try:
        pickle.dumps(obj, PROTOCOL)
        return None
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    if depth < 4:
        children: list[tuple[str, object]] = []
        if isinstance(obj, Mapping):
            items = cast("Mapping[object, object]", obj)
            children = [(f"{path}[{key!r}]", value) for key, value in items.items()]
        elif isinstance(obj, (list, tuple, set, frozenset)):
            seq = cast("Iterable[object]", obj)
            children = [(f"{path}[{i}]", value) for i, value in enumerate(seq)]
        elif hasattr(obj, "__dict__") and not callable(obj):
            children = [(f"{path}.{key}", value) for key, value in vars(obj).items()]
        for child_path, child in children:
            found = _find_unpicklable(child, child_path, depth + 1)
            if found is not None:
                return found
    return (path, whole, error)


def diagnose_call(fn: object, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    """Explain which part of ``fn(*args, **kwargs)`` cannot be pickled."""
    try:
        pickle.dumps(fn, PROTOCOL)
    except Exception as exc:
        return (
            f"the function {describe_callable(fn)} could not be pickled "
            f"({type(exc).__name__}: {exc}); {_FIX}"
        )
    parts = [(f"argument {i}", arg) for i, arg in enumerate(args)]
    parts += [(f"keyword argument {key!r}", value) for key, value in kwargs.items()]
    for label, value in parts:
        found = _find_unpicklable(value, "")
        if found is not None:
            path, part, error = found
            inside = f"{label}{path} is a {type(part).__qualname__} object: " if path else ""
            return (
                f"{label} of {describe_callable(fn)} ({type(value).__qualname__}) could not be "
                f"pickled: {inside}{error}; send only picklable data (plain values, "
                "top-level classes), or create the resource inside the task"
            )
    return f"the call to {describe_callable(fn)} could not be pickled"


def pickle_function(fn: object, use_cloudpickle: bool) -> object:
    """Return ``fn`` itself, or its cloudpickle bytes when asked."""
    if not use_cloudpickle:
        return fn
    cloudpickle: Any = importlib.import_module("cloudpickle")
    data: bytes = cloudpickle.dumps(fn, protocol=PROTOCOL)
    return data


def encode_call(
    call_id: int,
    kind: int,
    fn: object,
    body: tuple[Any, ...],
    cloud: bool,
    segments: SegmentPool | None = None,
    fields: bytes = b"",
) -> tuple[bytes, Lease | None]:
    """Frame one call for a worker: (frame, lease of its shared segment or None).

    With ``segments``, large buffers (numpy arrays...) go to shared memory and
    the frame carries only their place. ``fields`` (the MEMORY and GRACE fields
    that ``kind``'s flags announce, see :mod:`.messages`) follow the header.

    Raises:
        Unpicklable: naming the part of the call that does not pickle.
    """
    lease: Lease | None = None
    shared = b""
    try:
        message = (pickle_function(fn, cloud), *body)
        if segments is None:
            payload = pickle.dumps(message, PROTOCOL)
        else:
            shared, payload, lease = segments.dumps(message)
    except Exception as exc:
        if kind & KIND_MASK == CALL:
            args, kwargs = body
            reason = diagnose_call(fn, args, kwargs)
        else:
            reason = diagnose_call(fn, (), {})
        raise Unpicklable(reason) from exc
    flags = (CLOUDPICKLED if cloud else 0) | (SHARED if shared else 0)
    frame = b"".join((CALL_HEADER.pack(call_id, kind | flags), fields, shared, payload))
    return frame, lease


def decode_function(fn: object) -> Callable[..., Any]:
    """Undo :func:`pickle_function` in the worker."""
    if isinstance(fn, bytes):
        loaded: Callable[..., Any] = pickle.loads(fn)
        return loaded
    return cast("Callable[..., Any]", fn)


def encode_reply(
    call_id: int,
    status: int,
    elapsed: float,
    body: object,
    segments: ReplySegments | None = None,
) -> bytes:
    """Frame one reply; raises whatever pickling raises (the worker handles it).

    With ``segments``, large buffers of the body go to a fresh shared segment.
    """
    if segments is None:
        return REPLY_HEADER.pack(call_id, status, elapsed) + pickle.dumps(body, PROTOCOL)
    shared, payload = segments.dumps(body)
    if shared:
        status |= SHARED_REPLY
    return b"".join((REPLY_HEADER.pack(call_id, status, elapsed), shared, payload))


def format_exception(exc: BaseException) -> str:
    """The traceback text of ``exc``, as the worker saw it."""
    import traceback

    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


class SealedError:
    """An exception pickled by its own class's rules, whatever ``copyreg`` says.

    A library may register its own pickling of exception classes in the
    process-wide ``copyreg`` table, and a fork child inherits it: tblib, which
    Dask installs for every exception that passes through it, rebuilds an
    exception without calling its ``__init__``, so a ``SystemExit(3)`` arrived
    with ``code`` None, and an ``OSError`` without its ``errno``. Unpickled, a
    sealed error is the exception itself (nothing to unwrap on the other side
    of a pipe); in the same process, :meth:`open` it.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self) -> tuple[object, ...]:
        return (pickle.loads, (self.data,))

    def open(self) -> BaseException:
        """The exception, in this process."""
        exc: BaseException = pickle.loads(self.data)
        return exc


def seal(exc: BaseException) -> SealedError:
    """Pickle ``exc`` with each exception class's own reduction (see :class:`SealedError`).

    Raises:
        Exception: whatever pickling raises.
    """
    out = io.BytesIO()
    pickler = pickle.Pickler(out, PROTOCOL)
    pickler.dispatch_table = {
        kind: reduce
        for kind, reduce in copyreg.dispatch_table.items()
        # copyreg takes any key, whatever its annotation says.
        if not (isinstance(kind, type) and issubclass(kind, BaseException))  # pyright: ignore[reportUnnecessaryIsInstance]
    }
    pickler.dump(exc)
    return SealedError(out.getvalue())


def exception_body(exc: BaseException) -> tuple[SealedError | None, str]:
    """(exception, traceback) ready to pickle; the exception is None if it would not pickle."""
    tb = format_exception(exc)
    # Tracebacks do not pickle; the text travels beside the exception.
    exc.__traceback__ = None
    try:
        sealed = seal(exc)
        # Unpickle now too: an exception that cannot make the round trip (a
        # required __init__ argument) must not cost the whole reply.
        sealed.open()
    except Exception:
        return (None, tb)
    return (sealed, tb)

"""The entry point of a ``spawn()`` child (and a started ``ProcessTask``).

It runs the function once and writes one reply, in the frame format of a pool
worker's replies (:mod:`.messages`), to the pipe the parent's watcher thread
reads. Like the pool worker it follows its parent (it ends when the parent dies)
and, under fork, closes the descriptors of the parent's machinery.
"""

from __future__ import annotations

from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from . import messages as m
from .codec import describe_callable, encode_reply, exception_body
from .worker import close_inherited, forget_inherited_forkserver, watch_parent


def child_main(
    conn: Connection,
    parent_pid: int,
    inherited: tuple[int, ...],
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    """Run ``fn(*args, **kwargs)`` and send its outcome as one reply."""
    close_inherited(inherited)
    watch_parent(parent_pid)
    forget_inherited_forkserver()
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:
        data = encode_reply(m.NO_CALL, m.ERROR, 0.0, exception_body(exc))
    else:
        try:
            data = encode_reply(m.NO_CALL, m.OK, 0.0, result)
        except Exception as exc:
            data = encode_reply(
                m.NO_CALL,
                m.BAD_PICKLE,
                0.0,
                f"the result of {describe_callable(fn)} could not be pickled "
                f"({type(exc).__name__}: {exc}); return only picklable data",
            )
    conn.send_bytes(data)
    conn.close()

"""Start methods: the default, the ``context=`` argument, and making processes."""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
from collections.abc import Callable
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any, Literal, TypeAlias

StartMethod: TypeAlias = Literal["fork", "spawn", "forkserver"]


def default_start_method() -> StartMethod:
    """forkserver where it exists (Linux; the Python 3.14 default), else spawn.

    Never fork by default: forking a process that runs threads (ours, or the
    user's) can deadlock the child, which Python 3.12+ warns about.
    """
    if sys.platform.startswith("linux") and "forkserver" in multiprocessing.get_all_start_methods():
        return "forkserver"
    return "spawn"


def resolve_context(context: StartMethod | BaseContext | None) -> BaseContext:
    """Turn a ``context=`` argument into a context.

    Raises:
        ValueError: for a start method this platform does not have.
    """
    if context is None:
        return multiprocessing.get_context(default_start_method())
    if isinstance(context, BaseContext):
        return context
    methods = multiprocessing.get_all_start_methods()
    if not isinstance(context, str) or context not in methods:  # pyright: ignore[reportUnnecessaryIsInstance]
        raise ValueError(
            f"unknown start method {context!r}: use one of {', '.join(methods)}, "
            "a multiprocessing context, or None for the default"
        )
    return multiprocessing.get_context(context)


#: The exit code of a child that found its main module starting processes while
#: it imported that module (see :func:`leave_if_importing_main`).
UNGUARDED_MAIN_EXIT = 86


def leave_if_importing_main() -> None:
    """Exit quietly if this is a child process that is importing its main module.

    Under spawn and forkserver a child imports the program's main module before
    it runs anything; a module that starts a pool at import (no
    ``if __name__ == "__main__":``) would have every worker start a pool of its
    own. The standard library raises a RuntimeError in each child, which prints
    a long traceback per worker, interleaved. Instead the child exits at once
    with :data:`UNGUARDED_MAIN_EXIT` and prints nothing; the parent, which sees
    that code, fails the pool with one message that says what to do.
    """
    from multiprocessing import process

    if getattr(process.current_process(), "_inheriting", False):
        # os._exit, not SystemExit: a forkserver child turns SystemExit into code 1.
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        os._exit(UNGUARDED_MAIN_EXIT)


def unguarded_main_error(what: str) -> str:
    """The parent's message for a child that exited with :data:`UNGUARDED_MAIN_EXIT`."""
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    module = f"the main module ({main})" if main else "the main module"
    return (
        f"{what}: {module} starts a pool or a process when it is imported, and under "
        "spawn and forkserver every new process imports it first. Put the code that "
        'starts pools and processes under `if __name__ == "__main__":`'
    )


def new_process(
    ctx: BaseContext,
    target: Callable[..., object],
    args: tuple[Any, ...],
    *,
    name: str | None,
    daemon: bool | None,
) -> BaseProcess:
    """An unstarted process of ``ctx`` (typeshed does not type ``ctx.Process``).

    In a child that is still importing its main module, exit instead (see
    :func:`leave_if_importing_main`).
    """
    leave_if_importing_main()
    factory: Callable[..., BaseProcess] = getattr(ctx, "Process")  # noqa: B009
    return factory(target=target, args=args, name=name, daemon=daemon)


class ParentFds:
    """The descriptors of procpool's own machinery, which a forked child must close.

    Under fork a child inherits every descriptor of the parent: the parent's ends
    of other workers' pipes, their sentinels, a dispatcher's wake-up socket and
    epoll object. Each is added here when made and removed before it is closed,
    and a fork lists them while holding :attr:`lock`, which is held too while
    descriptors are made and registered: a child never inherits one of ours that
    is not on its list, nor finds on its list a number that is no longer ours.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._fds: set[int] = set()
        if hasattr(os, "register_at_fork"):
            # A child forked while the lock was held must not inherit it held.
            os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self.lock = threading.RLock()
        self._fds = set()

    def add(self, *fds: int) -> None:
        """Register descriptors just made."""
        with self.lock:
            self._fds.update(fds)

    def discard(self, *fds: int) -> None:
        """Unregister descriptors about to be closed."""
        with self.lock:
            self._fds.difference_update(fds)

    def for_child(self, ctx: BaseContext) -> tuple[int, ...]:
        """What a child of ``ctx`` must close: ours under fork, nothing otherwise.

        Call holding :attr:`lock`, and keep holding it until the child has started.
        """
        if ctx.get_start_method() != "fork":
            return ()
        return tuple(sorted(self._fds))


PARENT_FDS = ParentFds()

"""``spawn()`` and ``ProcessHandle``: one process, one pipe, one watcher thread.

The child runs the function and writes one reply (the same frame format as a pool
worker's) to its pipe. A watcher thread in the parent waits on that pipe and the
process sentinel, resolves the handle's future, and reaps the process, so no
zombie stays behind whether or not the user ever calls ``join()``.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from typing import Any, TypeVar

from typing_extensions import ParamSpec

from ._callbacks import before_blocking
from ._child import messages as m
from ._child.codec import describe_callable, diagnose_call
from ._child.spawned import child_main
from ._context import (
    PARENT_FDS,
    UNGUARDED_MAIN_EXIT,
    StartMethod,
    new_process,
    resolve_context,
    unguarded_main_error,
)
from ._errors import (
    ProcpoolError,
    RemoteTraceback,
    SerializationError,
    WorkerLostError,
    describe_exitcode,
    loss_cause,
)
from ._future import Future, wait_seconds
from ._oom import OomWatch

__all__ = ["ProcessHandle", "spawn"]

P = ParamSpec("P")
R = TypeVar("R")


class ProcessHandle(Future[R]):
    """A running process whose ``result()`` is its function's return value.

    A :class:`Future` (``result``, ``then``, ``catch``, ``await``…) plus the
    controls of :class:`multiprocessing.Process`: ``pid``, ``name``, ``daemon``,
    ``exitcode``, ``is_alive()``, ``join()``, ``terminate()``, ``kill()``.
    ``cancel()`` kills the process. A process that dies without answering fails
    the future with :class:`WorkerLostError`.

    Create one with :func:`spawn` or :meth:`ProcessTask.start`.
    """

    def __init__(
        self,
        fn: Callable[..., R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        name: str | None = None,
        daemon: bool | None = None,
        context: StartMethod | BaseContext | None = None,
    ) -> None:
        super().__init__()
        ctx = resolve_context(context)
        self._fn_name = describe_callable(fn)
        self._exitcode: int | None = None
        self._reaped = threading.Event()
        self.set_cancel_hook(self._on_cancel)
        self._started = False
        # Under the lock from the pipe to the fork, as a pool does (see PARENT_FDS).
        with PARENT_FDS.lock:
            reader, writer = ctx.Pipe(duplex=False)
            self._conn: Connection | None = reader
            PARENT_FDS.add(reader.fileno())
            process = new_process(
                ctx,
                child_main,
                (writer, os.getpid(), PARENT_FDS.for_child(ctx), fn, args, kwargs),
                name=name,
                daemon=daemon,
            )
            self._process = process
            try:
                self._process.start()
            except Exception as exc:
                PARENT_FDS.discard(reader.fileno())
                reader.close()
                self._conn = None
                self._reaped.set()
                error = SerializationError(
                    f"could not start a process for {self._fn_name}: "
                    f"{diagnose_call(fn, args, kwargs)}"
                )
                error.__cause__ = exc
                self.try_set_exception(error)
                return
            finally:
                writer.close()
            PARENT_FDS.add(process.sentinel)
        self._started = True
        self._oom = OomWatch(process.pid)
        self.try_start()
        self._pid: int | None = self._process.pid
        self._watcher = threading.Thread(
            target=self._watch, name=f"procpool-watch-{self._pid}", daemon=True
        )
        self._watcher.start()

    def _watch(self) -> None:
        conn = self._conn
        assert conn is not None
        process = self._process
        data: bytes | None = None
        try:
            wait([conn, process.sentinel])
            with contextlib.suppress(EOFError, OSError):
                data = conn.recv_bytes()
        finally:
            process.join()
            self._exitcode = process.exitcode
            PARENT_FDS.discard(conn.fileno(), process.sentinel)
            conn.close()
            self._conn = None
            with contextlib.suppress(ValueError):
                process.close()
            self._reaped.set()
        if data is None and self._exitcode == UNGUARDED_MAIN_EXIT:
            self.try_set_exception(
                ProcpoolError(unguarded_main_error(f"the process for {self._fn_name}"))
            )
            return
        if data is None:
            oom = self._oom.killed(self._exitcode)
            self.try_set_exception(
                WorkerLostError(
                    f"the process running {self._fn_name} (pid {self._pid}) "
                    f"{describe_exitcode(self._exitcode, oom=oom)} before it returned",
                    exitcode=self._exitcode,
                    pid=self._pid,
                    cause=loss_cause(self._exitcode, oom=oom),
                )
            )
            return
        _, status, _ = m.REPLY_HEADER.unpack_from(data)
        try:
            body = pickle.loads(memoryview(data)[m.REPLY_HEADER.size :])
        except Exception as exc:
            self.try_set_exception(
                SerializationError(
                    f"the result of {self._fn_name} could not be unpickled "
                    f"({type(exc).__name__}: {exc})"
                )
            )
            return
        if status == m.OK:
            self.try_set_result(body)
        elif status == m.ERROR:
            error, tb = body
            if error is None:
                error = SerializationError(
                    f"{self._fn_name} raised an exception that does not pickle; "
                    f"its traceback:\n{tb}"
                )
            else:
                error.__cause__ = RemoteTraceback(tb)
            self.try_set_exception(error)
        else:
            self.try_set_exception(SerializationError(body))

    def _on_cancel(self, was_running: bool) -> None:
        self.kill()

    # -- the multiprocessing.Process controls -------------------------------------------

    @property
    def pid(self) -> int | None:
        """The process id (None if the process could not be started)."""
        return self._pid if self._started else None

    @property
    def name(self) -> str:
        """The process name."""
        return self._process_name()

    def _process_name(self) -> str:
        with contextlib.suppress(ValueError):
            return self._process.name
        return f"procpool-{self._fn_name}"

    @property
    def daemon(self) -> bool:
        """Whether the process is daemonic (killed when the parent exits)."""
        return self._process.daemon

    @property
    def exitcode(self) -> int | None:
        """The exit code once the process has ended (negative: killed by that signal)."""
        return self._exitcode

    def is_alive(self) -> bool:
        """True while the process runs."""
        return self._started and not self._reaped.is_set()

    def join(self, timeout: float | None = None) -> None:
        """Wait until the process has ended (and the result is in), at most ``timeout`` s.

        As :meth:`multiprocessing.Process.join`, returns None either way: check
        :meth:`is_alive` or :attr:`exitcode`. None or ``math.inf``: no limit.
        """
        timeout = wait_seconds(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        before_blocking()
        if not self._reaped.wait(timeout):
            return
        # The watcher resolves the future just after reaping; let it finish, within
        # the same deadline (not a second ``timeout``).
        watcher = getattr(self, "_watcher", None)
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def terminate(self) -> None:
        """Send SIGTERM (TerminateProcess on Windows)."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """Send SIGKILL (TerminateProcess on Windows)."""
        self._signal(getattr(signal, "SIGKILL", signal.SIGTERM))

    def _signal(self, sig: int) -> None:
        if not self._started or self._reaped.is_set():
            return
        with contextlib.suppress(ProcessLookupError, OSError, ValueError):
            if sig == signal.SIGTERM:
                self._process.terminate()
            else:
                self._process.kill()

    def __repr__(self) -> str:
        state = "alive" if self.is_alive() else f"exitcode={self._exitcode}"
        return f"<procpool.ProcessHandle {self._fn_name} pid={self.pid} {state}>"


def spawn(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> ProcessHandle[R]:
    """Start one new process running ``fn(*args, **kwargs)``; return its handle.

    The typed successor of ``multiprocessing.Process(target=fn, args=...)``: the
    handle's ``result()`` is ``fn``'s return value; an exception in ``fn`` is
    re-raised with the child's traceback as ``__cause__``::

        handle = procpool.spawn(pow, 2, 10)
        handle.join()
        assert handle.result() == 1024 and handle.exitcode == 0

    The process uses the default start method (forkserver on Linux, spawn
    elsewhere). For a name, a daemon flag or another start method, subclass
    :class:`ProcessTask`.
    """
    if not callable(fn):
        raise TypeError(f"spawn() needs a callable, not {fn!r}")
    return ProcessHandle(fn, args, kwargs)

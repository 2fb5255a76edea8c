"""``ProcessTask[R]``: subclass it like ``multiprocessing.Process``; ``run()`` returns R."""

from __future__ import annotations

import abc
from multiprocessing.context import BaseContext
from typing import Any, Generic, TypeVar

from ._context import StartMethod
from ._process import ProcessHandle

__all__ = ["ProcessTask"]

R = TypeVar("R")


class ProcessTask(abc.ABC, Generic[R]):
    """A unit of work that runs in its own process; the typed successor of ``Process``.

    Subclass it, call ``super().__init__()`` and override :meth:`run`, which runs in
    the child and whose return value becomes :meth:`result`::

        class Greet(procpool.ProcessTask[str]):
            def __init__(self, who: str) -> None:
                super().__init__()
                self.who = who

            def run(self) -> str:
                return f"hello {self.who}"

        task = Greet("world")
        task.start()
        task.join()
        assert task.result() == "hello world"

    The same object can instead go to a pool: ``pool.submit(task)`` runs
    ``task.run()`` in a worker (a task is a ``Callable[[], R]``). The task is
    pickled to the child under spawn/forkserver, so its attributes must pickle.

    Args:
        name: the process name (default ``ClassName-N`` as multiprocessing does).
        daemon: make the process daemonic (killed when the parent exits).
        context: the start method for :meth:`start` (default as for ``Pool``).
    """

    _counter = 0

    def __init__(
        self,
        *,
        name: str | None = None,
        daemon: bool | None = None,
        context: StartMethod | BaseContext | None = None,
    ) -> None:
        ProcessTask._counter += 1
        self._name = name if name is not None else f"{type(self).__name__}-{ProcessTask._counter}"
        self._daemon = daemon
        self._context: StartMethod | BaseContext | None = context
        self._handle: ProcessHandle[R] | None = None

    @abc.abstractmethod
    def run(self) -> R:
        """The work; runs in the child process. Subclasses must override it."""

    def __call__(self) -> R:
        """Run :meth:`run` here; what ``pool.submit(task)`` calls in a worker."""
        return self.run()

    def __getstate__(self) -> dict[str, Any]:
        # The handle (threads, pipes) stays in the parent.
        state = self.__dict__.copy()
        state["_handle"] = None
        return state

    # -- process controls -------------------------------------------------------------

    def start(self) -> ProcessHandle[R]:
        """Start the process; return its handle (also kept on the task).

        Raises:
            RuntimeError: if the task was already started.
        """
        if self._handle is not None:
            raise RuntimeError(f"{self._name} was already started; create a new task")
        handle: ProcessHandle[R] = ProcessHandle(
            self.run, (), {}, name=self._name, daemon=self._daemon, context=self._context
        )
        self._handle = handle
        return handle

    @property
    def handle(self) -> ProcessHandle[R]:
        """The handle of the started process.

        Raises:
            RuntimeError: if the task has not been started.
        """
        if self._handle is None:
            raise RuntimeError(f"{self._name} has not been started; call start() first")
        return self._handle

    def join(self, timeout: float | None = None) -> None:
        """Wait until the process has ended, at most ``timeout`` seconds."""
        self.handle.join(timeout)

    def is_alive(self) -> bool:
        """True while the process runs (False before start())."""
        return self._handle is not None and self._handle.is_alive()

    def terminate(self) -> None:
        """Send SIGTERM to the process."""
        self.handle.terminate()

    def kill(self) -> None:
        """Send SIGKILL to the process."""
        self.handle.kill()

    def result(self, timeout: float | None = None) -> R:
        """Wait for :meth:`run`'s return value (re-raises its exception)."""
        return self.handle.result(timeout)

    @property
    def pid(self) -> int | None:
        """The process id, or None before start()."""
        return None if self._handle is None else self._handle.pid

    @property
    def name(self) -> str:
        """The process name."""
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        self._name = value

    @property
    def daemon(self) -> bool:
        """Whether the process is (or will be) daemonic."""
        if self._handle is not None:
            return self._handle.daemon
        return bool(self._daemon)

    @daemon.setter
    def daemon(self, value: bool) -> None:
        if self._handle is not None:
            raise RuntimeError("cannot set daemon on a started task")
        self._daemon = value

    @property
    def exitcode(self) -> int | None:
        """The exit code once the process has ended; None before."""
        return None if self._handle is None else self._handle.exitcode

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._name} pid={self.pid} exitcode={self.exitcode}>"

"""Waiting on many pipes and process sentinels at once, without polling.

On POSIX a persistent :mod:`selectors` object (epoll on Linux) is registered once
per worker, instead of :func:`multiprocessing.connection.wait`, which builds and
fills a new poll object on every call — twice per task on the dispatcher's hot
path. Windows pipes do not work with selectors, so there each wait goes through
``multiprocessing.connection.wait`` (WaitForMultipleObjects).
"""

from __future__ import annotations

import contextlib
import select
import selectors
import socket
import sys
from multiprocessing.connection import wait as _mp_wait
from typing import Any, Generic, TypeVar

if sys.platform == "linux":
    import fcntl

K = TypeVar("K")
_MISSING: Any = object()


#: Whether pipes can be written without blocking and watched for writability.
NONBLOCKING_WRITES = sys.platform != "win32"

#: Capacity asked for the pipes to and from workers (Linux; default there: 64 KiB).
#: A chunk of 100,000 small results pickles to ~500 KB: through a 64 KiB pipe the
#: writer blocks and the two processes take turns eight times per message, which
#: cost B1 a fifth of its time. The kernel counts a pipe's capacity (not its use)
#: against a per-user budget (``fs/pipe-user-pages-soft``, 64 MiB by default, past
#: which every new pipe of the user gets one page), so stay well below 1 MiB:
#: 256 workers' worth of pipes fit in the default budget.
PIPE_CAPACITY = 256 * 1024


def widen_pipe(fd: int) -> None:
    """Ask for a ``PIPE_CAPACITY`` buffer on a pipe; keep the default if refused."""
    if sys.platform == "linux":
        # EPERM once the user's pipe budget is spent: a default pipe still works.
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_CAPACITY)


def _fd(obj: Any) -> int:
    return obj if isinstance(obj, int) else int(obj.fileno())


class Waiter(Generic[K]):
    """Wait until any registered object is ready; yields the keys given at registration.

    On Linux an ``epoll`` object used directly: a claimed worker's pipe is taken
    out of it and put back once per round trip, and the ``selectors`` wrapper's
    bookkeeping in Python cost more than the two system calls themselves.
    """

    def __init__(self) -> None:
        self._epoll: Any = select.epoll() if hasattr(select, "epoll") else None
        self._selector: selectors.BaseSelector | None = (
            None
            if sys.platform == "win32" or self._epoll is not None
            else selectors.DefaultSelector()
        )
        #: By descriptor, but on Windows by the registered object.
        self._keys: dict[Any, K] = {}

    def register(self, obj: Any, key: K, *, write: bool = False) -> None:
        """Watch ``obj`` (a Connection, a socket, or a sentinel int) for readability.

        With ``write=True``, watch it for writability instead (POSIX only).
        """
        if self._epoll is not None:
            fd = _fd(obj)
            self._epoll.register(fd, select.EPOLLOUT if write else select.EPOLLIN)
            self._keys[fd] = key
            return
        if self._selector is not None:
            # By descriptor too: a claimed pipe goes out and back in by descriptor.
            fd = _fd(obj)
            self._keys[fd] = key
            events = selectors.EVENT_WRITE if write else selectors.EVENT_READ
            self._selector.register(fd, events, key)
            return
        self._keys[obj] = key

    def unregister(self, obj: Any) -> None:
        """Stop watching ``obj`` (before it is closed)."""
        if self._epoll is not None:
            with contextlib.suppress(ValueError, OSError):  # closed, or not registered
                fd = _fd(obj)
                if self._keys.pop(fd, _MISSING) is not _MISSING:
                    self._epoll.unregister(fd)
            return
        if self._selector is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                fd = _fd(obj)
                self._keys.pop(fd, None)
                self._selector.unregister(fd)
            return
        self._keys.pop(obj, None)

    def wait(self, timeout: float | None) -> list[K]:
        """The keys of the objects that are ready, after at most ``timeout`` seconds."""
        if self._epoll is not None:
            keys = self._keys
            # A descriptor unregistered by another thread meanwhile has no key.
            return [
                keys[fd]
                for fd, _ in self._epoll.poll(-1 if timeout is None else timeout)
                if fd in keys
            ]
        if self._selector is not None:
            return [key.data for key, _ in self._selector.select(timeout)]
        return [self._keys[obj] for obj in _mp_wait(list(self._keys), timeout)]

    def fileno(self) -> int | None:
        """The selector's own descriptor (epoll on Linux), if it has one."""
        if self._epoll is not None:
            return int(self._epoll.fileno())
        if self._selector is None:
            return None
        fileno = getattr(self._selector, "fileno", None)
        return None if fileno is None else int(fileno())

    def close(self) -> None:
        """Release the selector."""
        if self._epoll is not None:
            self._epoll.close()
        if self._selector is not None:
            self._selector.close()
        self._keys.clear()


class Wakeup:
    """A self-pipe (a socket pair, which every platform can wait on) to wake a waiter."""

    def __init__(self) -> None:
        self.reader, self._writer = socket.socketpair()
        self.reader.setblocking(False)
        self._writer.setblocking(False)

    def wake(self) -> None:
        """Make the reader readable; never blocks (a full buffer is awake enough)."""
        with contextlib.suppress(BlockingIOError, InterruptedError, OSError):
            self._writer.send(b"\0")

    def drain(self) -> None:
        """Read every pending wake-up byte."""
        with contextlib.suppress(BlockingIOError, InterruptedError, OSError):
            while self.reader.recv(4096):
                pass

    def filenos(self) -> tuple[int, int]:
        """Both ends' descriptors."""
        return self.reader.fileno(), self._writer.fileno()

    def close(self) -> None:
        """Close both ends."""
        self.reader.close()
        self._writer.close()

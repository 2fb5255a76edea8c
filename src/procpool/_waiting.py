"""Waiting on many pipes and process sentinels at once, without polling.

On POSIX a persistent :mod:`selectors` object (epoll on Linux) is registered once
per worker, instead of :func:`multiprocessing.connection.wait`, which builds and
fills a new poll object on every call — twice per task on the dispatcher's hot
path. Windows pipes do not work with selectors, so there each wait goes through
``multiprocessing.connection.wait`` (WaitForMultipleObjects).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import sys
from multiprocessing.connection import wait as _mp_wait
from typing import Any, Generic, TypeVar

K = TypeVar("K")


#: Whether pipes can be written without blocking and watched for writability.
NONBLOCKING_WRITES = sys.platform != "win32"


class Waiter(Generic[K]):
    """Wait until any registered object is ready; yields the keys given at registration."""

    def __init__(self) -> None:
        self._selector: selectors.BaseSelector | None = (
            None if sys.platform == "win32" else selectors.DefaultSelector()
        )
        self._keys: dict[Any, K] = {}

    def register(self, obj: Any, key: K, *, write: bool = False) -> None:
        """Watch ``obj`` (a Connection, a socket, or a sentinel int) for readability.

        With ``write=True``, watch it for writability instead (POSIX only).
        """
        self._keys[obj] = key
        if self._selector is not None:
            events = selectors.EVENT_WRITE if write else selectors.EVENT_READ
            self._selector.register(obj, events, key)

    def unregister(self, obj: Any) -> None:
        """Stop watching ``obj`` (before it is closed)."""
        self._keys.pop(obj, None)
        if self._selector is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(obj)

    def wait(self, timeout: float | None) -> list[K]:
        """The keys of the objects that are ready, after at most ``timeout`` seconds."""
        if self._selector is not None:
            return [key.data for key, _ in self._selector.select(timeout)]
        return [self._keys[obj] for obj in _mp_wait(list(self._keys), timeout)]

    def close(self) -> None:
        """Release the selector."""
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

    def close(self) -> None:
        """Close both ends."""
        self.reader.close()
        self._writer.close()

"""Threads of the pools on a cluster engine: helper threads, and timers for retries.

:class:`Threads` runs what must not happen on an engine's own threads (fetching
a result, cancelling, submitting again); :class:`Timers` holds the retries that
wait their backoff, in the client. Both start on first use and end with the
pool (``RemoteCore``), and neither holds the pool: a dropped pool can still be
collected.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable

LOGGER = logging.getLogger("procpool")


class Threads:
    """A few daemon threads that run thunks from one queue, started on first use.

    They run what must not happen on an engine's own threads: fetching a result
    (a network round trip for Dask, which can stall when a result is released
    while it is being fetched), cancelling, submitting again. One that stalls must
    not hold up the others, nor the engine's callback thread, which runs the
    done-callbacks of every task in the process. (The user's callbacks run on a
    :class:`CallbackRunner` of their own, for the same reason.)
    """

    def __init__(self, name: str, size: int) -> None:
        self._name = name
        self._size = size
        self._queue: queue.SimpleQueue[Callable[[], object] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closed = False

    def __call__(self, thunk: Callable[[], object]) -> None:
        with self._lock:
            if not self._closed:
                if not self._threads:
                    for number in range(self._size):
                        # Daemon: a thunk that never returns must not block interpreter exit.
                        thread = threading.Thread(
                            target=self._loop, name=f"{self._name}-{number}", daemon=True
                        )
                        thread.start()
                        self._threads.append(thread)
                self._queue.put(thunk)
                return
        # After the pool is gone (a late cancel, say) run inline rather than drop it.
        thunk()

    def _loop(self) -> None:
        for thunk in iter(self._queue.get, None):
            try:
                thunk()
            except Exception:  # the thunks handle their errors; this is a last resort
                LOGGER.exception("error in %s", self._name)
            # Drop it before waiting for the next one: it may hold an engine's
            # handle, and an engine keeps a task (and its result) while one lives.
            del thunk

    def close(self) -> None:
        """Let the threads end once the queue is empty; later thunks run inline."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for _ in self._threads:
                self._queue.put(None)


class Timers:
    """One daemon thread that runs thunks after a delay, started on first use.

    Retries that must wait (``backoff``) wait here, in the client, holding no
    worker: the job stays in :attr:`RemoteCore.jobs` meanwhile, so it can be
    cancelled and ``join()`` waits for it. The thunks only hand work to the
    core's helper threads, so one thread serves every wait.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Callable[[], object]]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    def call_later(self, delay: float, thunk: Callable[[], object]) -> None:
        """Run ``thunk`` (on this thread) ``delay`` seconds from now; dropped after close."""
        with self._cond:
            if self._closed:
                return
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._order), thunk))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        break
                    self._cond.wait(self._heap[0][0] - now if self._heap else None)
                if self._closed:
                    return
                _, _, thunk = heapq.heappop(self._heap)
            try:
                thunk()
            except Exception:  # the thunks handle their errors; this is a last resort
                LOGGER.exception("error in %s", self._name)
            del thunk

    def close(self) -> None:
        """Drop the thunks still waiting and let the thread end."""
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify()


__all__ = ["Threads", "Timers"]

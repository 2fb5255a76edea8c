"""The thread that runs a pool's future callbacks (``add_done_callback``, ``then``, ``catch``).

Callbacks never run on a thread the pool needs to make progress (the dispatcher,
Dask's callback thread): a callback may block, wait for another future, submit
more work or shut the pool down. They run in order on one thread of their own.

One thread has one hazard: a callback that blocks holds up every callback queued
behind it, and it may be waiting for one of them (a ``then`` future is resolved
by a callback), or for the pool, whose ``join()`` waits for the callbacks. So a
callback thread about to block *hands over*: a fresh thread takes the queue, and
the blocked callback finishes on the old thread, which then ends (what fork-join
pools call compensation). Waits that hand over: ``result()``/``exception()`` and
iteration of a procpool future that is not done, and ``join()``/``shutdown(wait=True)``
of the pool. A callback that blocks in ``concurrent.futures.wait``, ``as_completed``
or on a lock of its own does not hand over; docs/reliability.md says so.

A callback blocked in its own pool's ``join()`` also stops counting as pending
work: the pool cannot wait for the thread that is waiting for it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable

LOGGER = logging.getLogger("procpool")

_here = threading.local()


def _runner_of_this_thread() -> CallbackRunner | None:
    runner: CallbackRunner | None = getattr(_here, "runner", None)
    return runner


def run_inline(thunk: Callable[[], None]) -> None:
    """Run ``thunk`` in this thread now, or right after the thunk this thread is running.

    Callbacks that run inline (no runner, or a closed one) may resolve further
    futures, whose callbacks run inline too: a 5,000-link ``then`` chain would
    recurse 5,000 times and fail with RecursionError half-way. A thread already
    running an inline thunk queues the next one instead, and the outermost call
    runs them one after the other.
    """
    pending: deque[Callable[[], None]] | None = getattr(_here, "inline", None)
    if pending is not None:
        pending.append(thunk)
        return
    pending = _here.inline = deque((thunk,))
    try:
        while pending:
            pending.popleft()()
    finally:
        _here.inline = None


def before_blocking() -> None:
    """Call before a wait that may block: on a callback thread, hand its queue over."""
    runner = _runner_of_this_thread()
    if runner is not None:
        runner.hand_over()


class CallbackRunner:
    """Runs thunks in order on a background thread, started on first use (thread-safe).

    Args:
        name: the thread's name prefix (``<name>-callbacks``).
        after_each: called after each thunk (the pool wakes its dispatcher with it,
            which may be waiting for the callbacks before it stops).
    """

    def __init__(self, name: str, after_each: Callable[[], None] | None = None) -> None:
        self._name = name
        self._after_each = after_each
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        #: The thread that takes thunks from the queue (None until the first one).
        self._taker: threading.Thread | None = None
        #: Every live thread of this runner: the taker and those that handed over.
        self._threads: set[threading.Thread] = set()
        #: Threads inside this runner's join(): joins never wait for each other.
        self._joining: set[threading.Thread] = set()
        self._pending = 0
        self._closed = False

    def __call__(self, thunk: Callable[[], None]) -> None:
        """Queue ``thunk``; once the runner is closed, run it here and now instead."""
        with self._lock:
            if not self._closed:
                self._pending += 1
                if self._taker is None:
                    self._start_taker()
                self._queue.put(thunk)
                return
        run_inline(thunk)

    def pending(self) -> int:
        """Thunks queued or running, not counting those blocked in the pool's ``join()``."""
        return self._pending

    def is_mine(self) -> bool:
        """Whether the calling thread is one of this runner's threads."""
        return _runner_of_this_thread() is self

    def _start_taker(self) -> None:
        # Holding _lock. Daemon: a callback that never returns must not block exit.
        thread = threading.Thread(target=self._loop, name=f"{self._name}-callbacks", daemon=True)
        self._taker = thread
        self._threads.add(thread)
        thread.start()

    def hand_over(self) -> None:
        """The calling thread (one of ours) is about to block: let another take the queue."""
        me = threading.current_thread()
        with self._lock:
            if self._taker is me:
                self._start_taker()

    def leave_pending(self) -> None:
        """The calling callback waits for the pool to finish: stop counting it as pending.

        Hands the queue over too. Called by the pool's ``join()`` on a callback thread.
        """
        if not self.is_mine() or getattr(_here, "uncounted", False):
            return
        self.hand_over()
        with self._lock:
            _here.uncounted = True
            self._pending -= 1
        if self._after_each is not None:
            self._after_each()

    def _loop(self) -> None:
        me = threading.current_thread()
        _here.runner = self
        _here.uncounted = False
        try:
            while True:
                thunk = self._queue.get()
                if thunk is None:
                    return
                try:
                    thunk()
                except BaseException:  # pragma: no cover - callbacks log their own errors
                    LOGGER.exception("error in a future callback")
                del thunk
                with self._lock:
                    if not _here.uncounted:
                        self._pending -= 1
                    _here.uncounted = False
                    still_taker = self._taker is me
                if self._after_each is not None:
                    self._after_each()
                if not still_taker:
                    return  # handed over while the thunk blocked: the new taker goes on
        finally:
            with self._lock:
                self._threads.discard(me)

    def close(self) -> None:
        """Let the threads end once the queue is empty; later thunks run inline."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._taker is not None:
                self._queue.put(None)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for every thread of the runner but the calling one; True if none is left.

        Call after :meth:`close`. A callback thread does not wait for the threads
        blocked in a ``join()`` of their own: two callbacks joining their pool
        would otherwise wait for each other. Any other thread waits for them all.
        """
        me = threading.current_thread()
        mine = self.is_mine()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if mine:
                self._joining.add(me)
        try:
            while True:
                with self._lock:
                    others = [
                        t
                        for t in self._threads
                        if t is not me and not (mine and t in self._joining)
                    ]
                if not others:
                    return True
                for thread in others:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    thread.join(remaining)
        finally:
            with self._lock:
                self._joining.discard(me)

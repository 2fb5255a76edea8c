"""The chunks of one ``map`` (or one ``imap`` chunk) on a cluster engine.

A map of a remote pool is cut into chunks, one engine task each, whose items'
outcomes land in the map's :class:`MapFuture`. :class:`Chunks` launches them and
reads each chunk's end, item by item:

* an item that raised gives its exception in its place, as in a serial ``map``;
  if the exception is of a ``retry_on`` type and ``retries`` last, the item is
  run again on its own (a chunk of one), after its backoff, in its place;
* a chunk whose worker died (``WorkerLostError``: Dask's ``KilledWorker``, a
  Ray worker or node lost) does not fail its items: a larger chunk runs again
  cut in smaller ones (:data:`SPLIT`, one item each for small chunks),
  recursively, until the item lost is alone in its chunk; that one fails
  (after its ``retries``). Its neighbours run again, so an item may run twice
  (or more, with the engine's own re-runs: Dask's ``allowed-failures``).
* on an engine whose workers run several tasks (Dask: a worker's threads, and
  the tasks queued there), a worker's death also fails tasks that did not cause
  it: an item lost on its own first runs once more *alone* (one such run at a
  time per map), and fails only if it is lost again then. So the item that
  crashes runs once more than ``retries`` says, and a neighbour lost with it is
  delivered.

``DaskPool`` and ``RayPool`` share this; each says how one chunk is called
(``RemotePool._chunk_call``).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from ._child.dask_chunk import TimedOut
from ._errors import PoolClosedError, RemoteTraceback, WorkerLostError, add_note
from ._future import Future
from ._mapfuture import MapFuture
from ._options import Options, backoff_delay
from ._remote_backend import CancelMode, ChunkResult, Lost
from ._remote_core import RemoteCore, attempts_note

#: A lost chunk of more items than this runs again as this many smaller chunks; a
#: smaller one runs again one item per chunk. Each round of cutting costs the
#: crashing item one more death (and, on Dask, ``allowed-failures`` more).
SPLIT = 16

#: What the pool says to submit for some items: ``make_call(items, star)``.
MakeCall = Callable[[list[Any], bool], object]


class Chunks:
    """Launches the chunks of one map and delivers their items (see the module docstring).

    Args:
        core: the pool's core.
        opts: the options of the view the map was submitted to.
        name: the function's name (for the engine's keys).
        make_call: what to submit for some items.
        into: the map's future; item ``i`` of the map is item ``i`` there.
        star: each item is a tuple of arguments.
        mode: how a cancel of the map stops its chunks.
        title: what its chunks' ``TaskFinished`` events say (``on_event``).
    """

    def __init__(
        self,
        core: RemoteCore,
        opts: Options,
        name: str,
        make_call: MakeCall,
        into: MapFuture[Any],
        star: bool,
        mode: CancelMode,
        title: str = "",
    ) -> None:
        self.core = core
        self.opts = opts
        self.name = name
        self.make_call = make_call
        self.into = into
        self.star = star
        self.mode: CancelMode = mode
        self.title = title
        #: The keys of every chunk launched, retries and splits included: a cancel
        #: of the map reaches them all. (Keys, not futures: those hold results.)
        self.keys: list[str] = []
        self._lock = threading.Lock()
        #: Items lost on their own, waiting to run again alone: (item, index, attempts).
        self._suspects: deque[tuple[Any, int, int]] = deque()
        #: One of them runs alone now.
        self._confirming = False

    def launch(self, items: list[Any], at: int) -> None:
        """Submit ``items`` (the map's items ``at`` on) as one chunk.

        Raises:
            PoolClosedError: the pool is closed.
        """
        opts = self._chunk_options(items, 0, alone=False)
        call = self.make_call(items, self.star)
        key, chunk = self.core.launch(
            self.name, call, opts, user_facing=False, title=self.title, items=len(items)
        )
        self._follow(key, chunk, items, at, 0, alone=False)

    def cancel(self, _was_running: bool = True) -> None:
        """The map's cancel hook: cancel every chunk it launched."""
        self.core.cancel_keys(list(self.keys), mode=self.mode)

    # -- launching --------------------------------------------------------------------------

    def _chunk_options(self, items: list[Any], attempts: int, *, alone: bool) -> Options:
        # A chunk of several items is never run again as a whole: it is cut (see
        # _split). A chunk of one runs again after a lost worker while the item's
        # retries last (on an engine that shares workers, only once it has been
        # lost alone: see _suspect). Item exceptions and time limits are in the
        # chunk's result, read in _deliver.
        retries = self.opts.retries - attempts
        if len(items) > 1 or (self.core.backend.shares_workers and not alone):
            retries = 0
        opts = self.opts
        return Options(None, max(0, retries), False, backoff=opts.backoff, priority=opts.priority)

    def _launch_later(
        self, items: list[Any], at: int, *, attempts: int, delay: float, alone: bool = False
    ) -> None:
        """Submit ``items`` as one chunk of work already under way (a retry, a split).

        Raises:
            PoolClosedError: the pool is terminated.
        """
        key, chunk = self.core.launch_later(
            self.name,
            self.make_call(items, self.star),
            self._chunk_options(items, attempts, alone=alone),
            delay=delay,
            attempts=attempts,
            title=self.title,
            items=len(items),
        )
        self._follow(key, chunk, items, at, attempts, alone=alone)

    def _follow(
        self,
        key: str,
        chunk: Future[Any],
        items: list[Any],
        at: int,
        attempts: int,
        *,
        alone: bool,
    ) -> None:
        self.keys.append(key)
        if self.into.done():
            # The map was cancelled while this chunk was being launched: its
            # cancel hook may have read the keys before this one was there.
            self.core.cancel_keys([key], mode=self.mode)

        def done(finished: Future[Any]) -> None:
            self._done(finished, items, at, attempts, alone=alone)
            if alone:
                self._confirm_next()

        chunk.add_done_callback(done)

    # -- outcomes -----------------------------------------------------------------------------

    def _done(
        self, chunk: Future[Any], items: list[Any], at: int, attempts: int, *, alone: bool
    ) -> None:
        """A chunk ended (on whatever thread resolved it): its items go into the map."""
        counters, into = self.core.counters, self.into
        if chunk.cancelled():
            counters.add(cancelled=len(items))
            into.abandon()  # the map as a whole was cancelled, or the pool terminated
            return
        error = chunk.exception()
        if error is None:
            result = chunk.result()
            if not isinstance(result, Lost):
                outcomes = ChunkResult.of(result)
                if isinstance(result, list):
                    # Per-item outcomes hold the values too: only the map may,
                    # once its iterator can see them (see MapFuture.set_items).
                    result.clear()
                self._deliver(outcomes, items, at, attempts)
                return
            # Its worker died after a part of it had run elsewhere: keep that part.
            done = len(result.done.values)
            self._deliver(result.done, items[:done], at, attempts)
            items, at, error = items[done:], at + done, result.error
        if isinstance(error, WorkerLostError) and not into.done():
            if len(items) > 1:
                self._split(items, at)
                return
            if not alone and self._suspect(items[0], at, attempts):
                return
        # The whole task failed (a lost worker, a result that does not pickle):
        # every item did.
        size = len(items)
        counters.add(failed=size)
        into.set_items(at, [None] * size, dict.fromkeys(range(size), error))

    def _deliver(self, result: ChunkResult, items: list[Any], at: int, attempts: int) -> None:
        from_worker = self.core.backend.from_worker
        errors: dict[int, BaseException] = {}
        pending: list[int] = []
        timed_out = 0
        for index, (exc, text) in result.errors.items():
            timed_out += isinstance(exc, TimedOut)
            error = from_worker(exc)
            if text is not None:
                error.__cause__ = RemoteTraceback(text)
            if self._retry_item(items[index], at + index, attempts, error):
                pending.append(index)
            else:
                errors[index] = error
        size = len(items)
        self.core.counters.add(
            completed=size - len(errors) - len(pending), failed=len(errors), timed_out=timed_out
        )
        self.into.set_items(at, result.values, errors, pending)

    def _retry_item(self, item: Any, index: int, attempts: int, error: BaseException) -> bool:
        """Run item ``index`` again on its own if ``error`` is one to retry; True if it will."""
        opts = self.opts
        if not opts.retry_on or not isinstance(error, opts.retry_on) or self.into.done():
            return False
        if attempts >= opts.retries:
            if attempts:
                add_note(error, attempts_note(attempts + 1))
            return False
        delay = backoff_delay(opts.backoff, attempts + 1)
        try:
            self._launch_later([item], index, attempts=attempts + 1, delay=delay)
        except PoolClosedError:  # terminated meanwhile: the map is cancelled
            return False
        self.core.counters.add(retried=1)
        return True

    # -- lost workers ---------------------------------------------------------------------------

    def _split(self, items: list[Any], at: int) -> None:
        """Run a lost chunk's items again in smaller chunks."""
        size = math.ceil(len(items) / SPLIT) if len(items) > SPLIT else 1
        for start in range(0, len(items), size):
            try:
                self._launch_later(items[start : start + size], at + start, attempts=0, delay=0.0)
            except PoolClosedError:  # terminated meanwhile: the map is cancelled
                self.core.counters.add(cancelled=len(items) - start)
                self.into.abandon()
                return

    def _suspect(self, item: Any, index: int, attempts: int) -> bool:
        """Queue item ``index``, lost on its own, to run again alone; False: it fails now.

        Only on an engine that shares workers (see the module docstring).
        """
        if not self.core.backend.shares_workers:
            return False
        with self._lock:
            self._suspects.append((item, index, attempts))
            if self._confirming:
                return True
            self._confirming = True
        self._confirm_next()
        return True

    def _confirm_next(self) -> None:
        """Run the next suspect alone, if any (one at a time)."""
        while True:
            with self._lock:
                if not self._suspects or self.into.done():
                    left, self._confirming = len(self._suspects), False
                    self._suspects.clear()
                    if left:  # the map was cancelled meanwhile
                        self.core.counters.add(cancelled=left)
                    return
                item, index, attempts = self._suspects.popleft()
            try:
                self._launch_later([item], index, attempts=attempts, delay=0.0, alone=True)
            except PoolClosedError:  # terminated meanwhile: the map is cancelled
                self.core.counters.add(cancelled=1)
                self.into.abandon()
                continue
            return

"""``MapFuture[R]``: the results of one ``map``, a ``Future[list[R]]`` and an ``Iterator[R]``.

An executor stores results batch by batch (``set_items``); a consumer either
iterates (each item as soon as it is there, in input order, released once
yielded: iteration keeps nothing, bpo-14406) or asks for the whole list
(``result()``, ``then``, ``await``), which is then kept. ``take_all`` hands a
finished chunk's values over at once, for ``imap``.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import CancelledError, InvalidStateError
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED
from typing import Any, TypeVar, cast

from ._callbacks import before_blocking
from ._future import DONE_STATES, LOGGER, Future, wait_seconds, will_block

__all__ = ["MapFuture"]

R = TypeVar("R")

_MISSING: Any = object()
_RELEASED: Any = object()


class MapFuture(Future[list[R]], Iterator[R]):
    """The results of ``Pool.map``: a ``Future[list[R]]`` that is also an ``Iterator[R]``.

    Iterate it to stream the results in input order as they arrive (the first
    failed item's exception is raised when reached), or call :meth:`result` for the
    whole list. ``.then(sum)`` chains on the list; ``await`` gives the list.

    Iterating keeps no result alive after yielding it. The list is kept only when
    it is asked for (``result()``, ``then``, ``catch``, ``await``,
    ``add_done_callback``); asking for it after iteration has already released
    items raises :class:`concurrent.futures.InvalidStateError`.

    Example::

        for square in pool.map(pow, range(10), repeat(2)):
            print(square)
        total = pool.map(abs, [-1, 2]).then(sum).result()   # 3
    """

    def __init__(self, size: int, *, timeout: float | None = None) -> None:
        super().__init__()
        self._size = size
        self._values: list[Any] = [_MISSING] * size
        self._errors: dict[int, BaseException] = {}
        self._received = 0
        self._next = 0
        #: Threads waiting in ``__next__`` for an item (not for the whole map).
        self._item_waiters = 0
        self._keep = False
        self._released = False
        #: ``map(..., return_exceptions=True)``: failed items hold their exception.
        self._return_exceptions = False
        # Executor.map semantics: the deadline counts from the call, for every item.
        self._deadline: float | None = None
        #: Told how many more items arrived (progress reporting).
        self._on_progress: Callable[[int], object] | None = None
        timeout = wait_seconds(timeout)
        if timeout is not None:
            self._deadline = time.monotonic() + timeout
        if size == 0:
            self._state = FINISHED

    # -- for executors ------------------------------------------------------------

    def set_return_exceptions(self) -> None:
        """For the pools' shared surface: failed items give their exception in place.

        Called before the future reaches the caller; if it has finished already
        (its items failed at once), its outcome is rewritten as if the flag had
        been set from the start: nobody can have seen it.
        """
        with self._condition:
            self._return_exceptions = True
            if self._state == FINISHED and self._exception is not None:
                self._exception = None
                self._place_errors()

    def _place_errors(self) -> None:
        """Holding the condition: put each failed item's exception in its place."""
        for index, exc in self._errors.items():
            if self._values[index] is not _RELEASED:
                self._values[index] = exc

    def set_progress(self, report: Callable[[int], object] | None) -> None:
        """For executors: call ``report(count)`` as each batch of items arrives."""
        self._on_progress = report

    def set_items(
        self,
        start: int,
        values: list[Any],
        errors: dict[int, BaseException] | None,
        pending: Collection[int] = (),
    ) -> bool:
        """For executors: results of items ``start`` on; ``errors`` maps batch indices to failures.

        ``pending`` lists batch indices that have no outcome yet (they run again).
        Returns False, storing nothing, if the map is done already (cancelled).

        The values are taken out of ``values``: the list is left empty, before
        any iterator can see them. Whatever else still holds that list (the
        executor's frames, a resolved task's future, an engine's callback) then
        holds no result, so an item the caller has dropped is freed at once.
        """
        with self._condition:
            if self._state in DONE_STATES:
                return False
            stop = start + len(values)
            self._values[start:stop] = values
            count = stop - start
            values.clear()
            if errors:
                for index, exc in errors.items():
                    self._errors[start + index] = exc
            for index in pending:
                self._values[start + index] = _MISSING
            self._received += count - len(pending)
            complete = self._received >= self._size
            # Only iterators care about single items; a thread in result() waking
            # for every batch would take the GIL from the dispatcher each time.
            if not complete and self._item_waiters:
                self._condition.notify_all()
        self._progressed(count - len(pending))
        if complete:
            self._complete()
        return True

    def _progressed(self, count: int) -> None:
        report = self._on_progress
        if report is not None:
            try:
                report(count)
            except Exception:
                LOGGER.exception("progress callback failed")

    def unfinished(self) -> int:
        """For executors: how many items have no outcome yet (for the pool's counters)."""
        with self._condition:
            return self._size - self._received

    def fail_unfinished(self, exc: BaseException) -> None:
        """For executors: fail every item that has no outcome yet with ``exc``."""
        with self._condition:
            if self._state in DONE_STATES:
                return
            for index, value in enumerate(self._values):
                if value is _MISSING and index not in self._errors:
                    self._errors[index] = exc
                    self._values[index] = None
                    self._received += 1
        self._complete()

    def set_item_exception(self, index: int, exc: BaseException) -> bool:
        """For executors: item ``index`` failed with ``exc``; False if the map is done already."""
        with self._condition:
            if self._state in DONE_STATES:
                return False
            self._errors[index] = exc
            self._values[index] = None
            self._received += 1
            complete = self._received >= self._size
            if not complete and self._item_waiters:
                self._condition.notify_all()
        self._progressed(1)
        if complete:
            self._complete()
        return True

    def _complete(self) -> None:
        with self._condition:
            if self._state in DONE_STATES:
                return
            first_error = self._first_error()
            if self._return_exceptions:
                self._place_errors()
            if first_error is not None:
                self._exception = first_error
                for waiter in self._waiters:
                    waiter.add_exception(self)
            else:
                for waiter in self._waiters:
                    waiter.add_result(self)
            self._state = FINISHED
            self._condition.notify_all()
        self._run_callbacks()

    def _first_error(self) -> BaseException | None:
        if not self._errors or self._return_exceptions:
            return None
        return self._errors[min(self._errors)]

    # -- the list --------------------------------------------------------------------

    def _keep_list(self) -> None:
        with self._condition:
            if self._released:
                raise InvalidStateError(
                    "the MapFuture's list is gone: iterating it released the results "
                    "already yielded; call result() (or then/catch/await) before iterating "
                    "if you need both"
                )
            self._keep = True

    def result(self, timeout: float | None = None) -> list[R]:
        """Wait for every item and return the results as a list, in input order.

        As with any ``Future``, every call returns the same list (not a copy), and
        callbacks chained with ``then`` receive it too: copy it before changing it
        if anything else will read it.

        Raises:
            The first failed item's exception (in input order); ``CancelledError``;
            ``TimeoutError`` if not done within ``timeout`` seconds;
            ``InvalidStateError`` if iteration has already released results.
        """
        self._keep_list()
        self._wait_done(timeout)
        with self._condition:
            self._raise_unless_finished()
            if self._exception is not None:
                raise self._exception
            # Finished and kept: nothing here writes to the list any more. No copy:
            # on a first map in a fresh process its pages alone cost ~1 ms/200,000.
            return self._values

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Wait for every item; return the first failed item's exception, or None."""
        self._wait_done(timeout)
        with self._condition:
            self._raise_unless_finished()
            return self._exception

    def _raise_unless_finished(self) -> None:
        """Holding the condition, after a wait: raise if cancelled or still running."""
        if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED):
            raise CancelledError()
        if self._state != FINISHED:
            raise concurrent.futures.TimeoutError()

    def _wait_done(self, timeout: float | None) -> None:
        timeout = wait_seconds(timeout)
        if self._state in DONE_STATES:
            return
        if will_block(timeout):
            before_blocking()
        with self._condition:
            self._condition.wait_for(lambda: self._state in DONE_STATES, timeout)

    def take_all(self) -> tuple[list[R], dict[int, BaseException]]:
        """For executors: wait for every item; hand over values and failures, keep nothing.

        For an iterator that yields the items itself (``imap``); the future then
        keeps no list, as after iteration.
        """
        self._wait_done(None)
        with self._condition:
            if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED):
                raise CancelledError()
            values, self._values = self._values, []
            errors, self._errors = self._errors, {}
            self._released = True
        return values, errors

    def add_done_callback(self, fn: Callable[[Future[list[R]]], object]) -> None:
        """As :meth:`Future.add_done_callback`; keeps the list for the callback."""
        self._keep_list()
        super().add_done_callback(fn)

    # -- iteration -------------------------------------------------------------------

    def __iter__(self) -> MapFuture[R]:
        return self

    def __next__(self) -> R:
        with self._condition:
            index = self._next
            if index >= self._size:
                raise StopIteration
            while True:
                if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED):
                    raise CancelledError()
                value = self._values[index]
                if value is not _MISSING:
                    break
                if index in self._errors:
                    break
                if self._deadline is None:
                    remaining = None
                else:
                    remaining = self._deadline - time.monotonic()
                    if remaining <= 0:
                        break
                before_blocking()
                self._item_waiters += 1
                try:
                    self._condition.wait(remaining)
                finally:
                    self._item_waiters -= 1
            error: BaseException | None = None
            if value is _MISSING and index not in self._errors:
                timed_out = True
            else:
                timed_out = False
                self._next = index + 1
                error = self._errors.get(index)
                if not self._keep:
                    self._values[index] = _RELEASED
                    self._released = True
        if timed_out:
            # As Executor.map: a result that is not ready in time cancels the rest.
            self.cancel()
            raise concurrent.futures.TimeoutError()
        if error is not None:
            if self._return_exceptions:
                return cast("R", error)
            raise error
        return cast("R", value)

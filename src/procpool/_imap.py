"""The one ``imap`` engine of both pools: bounded read-ahead, chunks, results in order.

:class:`IMapFeed` reads at most ``buffersize`` items of the input ahead of the
consumer, hands them to the pool in chunks through a *launch hook* (each chunk a
:class:`MapFuture`), and yields the results chunk after chunk, in input order or
in completion order. ``Pool`` launches a chunk as one call to one worker;
``DaskPool`` as one Dask task. Everything else, the read-ahead bound, failures,
closing and breaking out of the loop, is the same code for both.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import wait as _wait_futures
from typing import Any, Generic, TypeVar, cast

from ._errors import PoolClosedError, add_note
from ._mapfuture import MapFuture
from ._progress import Reporter

R = TypeVar("R")

#: ``launch(items, base_index) -> MapFuture``: start one chunk (see :class:`IMapFeed`).
Launch = Callable[[list[Any], int], MapFuture[R]]


class IMapStream(itertools.chain[R]):
    """What ``Pool.imap`` returns: the items of finished chunks, chunk after chunk.

    A :class:`itertools.chain` over the results of each chunk that :class:`IMapFeed`
    hands out, so the items of a chunk without failures reach the consumer through
    C code alone (about 35 ns per item, against 60-90 ns for a ``__next__`` written
    in Python). Each chunk's list is popped from its end, reversed first, so that
    an item yielded is no longer held here (iteration keeps nothing, bpo-14406).
    A chunk with failures, or with a progress bar to advance, is an :class:`_Items`
    iterator instead: it raises at a failed item, and since ``chain`` keeps its
    current iterator after an exception, ``next()`` goes on after it.
    """

    __slots__ = ("_feed",)
    _feed: IMapFeed[R]

    @classmethod
    def of(cls, feed: IMapFeed[R]) -> IMapStream[R]:
        """The stream of ``feed``'s results."""
        stream = cast("IMapStream[R]", cls.from_iterable(feed.results()))
        stream._feed = feed
        return stream

    def close(self) -> None:
        """Stop: cancel the chunks no worker has started; read no more input."""
        self._feed.close()


class _Items(Iterator[R]):
    """The items of one chunk, one by one: raises at failed items, advances progress."""

    __slots__ = ("_errors", "_pos", "_reporter", "_values")

    def __init__(
        self, values: list[R], errors: dict[int, BaseException], reporter: Reporter | None
    ) -> None:
        self._values = values
        self._errors = errors
        self._reporter = reporter
        self._pos = 0

    def __iter__(self) -> _Items[R]:
        return self

    def __next__(self) -> R:
        pos = self._pos
        if pos >= len(self._values):
            raise StopIteration
        self._pos = pos + 1
        if self._reporter is not None:
            self._reporter.advance(1)
        if pos in self._errors:
            raise self._errors.pop(pos)
        value = self._values[pos]
        self._values[pos] = cast("R", None)  # yielded: not ours to keep
        return value

    def stop(self) -> None:
        self._values = []


class _Popper(Generic[R]):
    """The items of one chunk without failures, yielded and released by C code."""

    __slots__ = ("_tickets", "_values", "items")

    def __init__(self, values: list[R]) -> None:
        values.reverse()
        self._values = values
        # One empty argument tuple per item: starmap calls values.pop() for each.
        self._tickets = itertools.repeat((), len(values))
        self.items: Iterator[R] = itertools.starmap(values.pop, self._tickets)

    def stop(self) -> None:
        # Use up the tickets: the starmap ends before it pops the emptied list.
        deque(self._tickets, maxlen=0)
        self._values.clear()


class IMapFeed(Generic[R]):
    """Reads the input ahead (at most ``buffersize`` items), launches it in chunks,
    and hands the chunks' results to an :class:`IMapStream` in order (or as they
    finish).

    Args:
        launch: the pool's hook, ``launch(items, base_index)``: start one chunk,
            return its :class:`MapFuture` (cancelling it must stop the chunk if
            it has not started). It raises ``PoolClosedError`` once the pool
            takes no more work.
        release: the pool's other hook, if it has one: called before the consumer
            waits for a chunk not yet done, and when the stream ends, to give back
            whatever ``launch`` took over on the consumer's thread (``Pool``: the
            result pipes, see ``_assist``).
    """

    def __init__(
        self,
        launch: Launch[R],
        source: Iterator[Any],
        chunksize: int,
        buffersize: int,
        ordered: bool,
        reporter: Reporter | None,
        *,
        return_exceptions: bool = False,
        release: Callable[[], None] | None = None,
    ) -> None:
        self._launch = launch
        self._release = release
        #: Yield a failed item's exception in its place instead of raising it.
        self._return_exceptions = return_exceptions
        self._source: Iterator[Any] | None = source
        self._chunksize = chunksize
        self._buffersize = buffersize
        self._ordered = ordered
        self._reporter = reporter
        self._ahead = 0  # items read from the source and not yet used up
        self._read = 0
        self._chunks: deque[MapFuture[R]] = deque()
        #: Unordered: where each chunk starts in the input (its failures name their item).
        self._bases: dict[int, int] = {}
        #: The results being yielded, stopped by close() so that iteration stops.
        self._current: _Popper[R] | _Items[R] | None = None
        self._source_error: BaseException | None = None

    def stream(self) -> IMapStream[R]:
        """The iterator to return from ``imap``; the first chunks go out now.

        As ``Executor.map`` sends its calls at once: the workers start while the
        caller is still setting up its loop.
        """
        self._top_up()
        return IMapStream[R].of(self)

    def _top_up(self) -> None:
        source = self._source
        while source is not None and self._ahead + self._chunksize <= self._buffersize:
            try:
                chunk = list(itertools.islice(source, self._chunksize))
            except BaseException as exc:
                # Raised when the consumer gets there, after the items read before it,
                # as a serial loop would.
                self._source_error = exc
                self._source = None
                return
            if not chunk:
                self._source = source = None
                break
            try:
                future = self._launch(chunk, self._read)
            except PoolClosedError as exc:
                # Closed meanwhile: what went out before is still yielded, then this.
                self._source_error = exc
                self._source = None
                return
            if not self._ordered:
                self._bases[id(future)] = self._read
            self._read += len(chunk)
            self._ahead += len(chunk)
            self._chunks.append(future)

    def results(self) -> Generator[Iterator[R], None, None]:
        """The chain's source: one iterable of results per chunk.

        Resumed when the consumer has used up the previous chunk: only then do its
        items stop counting as read ahead, so the input is read further (before
        waiting on the next chunk, which keeps the workers fed).
        """
        try:
            used = 0
            while True:
                self._ahead -= used
                self._top_up()
                if not self._chunks:
                    source_error, self._source_error = self._source_error, None
                    if source_error is not None:
                        raise source_error
                    return
                base = 0  # only unordered results need it
                release = self._release
                if self._ordered:
                    chunk = self._chunks.popleft()
                    if release is not None and not chunk.done():
                        release()
                else:
                    if release is not None and not any(c.done() for c in self._chunks):
                        release()
                    _wait_futures(self._chunks, return_when="FIRST_COMPLETED")
                    chunk = next(c for c in self._chunks if c.done())
                    self._chunks.remove(chunk)
                    base = self._bases.pop(id(chunk))
                # A whole chunk at once: its items are then yielded without a lock each.
                values, errors = chunk.take_all()
                used = len(values)
                if errors and not self._ordered:
                    # Out of order, an exception alone would not say which input it
                    # belongs to.
                    for index, exc in errors.items():
                        add_note(exc, f"procpool: raised by item {base + index} of the input")
                if errors and self._return_exceptions:
                    for index, exc in errors.items():
                        values[index] = cast("R", exc)
                    errors = {}
                if not errors and self._reporter is None:
                    popper = self._current = _Popper(values)
                    del values
                    yield popper.items
                else:
                    items = self._current = _Items(values, errors, self._reporter)
                    del values
                    yield items
        finally:
            # Exhausted, or the stream was dropped (a break out of the loop).
            with contextlib.suppress(Exception):
                self.close()

    def close(self) -> None:
        """Stop: cancel the chunks no worker has started; read no more input."""
        self._source = None
        # An error of the input (or the pool's refusal of a chunk) not yet reached:
        # after close() the stream ends, as a closed generator does.
        self._source_error = None
        for future in self._chunks:
            if not future.running():
                future.cancel()
        self._chunks.clear()
        if self._current is not None:
            self._current.stop()
        if self._reporter is not None:
            self._reporter.close()
        if self._release is not None:
            self._release()

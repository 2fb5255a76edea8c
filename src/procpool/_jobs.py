"""Work items as the dispatcher sees them: jobs, and the calls they are cut into.

A *job* is what a user asked for: one ``submit`` (:class:`SingleJob`) or one
``map`` / one ``imap`` chunk (:class:`MapJob`). The dispatcher asks the job at the
head of its queue for the next *call* (one message to one worker). A single job
is one call; a map job is cut into chunks whose size adapts to the measured time
per item, so tiny items travel in large batches and long ones one by one.

Jobs hold their function and inputs only until their future is done; calls hold
only their own slice.
"""

from __future__ import annotations

import abc
import itertools
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

from ._child import messages as m
from ._child.codec import Unpicklable, describe_callable, diagnose_call, encode_call
from ._errors import SerializationError
from ._future import Future
from ._mapfuture import MapFuture
from ._options import Options

if TYPE_CHECKING:
    from ._child.shm import Lease, SegmentPool

_ids = itertools.count(1)


def limit_fields(opts: Options) -> tuple[int, bytes]:
    """The MEMORY and GRACE flags, and their fields, of a call with ``opts`` (see ``_child``).

    Worked out once per ``Options`` (a pool's, or an ``options()`` view's) and
    kept on it: every submit needs them.
    """
    cached: tuple[int, bytes] | None = opts.__dict__.get("_limit_fields")
    if cached is not None:
        return cached
    flags, fields = 0, b""
    if opts.max_memory is not None:
        flags |= m.MEMORY
        fields += m.MEMORY_FIELD.pack(opts.max_memory)
    if opts.grace is not None and opts.timeout is not None:
        flags |= m.GRACE
        fields += m.GRACE_FIELD.pack(opts.timeout, opts.grace)
    # Options is frozen, and its fields say everything this is made of.
    object.__setattr__(opts, "_limit_fields", (flags, fields))
    return flags, fields


def not_picklable(exc: Unpicklable) -> SerializationError:
    """The user's error for a call the codec could not pickle (its message names the culprit)."""
    error = SerializationError(str(exc))
    error.__cause__ = exc.__cause__
    return error


def new_call_id() -> int:
    """A process-wide unique id for a call message."""
    return next(_ids)


#: A chunk should keep a worker busy about this long: long enough that the round
#: trip is noise, short enough that the tail of a map stays balanced.
TARGET_CHUNK_SECONDS = 0.02
#: ...and at least this long, where there are items enough.
MIN_CHUNK_SECONDS = 0.002
#: A chunk carries at most about this much data: large items travel alone, so a
#: worker starts on the first before the rest are copied, and the shared segments
#: of calls keep one size and get reused.
CHUNK_MAX_BYTES = 4 * 1024 * 1024
#: Read ahead (a second call to a busy worker) only for items faster than this.
READ_AHEAD_BELOW_SECONDS = 0.004


class Call:
    """One message to one worker: a whole single job, or a range of a map job."""

    __slots__ = (
        "data",
        "exact",
        "failed",
        "grace",
        "id",
        "job",
        "lease",
        "ran",
        "sent_at",
        "start",
        "stop",
        "timeout",
        "worker_done",
    )

    def __init__(
        self,
        job: Job,
        data: bytes,
        lease: Lease | None,
        start: int = 0,
        stop: int = 1,
        *,
        exact: bool = False,
        call_id: int | None = None,
    ) -> None:
        self.id: int = m.CALL_HEADER.unpack_from(data)[0] if call_id is None else call_id
        self.job = job
        self.data = data
        #: The shared segment holding the call's large buffers, if any.
        self.lease = lease
        # Range of the job's items this call carries (0..1 for a single job).
        self.start = start
        self.stop = stop
        #: How many items, counted from ``start``, the parent has results for.
        self.worker_done = 0
        #: A chunk whose items the worker marks one by one, however fast (EXACT).
        self.exact = exact
        #: For events: when it was written to a worker, seconds it ran there, and
        #: how many of its items failed.
        self.sent_at = 0.0
        self.ran = 0.0
        self.failed = 0
        self.timeout = job.timeout
        #: Seconds between the worker interrupting the call at ``timeout`` and a kill.
        self.grace = job.grace if job.timeout is not None else None


class Job(abc.ABC):
    """Base of the two kinds of job."""

    future: Future[Any]
    group: object
    timeout: float | None
    retries: int
    retry_timeouts: bool
    #: Exception types after which a call runs again (up to ``retries`` times).
    retry_on: tuple[type[BaseException], ...]
    #: Seconds the first retry waits (see ``_options.backoff_delay``).
    backoff: float
    #: Higher runs first (see ``_queue``).
    priority: int
    grace: float | None
    #: The MEMORY and GRACE flags of the job's calls, and their fields.
    limit_flags: int
    limit_fields: bytes

    #: ``time.monotonic()`` when it was submitted (events report its time queued).
    queued_at: float = 0.0

    def _take_options(self, opts: Options) -> None:
        self.timeout = opts.timeout
        self.retries = opts.retries
        self.retry_timeouts = opts.retry_timeouts
        self.retry_on = opts.retry_on
        self.backoff = opts.backoff
        self.priority = opts.priority
        self.grace = opts.grace
        self.limit_flags, self.limit_fields = limit_fields(opts)

    fn: Callable[..., Any] | None

    @abc.abstractmethod
    def next_call(self, workers: int, *, short: bool = False) -> Call | None:
        """The next call to send, or None when everything has been handed out.

        ``short``: a map cuts the call to ``MIN_CHUNK_SECONDS`` of items (a call
        read ahead while priorities are in use: see ``_feeding``).
        """

    @property
    @abc.abstractmethod
    def exhausted(self) -> bool:
        """True once every item has been handed out (retries may add more)."""

    @abc.abstractmethod
    def describe(self, call: Call, index: int) -> str:
        """Name the task (and item) for error messages."""

    @property
    @abc.abstractmethod
    def title(self) -> str:
        """Name the task for events: ``mod.fn``, or ``map(mod.fn, ...)``."""

    @abc.abstractmethod
    def attempts_of(self, index: int) -> int:
        """How many times item ``index`` (the task) has been run again so far."""

    @abc.abstractmethod
    def count_attempt(self, index: int) -> int:
        """Item ``index`` (the task) runs again: return its number of retries so far."""

    def read_ahead_pays(self) -> bool:
        """Whether a busy worker should get this job's next call already.

        Only when calls are short: then the round trip would idle the worker. For
        long calls the round trip is noise, and a call waiting in a busy worker
        could have started at once on a worker that frees up sooner.
        """
        return False

    def release(self) -> None:
        """Drop the function and inputs once the future is done."""
        self.fn = None


class SingleJob(Job):
    """One ``submit``: the call is pickled up front, in the submitting thread."""

    def __init__(
        self,
        future: Future[Any],
        fn: Callable[..., Any],
        data: bytes,
        *,
        lease: Lease | None,
        opts: Options,
        call_id: int | None = None,
    ) -> None:
        self.future = future
        self.fn = fn
        self._name: str | None = None
        self.group = self
        self._take_options(opts)
        self._data: bytes | None = data
        self._lease = lease
        self.attempts = 0
        self.call_id = call_id

    @property
    def name(self) -> str:
        """The function's name, for messages (worked out only when one is needed)."""
        if self._name is None:
            self._name = describe_callable(self.fn) if self.fn is not None else "(released)"
        return self._name

    def next_call(self, workers: int, *, short: bool = False) -> Call | None:
        data = self._data
        if data is None:
            return None
        lease, self._data, self._lease = self._lease, None, None
        return Call(self, data, lease, call_id=self.call_id)

    def requeue(self, call: Call) -> None:
        """Hand the same call out again (it never started, or it is being retried)."""
        self._data, self._lease = call.data, call.lease

    def attempts_of(self, index: int) -> int:
        return self.attempts

    def count_attempt(self, index: int) -> int:
        self.attempts += 1
        return self.attempts

    @property
    def exhausted(self) -> bool:
        return self._data is None

    def describe(self, call: Call, index: int) -> str:
        return f"task {self.name}"

    @property
    def title(self) -> str:
        return self.name

    def release(self) -> None:
        # Nothing describes a job after this: its outcome is decided (see _settle).
        self.fn = None
        self._data = None
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.end(False)  # never sent again: its segment goes now


class Timing:
    """Measured time per item of a map: what chunk sizes and read-ahead go by.

    One per ``map``; the chunks of one ``imap`` (a job each) share one, so the
    second chunk already knows what the first measured.
    """

    __slots__ = ("items", "seconds")

    def __init__(self) -> None:
        self.items = 0
        self.seconds = 0.0


class MapJob(Job):
    """A ``map`` (or one ``imap`` chunk): items cut into adaptive chunks."""

    def __init__(
        self,
        future: MapFuture[Any],
        fn: Callable[..., Any],
        items: Sequence[Any],
        *,
        star: bool,
        chunksize: int | None,
        opts: Options,
        cloud: bool,
        segments: SegmentPool | None = None,
        base_index: int = 0,
        group: object = None,
        timing: Timing | None = None,
        name: str | None = None,
    ) -> None:
        self.future = future
        self.map_future = future
        self.fn = fn
        self.name = name if name is not None else describe_callable(fn)
        #: A list, or a range (whose slices are ranges: see ``Pool._map``).
        self.items: Sequence[Any] | None = items
        self.star = star
        self.fixed = chunksize
        self._take_options(opts)
        self.cloud = cloud
        self.segments = segments
        self.base_index = base_index
        self.group = group if group is not None else self
        self.next_index = 0
        self.size = len(items)
        #: Ranges handed back (to run again, or never started), served before new
        #: items: (start, stop, exact), exact if a death must be blamed on one item.
        self.pending: deque[tuple[int, int, bool]] = deque()
        self.attempts: dict[int, int] = {}
        self.timing = timing if timing is not None else Timing()
        self.in_flight = 0
        self.encoded_items = 0
        self.encoded_bytes = 0
        #: Items failed here in the parent (they do not pickle), which the
        #: dispatcher has not yet added to the pool's counters.
        self.failed_here = 0
        #: A call encoded ahead by :meth:`prepare`, handed out first.
        self._prepared: Call | None = None

    @property
    def exhausted(self) -> bool:
        return self._prepared is None and not self.pending and self.next_index >= self.size

    def prepare(self, workers: int) -> None:
        """Encode the first call now, in the calling thread, before the job is queued.

        For imap, whose chunks are one call each: the consumer thread pickles the
        chunk instead of the dispatcher thread, which holds the pool's lock.
        """
        self._prepared = self.next_call(workers)

    def _chunk_size(self, workers: int, short: bool = False) -> int:
        if self.fixed is not None:
            return self.fixed
        remaining = self.size - self.next_index
        if self.encoded_bytes > CHUNK_MAX_BYTES * self.encoded_items:
            return 1  # items this large gain nothing from chunking
        timing = self.timing
        if timing.items == 0:
            # Nothing measured yet: start small, so slow items spread at once and
            # the first replies tell us how big chunks should be.
            return min(remaining, 1 if self.in_flight < workers else 4)
        per_item = max(timing.seconds / timing.items, 1e-9)
        # Keep the tail balanced: at most a share of what is left, but never so
        # small that a chunk is mostly round trip.
        share = -(-remaining // (2 * workers))
        most = int((MIN_CHUNK_SECONDS if short else TARGET_CHUNK_SECONDS) / per_item)
        if self.encoded_items:
            per_item_bytes = max(1, self.encoded_bytes // self.encoded_items)
            most = min(most, max(1, CHUNK_MAX_BYTES // per_item_bytes))
        least = min(most, int(MIN_CHUNK_SECONDS / per_item))
        return max(1, min(remaining, max(least, min(share, most))))

    def record_timing(self, items: int, seconds: float) -> None:
        """Learn the time per item from a reply (averaged over the whole map)."""
        if items > 0:
            self.timing.items += items
            self.timing.seconds += seconds

    def next_call(self, workers: int, *, short: bool = False) -> Call | None:
        if self._prepared is not None:
            call, self._prepared = self._prepared, None
            return call
        kind = (
            (m.STARCHUNK if self.star else m.CHUNK)
            | (m.TIMED if self.timeout is not None else 0)
            | (m.EXACT if self.retries else 0)
            | self.limit_flags
        )
        while True:
            items = self.items
            if items is None or self.fn is None:
                return None
            exact = False
            if self.pending:
                start, stop, exact = self.pending.popleft()
            elif self.next_index < self.size:
                start = self.next_index
                stop = min(self.size, start + self._chunk_size(workers, short))
                self.next_index = stop
            else:
                return None
            # An imap chunk is one call: its list goes out as it is, uncopied.
            chunk = items if stop - start == len(items) else items[start:stop]
            try:
                data, lease = encode_call(
                    new_call_id(),
                    (kind | m.EXACT) if exact else kind,
                    self.fn,
                    (chunk,),
                    self.cloud,
                    self.segments,
                    self.limit_fields,
                )
            except Unpicklable as exc:
                if stop - start > 1:
                    # Find the culprit(s): hand the range out again one item at a time.
                    self.pending.extendleft(
                        reversed([(i, i + 1, exact) for i in range(start, stop)])
                    )
                else:
                    error = _item_serialization_error(self, start, chunk[0], exc)
                    self.failed_here += self.map_future.set_item_exception(start, error)
                continue
            self.in_flight += 1
            self.encoded_items += stop - start
            self.encoded_bytes += len(data) + (lease.segment.size if lease is not None else 0)
            return Call(self, data, lease, start, stop, exact=exact)

    def read_ahead_pays(self) -> bool:
        timing = self.timing
        if timing.items == 0:
            return False
        per_item = timing.seconds / timing.items
        size = self.fixed if self.fixed is not None else 1
        return per_item * size < READ_AHEAD_BELOW_SECONDS or per_item < READ_AHEAD_BELOW_SECONDS / 4

    def attempts_of(self, index: int) -> int:
        return self.attempts.get(index, 0)

    def count_attempt(self, index: int) -> int:
        attempt = self.attempts[index] = self.attempts.get(index, 0) + 1
        return attempt

    def hand_back(self, start: int, stop: int, *, exact: bool = False) -> None:
        """Queue items ``start..stop`` again, ahead of the rest (``exact``: see ``pending``)."""
        if start < stop:
            self.pending.appendleft((start, stop, exact))

    def describe(self, call: Call, index: int) -> str:
        return f"item {self.base_index + index} of map({self.name}, ...)"

    @property
    def title(self) -> str:
        return f"map({self.name}, ...)"

    def release(self) -> None:
        self.fn = None
        self.items = None
        prepared, self._prepared = self._prepared, None
        if prepared is not None and prepared.lease is not None:
            prepared.lease.end(False)
            prepared.lease = None
        self.pending.clear()


def _item_serialization_error(
    job: MapJob, index: int, item: object, cause: Unpicklable
) -> SerializationError:
    args: tuple[Any, ...] = cast("tuple[Any, ...]", item) if job.star else (item,)

    detail = diagnose_call(job.fn, tuple(args), {}) if job.fn is not None else str(cause)
    return SerializationError(f"item {job.base_index + index} of map: {detail}")

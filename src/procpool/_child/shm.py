"""Large buffers through shared memory instead of the pipe (pickle protocol 5).

Pickling a numpy array (or any object exposing a ``PickleBuffer``) with protocol 5
and a ``buffer_callback`` leaves its data *out of band*: the pickle holds only
the metadata, and the buffers can travel however we like. Through a pipe an 8 MB
array is copied about five times per direction (pickle, frame, pipe in, pipe out,
unpickle); here it is copied once, into shared memory, and the receiver maps it.

Two directions, two lifetimes:

* **Calls (parent -> worker)** use *recycled* segments from the pool's
  :class:`SegmentPool`. Creating and faulting in fresh shared memory costs more
  than ten times the copy itself, so a segment goes back to the pool after its
  call, and the next large call only pays the copy. The worker maps the segment
  copy-on-write (``MAP_PRIVATE``): a task may modify its arguments in place, as it
  could with pickled copies, without touching the parent's snapshot (a retried
  task gets its original arguments). After the call the worker checks that no
  object still uses the mapping (``memoryview.release`` refuses while anything
  does) and says so, with a ``RELEASED`` or ``KEPT`` message; only a released
  segment is reused.
* **Results (worker -> parent)** use a fresh segment per reply, which the parent
  maps and unlinks at once: the arrays handed to the user *are* that mapping (no
  copy on the parent side), and the memory goes away with them.

No segment outlives its use: call segments are unlinked when the pool closes or
when a segment is dropped (by a finalizer if need be) and are registered with
multiprocessing's resource tracker, which removes them even if the parent is
killed; result segments are unlinked by the parent on receipt, by the parent
(every name with the worker's prefix) once the worker is gone, and by the worker
if the parent dies first, the one it is still writing included. Where shared
memory is unavailable or full (a small ``/dev/shm`` in a container) everything
falls back to the pipe: ``posix_fallocate`` reserves the memory up front, so a
full ``/dev/shm`` is an error we catch, not a SIGBUS later.

Names: ``/procpool-<parent pid>-<random>-<n>`` for a pool's call segments and
``/procpool-<parent pid>-w<random>-<n>`` for one worker's results, the random
part from :mod:`secrets`. Another local user can neither guess a name to squat
on it nor make us open a file of theirs (``O_CREAT | O_EXCL``, mode 0600); a
name that is taken anyway is skipped, never used or removed. The parent attaches
only a result name with its worker's prefix and a number above the last one.

File descriptors: a mapping made by :mod:`mmap` keeps a descriptor open for as
long as it lives, and result arrays *are* mappings. From Python 3.13 mappings
keep none (``trackfd=False``); before that, past :func:`fd_budget` live result
mappings a result is copied into anonymous memory instead, so no number of held
results exhausts the process's descriptors.

Linux only for now; elsewhere :data:`ENABLED` is False and buffers stay in band.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import mmap
import os
import pickle
import struct
import sys
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

_posixshmem: Any
try:
    _posixshmem = importlib.import_module("_posixshmem")
except ImportError:  # pragma: no cover - Windows
    _posixshmem = None

#: Whether large buffers travel through shared memory on this platform.
ENABLED = sys.platform == "linux" and _posixshmem is not None and hasattr(os, "posix_fallocate")
#: Buffers at least this large leave the pickle; smaller ones are cheaper inline.
CALL_MIN_BYTES = 256 * 1024
#: Results create a fresh segment each, which costs more than reusing one.
REPLY_MIN_BYTES = 1024 * 1024
#: Free call segments a pool keeps for reuse, at most (count and bytes).
KEEP_SEGMENTS_PER_WORKER = 3
KEEP_BYTES = 512 * 1024 * 1024
_ALIGN = 64
_GRAIN = 1024 * 1024
#: Bytes copied into a segment per step. One slice assignment holds the GIL for
#: the whole copy (seconds for a few hundred MB on a loaded machine, page faults
#: included); between steps other threads run: a worker's watch thread removes
#: the segment within a step of the parent's death, its alarm fires on time.
_COPY_STEP = 8 * 1024 * 1024
#: Names tried for one segment before the message falls back to the pipe.
NAME_TRIES = 8
#: Where POSIX shared memory lives on Linux: listed to clean up by prefix.
_SHM_DIR = "/dev/shm"
#: mmap keeps no descriptor of its own (Python 3.13+).
_TRACKFD = sys.version_info >= (3, 13)

PROTOCOL = 5
# After the message header: name length, name, buffer count, then per buffer
# (offset, length) inside the segment; then the pickle.
_NAME = struct.Struct("<B")
_COUNT = struct.Struct("<H")
_SPAN = struct.Struct("<QQ")


def _round(size: int, grain: int) -> int:
    return -(-size // grain) * grain


def random_part() -> str:
    """The unguessable part of a family of segment names (made in the parent)."""
    import secrets  # not at the top: workers import this module, and never need it

    return secrets.token_hex(8)


def unlink_segment(name: str) -> None:
    """Remove a segment name; nothing if it is already gone."""
    with contextlib.suppress(OSError):
        _posixshmem.shm_unlink(name)


def unlink_prefixed(prefix: str) -> None:
    """Remove every segment whose name starts with ``prefix`` (a family of ours)."""
    try:
        names = os.listdir(_SHM_DIR)
    except OSError:
        return
    start = prefix.lstrip("/")
    for name in names:
        if name.startswith(start):
            unlink_segment("/" + name)


#: Keyword arguments for mmap.mmap that keep it from holding a descriptor (3.13+).
_NO_FD: dict[str, Any] = {"trackfd": False} if _TRACKFD else {}


def _map(fd: int, size: int, access: int = mmap.ACCESS_WRITE) -> mmap.mmap:
    return mmap.mmap(fd, size, access=access, **_NO_FD)


def _create(name: str, size: int) -> mmap.mmap | None:
    """A new shared segment of ``size`` bytes, mapped; None if there is no room.

    Raises:
        FileExistsError: the name is taken (by someone else: skip it).
    """
    try:
        fd: int = _posixshmem.shm_open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    except FileExistsError:
        raise
    except OSError:
        return None
    try:
        # Reserve the pages now: on a full /dev/shm this fails cleanly, where a
        # plain ftruncate would let the first write past the limit raise SIGBUS.
        os.posix_fallocate(fd, 0, size)
        return _map(fd, size)
    except OSError:
        unlink_segment(name)
        return None
    finally:
        os.close(fd)


def _attach(name: str, size: int, *, private: bool) -> mmap.mmap:
    fd: int = _posixshmem.shm_open(name, os.O_RDWR, 0)
    try:
        return _map(fd, size, mmap.ACCESS_COPY if private else mmap.ACCESS_WRITE)
    finally:
        os.close(fd)


class _HeldMappings:
    """How many result mappings that keep a descriptor are alive (before 3.13)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0

    def take(self) -> bool:
        with self.lock:
            if self.count >= fd_budget():
                return False
            self.count += 1
            return True

    def give_back(self) -> None:
        with self.lock:
            self.count -= 1


_held = _HeldMappings()


def fd_budget() -> int:
    """Result mappings that may keep a descriptor each: a quarter of the limit, 256 at most."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 256
    return max(0, min(256, soft // 4))


def _attach_result(name: str, size: int) -> mmap.mmap:
    """Map a result's segment; past the descriptor budget, copy it into anonymous memory."""
    fd: int = _posixshmem.shm_open(name, os.O_RDWR, 0)
    try:
        if _TRACKFD:
            return _map(fd, size)
        if _held.take():
            mapping = mmap.mmap(fd, size)
            weakref.finalize(mapping, _held.give_back)
            return mapping
        # Anonymous memory keeps no descriptor; one copy, at memcpy speed.
        copy = mmap.mmap(-1, size)
        view = memoryview(copy)
        try:
            done = 0
            while done < size:
                got = os.preadv(fd, [view[done:]], done)
                if got <= 0:
                    raise OSError(f"shared segment {name} ended after {done} of {size} bytes")
                done += got
        finally:
            view.release()
        return copy
    finally:
        os.close(fd)


def _collect(obj: object, min_bytes: int) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """Pickle ``obj``, keeping buffers of at least ``min_bytes`` out of band."""
    buffers: list[pickle.PickleBuffer] = []

    def keep(buffer: pickle.PickleBuffer) -> bool:
        try:
            size = buffer.raw().nbytes
        except BufferError:  # not contiguous: let pickle copy it inline
            return True
        if size < min_bytes:
            return True
        buffers.append(buffer)
        return False

    return pickle.dumps(obj, PROTOCOL, buffer_callback=keep), buffers


def _layout(buffers: list[pickle.PickleBuffer]) -> tuple[list[tuple[int, int]], int]:
    spans: list[tuple[int, int]] = []
    offset = 0
    for buffer in buffers:
        size = buffer.raw().nbytes
        spans.append((offset, size))
        offset = _round(offset + size, _ALIGN)
    return spans, offset


def _fill(
    target: mmap.mmap, buffers: list[pickle.PickleBuffer], spans: list[tuple[int, int]]
) -> bytes:
    """Copy ``buffers`` into ``target`` and return the spans' header bytes."""
    view = memoryview(target)
    try:
        for buffer, (offset, size) in zip(buffers, spans, strict=True):
            raw = buffer.raw()
            for at in range(0, size, _COPY_STEP):
                end = min(at + _COPY_STEP, size)
                view[offset + at : offset + end] = raw[at:end]
    finally:
        view.release()
    return _COUNT.pack(len(spans)) + b"".join(_SPAN.pack(*span) for span in spans)


def _header(name: str, spans_header: bytes) -> bytes:
    raw = name.encode("ascii")
    return _NAME.pack(len(raw)) + raw + spans_header


def parse(data: memoryview, at: int) -> tuple[str, list[tuple[int, int]], int]:
    """Read a shared-memory header at ``at``: (name, spans, where the pickle starts)."""
    (length,) = _NAME.unpack_from(data, at)
    at += _NAME.size
    name = bytes(data[at : at + length]).decode("ascii")
    at += length
    (count,) = _COUNT.unpack_from(data, at)
    at += _COUNT.size
    spans = [_SPAN.unpack_from(data, at + i * _SPAN.size) for i in range(count)]
    return name, spans, at + count * _SPAN.size


def _size(spans: list[tuple[int, int]]) -> int:
    return max((offset + size for offset, size in spans), default=0) or 1


# ----------------------------------------------------------------------------------
# calls: recycled segments, owned by the parent


class Segment:
    """One shared segment owned by a pool, mapped in the parent."""

    __slots__ = ("map", "name", "size")

    def __init__(self, name: str, size: int, mapping: mmap.mmap) -> None:
        self.name = name
        self.size = size
        self.map = mapping


class Lease:
    """One call's use of a segment; gives it back, or destroys it if dropped."""

    __slots__ = ("__weakref__", "pool", "segment")

    def __init__(self, pool: SegmentPool, segment: Segment) -> None:
        self.pool: SegmentPool | None = pool
        self.segment = segment

    def end(self, reusable: bool) -> None:
        """The worker is done with the segment; ``reusable`` if nothing kept a view."""
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.give_back(self.segment, reusable)

    def __del__(self) -> None:
        # A call dropped on any path (cancelled, failed, its worker lost) must not
        # leave its segment behind. Never recycled: a worker may still map it.
        with contextlib.suppress(Exception):
            self.end(False)


class SegmentPool:
    """The segments of one pool's large calls (thread-safe)."""

    def __init__(self, workers: int) -> None:
        self._lock = threading.RLock()
        self._free: deque[Segment] = deque()
        self._live: dict[str, Segment] = {}
        self._keep = KEEP_SEGMENTS_PER_WORKER * workers
        self._pid = os.getpid()
        self._prefix = f"/procpool-{self._pid}-{random_part()}-"
        self._names = itertools.count()
        self._closed = False
        # Whatever is still alive when the pool is collected or the program ends.
        self._finalizer = weakref.finalize(self, _destroy_all, self._live, self._pid)

    def _lease(self, size: int) -> Lease | None:
        with self._lock:
            if self._closed:
                return None
            best: Segment | None = None
            for segment in self._free:
                if size <= segment.size <= 4 * size and (best is None or segment.size < best.size):
                    best = segment
            if best is not None:
                self._free.remove(best)
                return Lease(self, best)
            size = _round(size, _GRAIN)
            for _ in range(NAME_TRIES):
                name = f"{self._prefix}{next(self._names)}"
                try:
                    mapping = _create(name, size)
                except FileExistsError:
                    continue  # not ours: never use nor remove it
                break
            else:
                return None
            if mapping is None:
                return None
            segment = Segment(name, size, mapping)
            self._live[name] = segment
            _track(name, True)
            return Lease(self, segment)

    def give_back(self, segment: Segment, reusable: bool) -> None:
        """Keep ``segment`` for the next call, or destroy it."""
        if os.getpid() != self._pid:
            # A forked child holding copies of our leases: the segments are the
            # parent's, still in use there.
            return
        with self._lock:
            if reusable and not self._closed:
                self._free.append(segment)
                while len(self._free) > self._keep or (
                    sum(s.size for s in self._free) > KEEP_BYTES and len(self._free) > 1
                ):
                    self._destroy(self._free.popleft())
            else:
                self._destroy(segment)

    def _destroy(self, segment: Segment) -> None:
        if self._live.pop(segment.name, None) is None:
            return
        unlink_segment(segment.name)
        _track(segment.name, False)
        with contextlib.suppress(BufferError):
            segment.map.close()

    def close(self) -> None:
        """Destroy the free segments; those still leased go when their calls end."""
        if os.getpid() != self._pid:
            return
        with self._lock:
            self._closed = True
            while self._free:
                self._destroy(self._free.popleft())

    def dumps(self, obj: object) -> tuple[bytes, bytes, Lease | None]:
        """Pickle ``obj``: (shared-memory header or b"", pickle, lease or None).

        Large buffers go to a leased segment; without room for them, everything
        stays in the pickle.
        """
        data, buffers = _collect(obj, CALL_MIN_BYTES)
        if not buffers:
            return b"", data, None
        spans, size = _layout(buffers)
        lease = self._lease(size)
        if lease is None:
            return b"", pickle.dumps(obj, PROTOCOL), None
        header = _header(lease.segment.name, _fill(lease.segment.map, buffers, spans))
        return header, data, lease


def _track(name: str, register: bool) -> None:
    """Tell multiprocessing's resource tracker, which unlinks it if we are killed."""
    from multiprocessing import resource_tracker

    with contextlib.suppress(Exception):
        if register:
            resource_tracker.register(name, "shared_memory")
        else:
            resource_tracker.unregister(name, "shared_memory")


def _destroy_all(live: dict[str, Segment], pid: int) -> None:
    if os.getpid() != pid:
        return  # a forked child: the segments are its parent's
    for name in list(live):
        live.pop(name, None)
        unlink_segment(name)
        _track(name, False)


class CallBuffers:
    """The worker's view of one call's segment: mapped copy-on-write, then let go."""

    __slots__ = ("_base", "_map", "views")

    def __init__(self, name: str, spans: list[tuple[int, int]]) -> None:
        self._map = _attach(name, _size(spans), private=True)
        self._base = memoryview(self._map)
        self.views = [self._base[offset : offset + size] for offset, size in spans]

    def release(self) -> bool:
        """Unmap; False if some object (kept by the task) still uses the memory."""
        try:
            for view in self.views:
                view.release()
            self._base.release()
            self._map.close()
        except BufferError:
            # The mapping lives on with whatever kept it; the parent must not
            # reuse the segment (this worker would see the next call's data).
            return False
        finally:
            self.views = []
        return True


# ----------------------------------------------------------------------------------
# results: a fresh segment per reply, created by the worker, unlinked by the parent


def reply_prefix(parent_pid: int) -> str:
    """A new family of result names for one worker (the parent keeps it to check)."""
    return f"/procpool-{parent_pid}-w{random_part()}-"


class ReplySegments:
    """The worker side: creates one segment per large result, named ``<prefix><n>``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.seq = 0
        # Held while a segment is created, and for good once the parent is gone:
        # no segment is created that the cleanup could miss.
        self._lock = threading.Lock()

    def dumps(self, obj: object) -> tuple[bytes, bytes]:
        """Pickle ``obj``: (shared-memory header or b"", pickle)."""
        data, buffers = _collect(obj, REPLY_MIN_BYTES)
        if not buffers:
            return b"", data
        spans, size = _layout(buffers)
        mapping: mmap.mmap | None = None
        name = ""
        with self._lock:
            for _ in range(NAME_TRIES):
                self.seq += 1
                name = f"{self.prefix}{self.seq}"
                try:
                    mapping = _create(name, size)
                except FileExistsError:
                    continue  # taken by someone else: the next number
                break
        if mapping is None:
            return b"", pickle.dumps(obj, PROTOCOL)
        try:
            header = _header(name, _fill(mapping, buffers, spans))
        finally:
            mapping.close()
        return header, data

    def forget_all(self) -> None:
        """The parent is gone: unlink every segment of ours, the one being written too.

        Keeps the lock: the process is about to exit, and must create no more.
        """
        self._lock.acquire()
        unlink_prefixed(self.prefix)


class ForeignSegmentError(ValueError):
    """Raised for a reply that names a segment its worker may not have made."""


def reply_seq(name: str, prefix: str, last: int) -> int:
    """The number of a result segment ``name``, checked against the worker's family.

    Raises:
        ForeignSegmentError: the name lacks the prefix, or its number is not above
            ``last`` (each name is used once, in increasing order).
    """
    number = name[len(prefix) :] if name.startswith(prefix) else ""
    if not (number.isdigit() and number.isascii()) or int(number) <= last:
        raise ForeignSegmentError(
            f"the worker named a shared-memory segment that is not one of its own "
            f"({name!r}); nothing was opened or removed"
        )
    return int(number)


def load_reply(
    data: memoryview, at: int, prefix: str, last: int
) -> tuple[int, Callable[[], object]]:
    """Map and unlink a result's segment now; return its number and the unpickling step.

    Only a name of the worker's own family (``prefix``), numbered above ``last``,
    is opened. The segment is unlinked before anything can fail, so a reply that
    is dropped or does not unpickle leaves nothing behind.

    Raises:
        ForeignSegmentError: see :func:`reply_seq`.
    """
    name, spans, start = parse(data, at)
    seq = reply_seq(name, prefix, last)
    try:
        mapping = _attach_result(name, _size(spans))
    finally:
        unlink_segment(name)
    base = memoryview(mapping)
    views = [base[offset : offset + size] for offset, size in spans]
    payload = data[start:]
    return seq, lambda: pickle.loads(payload, buffers=views)


def drop_reply(data: memoryview, at: int, prefix: str, last: int) -> int:
    """Unlink the segment of a reply nobody will read; return its number (``last`` if foreign)."""
    name, _, _ = parse(data, at)
    try:
        seq = reply_seq(name, prefix, last)
    except ForeignSegmentError:
        return last
    unlink_segment(name)
    return seq

"""The loop that runs in each worker process.

It reads one call at a time from its task pipe, runs it and writes the reply to
its result pipe. Calls are handled strictly in order, so the parent always knows
which call a worker is on; for chunks, the shared ``marker`` says which item.

This module imports nothing heavy (no ``_pool``, no ``_dispatcher``; ``logging``
only with ``forward_logs``) so that a worker starts fast under ``spawn`` and
``forkserver``.
"""

from __future__ import annotations

import contextlib
import faulthandler
import itertools
import os
import pickle
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, NoReturn, cast

from . import alarm as alarms
from . import frames
from . import messages as m
from .alarm import on_sigint, shield_thread
from .codec import decode_function, encode_reply, exception_body, format_exception
from .errors import Expired, NotPickled
from .identity import become, count_call
from .memory import resident_bytes
from .placement import Placement
from .placement import apply as apply_placement
from .shm import ENABLED as SHARED_MEMORY
from .shm import CallBuffers, ReplySegments, parse

#: This worker's result segments, unlinked if the parent dies before reading them
#: (the one being written too).
_reply_segments: ReplySegments | None = None

#: Held by the first thread to find the parent gone, until the process ends.
_orphan_lock = threading.Lock()

#: How often a worker checks that its parent is still alive.
_PARENT_CHECK_INTERVAL = 0.2

#: Most items in one block. Bounds what a sudden change from fast items to slow
#: ones delays: the next flush, and the next look at whether the item was slow.
#: A block's own bookkeeping (a slice, a clock read, a few lines) costs about a
#: microsecond: over 64 items of ~50 ns it was a third of their cost, over 1,024
#: it is 2 %; and since a death in a block runs the block again item by item
#: (see ``_settle``), its size costs at most 0.2 ms of work run twice.
MAX_BLOCK = 1024
#: Blocks sized for this many items or more (each at most BLOCK_TIME / 64, 3 µs)
#: run through ``map`` in C, marked once per block.
MIN_C_BLOCK = 64

#: Pipes are read and written through their descriptors (see ``.frames``); on
#: Windows they are named pipes, which only ``Connection`` knows.
_FD_FRAMES = sys.platform != "win32"


def watch_parent(parent_pid: int) -> None:
    """Start a thread that ends this process when ``parent_pid`` dies (no orphans).

    ``getppid()`` is not enough: under forkserver our parent is the server, which
    outlives the program as long as any of its children hold its alive-pipe. On
    Linux a pidfd becomes readable the moment the parent dies (even before it is
    reaped), so nothing polls; elsewhere the thread checks ``getppid()``, which
    changes when the spawning parent dies.
    """
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is not None:
        try:
            fd: int = pidfd_open(parent_pid)
        except ProcessLookupError:
            os._exit(1)
        except OSError:
            pass  # kernel without pidfd: poll instead
        else:
            threading.Thread(target=_wait_for_exit, args=(fd,), daemon=True).start()
            return
    threading.Thread(target=_poll_parent, args=(os.getppid(),), daemon=True).start()


def _wait_for_exit(pidfd: int) -> None:
    shield_thread()
    select.select([pidfd], [], [])
    _orphaned()


def _poll_parent(parent_pid: int) -> None:
    shield_thread()
    while True:
        time.sleep(_PARENT_CHECK_INTERVAL)
        if os.getppid() != parent_pid:
            _orphaned()


def lead_process_group() -> None:
    """Lead a process group of our own, so that what our tasks start dies with us.

    The parent kills the whole group when it kills this worker (see ``_tree``);
    and a worker whose parent died takes the group down with it.
    """
    if hasattr(os, "setpgid"):
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)


def _orphaned() -> NoReturn:
    """The parent is gone: remove the result segments it will never read, then exit.

    Two threads find out at the same moment: the watch thread, and the worker loop
    (end-of-file on the task pipe, or a broken result pipe). Whichever comes first
    sweeps; the other waits on the lock until ``os._exit`` ends both. Had the loop
    simply returned, the interpreter could exit in the middle of the watch
    thread's sweep and leave the segment of a reply that waited unread in the pipe.
    """
    _orphan_lock.acquire()
    if _reply_segments is not None:
        _reply_segments.forget_all()
    if hasattr(os, "killpg") and os.getpgid(0) == os.getpid():
        # Everything our tasks started goes too, and this process with it. Only
        # a group we lead: never the group of the program that started us.
        with contextlib.suppress(OSError):
            os.killpg(0, signal.SIGKILL)
    os._exit(1)


class _Sender:
    """The result pipe, shared by the worker loop and forwarded log records."""

    def __init__(self, conn: Connection, segments: ReplySegments | None) -> None:
        self.conn = conn
        self.fd = conn.fileno() if _FD_FRAMES else -1
        self.lock = threading.Lock()
        #: Where large results go (None: in the pickle).
        self.segments = segments

    def send(self, data: bytes) -> None:
        with self.lock:
            # A time limit's interrupt must not cut a message in half (the parent
            # would read garbage from then on): the alarm waits while we write.
            watch = alarms.current()
            if watch is not None:
                watch.critical += 1
            try:
                if self.fd >= 0:
                    frames.write_frame(self.fd, data)
                else:
                    self.conn.send_bytes(data)
            except OSError:
                # The parent closes our pipes only after we exit: it is gone.
                _orphaned()
            finally:
                if watch is not None:
                    watch.critical -= 1
        if watch is not None:
            watch.raise_if_due()

    def reply(self, call_id: int, status: int, elapsed: float, body: object) -> None:
        try:
            data = encode_reply(call_id, status, elapsed, body, self.segments)
        except Exception as exc:
            data = encode_reply(call_id, m.ERROR, elapsed, (NotPickled.of(exc), ""))
        self.send(data)


def _forward_logs(sender: _Sender) -> None:
    """Send every log record of this process to the parent, which replays it.

    logging is imported here, not at the top: it is the largest import of a
    worker (~4 ms), and only pools with ``forward_logs=True`` need it.
    """
    import logging

    class LogForwarder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                fields = dict(record.__dict__)
                fields["msg"] = record.getMessage()
                fields["args"] = None
                if record.exc_info:
                    fields["exc_text"] = (
                        self.format(record) if not record.exc_text else record.exc_text
                    )
                fields["exc_info"] = None
                fields.pop("message", None)
                sender.send(encode_reply(m.NO_CALL, m.LOG, 0.0, fields))
            except Exception:
                self.handleError(record)

    # The parent's handlers handle what we forward. Handlers this process already
    # has are copies of them (inherited under fork, or set up by the main module
    # imported again under spawn): left in place, each record would be handled
    # twice, once here (a second line on stderr, in the same file) and once in
    # the parent. Handlers the initializer adds, after this, stay.
    forwarder = LogForwarder()
    root = logging.getLogger()
    loggers = [root] + [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    for logger in loggers:
        had = bool(logger.handlers)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        if had and not logger.propagate and logger is not root:
            # Its records never reach the root's forwarder: forward them here.
            logger.addHandler(forwarder)
    root.addHandler(forwarder)
    root.setLevel(logging.DEBUG)


def _run_chunk(
    call_id: int,
    fn: Callable[..., Any],
    items: Sequence[Any],
    star: bool,
    timed: bool,
    exact: bool,
    sender: _Sender,
    mark: Any,
    base: int,
    limits: tuple[float, float] | None = None,
) -> None:
    """Run ``fn`` over ``items``, publishing the index of the running item in ``mark``.

    Items run in blocks of about BLOCK_TIME with one clock read per block, so per
    item the loop costs one store to shared memory on top of the call. Before each
    block the finished results leave for the parent if the batch is FLUSH_INTERVAL
    old or the last item was slow (SLOW_ITEM): a crash loses at most the unsent
    results of a few milliseconds of fast items. With a time limit (``timed``),
    each item's start time goes to ``mark`` too, for the parent's deadline: a
    block's start would make an item that follows slow ones look overdue.

    A block of items so fast that MIN_C_BLOCK of them or more fit in BLOCK_TIME
    (a few µs each at most) runs through ``map`` in C and is marked once, with
    its bounds: the per-item store and Python loop would cost as much as such
    items themselves. A death in it then runs the block again, item by item (see
    ``_settle``). Not when the parent needs one item to blame (``exact``: it may
    retry it) or a start time per item.

    With ``limits`` (a time limit and a grace period), each item runs under the
    alarm: one that reaches its limit is interrupted, is reported as Expired (the
    parent's TaskTimeoutError), and the next item runs in the same worker.
    """
    clock_ns = time.monotonic_ns
    flush_ns = int(m.FLUSH_INTERVAL * 1e9)
    slow_ns = int(m.SLOW_ITEM * 1e9)
    block_ns = int(m.BLOCK_TIME * 1e9)
    call: Callable[[Any], Any] = (lambda args: fn(*args)) if star else fn
    # Typed by hand: pyright sees a map over an unknown item type.
    mapper = cast(
        "Callable[[Callable[..., Any], Sequence[Any]], Iterator[Any]]",
        itertools.starmap if star else map,
    )
    whole_blocks = not (timed or exact)
    values: list[Any] = []
    append = values.append
    extend = values.extend
    errors: dict[int, tuple[object, str]] = {}
    offset = 0
    item_slot = base + m.MARK_ITEM
    since_slot = base + m.MARK_SINCE
    stop_slot = base + m.MARK_STOP
    n = len(items)
    index = 0
    block = 1
    per_item = 0
    # One clock read per block: a block's end is the next one's start. Conditional
    # expressions instead of min()/max(): the bookkeeping of a block of tiny items
    # costs as much as several of the items.
    now = batch_start = clock_ns()
    while index < n:
        if values and (per_item >= slow_ns or now - batch_start >= flush_ns):
            sender.reply(
                call_id, m.ITEMS, (now - batch_start) / 1e9, (offset, values, errors or None, False)
            )
            offset = index
            values = []
            append = values.append
            extend = values.extend
            errors = {}
            batch_start = now
        stop = index + block
        if stop > n:
            stop = n
        count = stop - index
        # Sized for MIN_C_BLOCK items or more (not cut short by the chunk's end).
        in_c = whole_blocks and block >= MIN_C_BLOCK
        while index < stop:
            try:
                if in_c:
                    # Bounds before start: a reader never pairs this block's start
                    # with the previous block's end.
                    mark[stop_slot] = stop
                    mark[item_slot] = index
                    extend(mapper(fn, items[index:stop]))
                elif limits is not None:
                    for index, item in enumerate(items[index:stop], index):  # noqa: B020
                        mark[since_slot] = clock_ns()
                        mark[item_slot] = index
                        append(_under_alarm(fn, item if star else (item,), {}, limits[0]))
                # A for loop over a slice: the fastest way to run Python per item.
                elif timed:
                    for index, item in enumerate(items[index:stop], index):  # noqa: B020
                        # Start time before index: a reader that sees the new
                        # index never pairs it with the previous item's start.
                        mark[since_slot] = clock_ns()
                        mark[item_slot] = index
                        append(call(item))
                else:
                    # The bound of an earlier block stays: it is at most this
                    # item's index, and the parent ignores a bound that low.
                    for index, item in enumerate(items[index:stop], index):  # noqa: B020
                        mark[item_slot] = index
                        append(call(item))
                index = stop
            except BaseException as exc:
                # ``values`` holds a result for every item before the one that
                # raised (list.extend keeps what it appended before the error).
                index = offset + len(values)
                append(None)
                errors[index] = _failure(exc)
                index += 1
        end = clock_ns()
        per_item = (end - now) // count
        now = end
        block = block_ns // per_item if per_item else MAX_BLOCK
        if block > MAX_BLOCK:
            block = MAX_BLOCK
        elif block < 1:
            block = 1
    elapsed = (clock_ns() - batch_start) / 1e9
    try:
        data = encode_reply(
            call_id, m.ITEMS, elapsed, (offset, values, errors or None, True), sender.segments
        )
    except Exception:
        data = _encode_items_one_by_one(call_id, elapsed, offset, values, errors)
    sender.send(data)


def _encode_items_one_by_one(
    call_id: int,
    elapsed: float,
    offset: int,
    values: list[Any],
    errors: dict[int, tuple[object, str]],
) -> bytes:
    """Some result of the batch does not pickle: fail just those items."""
    for i, value in enumerate(values):
        if offset + i in errors:
            continue
        try:
            pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            values[i] = None
            errors[offset + i] = (NotPickled.of(exc), "")
    return encode_reply(call_id, m.ITEMS, elapsed, (offset, values, errors or None, True))


def forget_inherited_forkserver() -> None:
    """Make a forked child start its own forkserver instead of its parent's.

    After ``fork()`` the child inherits multiprocessing's record of the parent's
    forkserver, whose process is not the child's child: the first forkserver use in
    the child (a task creating a Pool, or calling spawn) then fails in
    ``os.waitpid`` with ChildProcessError. Children of spawn or forkserver start
    with a fresh record and are left alone.
    """
    try:
        from multiprocessing import forkserver
    except ImportError:  # pragma: no cover - Windows
        return
    server: Any = getattr(forkserver, "_forkserver", None)
    if server is None or getattr(server, "_forkserver_pid", None) is None:
        return
    for field in ("_forkserver_address", "_forkserver_alive_fd", "_forkserver_pid"):
        if hasattr(server, field):
            setattr(server, field, None)
    server._lock = threading.Lock()


def reset_signals() -> None:
    """Give this child the signal handling it needs, whatever its parent had.

    SIGINT gets :func:`.alarm.on_sigint`, which ignores a Ctrl-C (the parent
    handles it for the whole pool; a worker that raised KeyboardInterrupt would
    print a traceback for every process). A handler, not ``SIG_IGN``: an ignored signal stays ignored
    across ``exec``, so a program a task starts could not be stopped with Ctrl-C,
    while ``exec`` resets a handler to the default.

    Every other signal the host application gave a Python handler (inherited
    under fork) goes back to the default: ``terminate()`` sends SIGTERM, which
    must end the worker, not run the host's shutdown code in it.
    """
    for sig in signal.valid_signals():
        if sig == signal.SIGINT:
            continue
        try:
            handler = signal.getsignal(sig)
        except (OSError, ValueError):
            continue
        if callable(handler):
            with contextlib.suppress(OSError, ValueError):
                signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, on_sigint)


def close_inherited(fds: Sequence[int]) -> None:
    """Close descriptors of the parent's own machinery, inherited through fork.

    The parent's ends of every worker's pipes, its wake-up socket and its epoll
    object: a worker holding them could write into another worker's pipe, and
    keeps a pipe open that should reach end-of-file when its owner goes.
    """
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


@dataclass(frozen=True)
class WorkerSetup:
    """What one worker starts with, besides its pipes."""

    #: The pool's name and start method (for ``current_worker()``).
    pool: str
    start_method: str
    #: Send log records to the parent (``Pool(forward_logs=True)``).
    forward_logs: bool
    #: Environment, CPUs and thread budget, set before anything else runs.
    placement: Placement
    #: ``(initializer, initargs)``, or their pickle: under spawn and forkserver
    #: they are unpickled after the placement, so that the initializer's module
    #: imports its libraries in the worker's environment. None: no initializer.
    init: tuple[Callable[..., object], tuple[Any, ...]] | bytes | None


def worker_main(
    task_conn: Connection,
    result_conn: Connection,
    crash_conn: Connection,
    marks: Any,
    slot: int,
    parent_pid: int,
    reply_prefix: str,
    inherited: tuple[int, ...],
    setup: WorkerSetup,
) -> None:
    """Entry point of a pool worker process.

    ``reply_prefix`` names this worker's result segments (see ``_shm``);
    ``inherited`` lists the parent's descriptors to close (under fork).
    """
    lead_process_group()
    apply_placement(setup.placement)
    become(slot, setup.pool, setup.start_method)
    close_inherited(inherited)
    # A crash in native code (SIGSEGV, SIGABRT...) writes the Python stack of the
    # thread it hit to the parent, which puts it in the task's WorkerLostError.
    faulthandler.enable(file=crash_conn.fileno(), all_threads=False)
    reset_signals()
    global _reply_segments
    if SHARED_MEMORY:
        _reply_segments = ReplySegments(reply_prefix)
    watch_parent(parent_pid)
    forget_inherited_forkserver()
    sender = _Sender(result_conn, _reply_segments)
    if setup.forward_logs:
        _forward_logs(sender)
    # The ctypes array the parent shares, seen as a memoryview: the chunk loop
    # stores into it once per item, and a memoryview store costs ~20 ns here
    # against ~28 ns through ctypes.
    marker = memoryview(marks).cast("B").cast("q")
    base = slot * m.MARK_WIDTH
    call_slot = base + m.MARK_CALL
    if setup.init is not None:
        try:
            initializer, initargs = (
                pickle.loads(setup.init) if isinstance(setup.init, bytes) else setup.init
            )
            initializer(*initargs)
        except BaseException as exc:
            sender.reply(m.NO_CALL, m.INIT_ERROR, 0.0, exception_body(exc))
            sys.exit(3)
    header = m.CALL_HEADER
    header_size = header.size
    since_slot, item_slot, stop_slot = base + m.MARK_SINCE, base + m.MARK_ITEM, base + m.MARK_STOP
    clock_ns = time.monotonic_ns
    loads = pickle.loads
    task_fd = task_conn.fileno()
    read_frame = frames.read_frame
    # Every line of this loop runs once per call: a small call's whole cost is a
    # few dozen of them, so constants are looked up once, above.
    while True:
        try:
            data = read_frame(task_fd) if _FD_FRAMES else task_conn.recv_bytes()
        except (EOFError, OSError):
            _orphaned()  # the parent stops us with STOP, never by closing the pipe
        call_id, kind = header.unpack_from(data)
        if kind == m.STOP:
            break
        at = header_size
        limit = 0
        limits: tuple[float, float] | None = None
        if kind & m.MEMORY:
            (limit,) = m.MEMORY_FIELD.unpack_from(data, at)
            at += m.MEMORY_FIELD.size
        if kind & m.GRACE:
            limits = m.GRACE_FIELD.unpack_from(data, at)
            at += m.GRACE_FIELD.size
        since = marker[since_slot] = clock_ns()
        marker[item_slot] = 0
        marker[stop_slot] = 0
        marker[call_slot] = call_id
        # The same clock as monotonic(), in seconds: one read for both.
        started = since / 1e9
        shared: CallBuffers | None = None
        try:
            payload = memoryview(data)[at:]
            if kind & m.SHARED:
                name, spans, start = parse(payload, 0)
                payload = payload[start:]
                shared = CallBuffers(name, spans)
                message = loads(payload, buffers=shared.views)
            else:
                message = loads(payload)
            del payload
            fn = decode_function(message[0]) if kind & m.CLOUDPICKLED else message[0]
        except BaseException as exc:
            sender.reply(
                call_id,
                m.BAD_PICKLE,
                time.monotonic() - started,
                f"the call could not be unpickled in the worker ({type(exc).__name__}: {exc}); "
                "functions and classes must be importable by the worker: define them at "
                "module top level (not in __main__ of an interactive session), or pass "
                "Pool(cloudpickle=True)",
            )
            marker[call_slot] = -1
            _let_go(call_id, kind, shared, sender)
            continue
        del data
        what = kind & m.KIND_MASK
        if what == m.CALL:
            _run_call(call_id, fn, message[1], message[2], sender, started, limits)
        else:
            _run_chunk(
                call_id,
                fn,
                message[1],
                what == m.STARCHUNK,
                bool(kind & m.TIMED),
                bool(kind & m.EXACT),
                sender,
                marker,
                base,
                limits,
            )
        # Drop the finished call's function and arguments before waiting for the next.
        del fn, message
        marker[call_slot] = -1
        count_call()
        if kind & m.SHARED:
            _let_go(call_id, kind, shared, sender)
        if limit and _over(limit, call_id, sender):
            break


def _over(limit: int, call_id: int, sender: _Sender) -> bool:
    """After a call: above ``limit`` resident bytes, say so and stop taking calls.

    Checked here, before the next call is read: a call already in the pipe (read
    ahead) goes back to the parent's queue when this worker exits.
    """
    rss = resident_bytes()
    if rss is None or rss <= limit:
        return False
    sender.send(m.REPLY_HEADER.pack(call_id, m.RECYCLED, float(rss)))
    return True


def _under_alarm(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout: float,
) -> Any:
    """``fn(*args, **kwargs)``, interrupted ``timeout`` s after it starts (see ``.alarm``).

    The clock starts here, once the call is unpickled: the first call of a task
    whose module the worker has not imported yet does not pay for the import.

    A task that reached its deadline has timed out, whatever it did next (it may
    have caught the interrupt and returned, or raised another error): it ends in
    :class:`Expired`, chained to what it raised. The alarm raises only in the
    task's own frames, never in this one.
    """
    watch = alarms.alarm()
    watch.arm(time.monotonic_ns(), timeout)
    try:
        value = alarms.call_task(fn, args, kwargs)
    except BaseException as exc:
        if watch.disarm():
            raise Expired() from exc
        raise
    if watch.disarm():
        raise Expired()
    return value


def _failure(exc: BaseException) -> tuple[object, str]:
    """The reply body of a call (or an item) that raised ``exc``.

    A timed-out task is reported as :class:`Expired` with the traceback of where
    the interrupt found it (what it raised), not with procpool's own frames.
    """
    if isinstance(exc, Expired):
        cause = exc.__cause__
        return (Expired(), format_exception(cause) if cause is not None else "")
    return exception_body(exc)


def _let_go(call_id: int, kind: int, shared: CallBuffers | None, sender: _Sender) -> None:
    """Unmap a call's shared segment and tell the parent whether it may reuse it."""
    if not kind & m.SHARED:
        return
    status = m.RELEASED if shared is not None and shared.release() else m.KEPT
    sender.send(m.REPLY_HEADER.pack(call_id, status, 0.0))


def _run_call(
    call_id: int,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    sender: _Sender,
    started: float,
    limits: tuple[float, float] | None,
) -> None:
    try:
        result = (
            fn(*args, **kwargs) if limits is None else _under_alarm(fn, args, kwargs, limits[0])
        )
    except BaseException as exc:
        sender.reply(call_id, m.ERROR, time.monotonic() - started, _failure(exc))
    else:
        sender.reply(call_id, m.OK, time.monotonic() - started, result)

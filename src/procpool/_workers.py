"""The worker processes of one pool, the pipes to them, and the selector that watches them.

:class:`WorkerSet` starts workers (pipes, the fork, the registry of the parent's
descriptors), writes calls to them without ever blocking (what a pipe does not
take waits in the worker's ``out`` queue until the selector says there is room),
reads and decodes their replies, checking each reply's header before anything
is unpickled, reads the shared marker in which a worker says which call and item
it runs, and discards and stops workers. It owns the selector (epoll on Linux),
the wake-up socket the dispatcher is woken through, and the marker array.

It decides nothing: which call goes where, and what a reply or a death means,
are the dispatcher's and the settler's (``_dispatcher``, ``_settle``). It calls
only the process boundary (``_child``), the context (``_context``) and the
selector (``_waiting``).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pickle
import re
import select
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

from ._child import messages as m
from ._child.codec import describe_callable
from ._child.frames import header as frame_header
from ._child.frames import read_frame
from ._child.placement import Placement
from ._child.shm import ENABLED as SHARED_MEMORY
from ._child.shm import Lease, drop_reply, load_reply, reply_prefix, unlink_prefixed
from ._child.worker import WorkerSetup, worker_main
from ._context import PARENT_FDS, new_process
from ._errors import SerializationError
from ._events import ExitCause
from ._jobs import Call
from ._oom import OomWatch
from ._placement import Placer
from ._tree import kill_all, kill_tree, lead_group
from ._waiting import NONBLOCKING_WRITES, Waiter, Wakeup, widen_pipe

#: Whether a waiting thread may read replies (needs poll, and a selector that
#: other threads may change while the dispatcher waits on it: not Windows).
CLAIMS = NONBLOCKING_WRITES and hasattr(select, "poll")
# What a waiter key says is ready.
RESULT, EXITED, WRITABLE = 0, 1, 2
#: The status given to a reply that answers no call we wait for: nothing of it is read.
UNEXPECTED = -1
#: The most of a crash's faulthandler text kept (a deep recursion writes a lot).
CRASH_TEXT_BYTES = 64 * 1024
#: A frame of procpool's own worker loop in a faulthandler dump.
_OWN_FRAME = re.compile(r'File "(<procpool>|.*[/\\]procpool[/\\]_child[/\\].*)"')
#: How long a closing pool waits for a worker to exit after STOP before killing it.
STOP_GRACE = 5.0


class Reply:
    """One message from a worker, unpickled."""

    __slots__ = ("body", "call_id", "data", "elapsed", "error", "status")

    def __init__(self, call_id: int, status: int, elapsed: float, data: bytes) -> None:
        self.call_id = call_id
        self.status = status
        self.elapsed = elapsed
        #: The raw message (log records and initializer errors are read from it).
        self.data = data
        self.body: Any = None
        #: Why the body did not unpickle, if it did not.
        self.error: BaseException | None = None


#: Messages up to this size are joined to their length prefix and written at once.
_ONE_WRITE_BYTES = 64 * 1024


class Worker:
    """One worker process, the pipes to it, and what the parent knows of its calls.

    Which thread may touch which field (``lock`` is the dispatcher's lock):

    ==============================  ===============================================
    field                           who changes it, holding what
    ==============================  ===============================================
    outstanding, sent, busy,        any thread holding ``lock`` (the dispatcher,
    dying, retiring, leases,        a submitting thread sending directly, a
    replied, out, writing,          waiting thread reading a claimed reply, an
    driven                          imap consumer driving the result pipes)
    claimed, claims                 ``lock`` and ``read_lock`` (a claim starts and
                                    ends under both)
    unapplied, reply_seq            ``read_lock``: the thread reading the result
                                    pipe (the dispatcher reads outside ``lock``)
    slot, process, task_conn,       set once, when the worker starts
    result_conn, result_fd, reply_prefix,
    read_lock, pipe_poll, wait_poll
    ==============================  ===============================================

    ``outstanding`` is read without ``lock`` (one snapshot, ``tuple()``) by the
    thread decoding a reply: a call is listed before it is written (see
    ``Dispatcher._send``), so a reply never comes before its call is listed.
    """

    __slots__ = (
        "busy",
        "claimed",
        "claims",
        "crash",
        "crash_conn",
        "driven",
        "dying",
        "exit_cause",
        "leases",
        "oom",
        "out",
        "outstanding",
        "pipe_poll",
        "process",
        "read_lock",
        "replied",
        "reply_prefix",
        "reply_seq",
        "resident",
        "result_conn",
        "result_fd",
        "retiring",
        "sent",
        "slot",
        "task_conn",
        "unapplied",
        "wait_poll",
        "writing",
    )

    def __init__(
        self,
        slot: int,
        process: BaseProcess,
        task_conn: Connection,
        result_conn: Connection,
        reply_prefix: str,
        crash_conn: Connection,
    ) -> None:
        self.slot = slot
        #: Where its faulthandler writes the Python stack of a crash (read after it).
        self.crash_conn = crash_conn
        #: That stack, once read (see ``WorkerSet.crash_stack``).
        self.crash: str | None = None
        self.process = process
        self.task_conn = task_conn
        self.result_conn = result_conn
        self.result_fd = result_conn.fileno()
        self.outstanding: deque[Call] = deque()
        #: Bytes written to the task pipe later, when it has room (POSIX).
        self.out: deque[memoryview] = deque()
        self.writing = False
        self.sent = 0
        self.replied = False
        self.busy = 0.0
        #: Killed by us; its calls are already accounted for.
        self.dying = False
        #: Sent STOP after max_tasks_per_worker calls; expected to exit.
        self.retiring = False
        #: Why procpool stopped it, if it did (for the event hook).
        self.exit_cause: ExitCause | None = None
        #: Shared segments of finished calls, until the worker says it let go.
        self.leases: dict[int, Lease] = {}
        #: The names of this worker's result segments start with this (see ``_shm``).
        self.reply_prefix = reply_prefix
        #: Its cgroup's OOM-kill count when it started (see ``_oom``).
        self.oom = OomWatch(process.pid)
        #: Resident bytes it last reported (only when it passed a memory limit).
        self.resident: int | None = None
        #: The number of the last result segment received from it (numbers only grow).
        self.reply_seq = 0
        #: A waiting thread reads this worker's replies (see ``_read_here``).
        self.claimed = False
        #: An imap consumer reads this worker's replies (see ``_assist``).
        self.driven = False
        #: Claims so far: once there has been one, a ready pipe may already be read.
        self.claims = 0
        #: Replies the dispatcher has read but not yet applied.
        self.unapplied = 0
        #: Held while reading a reply outside ``lock`` (dispatcher) and to claim.
        self.read_lock = threading.Lock()
        # Built once: Connection.poll(0) builds a selector per call (~3.5 µs here).
        #: The result pipe alone: is a reply waiting?
        self.pipe_poll: select.poll | None = None
        #: The result pipe and the sentinel: what a claiming thread waits on.
        self.wait_poll: select.poll | None = None
        if CLAIMS:
            self.pipe_poll = select.poll()
            self.pipe_poll.register(result_conn.fileno(), select.POLLIN)
            self.wait_poll = select.poll()
            self.wait_poll.register(result_conn.fileno(), select.POLLIN)
            self.wait_poll.register(process.sentinel, select.POLLIN)

    def read(self) -> bytes:
        """Read one whole message from the result pipe (blocking; see ``_child.frames``).

        Raises:
            EOFError, OSError: the worker is gone.
        """
        if NONBLOCKING_WRITES:  # POSIX: pipes are plain descriptors
            return read_frame(self.result_fd)
        return self.result_conn.recv_bytes()

    def reply_waiting(self) -> bool:
        """Whether the result pipe can be read without blocking (EOF included)."""
        if self.pipe_poll is not None:
            return bool(self.pipe_poll.poll(0))
        return self.result_conn.poll(0)


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker of a pool starts with."""

    #: The pool's name; workers are ``<name>-worker-<slot>``.
    name: str
    initializer: Callable[..., object] | None
    initargs: tuple[Any, ...]
    #: Send the worker's log records to the parent (see ``_child.worker``).
    forward_logs: bool
    #: Each slot's environment, CPUs and thread budget (None: as inherited).
    placer: Placer | None = None


class WorkerSet:
    """The workers of one pool by slot, the selector over their pipes, the marker.

    Not thread-safe by itself: the dispatcher calls it holding its lock, except
    :meth:`receive` and :meth:`decode` (see :class:`Worker` for who owns what).
    """

    def __init__(self, ctx: BaseContext, size: int, spec: WorkerSpec) -> None:
        self.ctx = ctx
        self.spec = spec
        #: The initializer as each worker gets it (checked here: it must pickle).
        self._init = self._pickled_init()
        self.by_slot: dict[int, Worker] = {}
        #: Calls written to workers and not yet settled that have a time limit:
        #: the dispatcher looks at deadlines only while there are some.
        self.timed = 0
        #: Shared with the workers: each says in its slot what it runs (see ``_child``).
        self.marks = ctx.RawArray("q", m.MARK_WIDTH * size)
        self._mark = memoryview(self.marks).cast("B").cast("q")
        self.wakeup = Wakeup()
        self.waiter: Waiter[tuple[Worker, int] | None] = Waiter()
        self._own_fds = (*self.wakeup.filenos(), *filter(None, [self.waiter.fileno()]))
        PARENT_FDS.add(*self._own_fds)
        self.waiter.register(self.wakeup.reader, None)
        #: Every live worker's result pipe, for a look at all of them in one call
        #: (:meth:`with_replies`), by descriptor.
        self._replies = select.poll() if CLAIMS else None
        self._by_result_fd: dict[int, Worker] = {}

    def values(self) -> Iterable[Worker]:
        """The live workers (a view: copy it if the set may change while you loop)."""
        return self.by_slot.values()

    def is_live(self, worker: Worker) -> bool:
        """Whether ``worker`` still holds its slot (it may have been discarded)."""
        return self.by_slot.get(worker.slot) is worker

    def __contains__(self, slot: int) -> bool:
        return slot in self.by_slot

    def __len__(self) -> int:
        return len(self.by_slot)

    def with_replies(self) -> list[Worker]:
        """The live workers whose result pipe can be read now (one ``poll``; none on Windows)."""
        if self._replies is None:
            return []
        by_fd = self._by_result_fd
        return [by_fd[fd] for fd, _ in self._replies.poll(0) if fd in by_fd]

    def wait(self, timeout: float | None) -> list[tuple[Worker, int] | None]:
        """The keys of what is ready, after at most ``timeout`` s.

        None for the wake-up socket, else (worker, RESULT / EXITED / WRITABLE) for
        its result pipe, its process sentinel, its task pipe.
        """
        return self.waiter.wait(timeout)

    def close(self) -> None:
        """Release the selector and the wake-up socket (every worker is discarded)."""
        PARENT_FDS.discard(*self._own_fds)
        self.waiter.close()
        self.wakeup.close()

    def start(self, slot: int) -> Worker:
        """Start a worker process in ``slot`` and watch its result pipe and sentinel."""
        ctx = self.ctx
        self._mark[slot * m.MARK_WIDTH + m.MARK_CALL] = -1
        prefix = reply_prefix(os.getpid()) if SHARED_MEMORY else ""
        # Under the registry's lock from making the pipes to the fork: the child's
        # list of our descriptors to close is complete (see PARENT_FDS).
        with PARENT_FDS.lock:
            task_r, task_w = ctx.Pipe(duplex=False)
            result_r, result_w = ctx.Pipe(duplex=False)
            # Where the worker's faulthandler writes the stack of a crash.
            crash_r, crash_w = ctx.Pipe(duplex=False)
            PARENT_FDS.add(task_w.fileno(), result_r.fileno(), crash_r.fileno())
            process = new_process(
                ctx,
                worker_main,
                (
                    task_r,
                    result_w,
                    crash_w,
                    self.marks,
                    slot,
                    os.getpid(),
                    prefix,
                    PARENT_FDS.for_child(ctx),
                    WorkerSetup(
                        self.spec.name,
                        ctx.get_start_method(),
                        self.spec.forward_logs,
                        self.spec.placer.placement(slot) if self.spec.placer else Placement(),
                        self._init,
                    ),
                ),
                name=f"{self.spec.name}-worker-{slot}",
                daemon=False,
            )
            try:
                self._start_process(process)
                lead_group(process.pid)  # before a fork child runs anything
            except BaseException:
                PARENT_FDS.discard(task_w.fileno(), result_r.fileno(), crash_r.fileno())
                task_w.close()
                result_r.close()
                crash_r.close()
                raise
            finally:
                # Our copies of the child's ends must go, or EOF never comes.
                task_r.close()
                result_w.close()
                crash_w.close()
            PARENT_FDS.add(process.sentinel)
        worker = Worker(slot, process, task_w, result_r, prefix, crash_r)
        self.by_slot[slot] = worker
        if NONBLOCKING_WRITES:
            os.set_blocking(task_w.fileno(), False)
        widen_pipe(task_w.fileno())
        widen_pipe(result_r.fileno())
        self.waiter.register(result_r, (worker, RESULT))
        self.waiter.register(process.sentinel, (worker, EXITED))
        if self._replies is not None:
            self._replies.register(worker.result_fd, select.POLLIN)
            self._by_result_fd[worker.result_fd] = worker
        return worker

    def abandon_start(self) -> None:
        """The pool's constructor failed: stop what started and release everything."""
        for worker in list(self.by_slot.values()):
            kill_tree(worker.process.pid)
            worker.process.join()
            self.discard(worker)
        self.close()

    def _pickled_init(self) -> tuple[Callable[..., object], tuple[Any, ...]] | bytes | None:
        """The initializer as a worker gets it (see ``WorkerSetup.init``).

        Raises:
            SerializationError: it does not pickle (under spawn or forkserver).
        """
        spec = self.spec
        if spec.initializer is None:
            return None
        init = (spec.initializer, spec.initargs)
        method = self.ctx.get_start_method()
        if method == "fork":
            return init  # nothing is pickled under fork
        try:
            return pickle.dumps(init, pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            name = describe_callable(spec.initializer)
            raise SerializationError(
                f"{spec.name}: could not start a worker: the initializer {name} or its "
                f"initargs could not be pickled ({type(exc).__name__}: {exc}); under "
                f"{method} they travel to each worker by pickle: define the initializer "
                "at module top level and pass picklable initargs"
            ) from exc

    def _start_process(self, process: BaseProcess) -> None:
        """Start a worker process."""
        process.start()

    def write(self, worker: Worker, data: bytes) -> None:
        """Send one message to a worker; what its pipe cannot take now is queued.

        Raises:
            OSError: the worker is gone (the pipe is broken).
        """
        if not NONBLOCKING_WRITES:
            worker.task_conn.send_bytes(data)
            return
        if not worker.out and len(data) <= _ONE_WRITE_BYTES:
            # Nothing queued before it: one write, which a pipe with room takes whole
            # (the common case, and the whole cost of sending a small call).
            frame = frame_header(len(data)) + data
            try:
                written = os.write(worker.task_conn.fileno(), frame)
            except BlockingIOError:
                written = 0
            if written == len(frame):
                return
            worker.out.append(memoryview(frame)[written:])
        else:
            worker.out.append(memoryview(frame_header(len(data))))
            worker.out.append(memoryview(data))
        self.flush(worker)

    def flush(self, worker: Worker) -> None:
        """Write queued bytes until the pipe is full; watch it for room if needed."""
        out = worker.out
        fd = worker.task_conn.fileno()
        while out:
            try:
                written = os.writev(fd, list(itertools.islice(out, 64)))
            except BlockingIOError:
                break
            except OSError:
                out.clear()
                self._watch_writes(worker, False)
                raise
            while written:
                head = out[0]
                if written >= len(head):
                    written -= len(head)
                    out.popleft()
                else:
                    out[0] = head[written:]
                    written = 0
        self._watch_writes(worker, bool(out))

    def _watch_writes(self, worker: Worker, want: bool) -> None:
        if want == worker.writing:
            return
        worker.writing = want
        if want:
            self.waiter.register(worker.task_conn, (worker, WRITABLE), write=True)
        else:
            self.waiter.unregister(worker.task_conn)

    def receive(self, worker: Worker) -> Reply | None:
        """Read and unpickle one reply, without ``lock``.

        None if the worker is exiting (its sentinel follows), or if a waiting thread
        has claimed the pipe or has just read what made it ready.
        """
        with worker.read_lock:
            try:
                if worker.claimed or (worker.claims and not worker.reply_waiting()):
                    return None
                data = worker.read()
            except (EOFError, OSError):
                return None
            worker.unapplied += 1
        return self.decode(worker, data)

    def drain(self, worker: Worker, apply: Callable[[Worker, Reply], None]) -> None:
        """Read and ``apply`` every reply a dead worker managed to send before it died."""
        with contextlib.suppress(EOFError, OSError):
            while worker.reply_waiting():
                apply(worker, self.decode(worker, worker.read()))

    def decode(self, worker: Worker, data: bytes) -> Reply:
        """Unpickle a reply, once its header says it answers a call we wait for.

        Touches only this thread's own state, so it runs outside ``lock``: the
        worker's list of calls is read as one snapshot, and a call is listed
        before it is written to the worker. A reply to anything else (a call given
        up on, or none we sent) is not unpickled; its segment, if it names one of
        the worker's own, is unlinked, and a foreign name is never touched.
        """
        call_id, status, elapsed = m.REPLY_HEADER.unpack_from(data)
        shared = status & m.SHARED_REPLY
        reply = Reply(call_id, status & ~m.SHARED_REPLY, elapsed, data)
        if reply.status in (m.RELEASED, m.KEPT, m.RECYCLED):
            return reply
        if reply.status in (m.LOG, m.INIT_ERROR):
            expected = call_id == m.NO_CALL and not shared
        else:
            # One snapshot; the head first, which answers nearly every reply.
            calls = tuple(worker.outstanding)
            expected = bool(calls) and (
                calls[0].id == call_id or any(call.id == call_id for call in calls[1:])
            )
        view = memoryview(data)[m.REPLY_HEADER.size :]
        if not expected:
            reply.status = UNEXPECTED
            if shared:
                with contextlib.suppress(Exception):
                    worker.reply_seq = drop_reply(view, 0, worker.reply_prefix, worker.reply_seq)
            return reply
        if reply.status in (m.LOG, m.INIT_ERROR):
            return reply  # read from ``data`` where it is applied
        try:
            if shared:
                # Maps and unlinks the segment first, whatever becomes of the reply.
                worker.reply_seq, load = load_reply(view, 0, worker.reply_prefix, worker.reply_seq)
                reply.body = load()
            else:
                reply.body = pickle.loads(view)
        except BaseException as exc:
            # Whatever unpickling raises (SystemExit from a __reduce__ included)
            # fails this call only; it must not end the loop or a waiting thread.
            reply.error = exc
        return reply

    def crash_stack(self, worker: Worker) -> str | None:
        """What the dead ``worker``'s faulthandler wrote: the Python stack of its crash.

        Cut where the worker loop called the task: what is below (procpool, and
        multiprocessing's start-up) is not the task's. None if it wrote nothing.
        """
        fd = worker.crash_conn.fileno()
        chunks: list[bytes] = []
        with contextlib.suppress(OSError):
            os.set_blocking(fd, False)
            while sum(map(len, chunks)) < CRASH_TEXT_BYTES:
                data = os.read(fd, 65536)
                if not data:
                    break
                chunks.append(data)
        text = b"".join(chunks).decode("utf-8", "replace")
        lines: list[str] = []
        for line in text.splitlines():
            if _OWN_FRAME.search(line):
                break
            if line.strip() and not line.startswith("Extension modules"):
                lines.append(line)
        return "\n".join(lines) if lines else None

    def marker(self, worker: Worker) -> tuple[int, int, int]:
        """What ``worker`` says it runs: (call id, item index, since when in ns)."""
        base = worker.slot * m.MARK_WIDTH
        mark = self._mark
        return mark[base + m.MARK_CALL], mark[base + m.MARK_ITEM], mark[base + m.MARK_SINCE]

    def block_stop(self, worker: Worker) -> int:
        """The end of the block of tiny items ``worker`` marked as running (see ``_child.worker``)."""
        return self._mark[worker.slot * m.MARK_WIDTH + m.MARK_STOP]

    def discard(self, worker: Worker) -> None:
        """Forget a worker that has exited: its segments, its pipes, its process."""
        if self.is_live(worker):
            del self.by_slot[worker.slot]
        for lease in worker.leases.values():
            lease.end(False)
        worker.leases.clear()
        if worker.reply_prefix:
            # Result segments the worker created but never managed to send (it died
            # writing one, say). It is gone: it makes no more.
            unlink_prefixed(worker.reply_prefix)
        self.waiter.unregister(worker.result_conn)
        self.waiter.unregister(worker.process.sentinel)
        if self._by_result_fd.pop(worker.result_fd, None) is not None and self._replies is not None:
            self._replies.unregister(worker.result_fd)
        if worker.writing:
            self.waiter.unregister(worker.task_conn)
            worker.writing = False
        worker.out.clear()
        with contextlib.suppress(ValueError):
            PARENT_FDS.discard(
                worker.task_conn.fileno(),
                worker.result_conn.fileno(),
                worker.crash_conn.fileno(),
                worker.process.sentinel,
            )
        worker.task_conn.close()
        worker.result_conn.close()
        worker.crash_conn.close()
        with contextlib.suppress(ValueError):
            worker.process.close()

    def stop_all(self, graceful: bool) -> list[tuple[int, int | None, int | None]]:
        """Stop, reap and discard every worker: STOP (graceful) or SIGTERM, then kill.

        Returns:
            (slot, pid, exit code) of each worker stopped.
        """
        workers = list(self.by_slot.values())
        stopped: list[tuple[int, int | None, int | None]] = []
        # What each terminated worker had started: killed for good once it is gone.
        families: list[int] = []
        for worker in workers:
            if graceful and not worker.dying and not worker.retiring:
                with contextlib.suppress(OSError):
                    self.write(worker, m.CALL_HEADER.pack(0, m.STOP))
            elif not graceful:
                families += kill_tree(worker.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + (STOP_GRACE if graceful else 0.5)
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                families += kill_tree(worker.process.pid)
                worker.process.join()
            stopped.append((worker.slot, worker.process.pid, worker.process.exitcode))
            self.discard(worker)
        kill_all(families)
        return stopped

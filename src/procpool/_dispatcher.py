"""The dispatcher: the one thread that owns a pool's scheduling state.

Data flow of one task::

    Pool.submit ──pickle──▶ queue ──wake pipe──▶ dispatcher ──task pipe──▶ worker
                                                    ▲                        │ runs fn,
    future resolved ◀── dispatcher ◀──result pipe───┘◀───────────────────────┘ replies
        │
        └─▶ callback thread runs add_done_callback / then / catch callbacks

The dispatcher waits (epoll on Linux, see :mod:`._waiting`) on every worker's
result pipe, every worker's process sentinel and a wake-up socket, and on nothing
else: no sleeping poll loop. The only timed wait is the nearest task deadline.
Everything here runs on the dispatcher thread except the methods marked
*thread-safe*, which only append to the queue or the command list under ``lock``
and wake the thread.

The lone ``submit().result()`` round trip skips the dispatcher thread both ways:
the submitting thread writes a small call straight to an idle worker, and the
thread that then waits for the result reads the reply itself (the worker is
"claimed": the dispatcher stops watching its result pipe for at most
``CLAIM_SECONDS``). Each thread hop costs a wake-up and a GIL hand-over, about
15-20 µs apiece here.

A worker is sent one call at a time, or two when both are chunks of the same
``map`` (so a fast worker never waits for a round trip); work that no worker has
started stays in the queue, where it can still be cancelled. A worker processes
calls strictly in order and marks in shared memory which call and item it is on,
so when a worker dies, overruns a time limit or runs a cancelled task, exactly one
item (or one block of at most ``_child.worker.MAX_BLOCK`` items of a few µs each) is
blamed and everything it had not started is handed to another worker.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import pickle
import select
import struct
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

from ._callbacks import CallbackRunner, before_blocking
from ._child import messages as m
from ._child.codec import describe_callable
from ._child.shm import ENABLED as SHARED_MEMORY
from ._child.shm import (
    Lease,
    SegmentPool,
    drop_reply,
    load_reply,
    reply_prefix,
    unlink_prefixed,
)
from ._child.worker import worker_main
from ._context import PARENT_FDS, new_process
from ._errors import (
    PoolClosedError,
    ProcpoolError,
    RemoteTraceback,
    SerializationError,
    TaskTimeoutError,
    WorkerLostError,
    describe_exitcode,
)
from ._executor import Lifecycle
from ._future import MapFuture
from ._jobs import Call, Job, MapJob, SingleJob
from ._stats import Counters
from ._waiting import NONBLOCKING_WRITES, Waiter, Wakeup, widen_pipe

LOGGER = logging.getLogger("procpool")

#: Where writes block (Windows), calls larger than this go only to an idle worker:
#: a worker blocked writing its result while we are blocked writing its next call
#: would deadlock both. On POSIX the dispatcher never blocks on a write: what the
#: pipe does not take at once waits in the worker's output queue.
PREFETCH_MAX_BYTES = 32 * 1024
#: Calls sent straight from a submitting thread stay below this size.
DIRECT_MAX_BYTES = 32 * 1024
#: How long a waiting thread reads a directly sent call's reply itself before it
#: hands the wait back to the dispatcher. Every way a call ends without a reply
#: (a death, a kill for cancel or terminate) closes the worker's sentinel, which
#: wakes the reader at once: this is only a bound for what nobody foresaw.
CLAIM_SECONDS = 0.1
#: Whether a waiting thread may read replies (needs poll, and a selector that
#: other threads may change while the dispatcher waits on it: not Windows).
_CLAIMS = NONBLOCKING_WRITES and hasattr(select, "poll")
# What a waiter key says is ready.
_RESULT, _EXITED, _WRITABLE = 0, 1, 2
#: The status given to a reply that answers no call we wait for: nothing of it is read.
_UNEXPECTED = -1


class _Reply:
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


def _frame_header(size: int) -> bytes:
    """The length prefix multiprocessing's Connection.recv_bytes expects."""
    if size > 0x7FFFFFFF:
        return struct.pack("!i", -1) + struct.pack("!Q", size)
    return struct.pack("!i", size)


#: How long a closing pool waits for a worker to exit after STOP before killing it.
STOP_GRACE = 5.0
#: Consecutive workers that die before answering anything before the pool gives up.
MAX_STARTUP_FAILURES = 3


class _Worker:
    __slots__ = (
        "busy",
        "claimed",
        "claims",
        "dying",
        "leases",
        "out",
        "outstanding",
        "pipe_poll",
        "process",
        "read_lock",
        "replied",
        "reply_prefix",
        "reply_seq",
        "result_conn",
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
    ) -> None:
        self.slot = slot
        self.process = process
        self.task_conn = task_conn
        self.result_conn = result_conn
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
        #: Shared segments of finished calls, until the worker says it let go.
        self.leases: dict[int, Lease] = {}
        #: The names of this worker's result segments start with this (see ``_shm``).
        self.reply_prefix = reply_prefix
        #: The number of the last result segment received from it (numbers only grow).
        self.reply_seq = 0
        #: A waiting thread reads this worker's replies (see ``_read_here``).
        self.claimed = False
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
        if _CLAIMS:
            self.pipe_poll = select.poll()
            self.pipe_poll.register(result_conn.fileno(), select.POLLIN)
            self.wait_poll = select.poll()
            self.wait_poll.register(result_conn.fileno(), select.POLLIN)
            self.wait_poll.register(process.sentinel, select.POLLIN)

    def reply_waiting(self) -> bool:
        """Whether the result pipe can be read without blocking (EOF included)."""
        if self.pipe_poll is not None:
            return bool(self.pipe_poll.poll(0))
        return self.result_conn.poll(0)


class Dispatcher:
    """Owns the workers and the queue of one pool; see the module docstring."""

    def __init__(
        self,
        ctx: BaseContext,
        workers: int,
        *,
        initializer: Callable[..., object] | None,
        initargs: tuple[Any, ...],
        max_tasks_per_worker: int | None,
        forward_logs: bool,
        name: str,
    ) -> None:
        self.ctx = ctx
        self.size = workers
        self.initializer = initializer
        self.initargs = initargs
        self.max_tasks = max_tasks_per_worker
        self.forward_logs = forward_logs
        self.name = name

        # Guards the queue, the commands and every worker's state. The dispatcher
        # holds it whenever it is not waiting, so a submitting thread may hand a
        # call straight to an idle worker (re-entrant: callbacks queued from the
        # dispatcher thread take it again).
        self.lock = threading.RLock()
        self.state = Lifecycle.RUNNING
        self.broken: BaseException | None = None
        self.queue: OrderedDict[int, Job] = OrderedDict()
        self.commands: deque[Callable[[], None]] = deque()
        #: Changed under ``lock`` (it is the counters' lock too).
        self.stats = Counters(workers, self.lock)

        self._wakeup = Wakeup()
        self._wake_closed = False
        # Keys: None for the wake-up socket, else (worker, _RESULT / _EXITED /
        # _WRITABLE) for its result pipe, its process sentinel, its task pipe.
        self._waiter: Waiter[tuple[_Worker, int] | None] = Waiter()
        self._own_fds = (*self._wakeup.filenos(), *filter(None, [self._waiter.fileno()]))
        PARENT_FDS.add(*self._own_fds)
        #: Set (under lock) once the loop has decided to stop: nothing may be queued.
        self._exiting = False
        self._woken = False
        self._waiter.register(self._wakeup.reader, None)
        #: Outstanding calls with a time limit; deadlines are looked at only if any.
        self._timed = 0

        #: Shared memory for large call arguments (None where unsupported).
        self.segments = SegmentPool(workers) if SHARED_MEMORY else None

        self.marker = ctx.RawArray("q", m.MARK_WIDTH * workers)
        self._mark = memoryview(self.marker).cast("B").cast("q")
        self.workers: dict[int, _Worker] = {}
        self._startup_failures = 0

        #: Runs the futures' callbacks; the loop waits for them before a close ends.
        self.callbacks = CallbackRunner(name, after_each=self.wake)

        try:
            for slot in range(workers):
                self._start_worker(slot)
        except BaseException:
            self._abandon_start()
            raise
        #: Set when the dispatcher thread has stopped the workers and released everything.
        self._finished = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"{name}-dispatcher", daemon=True)
        self.thread.start()

    # ------------------------------------------------------------------------------
    # thread-safe entry points

    def wake(self) -> None:
        """Wake the dispatcher thread (thread-safe, never blocks)."""
        if self._woken:
            return
        with self.lock:
            # Under the lock: once the dispatcher has closed the pipe, its fd
            # number may belong to another file.
            if self._wake_closed:
                return
            self._woken = True
            self._wakeup.wake()

    def accepting(self) -> bool:
        """Whether new work may be queued from the calling thread."""
        if self.state is Lifecycle.RUNNING:
            return True
        # A callback of this pool may chain more work while the pool is closing:
        # close() + join() still waits for it, so nothing is lost.
        return self.state is Lifecycle.CLOSED and self.callbacks.is_mine() and not self._exiting

    def check_open(self) -> None:
        """Raise if the pool takes no new work (thread-safe)."""
        if self.broken is not None:
            raise ProcpoolError(
                f"{self.name} is broken and takes no new work: {self.broken}"
            ) from self.broken
        if not self.accepting():
            raise PoolClosedError(
                f"{self.name} is {self.state.value}; submit work before close(), "
                "terminate() or the end of its with-block"
            )

    def add(self, job: Job, count: int = 1) -> None:
        """Queue a job (thread-safe)."""
        fut = job.future
        fut.set_callback_runner(self.callbacks)
        fut.set_cancel_hook(lambda was_running: self.command(lambda: self._cancel_job(job)))
        with self.lock:
            self.check_open()
            self.stats.submitted += count
            self._count_failed_here(job)
            if self._send_directly(job):
                return
            self.queue[id(job)] = job
        self.wake()

    def _send_directly(self, job: Job) -> bool:
        """Give a small untimed task to an idle worker from the submitting thread.

        Saves the hop through the dispatcher thread (a thread switch and a wake-up),
        which is most of the latency of a lone ``submit().result()``. The caller
        holds ``lock``; the dispatcher sees the reply on the result pipe as usual.
        """
        if (
            not isinstance(job, SingleJob)
            or job.timeout is not None
            or self.queue
            or self.state is not Lifecycle.RUNNING
            or self._exiting
        ):
            return False
        for worker in self.workers.values():
            if (
                not worker.outstanding
                and self._usable(worker)
                and (self.max_tasks is None or worker.sent < self.max_tasks)
            ):
                call = job.next_call(self.size)
                if call is None or len(call.data) > DIRECT_MAX_BYTES:
                    if call is not None:
                        job.requeue(call)
                    return False
                # On failure _send has queued the call again; the caller wakes us.
                if not self._send(worker, call):
                    return False
                if _CLAIMS:
                    job.future.set_wait_hook(functools.partial(self._read_here, worker, call))
                return True
        return False

    def _read_here(self, worker: _Worker, call: Call, timeout: float | None) -> None:
        """Wait for the reply to a directly sent call in the waiting thread (thread-safe).

        The future's wait hook: reads and applies the reply here instead of waiting
        for the dispatcher thread to do it and wake us. Returns once the call has
        ended, the worker is gone, or ``CLAIM_SECONDS`` (or ``timeout``) passed;
        the caller then waits on the future as usual.
        """
        with self.lock:
            if not (
                self.state is Lifecycle.RUNNING
                and not self._exiting
                and self.workers.get(worker.slot) is worker
                and not worker.dying
                and not worker.claimed
                and len(worker.outstanding) == 1
                and worker.outstanding[0] is call
            ):
                return
            with worker.read_lock:
                # The dispatcher has read a reply it has not applied yet (ours,
                # perhaps): waiting on the pipe for it would wait for nothing.
                if worker.unapplied:
                    return
                worker.claimed = True
                worker.claims += 1
            self._waiter.unregister(worker.result_conn)
            poller = worker.wait_poll
            assert poller is not None
        try:
            deadline = time.monotonic() + (
                CLAIM_SECONDS if timeout is None else min(timeout, CLAIM_SECONDS)
            )
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not poller.poll(left * 1000):
                    return
                with self.lock:
                    if self._read_claimed(worker, call):
                        return
        finally:
            with self.lock:
                self._unclaim(worker)

    def _read_claimed(self, worker: _Worker, call: Call) -> bool:
        """Apply what a claimed worker sent; True once there is nothing left to wait for."""
        if self.workers.get(worker.slot) is not worker or worker.dying:
            return True
        conn = worker.result_conn
        try:
            while worker.reply_waiting():
                self._on_reply(worker, self._decode(worker, conn.recv_bytes()))
                if not worker.outstanding or worker.outstanding[0] is not call:
                    return True
        except (EOFError, OSError):
            return True  # exiting: the sentinel tells the dispatcher
        return False

    def _unclaim(self, worker: _Worker) -> None:
        """Give a claimed worker's result pipe back to the dispatcher (holding ``lock``)."""
        worker.claimed = False
        if self._exiting or self.workers.get(worker.slot) is not worker or worker.dying:
            return  # its exit is the dispatcher's business, pipe or not
        # Level-triggered: a reply that came meanwhile wakes the dispatcher at once.
        self._waiter.register(worker.result_conn, (worker, _RESULT))
        if (
            self.queue
            or self.commands
            or self.max_tasks is not None
            or self.state is not Lifecycle.RUNNING
        ):
            # The worker is free (or due to retire), or the pool may be done.
            self.wake()

    def command(self, action: Callable[[], None]) -> None:
        """Run ``action`` on the dispatcher thread soon (thread-safe)."""
        with self.lock:
            self.commands.append(action)
        self.wake()

    def close(self) -> None:
        """Take no new work; finish what is queued, then stop the workers."""
        with self.lock:
            if self.state is Lifecycle.RUNNING:
                self.state = Lifecycle.CLOSED
        self.wake()

    def terminate(self) -> None:
        """Stop now: kill the workers, end every unfinished future."""
        with self.lock:
            if self.state in (Lifecycle.RUNNING, Lifecycle.CLOSED):
                self.state = Lifecycle.TERMINATED
        self.wake()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the dispatcher and the callbacks it queued; True if all ended.

        Thread-safe, and safe from a callback: a callback that joins its own pool
        does not wait for itself (see :mod:`._callbacks`).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        before_blocking()  # on a callback thread (of any pool), let another take its queue
        self.callbacks.leave_pending()
        # Our own event first, not Thread.join alone: before Python 3.13 a
        # KeyboardInterrupt inside Thread.join marks the thread as stopped while it
        # still runs, and every later join returns at once, so the with-block's
        # terminate-then-join after a Ctrl-C would not wait for the workers to go.
        if threading.current_thread() is not self.thread and not self._finished.wait(timeout):
            return False
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if threading.current_thread() is not self.thread:
            self.thread.join(remaining)
            if self.thread.is_alive():
                return False
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        return self.callbacks.join(remaining)

    def cancel_queued(self) -> None:
        """Cancel every future whose work no worker has started (thread-safe).

        Runs here, in the calling thread: a future's state decides under its own
        lock, so a worker is never handed a future cancelled here (see ``_send``).
        """
        with self.lock:
            jobs = list(self.queue.values())
        for job in jobs:
            # A map some of whose chunks run is one running future: it goes on.
            job.future.cancel_if_pending()

    # ------------------------------------------------------------------------------
    # workers

    def _start_worker(self, slot: int) -> None:
        ctx = self.ctx
        self._mark[slot * m.MARK_WIDTH + m.MARK_CALL] = -1
        prefix = reply_prefix(os.getpid()) if SHARED_MEMORY else ""
        # Under the registry's lock from making the pipes to the fork: the child's
        # list of our descriptors to close is complete (see PARENT_FDS).
        with PARENT_FDS.lock:
            task_r, task_w = ctx.Pipe(duplex=False)
            result_r, result_w = ctx.Pipe(duplex=False)
            PARENT_FDS.add(task_w.fileno(), result_r.fileno())
            process = new_process(
                ctx,
                worker_main,
                (
                    task_r,
                    result_w,
                    self.marker,
                    slot,
                    os.getpid(),
                    prefix,
                    PARENT_FDS.for_child(ctx),
                    self.initializer,
                    self.initargs,
                    self.forward_logs,
                ),
                name=f"{self.name}-worker-{slot}",
                daemon=False,
            )
            try:
                self._start_process(process)
            except BaseException:
                PARENT_FDS.discard(task_w.fileno(), result_r.fileno())
                task_w.close()
                result_r.close()
                raise
            finally:
                # Our copies of the child's ends must go, or EOF never comes.
                task_r.close()
                result_w.close()
            PARENT_FDS.add(process.sentinel)
        worker = _Worker(slot, process, task_w, result_r, prefix)
        self.workers[slot] = worker
        self.stats.workers_started += 1
        if NONBLOCKING_WRITES:
            os.set_blocking(task_w.fileno(), False)
        widen_pipe(task_w.fileno())
        widen_pipe(result_r.fileno())
        self._waiter.register(result_r, (worker, _RESULT))
        self._waiter.register(process.sentinel, (worker, _EXITED))

    def _abandon_start(self) -> None:
        """The constructor failed: stop what it started and release what it made."""
        for worker in list(self.workers.values()):
            with contextlib.suppress(Exception):
                worker.process.kill()
            worker.process.join()
            self._discard(worker)
        PARENT_FDS.discard(*self._own_fds)
        self._waiter.close()
        self._wakeup.close()
        if self.segments is not None:
            self.segments.close()

    def _start_process(self, process: BaseProcess) -> None:
        """Start a worker process; name the culprit if its arguments do not pickle."""
        try:
            process.start()
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            if self.ctx.get_start_method() == "fork":
                raise  # nothing is pickled under fork: not ours to explain
            name = describe_callable(self.initializer) if self.initializer else "the pool"
            raise SerializationError(
                f"{self.name}: could not start a worker: the initializer {name} or its "
                f"initargs could not be pickled ({type(exc).__name__}: {exc}); under "
                f"{self.ctx.get_start_method()} they travel to each worker by pickle: define "
                "the initializer at module top level and pass picklable initargs"
            ) from exc

    def _write(self, worker: _Worker, data: bytes) -> None:
        """Send one message to a worker; what its pipe cannot take now is queued.

        Raises:
            OSError: the worker is gone (the pipe is broken).
        """
        if not NONBLOCKING_WRITES:
            worker.task_conn.send_bytes(data)
            return
        worker.out.append(memoryview(_frame_header(len(data))))
        worker.out.append(memoryview(data))
        self._flush(worker)

    def _flush(self, worker: _Worker) -> None:
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

    def _watch_writes(self, worker: _Worker, want: bool) -> None:
        if want == worker.writing:
            return
        worker.writing = want
        if want:
            self._waiter.register(worker.task_conn, (worker, _WRITABLE), write=True)
        else:
            self._waiter.unregister(worker.task_conn)

    def _send(self, worker: _Worker, call: Call) -> bool:
        """Hand ``call`` to ``worker``; False if the worker is gone (the call is queued again).

        The future is marked running *before* the write, under its own lock, and a
        cancelled one is not sent: ``cancel()`` either came first (the call is
        dropped here: a cancelled task never starts) or finds the future running
        (its hook then stops this worker, which we hold the lock to record below).
        """
        if not call.job.future.try_start():
            self._drop(call)
            return True
        # Listed before it is written: a reply is checked against this list, maybe
        # by a thread that does not hold the lock (see _decode).
        worker.outstanding.append(call)
        try:
            self._write(worker, call.data)
        except OSError:
            # The worker is gone; its sentinel will tell us. The call never started.
            worker.outstanding.pop()
            self._requeue(call)
            return False
        if call.timeout is not None:
            self._timed += 1
        worker.sent += 1
        return True

    def _drop(self, call: Call) -> None:
        """Forget a call that was cut but never sent (its future is done)."""
        job = call.job
        if isinstance(job, MapJob):
            job.in_flight -= 1
        if call.lease is not None:
            call.lease.end(True)  # no worker ever saw it
            call.lease = None

    def _usable(self, worker: _Worker) -> bool:
        return not worker.dying and not worker.retiring

    def _fill(self) -> None:
        """Hand queued calls to workers that have room."""
        if self.state is Lifecycle.TERMINATED or self.state is Lifecycle.BROKEN:
            return
        # Idle workers first, then one call of read-ahead for busy map workers.
        for depth in (0, 1):
            for worker in list(self.workers.values()):
                while self.queue and self._usable(worker) and len(worker.outstanding) == depth:
                    if self.max_tasks is not None and worker.sent >= self.max_tasks:
                        break
                    job = next(iter(self.queue.values()))
                    if job.future.done():
                        # Cancelled (the command its cancel hook queued comes later)
                        # or failed in the parent: none of it may start.
                        self.queue.pop(id(job), None)
                        continue
                    if depth == 1 and (
                        job.group is not worker.outstanding[0].job.group
                        or not job.read_ahead_pays()
                        or (
                            not NONBLOCKING_WRITES
                            and len(worker.outstanding[0].data) > PREFETCH_MAX_BYTES
                        )
                    ):
                        break
                    call = job.next_call(self.size)
                    self._count_failed_here(job)
                    if call is None or job.exhausted:
                        self.queue.pop(id(job), None)
                    if call is None:
                        continue
                    if (
                        depth == 1
                        and not NONBLOCKING_WRITES
                        and len(call.data) > PREFETCH_MAX_BYTES
                    ):
                        self._requeue(call)
                        break
                    if not self._send(worker, call):
                        break
            if not self.queue:
                break
        self._retire_spent()

    def _retire_spent(self) -> None:
        if self.max_tasks is None:
            return
        for worker in self.workers.values():
            if (
                not worker.retiring
                and not worker.dying
                and not worker.outstanding
                and worker.sent >= self.max_tasks
            ):
                worker.retiring = True
                with contextlib.suppress(OSError):
                    self._write(worker, m.CALL_HEADER.pack(0, m.STOP))

    def _requeue(self, call: Call) -> None:
        """Give a call that never started back to its job, at the front of the queue."""
        job = call.job
        if job.future.done():
            return
        if isinstance(job, SingleJob):
            job.requeue(call)
        elif isinstance(job, MapJob):
            job.in_flight -= 1
            job.hand_back(call.start + call.worker_done, call.stop)
        self.queue[id(job)] = job
        self.queue.move_to_end(id(job), last=False)

    # ------------------------------------------------------------------------------
    # the loop

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # never leave a caller hanging
            LOGGER.critical("procpool dispatcher crashed", exc_info=True)
            error = ProcpoolError(f"{self.name}: internal error in the dispatcher: {exc!r}")
            error.__cause__ = exc
            with self.lock:
                self.broken = error
                self.state = Lifecycle.BROKEN
                self._fail_everything(error, cancel=False)
        finally:
            try:
                with self.lock:
                    self._exiting = True
                self._stop_workers()
                self.callbacks.close()
                with self.lock:
                    self._wake_closed = True
                PARENT_FDS.discard(*self._own_fds)
                self._waiter.close()
                self._wakeup.close()
                if self.segments is not None:
                    self.segments.close()
            finally:
                self._finished.set()  # join() waits for this, whatever happened above

    def _loop(self) -> None:
        lock = self.lock
        while True:
            with lock:
                self._woken = False
                state = self.state
                commands = list(self.commands)
                self.commands.clear()
                for action in commands:
                    action()
                del commands
                if state is Lifecycle.TERMINATED:
                    self._fail_everything(None, cancel=True)
                    return
                if state is Lifecycle.BROKEN:
                    return
                if self.queue:
                    self._fill()
                if state is Lifecycle.CLOSED and self._idle():
                    self._exiting = True
                    return
                timeout = self._next_deadline() if self._timed else None
            ready = self._waiter.wait(timeout)
            # Replies are read and unpickled before taking the lock, so submitting
            # and consuming threads are not held up by the unpickling. Only this
            # thread changes ``workers``; reading it without the lock is safe.
            replies = [
                (key[0], self._receive(key[0]))
                for key in ready
                if key is not None and key[1] == _RESULT and self.workers.get(key[0].slot) is key[0]
            ]
            with lock:
                # Replies first: what a worker sent before it died counts.
                self._apply(replies)
                del replies
                for key in ready:
                    if key is None:
                        self._wakeup.drain()
                        continue
                    worker, what = key
                    if what == _RESULT or self.workers.get(worker.slot) is not worker:
                        continue
                    if what == _EXITED:
                        self._on_exit(worker)
                    else:
                        with contextlib.suppress(OSError):  # dead: its sentinel follows
                            self._flush(worker)
                if self._timed:
                    self._check_deadlines()

    def _apply(self, replies: list[tuple[_Worker, _Reply | None]]) -> None:
        # A method of its own: the loop's variables would keep the last reply alive
        # while the dispatcher waits.
        for worker, reply in replies:
            if reply is None:
                continue
            worker.unapplied -= 1
            if self.workers.get(worker.slot) is worker:
                self._on_reply(worker, reply)

    def _idle(self) -> bool:
        with self.lock:
            if self.queue or self.commands or self.callbacks.pending():
                return False
        return not any(w.outstanding for w in self.workers.values())

    # ------------------------------------------------------------------------------
    # replies

    def _receive(self, worker: _Worker) -> _Reply | None:
        """Read and unpickle one reply, without ``lock``.

        None if the worker is exiting (its sentinel follows), or if a waiting thread
        has claimed the pipe or has just read what made it ready.
        """
        conn = worker.result_conn
        with worker.read_lock:
            try:
                if worker.claimed or (worker.claims and not worker.reply_waiting()):
                    return None
                data = conn.recv_bytes()
            except (EOFError, OSError):
                return None
            worker.unapplied += 1
        return self._decode(worker, data)

    def _drain(self, worker: _Worker) -> None:
        """Read every reply a dead worker managed to send before it died."""
        conn = worker.result_conn
        with contextlib.suppress(EOFError, OSError):
            while worker.reply_waiting():
                self._on_reply(worker, self._decode(worker, conn.recv_bytes()))

    def _decode(self, worker: _Worker, data: bytes) -> _Reply:
        """Unpickle a reply, once its header says it answers a call we wait for.

        Touches only this thread's own state, so it runs outside ``lock``: the
        worker's list of calls is read as one snapshot, and a call is listed
        before it is written to the worker. A reply to anything else (a call given
        up on, or none we sent) is not unpickled; its segment, if it names one of
        the worker's own, is unlinked, and a foreign name is never touched.
        """
        call_id, status, elapsed = m.REPLY_HEADER.unpack_from(data)
        shared = status & m.SHARED_REPLY
        reply = _Reply(call_id, status & ~m.SHARED_REPLY, elapsed, data)
        if reply.status in (m.RELEASED, m.KEPT):
            return reply
        if reply.status in (m.LOG, m.INIT_ERROR):
            expected = call_id == m.NO_CALL and not shared
        else:
            expected = any(call.id == call_id for call in tuple(worker.outstanding))
        view = memoryview(data)[m.REPLY_HEADER.size :]
        if not expected:
            reply.status = _UNEXPECTED
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

    def _on_reply(self, worker: _Worker, reply: _Reply) -> None:
        """Apply one reply. Takes its body out: a result yielded by an iterated map
        must not stay alive in a reply the dispatcher still holds (bpo-14406)."""
        call_id, status, elapsed = reply.call_id, reply.status, reply.elapsed
        if status == _UNEXPECTED:
            return
        worker.replied = True
        self._startup_failures = 0
        if status in (m.RELEASED, m.KEPT):
            lease = worker.leases.pop(call_id, None)
            if lease is not None:
                lease.end(status == m.RELEASED)
            return
        if status == m.LOG:
            self._replay_log(reply.data)
            return
        if status == m.INIT_ERROR:
            self._on_init_error(worker, reply.data)
            return
        if worker.dying or not worker.outstanding or worker.outstanding[0].id != call_id:
            return  # a reply to a call we already gave up on
        call = worker.outstanding[0]
        job = call.job
        worker.busy += elapsed
        self.stats.busy[worker.slot] += elapsed
        body: Any = reply.body
        reply.body = None
        if reply.error is not None:
            exc = reply.error
            status = m.BAD_PICKLE
            body = (
                f"the result of {job.describe(call, call.start + call.worker_done)} could not "
                f"be unpickled in the parent ({type(exc).__name__}: {exc})"
            )
        del reply
        if status == m.ITEMS:
            offset, values, errors, final = body
            assert isinstance(job, MapJob)
            job.record_timing(len(values), elapsed)
            failures = (
                {
                    index - offset: self._remote_error(job, call, call.start + index, e)
                    for index, e in errors.items()
                }
                if errors
                else None
            )
            call.worker_done = offset + len(values)
            # Counted only if stored: a cancelled map's items count as cancelled.
            if job.map_future.set_items(call.start + offset, values, failures):
                self.stats.completed += len(values) - (len(failures) if failures else 0)
                self.stats.failed += len(failures) if failures else 0
            if final:
                self._call_done(worker, call)
            return
        self._call_done(worker, call)
        if status == m.OK:
            self._resolve(job, result=body)
        elif status == m.ERROR:
            self._resolve(job, exception=self._remote_error(job, call, call.start, body))
        else:  # BAD_PICKLE
            self._fail_call(job, call, call.start + call.worker_done, SerializationError(body))

    def _remote_error(
        self, job: Job, call: Call, index: int, body: tuple[BaseException | None, str]
    ) -> BaseException:
        exc, tb = body
        if exc is None:
            return SerializationError(
                f"{job.describe(call, index)} raised an exception that could not be sent "
                f"back (it does not pickle); its traceback:\n{tb}"
            )
        exc.__cause__ = RemoteTraceback(tb)
        return exc

    def _call_done(self, worker: _Worker, call: Call) -> None:
        worker.outstanding.popleft()
        if call.lease is not None:
            # Reusable once the worker says nothing of the call holds on to it.
            worker.leases[call.id], call.lease = call.lease, None
        if call.timeout is not None:
            self._timed -= 1
        job = call.job
        if isinstance(job, MapJob):
            job.in_flight -= 1
            if job.map_future.done():
                job.release()

    def _resolve(
        self, job: Job, *, result: object = None, exception: BaseException | None = None
    ) -> None:
        job.release()
        # Counted only if it took: a future cancelled meanwhile counts as cancelled.
        future = job.future
        if (
            future.try_set_result(result)
            if exception is None
            else future.try_set_exception(exception)
        ):
            if exception is None:
                self.stats.completed += 1
            else:
                self.stats.failed += 1

    def _count_failed_here(self, job: Job) -> None:
        """Count the items a map failed in the parent (unpicklable) while cutting calls."""
        if isinstance(job, MapJob) and job.failed_here:
            self.stats.failed += job.failed_here
            job.failed_here = 0

    def _fail_call(self, job: Job, call: Call, first: int, error: BaseException) -> None:
        """Fail a whole call: a single job's future, or every unreported item of a chunk."""
        if isinstance(job, MapJob):
            for index in range(first, call.stop):
                self.stats.failed += job.map_future.set_item_exception(index, error)
            if job.map_future.done():
                job.release()
        else:
            self._resolve(job, exception=error)

    def _replay_log(self, data: bytes) -> None:
        try:
            fields = pickle.loads(memoryview(data)[m.REPLY_HEADER.size :])
            record = logging.makeLogRecord(fields)
            logging.getLogger(record.name).handle(record)
        except BaseException:
            LOGGER.exception("could not replay a log record from a worker")

    def _on_init_error(self, worker: _Worker, data: bytes) -> None:
        try:
            exc, tb = pickle.loads(memoryview(data)[m.REPLY_HEADER.size :])
        except BaseException as unpickle_error:
            exc, tb = unpickle_error, ""
        if exc is None:
            exc = ProcpoolError(f"the initializer raised an exception that does not pickle:\n{tb}")
        elif tb:
            exc.__cause__ = RemoteTraceback(tb)
        name = getattr(self.initializer, "__qualname__", repr(self.initializer))
        error = ProcpoolError(
            f"{self.name}: the initializer {name} raised {type(exc).__name__}: {exc}; "
            "the pool is broken and starts no more workers (fix the initializer)"
        )
        error.__cause__ = exc
        self.broken = error
        with self.lock:
            self.state = Lifecycle.BROKEN
        self._fail_everything(error, cancel=False)

    # ------------------------------------------------------------------------------
    # deaths, time limits, cancellation

    def _marker(self, worker: _Worker) -> tuple[int, int, int]:
        base = worker.slot * m.MARK_WIDTH
        mark = self._mark
        return mark[base + m.MARK_CALL], mark[base + m.MARK_ITEM], mark[base + m.MARK_SINCE]

    def _on_exit(self, worker: _Worker) -> None:
        """A worker's sentinel fired: account for its calls, reap it, replace it."""
        self._drain(worker)
        worker.process.join()
        exitcode = worker.process.exitcode
        if not worker.dying:
            # Calls are written to a worker as soon as it starts, so a worker that
            # dies while starting up has calls too; only the marker (reset when the
            # worker was started) says whether it began one.
            began = bool(worker.outstanding) and (
                self._marker(worker)[0] == worker.outstanding[0].id
            )
            self._give_up_calls(worker, "died", exitcode)
            if worker.retiring and exitcode == 0:
                pass
            elif not worker.replied and not began:
                self._startup_failures += 1
        self._discard(worker)
        if self._startup_failures >= MAX_STARTUP_FAILURES:
            error = ProcpoolError(
                f"{self.name}: {self._startup_failures} workers in a row died before doing any "
                f"work (last one {describe_exitcode(exitcode)}). Under spawn or forkserver the "
                "main module must be importable and guard its code with "
                "`if __name__ == '__main__':`; and an initializer must not end the process"
            )
            self.broken = error
            with self.lock:
                self.state = Lifecycle.BROKEN
            self._fail_everything(error, cancel=False)
            return
        self._replace(worker.slot)

    def _discard(self, worker: _Worker) -> None:
        if self.workers.get(worker.slot) is worker:
            del self.workers[worker.slot]
        for lease in worker.leases.values():
            lease.end(False)
        worker.leases.clear()
        if worker.reply_prefix:
            # Result segments the worker created but never managed to send (it died
            # writing one, say). It is gone: it makes no more.
            unlink_prefixed(worker.reply_prefix)
        self._waiter.unregister(worker.result_conn)
        self._waiter.unregister(worker.process.sentinel)
        if worker.writing:
            self._waiter.unregister(worker.task_conn)
            worker.writing = False
        worker.out.clear()
        with contextlib.suppress(ValueError):
            PARENT_FDS.discard(
                worker.task_conn.fileno(), worker.result_conn.fileno(), worker.process.sentinel
            )
        worker.task_conn.close()
        worker.result_conn.close()
        with contextlib.suppress(ValueError):
            worker.process.close()

    def _replace(self, slot: int) -> None:
        if self.state not in (Lifecycle.RUNNING, Lifecycle.CLOSED):
            return
        if slot in self.workers:
            return
        if self.state is Lifecycle.CLOSED and self._idle():
            return
        self._start_worker(slot)
        self.stats.workers_replaced += 1

    def _kill(self, worker: _Worker, reason: str) -> None:
        """Kill a worker now and settle its calls; the sentinel reaps it later."""
        if worker.dying:
            return
        self._drain(worker)
        worker.dying = True
        with contextlib.suppress(Exception):
            worker.process.kill()
        self._give_up_calls(worker, reason, None)

    def _give_up_calls(self, worker: _Worker, reason: str, exitcode: int | None) -> None:
        """Settle the calls of a worker that is gone: blame one item, hand back the rest."""
        calls = list(worker.outstanding)
        worker.outstanding.clear()
        self._timed -= sum(call.timeout is not None for call in calls)
        if not calls:
            return
        mark_call, mark_item, _ = self._marker(worker)
        head = calls[0]
        for call in calls[1:]:
            self._requeue(call)
        job = head.job
        if job.future.done():
            if isinstance(job, MapJob):
                job.in_flight -= 1
            return
        if mark_call != head.id:
            self._requeue(head)  # it never started
            return
        pid = worker.process.pid
        if isinstance(job, MapJob):
            job.in_flight -= 1
            running = head.start + max(mark_item, head.worker_done)
            # A block of tiny items is marked as a whole (see _worker._run_chunk):
            # any of it may have been the one running. A bound at or below the
            # next item is an earlier block's, left behind by per-item marking.
            mark_stop = self._mark[worker.slot * m.MARK_WIDTH + m.MARK_STOP]
            block_stop = max(head.start + mark_stop, running + 1)
            self._lose(
                job,
                head,
                range(head.start + head.worker_done, running),
                f" finished, but its worker (pid {pid}) was stopped ({reason}) before it "
                "sent the result",
                exitcode,
                pid,
            )
            job.hand_back(block_stop, head.stop)
            if block_stop == running + 1:
                self._blame(job, head, running, reason, exitcode, pid)
            else:
                # Never a retry or a time limit: such chunks are marked item by item.
                block = (
                    f"items {job.base_index + running} to {job.base_index + block_stop - 1} "
                    f"of map({job.name}, ...)"
                )
                self._lose(
                    job,
                    head,
                    range(running, block_stop),
                    f": its worker (pid {pid}) {describe_exitcode(exitcode)}; it was running "
                    f"{block}, fast items it runs as one block, so this item or another of "
                    "them is at fault (chunksize=1 blames the exact item)",
                    exitcode,
                    pid,
                )
            if job.map_future.done():
                job.release()
            elif not job.exhausted:
                self.queue[id(job)] = job
                self.queue.move_to_end(id(job), last=False)
        else:
            self._blame(job, head, head.start, reason, exitcode, pid)

    def _blame(
        self, job: Job, call: Call, index: int, reason: str, exitcode: int | None, pid: int | None
    ) -> None:
        """Fail (or retry) the one item that was running when its worker was stopped."""
        if reason == "cancelled":
            return
        timed_out = reason == "timeout"
        if timed_out:
            self.stats.timed_out += 1
        if isinstance(job, SingleJob):
            attempts = job.attempts
        else:
            assert isinstance(job, MapJob)
            attempts = job.attempts.get(index, 0)
        if attempts < job.retries and (not timed_out or job.retry_timeouts):
            self.stats.retried += 1
            if isinstance(job, SingleJob):
                job.attempts += 1
                job.requeue(call)
            else:
                assert isinstance(job, MapJob)
                job.attempts[index] = attempts + 1
                job.hand_back(index, index + 1)
            self.queue[id(job)] = job
            self.queue.move_to_end(id(job), last=False)
            return
        error: BaseException
        if timed_out:
            error = TaskTimeoutError(
                f"{job.describe(call, index)} ran longer than its time limit of "
                f"{call.timeout:g} s; its worker (pid {pid}) was killed and replaced",
                timeout=call.timeout,
            )
        else:
            tries = f" (after {attempts + 1} attempts)" if attempts else ""
            error = WorkerLostError(
                f"{job.describe(call, index)}{tries}: its worker (pid {pid}) "
                f"{describe_exitcode(exitcode)}",
                exitcode=exitcode,
                pid=pid,
            )
        if isinstance(job, MapJob):
            self.stats.failed += job.map_future.set_item_exception(index, error)
        else:
            self._resolve(job, exception=error)

    def _lose(
        self,
        job: MapJob,
        call: Call,
        indices: range,
        why: str,
        exitcode: int | None,
        pid: int | None,
    ) -> None:
        """Fail map items with a ``WorkerLostError`` saying which item and ``why``."""
        for index in indices:
            self.stats.failed += job.map_future.set_item_exception(
                index,
                WorkerLostError(f"{job.describe(call, index)}{why}", exitcode=exitcode, pid=pid),
            )

    def _timed_heads(self) -> Iterator[tuple[_Worker, int, float, int, int]]:
        """Each live worker whose current call has a time limit, as (worker, call id,
        time limit, id of the call it has marked as started, marked start in ns)."""
        for worker in list(self.workers.values()):
            if worker.dying or not worker.outstanding:
                continue
            head = worker.outstanding[0]
            if head.timeout is None:
                continue
            mark_call, _, since = self._marker(worker)
            yield worker, head.id, head.timeout, mark_call, since

    def _next_deadline(self) -> float | None:
        nearest: float | None = None
        now = time.monotonic()
        for _, call_id, timeout, mark_call, since in self._timed_heads():
            if mark_call == call_id:
                due = since / 1e9 + timeout
            else:
                # Sent but not started (the worker is still starting up): look again soon.
                due = now + min(timeout, 0.05)
            nearest = due if nearest is None else min(nearest, due)
        if nearest is None:
            return None
        return max(0.0, nearest - now)

    def _check_deadlines(self) -> None:
        now = time.monotonic_ns()
        for worker, call_id, timeout, mark_call, since in self._timed_heads():
            if mark_call == call_id and now - since >= timeout * 1e9:
                self._kill(worker, "timeout")

    def _cancel_job(self, job: Job) -> None:
        """The job's future was cancelled: drop it, and stop any worker running it."""
        self.queue.pop(id(job), None)
        self.stats.cancelled += _items_left(job)
        for worker in list(self.workers.values()):
            # Only where the job is running. A call of it read ahead behind another
            # job's (an imap's next chunk) is left to run, and its replies are
            # dropped: killing the worker would kill the other job's running item.
            if worker.outstanding and worker.outstanding[0].job is job:
                self._kill(worker, "cancelled")
        job.release()

    def _fail_everything(self, error: BaseException | None, *, cancel: bool) -> None:
        """End every unfinished future: cancel it, or fail it with ``error``."""
        jobs: dict[int, Job] = {}
        with self.lock:
            for job in self.queue.values():
                jobs[id(job)] = job
            self.queue.clear()
        for worker in self.workers.values():
            for call in worker.outstanding:
                jobs[id(call.job)] = call.job
                if call.lease is not None:
                    # Its segment goes now, not when the call object is collected
                    # (a future's wait hook may hold it for as long as the future).
                    call.lease.end(False)
                    call.lease = None
            worker.outstanding.clear()
            worker.dying = True
        self._timed = 0
        for job in jobs.values():
            fut = job.future
            if fut.done():
                continue
            if cancel or error is None:
                self.stats.cancelled += _items_left(job)
                fut.abandon()
            else:
                self.stats.failed += _items_left(job)
                if isinstance(fut, MapFuture):
                    fut.fail_unfinished(error)
                else:
                    fut.try_set_exception(error)
            job.release()

    def _stop_workers(self) -> None:
        """Stop and reap every worker: STOP if they are idle, else kill."""
        workers = list(self.workers.values())
        graceful = self.state is Lifecycle.CLOSED
        for worker in workers:
            if graceful and not worker.dying and not worker.retiring:
                with contextlib.suppress(OSError):
                    self._write(worker, m.CALL_HEADER.pack(0, m.STOP))
            elif not graceful:
                with contextlib.suppress(Exception):
                    worker.process.terminate()
        deadline = time.monotonic() + (STOP_GRACE if graceful else 0.5)
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                with contextlib.suppress(Exception):
                    worker.process.kill()
                worker.process.join()
            self._discard(worker)


def _items_left(job: Job) -> int:
    """What a job still counts for in the stats: its items without an outcome, or 1."""
    fut = job.future
    return fut.unfinished() if isinstance(fut, MapFuture) else 1

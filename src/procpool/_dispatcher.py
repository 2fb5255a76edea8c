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
Everything here runs on the dispatcher thread, holding ``lock``, except the
methods marked *thread-safe*, which only append to the queue or the command
list under ``lock`` and wake the thread, and the parts of :mod:`._direct` that
run on a submitting or a waiting thread, also under ``lock``. The dispatcher
reads and unpickles replies outside ``lock``, so that submitting and consuming
threads are never held up by unpickling.

The dispatcher is the coordinator of small parts, each in its own module:

==================  =========================================================
``_queue``          the jobs no worker has been handed all of yet
``_workers``        the processes, pipes, selector and marker (I/O, no policy)
``_staffing``       starting, replacing and retiring workers; the broken verdict
``_settle``         what replies and deaths mean: outcomes, blame, retries, counts
``_feeding``        which worker gets which call, read-ahead, spent workers
``_direct``         the submit-and-wait fast path on the user's threads
``_callbacks``      the thread that runs the futures' callbacks
this module         the loop, deadlines, cancelling, the lifecycle
==================  =========================================================

Each part is handed the few others it uses (see their constructors), never the
dispatcher itself; they share its lock through the lifecycle (:class:`PoolLife`).

The lone ``submit().result()`` round trip skips the dispatcher thread both ways
(:mod:`._direct`): a submitting thread writes a small call straight to an idle
worker, and the thread that waits for the result reads the reply itself.

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
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from multiprocessing.context import BaseContext

from ._assist import Assist
from ._callbacks import CallbackRunner, before_blocking
from ._child.shm import ENABLED as SHARED_MEMORY
from ._child.shm import SegmentPool
from ._direct import DirectPath
from ._errors import PoolClosedError, ProcpoolError
from ._events import EventHook, Events, ExitCause, TaskQueued, WorkerExited
from ._events import now as events_now
from ._feeding import Feeder
from ._jobs import Job, MapJob
from ._lifecycle import Lifecycle, PoolLife
from ._queue import WorkQueue
from ._settle import Settler, items_left
from ._staffing import Staffing
from ._stats import Counters
from ._workers import EXITED, RESULT, Reply, Worker, WorkerSet, WorkerSpec

LOGGER = logging.getLogger("procpool")


class Dispatcher:
    """Owns the queue and the lifecycle of one pool, and coordinates its parts.

    See the module docstring. Under ``lock``: ``queue``, ``commands``, ``life``
    (state, broken, exiting), ``stats``, and every worker's state.
    """

    def __init__(
        self,
        ctx: BaseContext,
        workers: int,
        spec: WorkerSpec,
        *,
        max_tasks_per_worker: int | None,
        min_workers: int = 0,
        idle_timeout: float | None = None,
        on_event: EventHook | None = None,
    ) -> None:
        self.ctx = ctx
        self.size = workers
        self.spec = spec
        self.name = spec.name

        # Guards the queue, the commands and every worker's state. The dispatcher
        # holds it whenever it is not waiting, so a submitting thread may hand a
        # call straight to an idle worker (re-entrant: callbacks queued from the
        # dispatcher thread take it again).
        self.lock = threading.RLock()
        self.life = PoolLife(self.lock)
        self.queue = WorkQueue()
        self.commands: deque[Callable[[], None]] = deque()
        #: Changed under ``lock`` (it is the counters' lock too).
        self.stats = Counters(workers, self.lock)

        self._wake_closed = False
        self._woken = False

        #: Shared memory for large call arguments (None where unsupported).
        self.segments = SegmentPool(workers) if SHARED_MEMORY else None

        #: The processes, their pipes and the selector (see ``_workers``).
        self.workers = WorkerSet(ctx, workers, spec)
        #: Runs the futures' callbacks; the loop waits for them before a close ends.
        self.callbacks = CallbackRunner(self.name, after_each=self.wake)
        #: The on_event hook's deliveries (on the callback thread).
        self.events = Events(self.name, on_event, self.callbacks)
        self.staffing = Staffing(
            self.workers,
            self.stats,
            self.life,
            self._idle,
            self.events,
            size=workers,
            min_workers=min_workers,
            idle_timeout=idle_timeout,
        )
        self.settler = Settler(
            self.queue, self.workers, self.stats, self.life, self.staffing, self.events
        )
        self.feeder = Feeder(
            self.queue,
            self.workers,
            self.life,
            self.staffing,
            self.settler,
            self.events,
            size=workers,
            max_tasks=max_tasks_per_worker,
        )
        self.direct = DirectPath(
            self.queue,
            self.workers,
            self.life,
            self.feeder,
            self.settler,
            size=workers,
            nudge=self._nudge,
        )
        self.assist = Assist(
            self.queue,
            self.workers,
            self.life,
            self.feeder,
            self.settler,
            size=workers,
            wake=self.wake,
        )

        try:
            for slot in range(workers):
                self.staffing.start(slot)
        except BaseException:
            self.workers.abandon_start()
            if self.segments is not None:
                self.segments.close()
            raise
        #: Set when the dispatcher thread has stopped the workers and released everything.
        self._finished = threading.Event()
        self.thread = threading.Thread(
            target=self._run, name=f"{self.name}-dispatcher", daemon=True
        )
        self.thread.start()

    @property
    def state(self) -> Lifecycle:
        """Where the pool is in its life."""
        return self.life.state

    @property
    def broken(self) -> BaseException | None:
        """Why the pool is broken, if it is."""
        return self.life.broken

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
            self.workers.wakeup.wake()

    def accepting(self) -> bool:
        """Whether new work may be queued from the calling thread."""
        if self.state is Lifecycle.RUNNING:
            return True
        # A callback of this pool may chain more work while the pool is closing:
        # close() + join() still waits for it, so nothing is lost.
        return self.state is Lifecycle.CLOSED and self.callbacks.is_mine() and not self.life.exiting

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
        if self.events.on:
            # Before the lock: a direct send below reports its start at once, and
            # the hook must hear of the task first. Not for a closed pool's work.
            self.check_open()
            job.queued_at = time.monotonic()
            self.events.emit(TaskQueued(self.name, job.title, count, job.priority, events_now()))
        with self.lock:
            self.check_open()
            self.stats.submitted += count
            self.settler.count_failed_here(job)
            if self.direct.send(job):
                return
            self.queue.add(job)
            if self.assist.hand_out(job):  # sent from this thread: no wake-up (see _assist)
                return
        self.wake()

    def command(self, action: Callable[[], None]) -> None:
        """Run ``action`` on the dispatcher thread soon (thread-safe)."""
        with self.lock:
            self.commands.append(action)
        self.wake()

    def close(self) -> None:
        """Take no new work; finish what is queued, then stop the workers."""
        with self.lock:
            if self.life.state is Lifecycle.RUNNING:
                self.life.state = Lifecycle.CLOSED
        self.wake()

    def terminate(self) -> None:
        """Stop now: kill the workers, end every unfinished future."""
        with self.lock:
            if self.life.state in (Lifecycle.RUNNING, Lifecycle.CLOSED):
                self.life.state = Lifecycle.TERMINATED
        self.wake()

    def parallelism(self) -> int:
        """How many calls run at once: one per worker."""
        return self.size

    def wait_for_end(self, timeout: float | None) -> bool:
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

    def cancel_unstarted(self) -> None:
        """Cancel every future whose work no worker has started (thread-safe).

        Runs here, in the calling thread: a future's state decides under its own
        lock, so a worker is never handed a future cancelled here (see ``_send``).
        """
        with self.lock:
            jobs = self.queue.jobs()
        for job in jobs:
            # A map some of whose chunks run is one running future: it goes on.
            job.future.cancel_if_pending()

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
                self.life.break_with(error)
                self.settler.fail_everything(error, cancel=False)
        finally:
            try:
                with self.lock:
                    self.life.exiting = True
                graceful = self.state is Lifecycle.CLOSED
                stopped = self.workers.stop_all(graceful=graceful)
                if self.events.on:
                    for slot, pid, exitcode in stopped:
                        cause: ExitCause = "stopped" if graceful else "terminated"
                        self.events.emit(
                            WorkerExited(self.name, slot, pid, exitcode, cause, events_now())
                        )
                self.callbacks.close()
                with self.lock:
                    self._wake_closed = True
                self.workers.close()
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
                    self.settler.fail_everything(None, cancel=True)
                    return
                if state is Lifecycle.BROKEN:
                    return
                if self.queue.parked():
                    self.queue.unpark_due()
                if self.queue:
                    if self.staffing.idle_timeout is not None:
                        self.staffing.grow(self._workers_wanted())
                    self.feeder.fill()
                elif self.feeder.spends_workers():
                    # A worker spent by its last call retires now, not when work
                    # next comes through the queue: work sent straight to another
                    # worker (the direct path) would leave it holding its slot.
                    self.feeder.retire_spent()
                if state is Lifecycle.CLOSED and self._idle():
                    self.life.exiting = True
                    return
                self.staffing.watch_idle(self.feeder.usable)
                timeout = (
                    self._next_wakeup()
                    if self.workers.timed or self.staffing.waiting() or self.queue.parked()
                    else None
                )
                # After the fill above: a timed call it sent takes its pipe back now.
                review = self.assist.review()
                if review is not None:
                    timeout = review if timeout is None else min(timeout, review)
            ready = self.workers.wait(timeout)
            # Replies are read and unpickled before taking the lock, so submitting
            # and consuming threads are not held up by the unpickling. Only this
            # thread changes ``workers``; reading it without the lock is safe.
            replies = [
                (key[0], self.workers.receive(key[0]))
                for key in ready
                if key is not None and key[1] == RESULT and self.workers.is_live(key[0])
            ]
            with lock:
                # Replies first: what a worker sent before it died counts.
                self._apply(replies)
                del replies
                for key in ready:
                    if key is None:
                        self.workers.wakeup.drain()
                        continue
                    worker, what = key
                    if what == RESULT or not self.workers.is_live(worker):
                        continue
                    if what == EXITED:
                        self.settler.on_exit(worker)
                    else:
                        with contextlib.suppress(OSError):  # dead: its sentinel follows
                            self.workers.flush(worker)
                if self.workers.timed:
                    self._check_deadlines()
                if self.staffing.waiting():
                    # Its calls went back to the queue when a retiree was told to exit.
                    self.staffing.run_due(lambda worker: self.settler.kill(worker, "retired"))

    def _apply(self, replies: list[tuple[Worker, Reply | None]]) -> None:
        # A method of its own: the loop's variables would keep the last reply alive
        # while the dispatcher waits.
        for worker, reply in replies:
            if reply is None:
                continue
            worker.unapplied -= 1
            if self.workers.is_live(worker):
                self.settler.on_reply(worker, reply)

    def _idle(self) -> bool:
        with self.lock:
            if self.queue or self.queue.parked() or self.commands or self.callbacks.pending():
                return False
        return not any(w.outstanding for w in self.workers.values())

    # ------------------------------------------------------------------------------
    # deaths, time limits, cancellation

    def _nudge(self) -> None:
        """Wake the dispatcher if a freed worker may be wanted (the direct path's hook)."""
        if (
            self.queue
            or self.queue.parked()
            or self.commands
            or self.feeder.spends_workers()
            or self.life.state is not Lifecycle.RUNNING
        ):
            self.wake()

    def _workers_wanted(self) -> int:
        """How many more workers the queued work could use now (an elastic pool)."""
        free = sum(1 for w in self.workers.values() if not w.outstanding and self.feeder.usable(w))
        demand = sum(self.size if isinstance(job, MapJob) else 1 for job in self.queue.jobs())
        return max(0, min(demand, self.size) - free)

    def _next_wakeup(self) -> float | None:
        """Seconds until the nearest deadline, retirement or restart (None: none)."""
        waits = [
            due for due in (self.staffing.next_due(), self.queue.next_due()) if due is not None
        ]
        if self.workers.timed:
            deadline = self._next_deadline()
            if deadline is not None:
                waits.append(deadline)
        return min(waits) if waits else None

    def _timed_heads(self) -> Iterator[tuple[Worker, int, float, int, int]]:
        """Each live worker whose current call has a time limit, as (worker, call id,
        seconds after which it is killed, id of the call it has marked as started,
        marked start in ns).

        With a grace period the kill comes ``grace`` seconds after the time limit:
        at the limit the worker interrupts the task itself (see ``_child.alarm``).
        """
        for worker in list(self.workers.values()):
            if worker.dying or not worker.outstanding:
                continue
            head = worker.outstanding[0]
            if head.timeout is None:
                continue
            mark_call, _, since = self.workers.marker(worker)
            yield worker, head.id, head.timeout + (head.grace or 0.0), mark_call, since

    def _next_deadline(self) -> float | None:
        nearest: float | None = None
        now = time.monotonic()
        for _, call_id, limit, mark_call, since in self._timed_heads():
            # Sent but not started (the worker is still starting up): look again soon.
            due = since / 1e9 + limit if mark_call == call_id else now + min(limit, 0.05)
            nearest = due if nearest is None else min(nearest, due)
        if nearest is None or math.isinf(nearest):  # grace=inf: an interrupted task may run on
            return None
        return max(0.0, nearest - now)

    def _check_deadlines(self) -> None:
        now = time.monotonic_ns()
        for worker, call_id, limit, mark_call, since in self._timed_heads():
            if mark_call == call_id and now - since >= limit * 1e9:
                self.settler.kill(worker, "timeout")

    def _cancel_job(self, job: Job) -> None:
        """The job's future was cancelled: drop it, and stop any worker running it."""
        self.queue.discard(job)
        self.stats.cancelled += items_left(job)
        for worker in list(self.workers.values()):
            # Only where the job is running. A call of it read ahead behind another
            # job's (an imap's next chunk) is left to run, and its replies are
            # dropped: killing the worker would kill the other job's running item.
            if worker.outstanding and worker.outstanding[0].job is job:
                self.settler.kill(worker, "cancelled")
        job.release()

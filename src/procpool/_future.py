"""``Future[T]``: a ``concurrent.futures.Future`` with ``then``/``catch``/``await``.

Both subclass :class:`concurrent.futures.Future`, so ``concurrent.futures.wait``,
``as_completed`` and ``asyncio.wrap_future`` accept them. They reuse its state
machine (``_state``, ``_condition``, ``_waiters``) rather than shadowing it, because
those helpers read the fields directly.

Two things differ from the standard class, both on purpose:

* ``cancel()`` also works on a *running* future when its executor knows how to
  stop the work (it installs a cancel hook): the worker is killed and replaced.
* An executor resolves a future with ``try_set_result``/``try_set_exception``,
  which wake waiters at once but hand the callbacks to a runner of the
  executor's choosing. The pool runs them on its own callback thread, so a
  callback that blocks, or waits for another future of the same pool, can never
  stall the dispatcher.

The methods under "for executors" are public, as ``set_result`` is on the
standard class, and are meant for the code that runs the work (``Pool``,
``DaskPool``, ``ProcessHandle``), not for the code that waits for it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import math
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures._base import (
    CANCELLED,
    CANCELLED_AND_NOTIFIED,
    FINISHED,
    PENDING,
    RUNNING,
)
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast, overload

from ._callbacks import before_blocking, run_inline

__all__ = ["Future"]

T = TypeVar("T")
S = TypeVar("S")
R = TypeVar("R")

LOGGER = logging.getLogger("procpool")

DONE_STATES = (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED)

#: Called (outside any lock) when ``cancel()`` succeeds; the argument says
#: whether the work had already started, in which case it must be stopped.
CancelHook = Callable[[bool], None]
#: Runs a future's callbacks; receives a thunk that invokes them.
CallbackRunner = Callable[[Callable[[], None]], None]
#: Offered the wait of the first ``result()``/``exception()`` call (with its
#: timeout): it may resolve the future from the waiting thread, and returns when
#: it has, or when it gives the wait back to the executor's own thread.
WaitHook = Callable[[float | None], None]


def wait_seconds(timeout: float | None) -> float | None:
    """Check a wait's ``timeout``: None or ``math.inf`` wait without limit.

    A negative timeout waits not at all, as in :mod:`concurrent.futures`.

    Raises:
        ValueError: for NaN, which would otherwise wait forever or not at all
            depending on which comparison met it first.
    """
    if timeout is None:
        return None
    if math.isnan(timeout):
        raise ValueError("timeout must be a number of seconds or None, not nan")
    return None if math.isinf(timeout) and timeout > 0 else timeout


def will_block(timeout: float | None) -> bool:
    return timeout is None or timeout > 0


def _ignore_cancel(was_running: bool) -> None:
    """Cancel hook for an executor that is itself doing the cancelling."""


def _log_callback_error(fut: object) -> None:
    LOGGER.exception("exception calling callback for %r", fut)


class _SafeCallback(Generic[T]):
    """Wrap a done-callback so that nothing it raises escapes into our threads."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Future[T]], object]) -> None:
        self.fn = fn

    def __call__(self, fut: concurrent.futures.Future[T]) -> None:
        try:
            self.fn(cast("Future[T]", fut))
        except BaseException as exc:
            # KeyboardInterrupt/SystemExit raised by a callback running inline in the
            # main thread belong to the user's program; anywhere else (the pool's
            # threads) they would kill a thread that other futures depend on.
            if (
                isinstance(exc, (KeyboardInterrupt, SystemExit))
                and threading.current_thread() is threading.main_thread()
            ):
                raise
            _log_callback_error(fut)


class _Condition(threading.Condition):
    """The condition of one future: made and notified with less Python.

    A pool makes one future per ``submit`` and notifies it once, most often with
    nobody waiting (the waiting thread itself read the reply): ``Condition``'s
    own ``__init__`` (a dozen lines that look for methods every ``RLock`` has)
    and ``notify_all`` (which walks an empty list of waiters) were a tenth of a
    round trip's Python in the parent.
    """

    def __init__(self) -> None:
        lock: Any = threading.RLock()
        # Condition's own fields (typeshed declares none of them), bound as its
        # __init__ binds them, without asking whether the lock has them.
        this: Any = self
        this._lock = lock
        this.acquire = lock.acquire
        this.release = lock.release
        this._release_save = lock._release_save
        this._acquire_restore = lock._acquire_restore
        this._is_owned = lock._is_owned
        this._waiters = collections.deque()

    def notify_all(self) -> None:
        this: Any = self
        if this._waiters:
            super().notify_all()


class Future(concurrent.futures.Future[T]):
    """The result of work running in another process; chainable and awaitable.

    A subclass of :class:`concurrent.futures.Future`: ``result()``, ``exception()``,
    ``done()``, ``cancel()`` and ``add_done_callback()`` behave as there, and
    ``concurrent.futures.wait``/``as_completed``/``asyncio.wrap_future`` accept it.
    In addition, ``cancel()`` stops work that is already running (its worker is
    killed and replaced), :meth:`then` and :meth:`catch` chain follow-up work, and
    ``await fut`` works in a running asyncio loop.

    Example::

        fut = pool.submit(pow, 2, 10).then(str)   # Future[str]
        assert fut.result() == "1024"
    """

    _cancel_hook: CancelHook | None
    _callback_runner: CallbackRunner | None
    _wait_hook: WaitHook | None

    if TYPE_CHECKING:
        # Defined by concurrent.futures.Future at run time; missing from typeshed.
        _done_callbacks: list[Callable[[concurrent.futures.Future[Any]], object]]

        def _invoke_callbacks(self) -> None: ...

    def __init__(self) -> None:
        # concurrent.futures.Future.__init__'s fields, with a cheaper condition
        # (tests/test_pool.py checks that the fields are still all of them). Set
        # through an untyped alias: typeshed declares them on the base class, and
        # an assignment here would redeclare them (``_waiters`` as a list of
        # unknown), which the protocol of ``as_completed`` then rejects.
        this: Any = self
        this._condition = _Condition()
        this._state = PENDING
        this._result = None
        this._exception = None
        this._waiters = []
        this._done_callbacks = []
        self._cancel_hook = None
        self._callback_runner = None
        self._wait_hook = None

    # -- for executors ------------------------------------------------------------

    def set_callback_runner(self, runner: CallbackRunner | None) -> None:
        """For executors: run this future's callbacks with ``runner`` (None: inline)."""
        self._callback_runner = runner

    def set_cancel_hook(self, hook: CancelHook | None) -> None:
        """For executors: call ``hook(was_running)`` when ``cancel()`` succeeds.

        With a hook, ``cancel()`` succeeds on a running future too: the hook
        must then stop the work.
        """
        self._cancel_hook = hook

    def set_wait_hook(self, hook: WaitHook | None) -> None:
        """For executors: offer the first blocking wait to ``hook(timeout)`` (see ``WaitHook``)."""
        self._wait_hook = hook

    def try_start(self) -> bool:
        """For executors: mark the future running before its work goes to a worker.

        Returns False if the future is done (cancelled): its work must not be sent.

        ``cancel()`` decides under the same lock, so a future is either cancelled
        before this (and its work must not be sent: a cancelled task never starts)
        or running after it (and cancelling it stops the worker it went to).
        """
        with self._condition:
            if self._state == PENDING:
                self._state = RUNNING
            return self._state == RUNNING

    def try_set_result(self, result: T) -> bool:
        """For executors: resolve with ``result``; False (no change) if already done.

        Unlike ``set_result`` this never raises: an executor may lose the race
        with ``cancel()``. Waiters wake at once; callbacks go to the callback runner.
        """
        return self._finish(result, None)

    def try_set_exception(self, exception: BaseException) -> bool:
        """For executors: fail with ``exception``; False (no change) if already done."""
        return self._finish(None, exception)

    def _finish(self, result: object, exception: BaseException | None) -> bool:
        # Whatever the hook holds on to (the call, its worker) is of no use now.
        self._wait_hook = None
        with self._condition:
            if self._state in DONE_STATES:
                return False
            if exception is not None:
                self._exception = exception
                for waiter in self._waiters:
                    waiter.add_exception(self)
            else:
                self._result = cast("T", result)
                for waiter in self._waiters:
                    waiter.add_result(self)
            self._state = FINISHED
            self._condition.notify_all()
        self._run_callbacks()
        return True

    def _run_callbacks(self) -> None:
        if not self._done_callbacks:
            return
        runner = self._callback_runner
        if runner is None:
            run_inline(self._invoke_callbacks)
        else:
            runner(self._invoke_callbacks)

    def _offer_wait(self, timeout: float | None) -> float | None:
        """Let the wait hook, if any, wait first; return what is left of ``timeout``."""
        hook, self._wait_hook = self._wait_hook, None
        if hook is None or self._state in DONE_STATES:
            return timeout
        if timeout is None:
            hook(None)
            return None
        deadline = time.monotonic() + timeout
        hook(timeout)
        return max(0.0, deadline - time.monotonic())

    def abandon(self) -> bool:
        """For executors: cancel, running or not, without calling the cancel hook.

        For an executor that is itself stopping the work (``terminate()``).
        """
        self._cancel_hook = _ignore_cancel
        return self.cancel()

    # -- public API ----------------------------------------------------------------

    def result(self, timeout: float | None = None) -> T:
        """Wait at most ``timeout`` seconds (None: no limit) for the result and return it.

        Raises:
            The work's own exception; ``CancelledError`` if cancelled;
            ``TimeoutError`` if not done in time.
        """
        timeout = wait_seconds(timeout)
        if self._wait_hook is not None:
            timeout = self._offer_wait(timeout)
        if self._state == FINISHED and self._exception is None:
            # Final: nothing changes a finished future's result, no lock needed.
            return cast("T", self._result)
        if self._state not in DONE_STATES and will_block(timeout):
            before_blocking()
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Wait like :meth:`result`; return the work's exception, or None if it succeeded."""
        timeout = wait_seconds(timeout)
        if self._wait_hook is not None:
            timeout = self._offer_wait(timeout)
        if self._state not in DONE_STATES and will_block(timeout):
            before_blocking()
        return super().exception(timeout)

    def cancel(self) -> bool:
        """Cancel the work; stop it if it is already running.

        Returns:
            True if the future is now cancelled, False if it had already finished
            (or is running on an executor that cannot stop it).
        """
        return self._cancel(only_pending=False)

    def cancel_if_pending(self) -> bool:
        """For executors: cancel only if no worker has been handed the work yet.

        What ``Executor.shutdown(cancel_futures=True)`` does to each future.
        """
        return self._cancel(only_pending=True)

    def _cancel(self, *, only_pending: bool) -> bool:
        with self._condition:
            state = self._state
            if state == FINISHED:
                return False
            if state in (CANCELLED, CANCELLED_AND_NOTIFIED):
                return True
            hook = self._cancel_hook
            was_running = state == RUNNING
            if was_running and (hook is None or only_pending):
                return False
            # Straight to CANCELLED_AND_NOTIFIED: ``wait``/``as_completed`` see a
            # cancelled future only in that state, and no executor needs to notify.
            self._state = CANCELLED_AND_NOTIFIED
            for waiter in self._waiters:
                waiter.add_cancelled(self)
            self._condition.notify_all()
        # Whatever the hooks hold on to (the call, its worker) is of no use now.
        self._cancel_hook = None
        self._wait_hook = None
        if hook is not None:
            try:
                hook(was_running)
            except Exception:
                LOGGER.exception("error while cancelling %r", self)
        self._run_callbacks()
        return True

    def set_running_or_notify_cancel(self) -> bool:
        """As in :class:`concurrent.futures.Future`; for code that drives futures itself."""
        with self._condition:
            if self._state == CANCELLED_AND_NOTIFIED:
                return False
        return super().set_running_or_notify_cancel()

    def add_done_callback(self, fn: Callable[[Future[T]], object]) -> None:
        """Call ``fn(future)`` once the future is done (at once if it already is).

        ``fn`` runs in the parent process, never in a worker; an exception it raises
        is logged on the ``procpool`` logger and never disturbs the pool.
        """
        super().add_done_callback(_SafeCallback(fn))

    @overload
    def then(self, fn: Callable[[T], concurrent.futures.Future[S]], /) -> Future[S]: ...
    @overload
    def then(self, fn: Callable[[T], S], /) -> Future[S]: ...
    def then(self, fn: Callable[[T], Any], /) -> Future[Any]:
        """Chain ``fn(result)``, run in the parent once this future succeeds.

        The new future holds ``fn``'s return value, or the exception ``fn`` raised.
        If this future failed or was cancelled, ``fn`` is not called and the new
        future fails (or is cancelled) the same way. If ``fn`` returns a future,
        the new future follows it, so chained submissions flatten::

            total = pool.submit(load, path).then(lambda data: pool.submit(parse, data))
        """
        chained: Future[Any] = Future()
        chained.set_callback_runner(self._callback_runner)

        def on_done(source: Future[T]) -> None:
            if source.cancelled():
                chained.cancel()
                return
            exc = source.exception()
            if exc is not None:
                chained.try_set_exception(exc)
                return
            try:
                value = fn(source.result())
            except BaseException as error:
                chained.try_set_exception(error)
                return
            _settle(chained, value)

        self.add_done_callback(on_done)
        return chained

    def catch(self, fn: Callable[[BaseException], S], /) -> Future[T | S]:
        """Recover from a failure: ``fn(exception)`` runs only if this future failed.

        Success passes through unchanged; cancellation is passed on. The new future
        holds ``fn``'s return value, or the exception ``fn`` raised::

            value = pool.submit(risky).catch(lambda exc: -1).result()
        """
        chained: Future[T | S] = Future()
        chained.set_callback_runner(self._callback_runner)

        def on_done(source: Future[T]) -> None:
            if source.cancelled():
                chained.cancel()
                return
            exc = source.exception()
            if exc is None:
                chained.try_set_result(source.result())
                return
            try:
                value = fn(exc)
            except BaseException as error:
                chained.try_set_exception(error)
                return
            _settle(chained, value)

        self.add_done_callback(on_done)
        return chained

    def __await__(self) -> Generator[Any, None, T]:
        """``await fut`` inside a running asyncio loop gives the result."""
        import asyncio  # only for awaiting: workers and scripts never pay for it

        return asyncio.wrap_future(self).__await__()


def _settle(target: Future[Any], value: object) -> None:
    """Resolve ``target`` with ``value``, following it if it is itself a future."""
    if isinstance(value, concurrent.futures.Future):
        inner: concurrent.futures.Future[Any] = value  # pyright: ignore[reportUnknownVariableType]

        def follow(done: concurrent.futures.Future[Any]) -> None:
            if done.cancelled():
                target.cancel()
                return
            exc = done.exception()
            if exc is not None:
                target.try_set_exception(exc)
            else:
                target.try_set_result(done.result())

        if isinstance(inner, Future):
            inner.add_done_callback(follow)
        else:
            concurrent.futures.Future.add_done_callback(inner, follow)  # pyright: ignore[reportUnknownMemberType]
        return
    target.try_set_result(value)

"""CPython's own ``concurrent.futures`` tests, run against :class:`procpool.Pool`.

The standard library's test package (``test.test_concurrent_futures``, Python
3.13+) builds its process-pool test classes from mixins that call
``executor_type(max_workers=..., mp_context=..., **executor_kwargs)``. This module
swaps ``executor_type`` for :class:`ProcpoolExecutor` (``procpool.Pool`` behind
``ProcessPoolExecutor``'s constructor) and generates the classes with CPython's
own ``create_executor_tests``, for fork, forkserver and spawn. No test code is
copied: the tests run as CPython ships them.

Tests that do not apply to procpool are listed in :data:`NOT_APPLICABLE`, each
with its reason; they are reported as skipped with that reason. A test that fails
because procpool has a bug is never listed there.

Run it with ``python tests/cpython/run.py`` (or ``nox -s cpython``); pytest does
not collect this folder. docs/reliability.md has the same list and its reasons.
"""

from __future__ import annotations

import fnmatch
import os
import sys
import unittest
from collections.abc import Callable, Iterator
from concurrent.futures import _base
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from typing import Any, ClassVar
from unittest import mock

from test.support import script_helper
from test.test_concurrent_futures import (
    test_as_completed,
    test_deadlock,
    test_future,
    test_init,
    test_process_pool,
    test_shutdown,
    test_wait,
    util,
)

import procpool

START_METHODS = ("fork", "forkserver", "spawn")


class ProcpoolExecutor(procpool.Pool):
    """``procpool.Pool`` behind the constructor of ``ProcessPoolExecutor``.

    Maps ``max_workers``, ``mp_context``, ``initializer``, ``initargs`` and
    ``max_tasks_per_child`` onto ``Pool(workers, context=..., initializer=...,
    initargs=..., max_tasks_per_worker=...)``; everything else is the pool's own.
    The only other thing it does is name the renamed argument in the ValueError
    that procpool raises for ``workers < 1``, as ``ProcessPoolExecutor`` words it.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: BaseContext | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
    ) -> None:
        try:
            super().__init__(
                max_workers,
                context=mp_context,
                initializer=initializer,
                initargs=initargs,
                max_tasks_per_worker=max_tasks_per_child,
            )
        except ValueError as exc:
            if isinstance(max_workers, int) and max_workers < 1:
                raise ValueError(
                    f"max_workers must be greater than 0 (procpool.Pool said: {exc})"
                ) from exc
            raise


class ProcpoolForkMixin(util.ProcessPoolForkMixin):
    executor_type = ProcpoolExecutor


class ProcpoolForkserverMixin(util.ProcessPoolForkserverMixin):
    executor_type = ProcpoolExecutor


class ProcpoolSpawnMixin(util.ProcessPoolSpawnMixin):
    executor_type = ProcpoolExecutor


EXECUTOR_MIXINS = (ProcpoolForkMixin, ProcpoolForkserverMixin, ProcpoolSpawnMixin)


# -- scripts run in a fresh interpreter ----------------------------------------------

# Some shutdown tests run a ``-c`` script that does
# ``from concurrent.futures import <executor_type.__name__>``. The prelude makes
# that name procpool's adapter in the child interpreter (started with -I, so it
# gets the paths it needs from here). It also imports multiprocessing, which the
# script of test_hang_gh83386 uses without importing: upstream skips that test for
# ProcessPoolExecutor, so that line never runs there.
_PATHS = [
    os.path.dirname(os.path.abspath(__file__)),
    os.path.dirname(os.path.dirname(os.path.abspath(procpool.__file__))),
    *sys.path,
]
_PRELUDE = (
    f"import sys; sys.path[:0] = {_PATHS!r}\n"
    f"import multiprocessing, concurrent.futures, {__name__}\n"
    f"concurrent.futures.{ProcpoolExecutor.__name__} = {__name__}.{ProcpoolExecutor.__name__}\n"
)


def _assert_python_ok_with_procpool(*args: str, **env_vars: str) -> Any:
    argv = list(args)
    where = argv.index("-c") + 1
    argv[where] = _PRELUDE + argv[where]
    return script_helper.assert_python_ok(*argv, **env_vars)


class ScriptsUseProcpool:
    """Base for classes whose tests run ``-c`` scripts that name ``executor_type``."""

    def setUp(self: Any) -> None:
        self.enterContext(
            mock.patch.object(test_shutdown, "assert_python_ok", _assert_python_ok_with_procpool)
        )
        super().setUp()


# -- the generated classes ------------------------------------------------------------

_PLAIN = (util.BaseTestCase,)
_MIXINS: list[tuple[type, tuple[type, ...]]] = [
    (test_process_pool.ProcessPoolExecutorTest, _PLAIN),
    (test_shutdown.ProcessPoolShutdownTest, (ScriptsUseProcpool, util.BaseTestCase)),
    (test_wait.WaitTests, _PLAIN),
    (test_as_completed.AsCompletedTests, _PLAIN),
    (test_deadlock.ExecutorDeadlockTest, _PLAIN),
    (test_init.InitializerMixin, _PLAIN),
    (test_init.FailingInitializerMixin, _PLAIN),
]

_generated: dict[str, Any] = {"__name__": __name__}
for _mixin, _bases in _MIXINS:
    util.create_executor_tests(_generated, _mixin, bases=_bases, executor_mixins=EXECUTOR_MIXINS)
del _generated["__name__"]
globals().update(_generated)


class ProcpoolFutureTests(test_future.FutureTests):
    """``FutureTests`` on ``procpool.Future`` instead of ``concurrent.futures.Future``.

    Those tests build futures with the module-level ``Future`` and ``create_future``
    and use the ``*_FUTURE`` constants of ``util``: all three become procpool
    futures for the duration of each test.
    """

    _CONSTANTS: ClassVar[dict[str, dict[str, Any]]] = {
        "PENDING_FUTURE": {"state": _base.PENDING},
        "RUNNING_FUTURE": {"state": _base.RUNNING},
        "CANCELLED_FUTURE": {"state": _base.CANCELLED},
        "CANCELLED_AND_NOTIFIED_FUTURE": {"state": _base.CANCELLED_AND_NOTIFIED},
        "EXCEPTION_FUTURE": {"state": _base.FINISHED, "exception": OSError()},
        "SUCCESSFUL_FUTURE": {"state": _base.FINISHED, "result": 42},
    }

    def setUp(self) -> None:
        super().setUp()
        self.enterContext(mock.patch.object(test_future, "Future", procpool.Future))
        self.enterContext(mock.patch.object(util, "Future", procpool.Future))
        for name, fields in self._CONSTANTS.items():
            if hasattr(test_future, name):
                future = util.create_future(**fields)
                self.enterContext(mock.patch.object(test_future, name, future))


# -- what does not apply ----------------------------------------------------------------


@dataclass(frozen=True)
class NotApplicable:
    """A CPython test that does not apply to procpool, and why."""

    #: ``<CPython mixin or class>.<test method>``, e.g. ``ProcessPoolExecutorTest.test_x``;
    #: the method part may be an fnmatch pattern (``test_map_buffersize*``).
    test: str
    reason: str
    #: The start methods it does not apply to (all by default).
    methods: tuple[str, ...] = START_METHODS
    #: Where the test exists only in some Python versions, which.
    pythons: str = ""


_PRIVATE = "asserts on ProcessPoolExecutor's private"
_BUFFERSIZE = (
    "Executor.map(buffersize=) is new in 3.14; procpool's map() reads its inputs at once "
    "and returns a MapFuture (DESIGN.md fixes its signature): the bounded read-ahead is "
    "imap(buffersize=)"
)

NOT_APPLICABLE: tuple[NotApplicable, ...] = (
    # test_process_pool
    NotApplicable(
        "ProcessPoolExecutorTest.test_killed_child",
        "expects a killed worker to break the pool (later submit() raises BrokenProcessPool); "
        "in procpool only the task it ran fails (with WorkerLostError, a BrokenProcessPool) "
        "and the worker is replaced",
    ),
    NotApplicable(
        "ProcessPoolExecutorTest.test_traceback",
        "asserts that `__cause__` is exactly the private `concurrent.futures.process."
        "_RemoteTraceback`; procpool attaches its own `RemoteTraceback` (same `.tb` text)",
    ),
    NotApplicable(
        "ProcessPoolExecutorTest.test_saturation", f"{_PRIVATE} `_max_workers` and `_processes`"
    ),
    NotApplicable(
        "ProcessPoolExecutorTest.test_idle_process_reuse_one",
        f"{_PRIVATE} `_max_workers` and `_processes` (ProcessPoolExecutor starts workers on "
        "demand, procpool starts all `workers` at once)",
    ),
    NotApplicable(
        "ProcessPoolExecutorTest.test_idle_process_reuse_multiple",
        f"{_PRIVATE} `_max_workers` and `_processes` (ProcessPoolExecutor starts workers on "
        "demand, procpool starts all `workers` at once)",
    ),
    NotApplicable(
        "ProcessPoolExecutorTest.test_max_tasks_per_child",
        "expects ValueError for max_tasks_per_child under fork; procpool's "
        "max_tasks_per_worker works with every start method",
        methods=("fork",),
    ),
    NotApplicable(
        "ProcessPoolExecutorTest.test_max_tasks_per_child",
        f"{_PRIVATE} `_processes` (the pids it checks come out as it expects; "
        "tests/test_pool.py covers max_tasks_per_worker)",
        methods=("forkserver", "spawn"),
    ),
    NotApplicable(
        "ProcessPoolExecutorTest.test_max_tasks_per_child_defaults_to_spawn_context",
        f"{_PRIVATE} `_mp_context`; procpool's default start method is forkserver on Linux, "
        "whatever max_tasks_per_worker is",
    ),
    NotApplicable(
        "ProcessPoolExecutorTest.test_python_finalization_error",
        "makes the second thread ProcessPoolExecutor starts (its queue feeder) fail and expects "
        "BrokenProcessPool before any task runs; procpool starts its one dispatcher thread in "
        "the constructor, so the map runs (and fails: the test passes mul one tuple)",
    ),
    NotApplicable("ExecutorTest.test_map_buffersize*", _BUFFERSIZE, pythons="3.14+"),
    NotApplicable(
        "ProcessPoolExecutorTest.test_terminate_workers",
        "ProcessPoolExecutor.terminate_workers() (3.14) and its private `_force_shutdown`; "
        "procpool's equivalent is terminate()",
        pythons="3.14+",
    ),
    NotApplicable(
        "ProcessPoolExecutorTest.test_kill_workers",
        "ProcessPoolExecutor.kill_workers() (3.14) and its private `_force_shutdown`; "
        "procpool's equivalent is terminate()",
        pythons="3.14+",
    ),
    NotApplicable(
        "ProcessPoolExecutorTest.test_force_shutdown_workers*",
        "ProcessPoolExecutor.terminate_workers()/kill_workers() (3.14), its private "
        "`_force_shutdown` and `_processes`; procpool's equivalent is terminate()",
        pythons="3.14+",
    ),
    # test_shutdown
    NotApplicable(
        "ProcessPoolShutdownTest.test_submit_after_interpreter_shutdown",
        "asserts the text 'RuntimeError: cannot schedule new futures'; procpool raises "
        "PoolClosedError (a RuntimeError) with its own message, which the script prints",
    ),
    NotApplicable(
        "ProcessPoolShutdownTest.test_processes_terminate",
        f"{_PRIVATE} `_processes` (and on-demand worker start)",
    ),
    NotApplicable(
        "ProcessPoolShutdownTest.test_context_manager_shutdown",
        "builds concurrent.futures.ProcessPoolExecutor itself (not executor_type) and reads "
        "its `_processes`: it tests the standard library only",
    ),
    NotApplicable(
        "ProcessPoolShutdownTest.test_del_shutdown",
        "builds concurrent.futures.ProcessPoolExecutor itself (not executor_type) and joins "
        "its private `_executor_manager_thread` and `_call_queue`",
    ),
    NotApplicable(
        "ProcessPoolShutdownTest.test_shutdown_no_wait",
        "builds concurrent.futures.ProcessPoolExecutor itself (not executor_type) and joins "
        "its private `_executor_manager_thread` and `_call_queue`",
    ),
    NotApplicable(
        "ProcessPoolShutdownTest.test_shutdown_gh_132969_case_1",
        "builds concurrent.futures.ProcessPoolExecutor itself (not executor_type) and joins "
        "its private `_executor_manager_thread`",
        pythons="later 3.13.x, 3.14+",
    ),
    NotApplicable(
        "ProcessPoolShutdownTest.test_shutdown_gh_132969_case_2",
        "builds concurrent.futures.ProcessPoolExecutor itself (not executor_type) and joins "
        "its private `_executor_manager_thread`",
        pythons="later 3.13.x, 3.14+",
    ),
    # test_init
    NotApplicable(
        "FailingInitializerMixin.test_initializer",
        "reads ProcessPoolExecutor's private `_broken` and expects the worker to log the "
        "initializer's error on the 'concurrent.futures' logger; its first check, that the "
        "futures fail with BrokenExecutor, fails too: procpool raises ProcpoolError there",
    ),
    # test_future
    NotApplicable(
        "FutureTests.test_cancel",
        "asserts that a cancelled pending future's private `_state` is CANCELLED; "
        "procpool.Future.cancel() goes straight to CANCELLED_AND_NOTIFIED (no executor has "
        "to notify), which cancelled(), done(), wait() and as_completed() read the same",
    ),
    # test_deadlock
    NotApplicable(
        "ExecutorDeadlockTest.test_error_at_task_pickle",
        "expects pickle.PicklingError; procpool fails the future with SerializationError "
        "(which names the argument), as DESIGN.md fixes",
    ),
    NotApplicable(
        "ExecutorDeadlockTest.test_error_during_result_pickle_on_worker",
        "expects pickle.PicklingError; procpool fails the future with SerializationError, "
        "as DESIGN.md fixes",
    ),
    NotApplicable(
        "ExecutorDeadlockTest.test_error_at_task_unpickle",
        "expects the pool to break (BrokenProcessPool); procpool fails only that task, with "
        "SerializationError ('could not be unpickled in the worker')",
    ),
    NotApplicable(
        "ExecutorDeadlockTest.test_exit_at_task_unpickle",
        "expects the pool to break (BrokenProcessPool); procpool fails only that task, with "
        "SerializationError (a SystemExit while unpickling the call is an unpickling failure)",
    ),
    NotApplicable(
        "ExecutorDeadlockTest.test_error_during_result_unpickle_in_result_handler",
        "expects the pool to break (BrokenProcessPool); procpool fails only that task, with "
        "SerializationError ('could not be unpickled in the parent')",
    ),
    NotApplicable(
        "ExecutorDeadlockTest.test_exit_during_result_unpickle_in_result_handler",
        "expects the pool to break (BrokenProcessPool); procpool fails only that task, with "
        "SerializationError (a SystemExit while unpickling the result is an unpickling "
        "failure)",
    ),
    NotApplicable(
        "ExecutorDeadlockTest.test_exit_during_result_pickle_on_worker",
        "expects the SystemExit raised while pickling the result to reach the caller; in "
        "procpool it ends the worker, so only that task fails, with WorkerLostError "
        "(exit code 1), and the worker is replaced",
    ),
    NotApplicable(
        "ExecutorDeadlockTest.test_shutdown_deadlock_pickle",
        f"{_PRIVATE} `_executor_manager_thread`",
    ),
)


def _skipped(reason: str) -> Callable[[unittest.TestCase], None]:
    @unittest.skip(f"not applicable to procpool: {reason}")
    def test(self: unittest.TestCase) -> None:
        pass  # pragma: no cover

    return test


def _origins(cls: type) -> Iterator[str]:
    """The names under which a generated class's tests are listed: its CPython bases."""
    for base in cls.__mro__:
        if base.__module__.startswith("test.test_concurrent_futures."):
            yield base.__name__


def _apply_not_applicable(skip: bool) -> list[NotApplicable]:
    """Mark the listed tests skipped (if ``skip``); return the entries that match no test."""
    classes = [c for c in globals().values() if isinstance(c, type) and c.__module__ == __name__]
    unmatched = []
    for entry in NOT_APPLICABLE:
        origin, pattern = entry.test.split(".")
        matched = False
        for cls in classes:
            if not issubclass(cls, unittest.TestCase) or origin not in _origins(cls):
                continue
            ctx = getattr(cls, "ctx", None)  # None: no pool (FutureTests)
            if ctx is not None and ctx not in entry.methods:
                continue
            for method in fnmatch.filter(unittest.defaultTestLoader.getTestCaseNames(cls), pattern):
                matched = True
                if skip:
                    setattr(cls, method, _skipped(entry.reason))
        if not matched:
            unmatched.append(entry)
    return unmatched


#: Entries that name no test of this Python (a typo, unless the entry says which
#: Pythons have that test). ``run.py --all`` runs the listed tests too.
UNMATCHED = _apply_not_applicable(skip=not os.environ.get("PROCPOOL_CPYTHON_ALL"))


def setUpModule() -> None:
    util.setup_module()

"""Adversarial stress tests: every guarantee of DESIGN.md attacked at its worst moment.

For each guarantee the question is which thread or process could be anywhere at
the worst moment (a worker killed from outside, sixteen threads submitting, a
callback shutting the pool down, a cancel landing while a worker frees up), and
each test makes that moment happen many times, under fork, spawn and forkserver.

All tests are ``slow`` (``make test-all``). Each has a ``timeout`` so that a hang
fails, but waits inside the tests are bounded too, so that a hang is reported as
what hung rather than as a pytest-timeout stack dump. Functions sent to workers
live in ``stress_helpers.py``. The existing reliability tests (chaos with
``retries``, 1,000 plain lifecycles, Ctrl-C, parent death) are not repeated here.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import json
import os
import random
import signal
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import helpers
import procpool
import stress_helpers as sh

SCRIPTS = Path(__file__).parent / "scripts"

pytestmark = pytest.mark.slow

#: Generous bound for anything that should take a second: only a hang passes it.
HANG = 60.0
#: The same for the 75 callback tests, which end in well under a second: a
#: deadlock among them costs this long, each.
CALLBACK_HANG = 20.0


def _end_all(futures: list[Any], timeout: float = HANG) -> None:
    """Assert that every future ends within ``timeout`` seconds (nothing hangs)."""
    _, not_done = concurrent.futures.wait(futures, timeout=timeout)
    assert not not_done, f"{len(not_done)} of {len(futures)} futures never ended: {not_done!r:.300}"


def _run_bounded(
    fn: Callable[[], object], timeout: float = HANG
) -> tuple[bool, BaseException | None]:
    """Run ``fn`` in a helper thread; (returned in time, what it raised)."""
    error: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    return not thread.is_alive(), (error[0] if error else None)


def _left(deadline: float) -> float:
    """Seconds left until ``deadline`` (at least one: a last look costs little)."""
    return max(1.0, deadline - time.monotonic())


@contextlib.contextmanager
def _torn_down(pool: procpool.Pool) -> Iterator[procpool.Pool]:
    """Yield the pool; whatever happens, terminate it at the end (bounded), so that
    a test that fails leaves no worker, thread or blocked callback behind."""
    try:
        yield pool
    finally:
        pool.terminate()
        with contextlib.suppress(Exception):
            pool.join(30)


# ---------------------------------------------------------------------------------------
# 1. Workers killed from outside
# ---------------------------------------------------------------------------------------


class _Killer:
    """A thread that SIGKILLs random workers of the pool, found through /proc.

    Targets are the live descendants of this process (grandchildren included, for
    forkserver) that were not there before the pool, that are not multiprocessing's
    own helpers, and that have started at least one task (see
    ``stress_helpers._mark_worker``): busy or idle, mid-task or mid-reply, whatever
    they are doing at that instant.
    """

    def __init__(self, marks: Path, baseline: set[int], seed: int) -> None:
        self.marks = marks
        self.baseline = baseline
        self.rng = random.Random(seed)
        self.killed: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="stress-killer", daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.rng.uniform(0.05, 0.25)):
            marked = {int(name) for name in os.listdir(self.marks)}
            targets = sorted((sh.live_descendants(self.baseline) & marked) - set(self.killed))
            if not targets:
                continue
            pid = self.rng.choice(targets)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.killed.append(pid)

    def start(self) -> None:
        self.thread.start()

    def finish(self) -> None:
        self.stop.set()
        self.thread.join()


@contextlib.contextmanager
def _killing(marks: Path, baseline: set[int], seed: int) -> Iterator[_Killer]:
    killer = _Killer(marks, baseline, seed)
    killer.start()
    try:
        yield killer
    finally:
        killer.finish()


def _check_lost(exc: BaseException, killed: set[int]) -> None:
    """A failure under the killer must be a WorkerLostError naming a worker we shot."""
    assert isinstance(exc, procpool.WorkerLostError), repr(exc)
    assert exc.pid in killed, f"{exc!r}: pid {exc.pid} was never killed by the test"
    assert exc.exitcode == -signal.SIGKILL, repr(exc)


@pytest.mark.timeout(300)
def test_random_sigkills_during_5000_submits_and_a_large_map(
    start_method: str, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    baseline = sh.live_descendants()
    n_tasks, n_items = 5000, 20000
    with _torn_down(procpool.Pool(2, context=start_method)) as pool:  # type: ignore[arg-type]
        # 5,000 submits, each 0.1-0.7 ms of CPU, while workers die at random.
        with _killing(marks, baseline, seed=1) as killer:
            futures = [
                pool.submit(sh.tick, str(marks), i, 0.1 + (i % 4) * 0.2) for i in range(n_tasks)
            ]
            _end_all(futures, timeout=240)
        killed = set(killer.killed)
        lost = 0
        for i, fut in enumerate(futures):
            exc = fut.exception()
            if exc is None:
                assert fut.result() == 3 * i + 1
            else:
                _check_lost(exc, killed)
                lost += 1
        assert killed, "the killer never found a worker to kill"
        # A worker runs one submitted task at a time: a kill fails at most that one.
        assert lost <= len(killed), f"{lost} tasks lost to {len(killed)} kills"

        # One large map (20,000 items of 0.1 ms, chunked automatically) under fire.
        with _killing(marks, baseline, seed=2) as map_killer:
            mapped = pool.map(sh.tick, [str(marks)] * n_items, range(n_items), [0.1] * n_items)
            ended = concurrent.futures.wait([mapped], timeout=240)
        assert not ended.not_done, "the map never ended"
        map_killed = set(map_killer.killed)
        assert map_killed, "the killer never found a worker to kill during the map"
        it = iter(mapped)
        failed = 0
        for i in range(n_items):
            try:
                assert next(it) == 3 * i + 1
            except procpool.WorkerLostError as exc:
                _check_lost(exc, map_killed)
                failed += 1
        with pytest.raises(StopIteration):
            next(it)

        # Every death was seen and replaced; the pool still works with two workers.
        all_killed = len(killed) + len(map_killed)
        assert helpers.wait_for(lambda: pool.stats().workers_replaced == all_killed, HANG), (
            f"{pool.stats().workers_replaced} workers replaced after {all_killed} kills"
        )
        assert pool.submit(helpers.square, 7).result(timeout=HANG) == 49
        assert helpers.wait_for(lambda: len(sh.live_descendants(baseline)) == 2, HANG), sorted(
            sh.live_descendants(baseline)
        )
        stats = pool.stats()
        assert stats.submitted == stats.completed + stats.failed + stats.cancelled
        print(
            f"\n{start_method}: {len(killed)} kills, {lost} tasks lost; "
            f"map: {len(map_killed)} kills, {failed} items lost"
        )


# ---------------------------------------------------------------------------------------
# 2. Sixteen threads at once
# ---------------------------------------------------------------------------------------


def _producer(pool: procpool.Pool, t: int, barrier: threading.Barrier) -> list[str]:
    """One thread's mix of submit, map (iterated or listed), imap (full, unordered,
    and dropped half-way); returns what went wrong (nothing, if all is well)."""
    rng = random.Random(t)
    wrong: list[str] = []
    barrier.wait()
    for round_ in range(20):
        kind = rng.choice(["submit", "map", "map-iter", "imap", "imap_unordered", "imap-drop"])
        n = rng.randint(20, 120)
        xs = [t * 100_000 + round_ * 1000 + i for i in range(n)]
        expected = [x * x for x in xs]
        chunksize = rng.choice([1, 3, 16])
        if kind == "submit":
            got = [f.result(timeout=HANG) for f in [pool.submit(helpers.square, x) for x in xs]]
        elif kind == "map":
            got = pool.map(helpers.square, xs, chunksize=rng.choice([None, chunksize])).result(
                timeout=HANG
            )
        elif kind == "map-iter":
            got = list(pool.map(helpers.square, xs))
        elif kind == "imap":
            got = list(pool.imap(helpers.square, iter(xs), chunksize=chunksize))
        elif kind == "imap_unordered":
            got = sorted(pool.imap_unordered(helpers.square, iter(xs), chunksize=chunksize))
        else:
            stream = pool.imap(helpers.square, iter(xs), chunksize=chunksize, buffersize=8)
            got = [next(stream) for _ in range(n // 2)]
            del stream  # dropped half-way: its unstarted chunks are cancelled
            expected = expected[: n // 2]
        if got != expected:
            wrong.append(f"thread {t} round {round_} {kind}: {got[:5]}... != {expected[:5]}...")
    return wrong


@pytest.mark.timeout(240)
def test_sixteen_threads_submit_map_and_imap_at_once(start_method: str) -> None:
    with _torn_down(procpool.Pool(2, context=start_method)) as pool:  # type: ignore[arg-type]
        barrier = threading.Barrier(16)
        with concurrent.futures.ThreadPoolExecutor(16) as threads:
            results = [threads.submit(_producer, pool, t, barrier) for t in range(16)]
            _end_all(results, timeout=180)
        wrong = [line for r in results for line in r.result()]
        assert not wrong, "\n".join(wrong)
        # Every item accounted for once: the dropped imaps' chunks count as cancelled.
        assert helpers.wait_for(lambda: _stats_add_up(pool), HANG), pool.stats()


def _stats_add_up(pool: procpool.Pool) -> bool:
    stats = pool.stats()
    return stats.submitted == stats.completed + stats.failed + stats.cancelled


@pytest.mark.timeout(240)
def test_sixteen_threads_submitting_while_the_pool_closes(start_method: str) -> None:
    """close() lands while 16 threads submit: each call either raises
    PoolClosedError or returns a future that then runs to its result."""
    pool = procpool.Pool(2, context=start_method)  # type: ignore[arg-type]
    with _torn_down(pool):
        accepted: list[list[tuple[int, procpool.Future[int]]]] = [[] for _ in range(16)]
        refused = [0] * 16
        barrier = threading.Barrier(17)

        def submitter(t: int) -> None:
            barrier.wait()
            for i in range(100_000):
                try:
                    x = t * 1_000_000 + i
                    fut = (
                        pool.submit(helpers.square, x) if i % 3 else pool.map(helpers.square, [x])  # type: ignore[arg-type]
                    )
                except procpool.PoolClosedError:
                    refused[t] += 1
                    return
                accepted[t].append((x, fut))

        threads = [threading.Thread(target=submitter, args=(t,)) for t in range(16)]
        for thread in threads:
            thread.start()
        barrier.wait()
        time.sleep(0.5)
        pool.close()
        for thread in threads:
            thread.join(HANG)
        assert not any(thread.is_alive() for thread in threads), "a submitter hung"
        assert refused == [1] * 16
        futures = [fut for per_thread in accepted for _, fut in per_thread]
        _end_all(futures, timeout=180)
        for x, fut in (pair for per_thread in accepted for pair in per_thread):
            value = fut.result()
            assert value == ([x * x] if isinstance(fut, procpool.MapFuture) else x * x)
        ok, error = _run_bounded(pool.join)
        assert ok, "join() after close() hung"
        assert error is None, repr(error)
        assert _stats_add_up(pool), pool.stats()


# ---------------------------------------------------------------------------------------
# 3. Callbacks that call back into the pool
# ---------------------------------------------------------------------------------------

CALLBACK_ACTIONS = [
    "submit",
    "shutdown-wait",
    "shutdown-cancel",
    "cancel-others",
    "result-others",
    "with-exit",
    "close-join",
    "terminate-join",
]
#: Actions after which queued work may end cancelled instead of with its result.
CANCELLING_ACTIONS = {"shutdown-cancel", "cancel-others", "terminate-join"}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", ["add_done_callback", "then", "catch"])
@pytest.mark.parametrize("action", CALLBACK_ACTIONS)
def test_callbacks_may_call_anything_on_the_pool(
    start_method: str, action: str, kind: str, tmp_path: Path
) -> None:
    """A callback of each ``kind`` does ``action`` to its own pool while 60 tasks are
    queued or running: the callback returns, every future ends, and leaving the
    pool afterwards returns too."""
    pool = procpool.Pool(2, context=start_method)  # type: ignore[arg-type]
    with _torn_down(pool):
        victims: list[procpool.Future[Any]] = []
        extra: list[tuple[int, procpool.Future[int]]] = []
        extra_lock = threading.Lock()
        returned: list[BaseException | None] = []
        callback_returned = threading.Event()

        def chain_more(depth: int, x: int) -> None:
            fut = pool.submit(helpers.square, x)
            with extra_lock:
                extra.append((x, fut))
            if depth:
                fut.add_done_callback(lambda _: chain_more(depth - 1, x + 1))

        def do_action() -> None:
            if action == "submit":
                for x in range(10):
                    chain_more(2, 1000 * x)  # three generations of callbacks that submit
            elif action == "shutdown-wait":
                pool.shutdown(wait=True)
            elif action == "shutdown-cancel":
                pool.shutdown(wait=False, cancel_futures=True)
            elif action == "cancel-others":
                for victim in victims:  # queued ones and the running ones
                    victim.cancel()
            elif action == "result-others":
                got = [victim.result(timeout=HANG) for victim in victims[:20]]
                assert got == list(range(20)), got
            elif action == "with-exit":
                pool.__exit__(None, None, None)
            elif action == "close-join":
                pool.close()
                pool.join()
            else:
                pool.terminate()
                pool.join()

        def act(_: object) -> str:
            try:
                do_action()
            except BaseException as exc:
                returned.append(exc)
            else:
                returned.append(None)
            callback_returned.set()
            return "acted"

        # The trigger finishes (or fails, for catch) once the victims are all queued.
        gate_file = tmp_path / "gate"
        trigger = pool.submit(sh.gate, str(gate_file), kind == "catch")
        chained: procpool.Future[Any] | None = None
        if kind == "add_done_callback":
            trigger.add_done_callback(act)
        elif kind == "then":
            chained = trigger.then(act)
        else:
            chained = trigger.catch(act)
        victims.extend(pool.submit(helpers.sleep_then, 0.01, i) for i in range(60))
        gate_file.touch()

        # One budget for the three waits: a hang costs it once, not three times.
        deadline = time.monotonic() + CALLBACK_HANG
        came_back = callback_returned.wait(CALLBACK_HANG)
        if action == "submit":
            # All three generations, before the pool closes: whether a callback may
            # still submit to a closing pool is not what this test is about.
            helpers.wait_for(
                lambda: len(extra) == 30 and all(f.done() for _, f in list(extra)),
                _left(deadline),
            )
        with extra_lock:
            submitted_later = [fut for _, fut in extra]
        everything = [trigger, *victims, *submitted_later]
        if chained is not None:
            everything.append(chained)
        _, not_done = concurrent.futures.wait(everything, timeout=_left(deadline))
        # The caller's own with-block exit, bounded.
        left, exit_error = _run_bounded(
            lambda: pool.__exit__(None, None, None), timeout=_left(deadline)
        )

        assert came_back, f"a {kind} callback doing {action!r} never returned"
        assert not not_done, (
            f"{len(not_done)} futures never ended after a {kind} callback did {action!r}"
        )
        assert left, f"leaving the pool after a {kind} callback did {action!r} hung"
        assert exit_error is None, repr(exit_error)
        assert returned == [None], returned
        if chained is not None:
            assert chained.result() == "acted"
        for i, victim in enumerate(victims):
            if action in CANCELLING_ACTIONS and victim.cancelled():
                continue
            assert victim.result() == i
        with extra_lock:
            assert len(extra) == (30 if action == "submit" else 0)
            for x, fut in extra:
                assert fut.result() == x * x


@pytest.mark.timeout(120)
def test_a_callback_may_wait_for_a_chained_future_of_the_same_pool(
    start_method: str, tmp_path: Path
) -> None:
    """A done-callback calls ``result()`` on a ``then`` future of the same pool, whose
    source finishes only once the callback is already waiting. That future is
    resolved by the pool's callback machinery, which is busy running the waiting
    callback: a single callback thread would wait for itself."""
    with _torn_down(procpool.Pool(2, context=start_method)) as pool:  # type: ignore[arg-type]
        gate_file = tmp_path / "gate"
        later = pool.submit(sh.gate, str(gate_file), False).then(str.upper)
        seen: list[object] = []
        done = threading.Event()

        def wait_for_later(_: object) -> None:
            gate_file.touch()  # now ``later`` may finish, while we wait for it
            try:
                seen.append(later.result(timeout=10))
            except BaseException as exc:
                seen.append(exc)
            done.set()

        pool.submit(helpers.square, 1).add_done_callback(wait_for_later)
        assert done.wait(CALLBACK_HANG), "the callback never returned"
        assert seen == ["TRIGGER"], f"the callback waiting for a chained future got {seen!r}"


# ---------------------------------------------------------------------------------------
# 4. Cancel storms: a cancelled task never starts
# ---------------------------------------------------------------------------------------


class _Probe:
    """One future and the names its task(s) record when they start (``sh.touch``),
    plus what its ``cancel()`` saw.

    Soundness. ``Future.cancel()`` decides under the future's lock whether the
    future was running, and passes that ``was_running`` to the executor's cancel
    hook; the pool moves a future to running under the same lock when it hands the
    work to a worker. The probe wraps that hook, so ``was_running is False`` means
    the future was cancelled while still queued, exactly as ``cancel()`` itself saw
    it: no check-then-act race of our own. DESIGN.md and docs/reliability.md: "A
    queued task that is cancelled never runs." So a probe with ``was_running is
    False`` whose task recorded a start is a broken guarantee, whatever the timing.
    (``was_running`` stays None when the future was not cancelled through the
    hook: terminate() abandons futures without it.) The task's start time and the
    time the hook ran (just after the state changed) are kept for the report only.
    """

    __slots__ = ("cancelled_ns", "fut", "names", "was_running")

    def __init__(self, fut: procpool.Future[Any], names: list[str]) -> None:
        self.fut = fut
        self.names = names
        self.was_running: bool | None = None
        self.cancelled_ns = 0
        with fut._condition:  # type: ignore[attr-defined]
            hook = fut._cancel_hook
            if hook is None and fut.done():
                return  # cancelled (or done) before we could look: nothing to probe
            assert callable(hook), "the pool no longer sets Future._cancel_hook: update _Probe"

            def probe(was_running: bool) -> None:
                self.cancelled_ns = time.monotonic_ns()
                self.was_running = was_running
                hook(was_running)

            fut._cancel_hook = probe


def _never_ran_after_cancel(probes: list[_Probe], folder: Path) -> tuple[int, list[str]]:
    """(How many probes were cancelled while queued, what broke the guarantee)."""
    queued_cancels = 0
    broken: list[str] = []
    for probe in probes:
        starts = {name: sh.started_at(str(folder), name) for name in probe.names}
        twice = {name: s for name, s in starts.items() if len(s) > 1}
        if twice:
            broken.append(f"ran more than once: {twice}")
        if probe.was_running is not False:
            continue
        assert probe.fut.cancelled()
        queued_cancels += 1
        ran = {name: s[0] for name, s in starts.items() if s}
        if ran:
            late = {name: f"{(t - probe.cancelled_ns) / 1000:+.0f} us" for name, t in ran.items()}
            broken.append(
                f"cancelled while queued (cancel() returned True, running() was False), "
                f"yet started, relative to the cancel hook: {late}"
            )
    return queued_cancels, broken


def _submit_touches(
    pool: procpool.Pool, folder: Path, prefix: str, count: int, ms: float
) -> list[_Probe]:
    """``count`` single tasks, and every 25th a 3-item map, each recording its start."""
    probes: list[_Probe] = []
    for i in range(count):
        name = f"{prefix}{i}"
        probes.append(_Probe(pool.submit(sh.touch, str(folder), name, ms), [name]))
        if i % 25 == 0:
            names = [f"{prefix}m{i}_{k}" for k in range(3)]
            mapped = pool.map(sh.touch_item, [str(folder)] * 3, names, chunksize=1)
            probes.append(_Probe(mapped, names))
    return probes


@pytest.mark.timeout(300)
def test_cancel_storm_a_cancelled_queued_task_never_starts(
    start_method: str, tmp_path: Path
) -> None:
    """Two threads cancel, at random, whatever is at the head of the queue, the very
    futures the dispatcher is about to hand to a worker that has just freed up."""
    folder = tmp_path / "ran"
    folder.mkdir()
    pool = procpool.Pool(2, context=start_method)  # type: ignore[arg-type]
    with _torn_down(pool):
        probes = _submit_touches(pool, folder, "s", 2500, 0.3)
        stop = threading.Event()

        def canceller(seed: int) -> None:
            rng = random.Random(seed)
            cursor = 0
            while not stop.is_set() and cursor < len(probes):
                fut = probes[cursor].fut
                if fut.done() or fut.running():
                    cursor += 1
                    continue
                if rng.random() < 0.5:
                    fut.cancel()
                    cursor += 1
                elif rng.random() < 0.5:
                    cursor += 1  # let this one go
                time.sleep(rng.uniform(0, 0.0006))

        threads = [threading.Thread(target=canceller, args=(seed,)) for seed in (1, 2)]
        for thread in threads:
            thread.start()
        try:
            _end_all([p.fut for p in probes], timeout=240)
        finally:
            stop.set()
            for thread in threads:
                thread.join(HANG)
        ok, error = _run_bounded(pool.shutdown)
        assert ok, "shutdown() hung after the cancel storm"
        assert error is None, repr(error)
        # The pool is joined: no task can start any more; the files are final.
        queued_cancels, broken = _never_ran_after_cancel(probes, folder)
        assert not broken, f"{len(broken)} broken of {queued_cancels} queued cancels:\n" + (
            "\n".join(broken[:20])
        )
        assert queued_cancels > 100, f"only {queued_cancels} cancels hit queued futures"
        for probe in probes:
            if not probe.fut.cancelled():
                value = probe.fut.result()
                assert value == (probe.names if len(probe.names) > 1 else probe.names[0])
        assert _stats_add_up(pool), pool.stats()
        print(f"\n{start_method}: {queued_cancels} queued cancels")


def _shutdown_round(start_method: str, folder: Path, round_: int) -> int:
    """One pool, 1,500 queued tasks, shut down with cancel_futures after the workers
    have started ``10 + 40 * round_`` of them; returns how many cancels hit queued futures."""
    pool = procpool.Pool(2, context=start_method)  # type: ignore[arg-type]
    with _torn_down(pool):
        probes = _submit_touches(pool, folder, "t", 1500, 0.3)
        target = 10 + 40 * round_
        assert helpers.wait_for(lambda: len(os.listdir(folder)) >= target, HANG)
        if round_ % 2:
            ok, error = _run_bounded(lambda: pool.shutdown(wait=True, cancel_futures=True))
        else:  # from another thread, while this one keeps submitting
            closer = threading.Thread(
                target=pool.shutdown, kwargs={"wait": False, "cancel_futures": True}
            )
            closer.start()
            with contextlib.suppress(procpool.PoolClosedError):
                for i in range(1_000_000):
                    name = f"late{i}"
                    probes.append(_Probe(pool.submit(sh.touch, str(folder), name), [name]))
            closer.join(HANG)
            ok, error = _run_bounded(pool.join)
        assert ok, "shutdown()/join() hung"
        assert error is None, repr(error)
        _end_all([p.fut for p in probes])
        cancels, broken = _never_ran_after_cancel(probes, folder)
        assert not broken, (
            f"round {round_}: {len(broken)} broken of {cancels} queued cancels:\n"
            + "\n".join(broken[:20])
        )
        for probe in probes:
            if not probe.fut.cancelled():
                value = probe.fut.result()
                assert value == (probe.names if len(probe.names) > 1 else probe.names[0])
        assert _stats_add_up(pool), pool.stats()
    return cancels


@pytest.mark.timeout(300)
def test_shutdown_cancel_futures_while_workers_free_up(start_method: str, tmp_path: Path) -> None:
    """``shutdown(cancel_futures=True)`` lands while two workers finish 0.3 ms tasks
    one after the other: what it cancelled never starts, the rest completes."""
    queued_cancels = 0
    for round_ in range(6):
        folder = tmp_path / f"round{round_}"
        folder.mkdir()
        queued_cancels += _shutdown_round(start_method, folder, round_)
    assert queued_cancels > 1000
    print(f"\n{start_method}: {queued_cancels} queued cancels by shutdown")


# ---------------------------------------------------------------------------------------
# 5. A 5,000-link then-chain
# ---------------------------------------------------------------------------------------

LINKS = 5000
#: A chain resolves in well under a second; waiting longer only detects a hang.
CHAIN_WAIT = 30.0


def _chain(head: procpool.Future[Any], links: int = LINKS) -> procpool.Future[Any]:
    fut = head
    for _ in range(links):
        fut = fut.then(sh.inc)
    return fut


@pytest.fixture
def no_callback_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail if procpool logged an error, e.g. a RecursionError inside a callback."""
    yield
    errors = [r for r in caplog.records if r.name.startswith("procpool") and r.levelno >= 40]
    assert not errors, (
        f"procpool logged {len(errors)} errors, first: {errors[0].getMessage()}"
        + (f"\n{errors[0].exc_text or ''}"[:2000])
    )


@pytest.mark.timeout(180)
@pytest.mark.usefixtures("no_callback_errors")
@pytest.mark.parametrize(
    "how", ["built-while-running", "built-after-done", "failure", "flattening", "closing"]
)
def test_a_5000_link_then_chain_resolves(start_method: str, how: str) -> None:
    with _torn_down(procpool.Pool(2, context=start_method)) as pool:  # type: ignore[arg-type]
        if how == "built-while-running":
            end = _chain(pool.submit(helpers.sleep_then, 0.3, 0))
            assert end.result(timeout=CHAIN_WAIT) == LINKS
        elif how == "built-after-done":
            head = pool.submit(helpers.square, 0)
            head.result(timeout=CHAIN_WAIT)
            assert _chain(head).result(timeout=CHAIN_WAIT) == LINKS
        elif how == "failure":
            # The error passes through every link, and catch() at the end recovers.
            end = _chain(pool.submit(sh.sleep_then_raise, 0.3, "head failed")).catch(str)
            assert end.result(timeout=CHAIN_WAIT) == "head failed"
        elif how == "flattening":
            # Each link submits the next task: the chain follows 1,000 pool futures.
            end = pool.submit(helpers.square, 0)
            for _ in range(1000):
                end = end.then(lambda x: pool.submit(helpers.add, x, 1))
            assert end.result(timeout=CHAIN_WAIT) == 1000
        else:
            # The with-block exit (close + join) comes while the chain is still resolving.
            end = _chain(pool.submit(helpers.sleep_then, 0.3, 0))
            left, error = _run_bounded(lambda: pool.__exit__(None, None, None))
            assert left, "close() + join() hung while a chain was resolving"
            assert error is None, repr(error)
            assert end.done(), "join() returned before the chain's callbacks had run"
            assert end.result() == LINKS


@pytest.mark.timeout(180)
@pytest.mark.usefixtures("no_callback_errors")
def test_a_5000_link_chain_on_a_terminated_pool_is_cancelled(start_method: str) -> None:
    """terminate() cancels the heads of eight 5,000-link chains: the cancellation
    must travel all the links of each, also once the pool's callback thread has
    stopped with the pool (40,000 links take long enough for that to happen)."""
    pool = procpool.Pool(2, context=start_method)  # type: ignore[arg-type]
    with _torn_down(pool):
        ends = [_chain(pool.submit(helpers.sleep_then, 30, 0)) for _ in range(8)]
        time.sleep(0.2)
        pool.terminate()
        ok, error = _run_bounded(pool.join)
        assert ok, "join() after terminate() hung"
        assert error is None, repr(error)
        _, not_done = concurrent.futures.wait(ends, timeout=CHAIN_WAIT)
        assert not not_done, f"{len(not_done)} of 8 chains never ended"
        assert all(end.cancelled() for end in ends)


@pytest.mark.timeout(180)
@pytest.mark.usefixtures("no_callback_errors")
def test_a_5000_link_chain_on_a_spawned_process_resolves() -> None:
    """The same chain on ``procpool.spawn``'s handle, which has no pool behind it."""
    assert _chain(procpool.spawn(helpers.sleep_then, 0.3, 0)).result(timeout=CHAIN_WAIT) == LINKS


# ---------------------------------------------------------------------------------------
# 6. Many lifecycles leak nothing
# ---------------------------------------------------------------------------------------


@pytest.mark.timeout(900)
def test_300_mixed_lifecycles_leak_nothing(start_method: str) -> None:
    """300 pools ended twelve different ways (tests/scripts/stress_lifecycles.py):
    afterwards the same processes (the forkserver and the resource tracker, started
    by the warm-up, included), no zombie, the same threads (Python's and the OS's),
    file descriptors and /dev/shm entries as before."""
    proc = helpers.run_script_cleanly(
        SCRIPTS / "stress_lifecycles.py", start_method, 300, timeout=840
    )
    report = json.loads(proc.stdout)
    print(f"\n{start_method}: {report}")
    assert report["leftovers"] == {}


# ---------------------------------------------------------------------------------------
# 7. Memory: finished work is not kept
# ---------------------------------------------------------------------------------------

#: Allowed growth of the parent's RSS over 20,000 submits after a warm-up of 2,000. A
#: pool that kept each finished future, its 8 KiB result or its 8 KiB pickled argument
#: would grow by 150-300 MiB; keeping even one in twenty would pass this bound. What
#: does grow legitimately (allocator arenas, the 64 futures in flight) stays well
#: below a MiB here.
RSS_GROWTH_MIB = 16


@pytest.mark.timeout(300)
def test_rss_stays_bounded_over_20000_submits(start_method: str) -> None:
    proc = helpers.run_script_cleanly(SCRIPTS / "stress_rss.py", start_method, 20000, timeout=280)
    report = json.loads(proc.stdout)
    print(f"\n{start_method}: {report}")
    assert max(report["growth_mib"]) < RSS_GROWTH_MIB, report
    assert report["alive"] == 0, f"{report['alive']} dropped futures still alive"
    assert report["submitted"] == report["completed"] == 22000


@pytest.mark.timeout(180)
@pytest.mark.parametrize("how", ["map", "map-chunked", "imap", "imap-chunked", "imap_unordered"])
def test_iteration_keeps_no_yielded_result(start_method: str, how: str) -> None:
    """Once a map/imap result is yielded and the caller drops it, nothing keeps it
    alive: the weak reference to the previous result is dead when the next one is
    yielded (CPython's bpo-14406 test, 2,000 times over)."""
    n = 2000
    with _torn_down(procpool.Pool(2, context=start_method)) as pool:  # type: ignore[arg-type]
        chunk = 16 if how.endswith("chunked") else 1
        if how.startswith("map"):
            stream: Iterator[sh.Box] = pool.map(sh.boxed, range(n), chunksize=chunk)
        elif how == "imap_unordered":
            stream = pool.imap_unordered(sh.boxed, range(n), chunksize=4)
        else:
            stream = pool.imap(sh.boxed, range(n), chunksize=chunk)
        kept: list[int] = []
        previous: Any = None
        for i, box in enumerate(stream):
            if previous is not None and previous() is not None:
                kept.append(i - 1)
            previous = weakref.ref(box)
            del box
        assert i == n - 1
        assert not kept, (
            f"{len(kept)} of {n} results were still alive after being yielded and "
            f"dropped (first: {kept[:10]})"
        )


# ---------------------------------------------------------------------------------------
# 8. A state machine: random sequences of everything
# ---------------------------------------------------------------------------------------


def _outcome(fut: concurrent.futures.Future[Any]) -> tuple[Any, ...]:
    """A done future's outcome, comparable with ``_expected``."""
    if fut.cancelled():
        return ("cancelled",)
    exc = fut.exception(timeout=0)
    if exc is not None:
        return ("error", type(exc).__name__, str(exc))
    return ("ok", fut.result(timeout=0))


def _expected(fn: Callable[[], Any]) -> tuple[Any, ...]:
    try:
        return ("ok", fn())
    except Exception as exc:
        return ("error", type(exc).__name__, str(exc))


def _serial_map(xs: list[int]) -> list[int]:
    return [sh.model(x) for x in xs]


def _type_name(exc: BaseException) -> str:
    return type(exc).__name__


class _Tracked:
    """A future the state machine made, with what it must end as."""

    __slots__ = (
        "calls",
        "cancel_called",
        "derived_from",
        "fut",
        "outcome",
        "probe",
        "serial",
        "tids",
    )

    def __init__(
        self,
        fut: procpool.Future[Any],
        serial: Callable[[], Any] | None,
        tids: list[int],
        derived_from: tuple[_Tracked, str] | None = None,
    ) -> None:
        self.fut = fut
        self.serial = serial
        self.tids = tids
        self.derived_from = derived_from
        self.probe = _Probe(fut, [str(t) for t in tids]) if tids else None
        self.calls = 0
        self.outcome: tuple[Any, ...] | None = None
        #: The machine called cancel() on this very future.
        self.cancel_called = False

    def want(self, mass_cancel: bool) -> list[tuple[Any, ...]]:
        """The outcomes this future may end with once everything has ended.

        Cancelled is one of them only if something cancelled it: the machine (its
        own cancel(), or shutdown(cancel_futures=True) or terminate() for pool
        futures: ``mass_cancel``), or, for a then/catch future, its source.
        """
        cancelled = [("cancelled",)] if self.cancel_called else []
        if self.derived_from is None:
            assert self.serial is not None
            return [_expected(self.serial)] + ([("cancelled",)] if mass_cancel else cancelled)
        source, how = self.derived_from
        got = _outcome(source.fut)
        if got[0] == "cancelled":
            return [got]
        if how == "then":
            return [got if got[0] == "error" else ("ok", repr(got[1])), *cancelled]
        return [got if got[0] == "ok" else ("ok", got[1]), *cancelled]  # catch(_type_name)


def _pool_machine(start_method: str, root: Path) -> type[Any]:
    from hypothesis import strategies as st
    from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

    examples = iter(range(1_000_000))

    class PoolMachine(RuleBasedStateMachine):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.folder = root / f"example{next(examples)}"
            self.folder.mkdir()
            self.pool = procpool.Pool(2, context=start_method)  # type: ignore[arg-type]
            self.state = "open"
            self.lock = threading.Lock()
            self.tracked: list[_Tracked] = []
            self.imaps: list[tuple[Iterator[int], list[int]]] = []
            #: Long imaps of fast items: [stream, next index, length].
            self.fast: list[list[Any]] = []
            self.tid = 0
            self.problems: list[str] = []
            #: shutdown(cancel_futures=True) or terminate() happened.
            self.mass_cancel = False

        # -- helpers ------------------------------------------------------------------

        def _tids(self, n: int) -> list[int]:
            with self.lock:
                first, self.tid = self.tid, self.tid + n
            return list(range(first, first + n))

        def _track(self, tracked: _Tracked) -> _Tracked:
            def observe(fut: concurrent.futures.Future[Any]) -> None:
                tracked.calls += 1
                tracked.outcome = _outcome(fut)

            tracked.fut.add_done_callback(observe)
            with self.lock:
                self.tracked.append(tracked)
            return tracked

        def _submit(self, x: int) -> None:
            (tid,) = self._tids(1)
            fut = self.pool.submit(sh.record, str(self.folder), tid, x)
            self._track(_Tracked(fut, lambda: sh.model(x), [tid]))

        def _pick(self, index: int) -> _Tracked:
            with self.lock:
                return self.tracked[index % len(self.tracked)]

        def _all(self) -> list[_Tracked]:
            with self.lock:
                return list(self.tracked)

        def _end_everything(self, why: str) -> None:
            # Callbacks may add futures while we wait: look until nothing new came.
            seen = 0
            while True:
                everything = self._all()
                if len(everything) == seen:
                    return
                seen = len(everything)
                _, not_done = concurrent.futures.wait([t.fut for t in everything], timeout=HANG)
                assert not not_done, f"{len(not_done)} futures never ended after {why}"

        # -- rules ----------------------------------------------------------------------

        @precondition(lambda self: self.state == "open")
        @rule(x=st.integers(0, 40))
        def submit(self, x: int) -> None:
            self._submit(x)

        @precondition(lambda self: self.state == "open")
        @rule(xs=st.lists(st.integers(0, 40), max_size=8), chunksize=st.sampled_from([None, 1, 3]))
        def map(self, xs: list[int], chunksize: int | None) -> None:
            tids = self._tids(len(xs))
            fut = self.pool.map(
                sh.record_item, [str(self.folder)] * len(xs), tids, xs, chunksize=chunksize
            )
            self._track(_Tracked(fut, lambda: _serial_map(xs), tids))

        @precondition(lambda self: self.state == "open")
        @rule(xs=st.lists(st.integers(0, 40), max_size=12), take=st.integers(0, 12))
        def imap(self, xs: list[int], take: int) -> None:
            pairs = list(zip(self._tids(len(xs)), xs, strict=True))
            stream = self.pool.imap(
                functools.partial(sh.record_pair, str(self.folder)), pairs, buffersize=4
            )
            self.imaps.append((stream, xs))
            self._consume(len(self.imaps) - 1, take)

        @precondition(lambda self: self.imaps)
        @rule(which=st.integers(0, 100), take=st.integers(1, 12))
        def consume_imap(self, which: int, take: int) -> None:
            self._consume(which % len(self.imaps), take)

        def _consume(self, which: int, take: int) -> None:
            stream, rest = self.imaps[which]
            while take and rest:
                want = _expected(functools.partial(sh.model, rest[0]))
                try:
                    got: tuple[Any, ...] = ("ok", next(stream))
                except StopIteration:
                    raise AssertionError(f"imap stopped with {len(rest)} items to go") from None
                except ValueError as exc:
                    got = ("error", "ValueError", str(exc))
                except (procpool.PoolClosedError, concurrent.futures.CancelledError) as exc:
                    got = ("stopped", repr(exc))
                if got[0] == "stopped":
                    # Only once the pool is closed or terminated: the rest is not coming.
                    assert self.state != "open", f"imap raised {got[1]} on an open pool"
                    del self.imaps[which]
                    return
                assert got == want
                rest.pop(0)
                take -= 1
            if not rest:
                del self.imaps[which]

        @precondition(lambda self: self.state == "open")
        @rule(n=st.integers(1, 20_000), take=st.integers(0, 20_000))
        def fast_imap(self, n: int, take: int) -> None:
            """Consumed in a burst, so that the consumer drives the result pipes (see
            ``_assist``), then paused there while the other rules run."""
            stream = self.pool.imap(helpers.square, range(n), chunksize=100)
            self.fast.append([stream, 0, n])
            self._consume_fast(len(self.fast) - 1, take)

        @precondition(lambda self: self.fast)
        @rule(which=st.integers(0, 100), take=st.integers(1, 20_000), close=st.booleans())
        def consume_fast(self, which: int, take: int, close: bool) -> None:
            which %= len(self.fast)
            if close:
                stream = self.fast.pop(which)[0]
                stream.close()
                assert list(stream) == []
                return
            self._consume_fast(which, take)

        def _consume_fast(self, which: int, take: int) -> None:
            entry = self.fast[which]
            stream, index, n = entry
            while take and index < n:
                stopped = ""
                try:
                    value = next(stream)
                except StopIteration:
                    raise AssertionError(f"imap stopped with {n - index} items to go") from None
                except (procpool.PoolClosedError, concurrent.futures.CancelledError) as exc:
                    stopped = repr(exc)
                if stopped:
                    # Only once the pool is closed or terminated: the rest is not coming.
                    assert self.state != "open", f"imap raised {stopped} on an open pool"
                    del self.fast[which]
                    return
                assert value == index * index, (index, value)
                index += 1
                take -= 1
            entry[1] = index
            if index == n:
                assert next(stream, None) is None
                del self.fast[which]

        @precondition(lambda self: self.imaps)
        @rule(which=st.integers(0, 100), close=st.booleans())
        def drop_imap(self, which: int, close: bool) -> None:
            stream, _ = self.imaps.pop(which % len(self.imaps))
            if close:
                stream.close()  # type: ignore[attr-defined]
            del stream

        @precondition(lambda self: self.tracked)
        @rule(which=st.integers(0, 1000))
        def cancel(self, which: int) -> None:
            tracked = self._pick(which)
            tracked.cancel_called = True
            tracked.fut.cancel()

        @precondition(lambda self: self.tracked)
        @rule(
            which=st.integers(0, 1000),
            how=st.sampled_from(["then", "catch", "submit"]),
            x=st.integers(0, 40),
        )
        def add_callback(self, which: int, how: str, x: int) -> None:
            source = self._pick(which)
            if source.derived_from is not None and how == "submit":
                how = "then"
            if how == "then":
                self._track(_Tracked(source.fut.then(repr), None, [], (source, "then")))
            elif how == "catch":
                self._track(_Tracked(source.fut.catch(_type_name), None, [], (source, "catch")))
            else:

                def submit_more(_: object) -> None:
                    try:
                        self._submit(x)
                    except procpool.PoolClosedError:
                        # Read after the refusal: the rules set the state before they
                        # end the pool, so "open" now means the pool refused while open
                        # (read before, a close on the main thread could come between).
                        if self.state == "open":
                            self.problems.append("a callback's submit was refused by an open pool")

                source.fut.add_done_callback(submit_more)

        # The three ways to end the pool are drawn at a quarter of the rate of the
        # other rules (``now == 0``): steps after them can only cancel and chain.
        @precondition(lambda self: self.state == "open")
        @rule(now=st.integers(0, 3))
        def close(self, now: int) -> None:
            if now:
                return
            self.state = "closed"
            self.pool.close()
            self._end_everything("close()")

        @precondition(lambda self: self.state != "terminated")
        @rule(now=st.integers(0, 3))
        def terminate(self, now: int) -> None:
            if now:
                return
            self.state = "terminated"
            self.mass_cancel = True
            self.pool.terminate()
            self._end_everything("terminate()")

        @precondition(lambda self: self.state == "open")
        @rule(wait=st.booleans(), cancel_futures=st.booleans(), now=st.integers(0, 3))
        def shutdown(self, wait: bool, cancel_futures: bool, now: int) -> None:
            if now:
                return
            self.state = "closed"
            self.mass_cancel = self.mass_cancel or cancel_futures
            ok, error = _run_bounded(
                lambda: self.pool.shutdown(wait=wait, cancel_futures=cancel_futures)
            )
            assert ok, "shutdown() hung"
            assert error is None, repr(error)
            self._end_everything("shutdown()")

        @precondition(lambda self: self.state != "open")
        @rule(x=st.integers(0, 40))
        def submit_after_close(self, x: int) -> None:
            with pytest.raises(procpool.PoolClosedError):
                self.pool.submit(sh.record, str(self.folder), -1, x)
            with pytest.raises(procpool.PoolClosedError):
                self.pool.map(sh.model, [x])

        # -- invariants -----------------------------------------------------------------

        @invariant()
        def outcomes_never_change(self) -> None:
            for t in self._all():
                assert t.calls <= 1, f"a done-callback ran {t.calls} times"
                if t.outcome is not None:
                    assert _outcome(t.fut) == t.outcome, "a future changed its outcome"

        @invariant()
        def counters_never_exceed_submitted(self) -> None:
            first = self.pool.stats()
            later = self.pool.stats()  # submitted read after the others: an upper bound
            ended = first.completed + first.failed + first.cancelled
            assert ended <= later.submitted, (first, later)

        @invariant()
        def no_problem_in_callbacks(self) -> None:
            assert not self.problems, self.problems

        # -- the end --------------------------------------------------------------------

        def teardown(self) -> None:
            try:
                self.imaps.clear()
                self.fast.clear()
                if self.state == "open":
                    self.state = "closed"
                    self.pool.close()
                ok, error = _run_bounded(self.pool.join)
                assert ok, "join() hung at the end"
                assert error is None, repr(error)
                self._end_everything("join()")
                everything = self._all()
                for t in everything:
                    assert t.calls == 1, f"a done-callback ran {t.calls} times"
                    got = _outcome(t.fut)
                    want = t.want(self.mass_cancel)
                    assert got in want, f"{got!r:.200} not in {want!r:.200}"
                probes = [t.probe for t in everything if t.probe is not None]
                _, broken = _never_ran_after_cancel(probes, self.folder)
                assert not broken, "\n".join(broken)
                stats = self.pool.stats()
                assert stats.submitted == stats.completed + stats.failed + stats.cancelled, stats
                assert not self.problems, self.problems
            finally:
                self.pool.terminate()
                self.pool.join(30)

    return PoolMachine


@pytest.mark.timeout(600)
def test_state_machine_random_sequences(start_method: str, tmp_path: Path) -> None:
    from hypothesis import HealthCheck, Phase, settings
    from hypothesis.stateful import run_state_machine_as_test

    machine = _pool_machine(start_method, tmp_path)
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=60,
            stateful_step_count=40,
            deadline=None,
            # A concurrency failure neither shrinks nor replays reliably: no shrinking
            # and no example database; Hypothesis prints the steps of a failure.
            phases=[Phase.explicit, Phase.generate],
            database=None,
            suppress_health_check=list(HealthCheck),
        ),
    )


# ---------------------------------------------------------------------------------------
# 9. Two pools at once
# ---------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_second_pools_workers_exit_by_themselves_when_it_closes(start_method: str) -> None:
    """With pool A open, pool B is created, used and closed: B's workers must exit
    on their own when B closes, as workers do (their buffered output is flushed),
    not hang in something inherited from the parent until the pool kills them."""
    # Block-buffered output, which only a process that ends normally flushes.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    proc = helpers.run_script_cleanly(
        SCRIPTS / "stress_two_pools.py", start_method, timeout=100, env=env
    )
    lines = proc.stdout.splitlines()
    assert lines[-1].startswith("POOL B USED"), proc.stdout
    printed = sorted(line for line in lines if line.endswith("from pool b"))
    assert printed == sorted(f"line {i} from pool b" for i in range(20)), (
        f"{20 - len(printed)} of 20 lines printed by pool B's tasks were lost: its "
        "workers did not exit by themselves (killed after the grace period)"
    )

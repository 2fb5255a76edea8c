"""The process boundary: shared-memory names, descriptors, signals, what a worker may send.

Issue 15's gaps, each shown with a small attack or accident: a parent killed while a
worker writes a result, a descriptor limit against held results, a forged reply, a
squatted segment name, Ctrl-C for a program a task starts, the host's handlers and
descriptors inherited through fork, and warning filters touched from a thread.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import arrays
import helpers
import procpool
from procpool._child import messages as m
from procpool._child import shm as _shm

SCRIPTS = Path(__file__).parent / "scripts"
pytestmark = pytest.mark.timeout(120)
needs_shm = pytest.mark.skipif(not _shm.ENABLED, reason="shared memory transport is Linux-only")


def _segments(pid: int) -> list[str]:
    prefix = f"procpool-{pid}-"
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(prefix))


# -- 1. a parent killed while a worker writes a result ----------------------------------


def _reply_written(name: str) -> bool:
    """Whether the worker has filled result segment ``name`` (its last value is set)."""
    try:
        with open(f"/dev/shm/{name}", "rb") as segment:
            size = os.fstat(segment.fileno()).st_size
            if size < 8:
                return False  # not reserved yet
            segment.seek(size - 8)
            return segment.read(8) != bytes(8)
    except FileNotFoundError:
        return True  # already read and removed by the parent


def _kill_the_parent_of_a_writer(start_method: str, *, unread: bool) -> None:
    """Kill a pool's parent while its worker writes a 300 MB result, then look at /dev/shm.

    ``unread``: stop the parent first and kill it only once the worker has written
    the result and sent its reply, which then waits unread in the pipe; the worker
    learns of the death from its pipes and its watch thread at the same moment.
    """
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "killed_mid_write.py"), start_method],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "READY"
        # Kill (or stop) the parent the moment a worker has created its result
        # segment: it is then reserving and filling 300 MB, for a few hundred ms.
        deadline = time.monotonic() + 30
        while not (written := [n for n in _segments(proc.pid) if "-w" in n]):
            assert time.monotonic() < deadline, "no result segment appeared"
            time.sleep(0.0005)
        if unread:
            proc.send_signal(signal.SIGSTOP)
            assert helpers.wait_for(lambda: _reply_written(written[0]), timeout=30)
            time.sleep(0.2)  # the reply header follows the last byte at once
        proc.kill()
        proc.wait(10)
        assert helpers.wait_for(lambda: not _segments(proc.pid), timeout=2), _segments(proc.pid)
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@needs_shm
@pytest.mark.parametrize("attempt", range(2))
def test_a_parent_killed_mid_write_leaves_no_segment(start_method: str, attempt: int) -> None:
    _kill_the_parent_of_a_writer(start_method, unread=False)


@needs_shm
@pytest.mark.parametrize("attempt", range(2))
def test_a_parent_killed_with_a_reply_unread_leaves_no_segment(
    start_method: str, attempt: int
) -> None:
    _kill_the_parent_of_a_writer(start_method, unread=True)


# -- 2. descriptors: no number of held results exhausts them ------------------------------


@needs_shm
def test_holding_many_array_results_does_not_exhaust_descriptors(start_method: str) -> None:
    """Under ``ulimit -n 128``, hold 300 results of 2 MB (each came through shared memory)."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "hold_results.py"), start_method, "300", "128"],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    words = proc.stdout.split()
    assert words[:2] == ["HELD", "300"], proc.stdout
    assert int(words[3]) < 128


@needs_shm
def test_result_arrays_keep_no_descriptor_past_the_budget() -> None:
    with procpool.Pool(1, context="fork") as pool:
        # After a first array result every descriptor of the pool's own is open (how
        # many depends on what earlier tests started, the resource tracker for one).
        first = pool.submit(arrays.make, 0, 2).result(timeout=30)
        before = len(os.listdir("/proc/self/fd"))
        held = pool.map(arrays.make, range(40), [2] * 40, chunksize=1).result()
        opened = len(os.listdir("/proc/self/fd")) - before
    assert float(first[0]) == 0.0
    assert [float(a[0]) for a in held] == [float(i) for i in range(40)]
    if sys.version_info >= (3, 13):
        assert opened <= 2  # the 40 mappings keep none
    else:
        assert opened <= _shm.fd_budget() + 2


# -- 3. terminate() ends in-flight call segments at once --------------------------------


@needs_shm
def test_terminate_unlinks_the_segments_of_calls_in_flight(start_method: str) -> None:
    pool = procpool.Pool(2, context=start_method)
    prefix = pool._dispatcher.segments._prefix.lstrip("/")  # type: ignore[union-attr]
    # Held on purpose: the futures must not be what keeps the segments alive.
    futures = [pool.submit(arrays.sleep_with, arrays.make(i), 60) for i in range(4)]
    assert helpers.wait_for(lambda: sum(f.running() for f in futures) >= 2)
    pool.terminate()
    pool.join(timeout=30)
    assert all(f.cancelled() for f in futures)
    assert [n for n in os.listdir("/dev/shm") if n.startswith(prefix)] == []


# -- 4. what a worker sends is checked before anything is opened or unpickled -----------


def _live_worker(pool: procpool.Pool) -> object:
    dispatcher = pool._dispatcher
    assert helpers.wait_for(lambda: bool(dispatcher.workers))
    return next(iter(dispatcher.workers.values()))


@needs_shm
def test_a_forged_reply_cannot_remove_or_open_a_segment_it_names() -> None:
    victim = f"/procpool-victim-{os.getpid()}"
    fd = _shm._posixshmem.shm_open(victim, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.ftruncate(fd, 4096)
    os.close(fd)
    try:
        with procpool.Pool(1, context="fork") as pool:
            dispatcher, worker = pool._dispatcher, _live_worker(pool)
            header = _shm._header(victim, b"\0\0")  # the victim's name, no buffers
            for call_id in (12345, m.NO_CALL):  # a call never sent; none at all
                data = m.REPLY_HEADER.pack(call_id, m.OK | m.SHARED_REPLY, 0.0) + header
                reply = dispatcher.workers.decode(worker, data)  # type: ignore[arg-type]
                assert reply.body is None
            assert os.path.exists("/dev/shm" + victim)
    finally:
        _shm.unlink_segment(victim)


def test_a_reply_to_a_call_never_sent_is_not_unpickled(tmp_path: Path) -> None:
    trap = tmp_path / "unpickled"
    body = __import__("pickle").dumps(helpers.TouchOnUnpickle(str(trap)))
    with procpool.Pool(1, context="fork") as pool:
        dispatcher, worker = pool._dispatcher, _live_worker(pool)
        for call_id, status in ((98765, m.OK), (98765, m.ERROR), (7, m.LOG)):
            data = m.REPLY_HEADER.pack(call_id, status, 0.0) + body
            dispatcher.workers.decode(worker, data)  # type: ignore[arg-type]
        assert pool.submit(helpers.square, 4).result(timeout=30) == 16
    assert not trap.exists()


@needs_shm
def test_a_result_naming_a_segment_of_another_family_fails_only_its_call() -> None:
    with pytest.raises(_shm.ForeignSegmentError):
        _shm.reply_seq("/procpool-1-wdeadbeef-3", "/procpool-1-wfeedface-", 0)
    with pytest.raises(_shm.ForeignSegmentError):
        _shm.reply_seq("/procpool-1-wfeedface-3", "/procpool-1-wfeedface-", 3)  # reused
    assert _shm.reply_seq("/procpool-1-wfeedface-5", "/procpool-1-wfeedface-", 3) == 5


# -- 5. unguessable names; a squatted name is skipped -------------------------------------


@needs_shm
def test_segment_names_carry_a_random_part() -> None:
    with procpool.Pool(2, context="fork") as one, procpool.Pool(2, context="fork") as two:
        prefixes = [
            *(w.reply_prefix for p in (one, two) for w in p._dispatcher.workers.values()),
            *(p._dispatcher.segments._prefix for p in (one, two)),  # type: ignore[union-attr]
        ]
    assert len(set(prefixes)) == len(prefixes) == 6
    for prefix in prefixes:
        random_part = prefix.rstrip("-").rsplit("-", 1)[1].lstrip("w")
        assert len(random_part) == 16
        int(random_part, 16)
        assert prefix.startswith(f"/procpool-{os.getpid()}-")


@needs_shm
def test_a_squatted_result_name_is_skipped_not_used_nor_removed(start_method: str) -> None:
    with procpool.Pool(1, context=start_method) as pool:
        worker = _live_worker(pool)
        squatted = f"{worker.reply_prefix}{worker.reply_seq + 1}"  # type: ignore[attr-defined]
        fd = _shm._posixshmem.shm_open(squatted, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        os.close(fd)
        try:
            for i in range(3):
                result = pool.submit(arrays.make, i, 2).result(timeout=30)
                assert float(result[0]) == i
                # Through shared memory all the same: the worker took the next numbers.
                assert worker.reply_seq == i + 2  # type: ignore[attr-defined]
            assert os.path.exists("/dev/shm" + squatted)
        finally:
            _shm.unlink_segment(squatted)


@needs_shm
def test_a_squatted_call_name_is_skipped() -> None:
    with procpool.Pool(1, context="fork") as pool:
        segments = pool._dispatcher.segments
        assert segments is not None
        squatted = f"{segments._prefix}0"
        fd = _shm._posixshmem.shm_open(squatted, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        os.close(fd)
        try:
            assert pool.submit(arrays.in_shared_memory, arrays.make(3)).result(timeout=30)
            assert os.path.exists("/dev/shm" + squatted)
        finally:
            _shm.unlink_segment(squatted)


# -- 6. signals ---------------------------------------------------------------------------


def test_a_program_a_task_starts_can_be_interrupted(start_method: str) -> None:
    with procpool.Pool(1, context=start_method) as pool:
        assert pool.submit(helpers.interrupt_a_child_process).result(timeout=30) == -signal.SIGINT


def test_workers_do_not_run_the_hosts_sigterm_handler() -> None:
    ran: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: ran.append(signum))
    try:
        with procpool.Pool(1, context="fork") as pool:
            assert pool.submit(helpers.sigterm_is_default).result(timeout=30)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert ran == []


def test_ctrl_c_still_leaves_the_workers_alone(start_method: str) -> None:
    with procpool.Pool(1, context=start_method) as pool:
        pid = pool.submit(helpers.getpid).result(timeout=30)
        os.kill(pid, signal.SIGINT)
        slow = pool.submit(helpers.sleep_then, 0.3, "alive")
        os.kill(pid, signal.SIGINT)
        assert slow.result(timeout=30) == "alive"
        assert pool.submit(helpers.getpid).result(timeout=30) == pid


# -- 7. descriptors inherited through fork -----------------------------------------------


def test_forked_workers_hold_none_of_the_pools_own_descriptors() -> None:
    from procpool._context import PARENT_FDS

    with procpool.Pool(3, context="fork") as pool:
        theirs_all = [
            set(f.result(timeout=30))
            for f in [pool.submit(helpers.open_descriptors) for _ in range(6)]
        ]
        # Ours, seen from the parent: every worker's pipe ends and sentinel, the
        # wake-up socket and the epoll object (a pipe's two ends share one inode:
        # the access mode tells the parent's end from the worker's).
        with PARENT_FDS.lock:
            ours = {
                (os.readlink(f"/proc/self/fd/{fd}"), _mode(fd))
                for fd in PARENT_FDS.for_child(pool._dispatcher.ctx)
            }
    assert len(ours) >= 3 * 3 + 3
    # Every entry is still one of ours: nothing closed was left on the list, where
    # its number could come to name a file of the program's that a fork then closes.
    assert all(link.startswith(("pipe:", "socket:", "anon_inode:")) for link, _ in ours), ours
    for theirs in theirs_all:
        assert not theirs & ours
        assert not any(link == "anon_inode:[eventpoll]" for link, _ in theirs)


def test_a_pool_that_fails_to_start_leaves_nothing_registered() -> None:
    from procpool._context import PARENT_FDS

    with PARENT_FDS.lock:
        before = set(PARENT_FDS.for_child(__import__("multiprocessing").get_context("fork")))
    with pytest.raises(procpool.SerializationError, match="initializer"):
        procpool.Pool(2, context="spawn", initializer=lambda: None)
    with PARENT_FDS.lock:
        after = set(PARENT_FDS.for_child(__import__("multiprocessing").get_context("fork")))
    assert after == before


def _mode(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as info:
        flags = next(line for line in info if line.startswith("flags:"))
    return int(flags.split()[1], 8) & os.O_ACCMODE


# -- 8. warning filters are left alone ----------------------------------------------------


def test_starting_fork_workers_from_the_dispatcher_leaves_warning_filters_alone() -> None:
    filters = warnings.filters
    snapshot = list(filters)
    changed: list[object] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if warnings.filters is not filters or warnings.filters != snapshot:
                changed.append(list(warnings.filters))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        # Each task retires its worker: the dispatcher thread forks the next one.
        with procpool.Pool(1, context="fork", max_tasks_per_worker=1) as pool:
            for i in range(30):
                assert pool.submit(helpers.square, i).result(timeout=30) == i * i
    finally:
        stop.set()
        watcher.join()
    assert changed == []


def test_large_arrays_still_travel_both_ways_under_every_start_method(start_method: str) -> None:
    """The checks above change how names are made and read; the transport still works."""
    data = np.arange(600_000, dtype=np.float64)
    with procpool.Pool(2, context=start_method) as pool:
        back = pool.submit(arrays.identity, data).result(timeout=30)
        doubled = pool.map(arrays.double, [data, data + 1]).result(timeout=30)
    assert np.array_equal(back, data)
    assert np.array_equal(doubled[1], (data + 1) * 2)

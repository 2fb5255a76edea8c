"""Run many pool lifecycles of mixed kinds; print what they left behind as JSON.

Usage: python stress_lifecycles.py START_METHOD COUNT

Each lifecycle ends its pool a different way (with-block, close + join, terminate,
shutdown with cancel_futures, an exception inside the with-block, shutdown without
waiting, a pool simply dropped, ...), some with a worker killed, a time limit
passed, a running task cancelled or callbacks chaining more work. Before and after,
it counts every descendant process (forkserver workers are grandchildren), zombies,
Python and OS threads, open file descriptors, and the /dev/shm entries procpool and
multiprocessing create. The first lifecycles of every kind run before counting:
they start what multiprocessing keeps for the life of the process (the forkserver,
the resource tracker, the shared heap arena).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import helpers
import procpool
import stress_helpers as sh


@dataclass
class Snapshot:
    processes: list[int]
    zombies: list[int]
    threads: list[str]
    os_threads: int
    fds: dict[int, str]
    shm: list[str]

    def sizes(self) -> dict[str, int]:
        return {k: v if isinstance(v, int) else len(v) for k, v in vars(self).items()}


def snapshot() -> Snapshot:
    gc.collect()
    family = sh.descendants()
    return Snapshot(
        processes=sorted(pid for pid, state in family.items() if state != "Z"),
        zombies=sorted(pid for pid, state in family.items() if state == "Z"),
        threads=sorted(t.name for t in threading.enumerate()),
        os_threads=sh.os_threads(),
        fds=sh.open_fds(),
        shm=sorted(sh.shm_names()),
    )


def leftovers(before: Snapshot, after: Snapshot) -> dict[str, object]:
    """What ``after`` has that ``before`` had not (empty: nothing leaked)."""
    diff: dict[str, object] = {}
    new_processes = [p for p in after.processes if p not in before.processes]
    if new_processes:
        diff["processes"] = {p: sh.cmdline(p) for p in new_processes}
    if after.zombies:
        diff["zombies"] = after.zombies
    new_threads = _multiset_extra(before.threads, after.threads)
    if new_threads:
        diff["threads"] = new_threads
    if after.os_threads != before.os_threads:
        diff["os_threads"] = [before.os_threads, after.os_threads]
    if len(after.fds) != len(before.fds):
        diff["fds"] = {fd: t for fd, t in after.fds.items() if before.fds.get(fd) != t}
    family = set(sh.descendants()) | {os.getpid()}
    new_shm = [n for n in after.shm if n not in before.shm and _ours(n, family)]
    if new_shm:
        diff["shm"] = new_shm
    return diff


def _ours(name: str, family: set[int]) -> bool:
    """Whether a new /dev/shm entry may be ours: procpool's names carry the pid of
    the pool's process (this one); multiprocessing's carry none, so those that
    another program (a concurrent test run) maps or holds open are left out."""
    if name.startswith("procpool-"):
        return name.startswith(f"procpool-{os.getpid()}-")
    return not sh.mapped_elsewhere(name, family)


def _multiset_extra(before: list[str], after: list[str]) -> list[str]:
    rest = list(before)
    extra = []
    for name in after:
        if name in rest:
            rest.remove(name)
        else:
            extra.append(name)
    return extra


def new_pool(method: str) -> procpool.Pool:
    return procpool.Pool(2, context=method)  # type: ignore[arg-type]


def with_block(method: str, i: int) -> None:
    with new_pool(method) as pool:
        assert pool.submit(helpers.square, i).result() == i * i
        assert pool.map(helpers.square, range(20)).result() == [x * x for x in range(20)]


def close_join(method: str, i: int) -> None:
    pool = new_pool(method)
    futures = [pool.submit(helpers.sleep_then, 0.001, x) for x in range(20)]
    pool.close()
    pool.join()
    assert [f.result() for f in futures] == list(range(20))


def terminate(method: str, i: int) -> None:
    pool = new_pool(method)
    mapped = pool.map(helpers.sleep_item, [5] * 20)
    running = pool.submit(helpers.sleep_then, 10)
    time.sleep(0.01)
    pool.terminate()
    pool.join()
    assert mapped.done()
    assert running.done()


def shutdown_cancel(method: str, i: int) -> None:
    pool = new_pool(method)
    futures = [pool.submit(helpers.sleep_then, 0.002, x) for x in range(100)]
    pool.shutdown(wait=True, cancel_futures=True)
    assert all(f.done() for f in futures)


def exception_inside(method: str, i: int) -> None:
    try:
        with new_pool(method) as pool:
            pool.submit(helpers.sleep_then, 10)
            pool.map(helpers.sleep_item, [5] * 10)
            raise KeyError(i)
    except KeyError:
        pass


def shutdown_no_wait(method: str, i: int) -> None:
    pool = new_pool(method)
    pool.submit(helpers.sleep_then, 0.005)
    pool.shutdown(wait=False)


def dropped(method: str, i: int) -> None:
    pool = new_pool(method)
    pool.submit(helpers.square, i)
    del pool  # never closed: the finalizer closes it, the queued task still runs


def imap_abandoned(method: str, i: int) -> None:
    with new_pool(method) as pool:
        stream = pool.imap(helpers.square, range(1000), chunksize=5)
        assert [next(stream) for _ in range(7)] == [x * x for x in range(7)]


def worker_killed(method: str, i: int) -> None:
    with new_pool(method) as pool:
        lost = pool.submit(helpers.sigkill_self)
        other = pool.map(helpers.square, range(50), chunksize=1)
        assert isinstance(lost.exception(), procpool.WorkerLostError)
        assert other.result() == [x * x for x in range(50)]


def timed_out(method: str, i: int) -> None:
    with new_pool(method) as pool:
        late = pool.options(timeout=0.05).submit(helpers.sleep_then, 10)
        assert isinstance(late.exception(), procpool.TaskTimeoutError)


def cancel_running(method: str, i: int) -> None:
    with new_pool(method) as pool:
        fut = pool.submit(helpers.sleep_then, 10)
        while not fut.running():
            time.sleep(0.001)
        assert fut.cancel()
        assert pool.submit(helpers.square, 3).result() == 9


def callbacks(method: str, i: int) -> None:
    with new_pool(method) as pool:
        done: list[int] = []

        def more(_: object) -> None:
            pool.submit(helpers.square, 2).add_done_callback(lambda f: done.append(f.result()))

        head = pool.submit(helpers.square, 1)
        head.add_done_callback(more)
        chained = head.then(lambda x: pool.submit(helpers.add, x, 1))
        assert chained.result() == 2
    assert done == [4]


KINDS: list[Callable[[str, int], None]] = [
    with_block,
    close_join,
    terminate,
    shutdown_cancel,
    exception_inside,
    shutdown_no_wait,
    dropped,
    imap_abandoned,
    worker_killed,
    timed_out,
    cancel_running,
    callbacks,
]


def main() -> None:
    method, count = sys.argv[1], int(sys.argv[2])
    for i, kind in enumerate(KINDS):
        kind(method, i)
    time.sleep(0.5)
    before = snapshot()
    started = time.perf_counter()
    per_kind = {k.__name__: [0, 0.0] for k in KINDS}  # [lifecycles, seconds]
    for i in range(count):
        kind = KINDS[i % len(KINDS)]
        t0 = time.perf_counter()
        kind(method, i)
        per_kind[kind.__name__][0] += 1
        per_kind[kind.__name__][1] += time.perf_counter() - t0
    elapsed = time.perf_counter() - started
    # Pools ended without waiting wind down by themselves: give them a moment, then
    # whatever is still there has leaked.
    deadline = time.monotonic() + 20
    while True:
        after = snapshot()
        diff = leftovers(before, after)
        if not diff or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    print(
        json.dumps(
            {
                "leftovers": diff,
                "seconds": round(elapsed, 1),
                "lifecycles": {k: [n, round(t, 1)] for k, (n, t) in per_kind.items()},
                "before": before.sizes(),
                "after": after.sizes(),
            }
        )
    )


if __name__ == "__main__":
    main()

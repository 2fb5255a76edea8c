"""One measurement, in a fresh process: ``python measure.py '<json spec>'``.

``run.py`` starts this script once per (workload, contender, repetition) so that

* a library that hangs or crashes is killed by a timeout without stalling the run,
* peak-RSS readings (B7) and start-up costs (B4) are not mixed between libraries,
* no library's leftovers (reusable executors, forkservers, warm caches) help the next.

The spec is ``{"workload": "B1", "contender": "mp", "method": "fork", ...params}``.
The result is printed as one line ``RESULT {json}`` on stdout; anything else on
stdout/stderr is the library's own chatter and is ignored unless the run fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import workloads
from contenders import CONTENDERS, Contender, ProcpoolBase, Session

Result = dict[str, Any]


def _open_warm(contender: Contender, spec: dict[str, Any]) -> Session:
    """Start the pool and run one trivial task, so every worker exists before the clock starts."""
    session = contender.open(spec.get("method"))
    contender.warm(session)
    return session


def _check(ok: bool, what: str) -> None:
    # A wrong answer must not be reported as a fast one.
    if not ok:
        raise AssertionError(f"wrong result: {what}")


# --------------------------------------------------------------------------- workloads


def b1_tiny(contender: Contender, spec: dict[str, Any]) -> Result:
    """B1: map of x*x over n ints; time in seconds."""
    n = int(spec["n"])
    xs = list(range(n))
    session = _open_warm(contender, spec)
    try:
        t0 = time.perf_counter()
        out = session.map(workloads.square, xs, None)
        elapsed = time.perf_counter() - t0
    finally:
        session.close()
    _check(len(out) == n and out[-1] == (n - 1) ** 2 and out[n // 2] == (n // 2) ** 2, "B1")
    return {"time": elapsed}


def _paired(contender: Contender, spec: dict[str, Any], args: list[int]) -> Result:
    """Time ``map(spin, args)`` serially here, then on the pool, back to back.

    On a shared machine the load drifts from minute to minute: a serial time
    taken in another run (another minute) made speed-ups above 2 on 2 cores.
    Taken in the same process just before, both see the same neighbours.
    """
    session = _open_warm(contender, spec)
    try:
        t0 = time.perf_counter()
        expected = [workloads.spin(a) for a in args]
        serial = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = session.map(workloads.spin, args, None)
        elapsed = time.perf_counter() - t0
    finally:
        session.close()
    _check(out == expected, spec["workload"])
    return {"time": elapsed, "serial": serial}


def b2_cpu(contender: Contender, spec: dict[str, Any]) -> Result:
    """B2: ``tasks`` CPU-bound tasks of ``iters`` spins: pool time and serial time."""
    return _paired(contender, spec, [int(spec["iters"])] * int(spec["tasks"]))


def b3_latency(contender: Contender, spec: dict[str, Any]) -> Result:
    """B3: median µs of ``calls`` warm round trips ``submit(f, 1).result()``."""
    calls = int(spec["calls"])
    session = _open_warm(contender, spec)
    samples: list[float] = []
    try:
        for _ in range(min(50, calls)):  # warm caches and lazily started threads
            session.call(workloads.noop, 1)
        clock = time.perf_counter_ns
        for _ in range(calls):
            t0 = clock()
            r = session.call(workloads.noop, 1)
            samples.append(clock() - t0)
            _check(r == 1, "B3")
    finally:
        session.close()
    return {"latency_us": statistics.median(samples) / 1000}


def b3_pipe_floor(spec: dict[str, Any]) -> Result:
    """B3 floor: a bare ``multiprocessing.Pipe`` echo between two processes."""
    import multiprocessing as mp

    calls = int(spec["calls"])
    ctx = mp.get_context(spec.get("method"))
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=workloads.pipe_echo_server, args=(child,))
    proc.start()
    child.close()
    samples: list[float] = []
    clock = time.perf_counter_ns
    try:
        for _ in range(min(50, calls)):
            parent.send(1)
            parent.recv()
        for _ in range(calls):
            t0 = clock()
            parent.send(1)
            parent.recv()
            samples.append(clock() - t0)
    finally:
        parent.send(None)
        proc.join()
    return {"latency_us": statistics.median(samples) / 1000}


def b4_startup(contender: Contender, spec: dict[str, Any]) -> Result:
    """B4: pool creation + one trivial task + graceful shutdown, in seconds."""
    contender.import_check()  # importing the library is not part of start-up
    t0 = time.perf_counter()
    session = contender.open(spec.get("method"))
    r = session.call(workloads.noop, 1)
    session.close()
    elapsed = time.perf_counter() - t0
    _check(r == 1, "B4")
    return {"time": elapsed}


def _arrays(count: int, mb: int, first: int = 0) -> list[Any]:
    import numpy as np

    base = np.arange(mb * 1024 * 1024 // 8, dtype=np.float64)
    return [base + i for i in range(first, first + count)]


def b5_payload(contender: Contender, spec: dict[str, Any]) -> Result:
    """B5: MB/s of ``count`` arrays of ``mb`` MB through map (identity, then sum).

    MB/s counts the input bytes once (count x mb / time) for both variants; the
    identity variant also moves the same bytes back. The sum pass sends arrays of
    its own, with other contents: a library that remembers arrays it has already
    sent (joblib memory-maps each array object once per ``Parallel`` context)
    would otherwise move nothing in it, and its figure would not be a transfer
    rate.
    """
    count, mb = int(spec["count"]), int(spec["mb"])
    arrays = _arrays(count, mb)
    # Built before the clock starts, and all kept alive until the end, so no new
    # array can reuse the address (the identity) of one sent in the first pass.
    fresh = _arrays(count, mb, first=count)
    expected = [float(a.sum()) for a in fresh]
    session = _open_warm(contender, spec)
    try:
        t0 = time.perf_counter()
        out = session.map(workloads.identity, arrays, None)
        t_identity = time.perf_counter() - t0
        _check(
            len(out) == count
            and all(float(o[-1]) == float(a[-1]) for o, a in zip(out, arrays, strict=True)),
            "B5 identity",
        )
        del out
        t0 = time.perf_counter()
        sums = session.map(workloads.array_sum, fresh, None)
        t_sum = time.perf_counter() - t0
        _check(sums == expected, "B5 sum")
    finally:
        session.close()
    total = count * mb
    return {"identity_mbs": total / t_identity, "sum_mbs": total / t_sum}


def b5_copyto(spec: dict[str, Any]) -> Result:
    """B5 limit: in-process ``np.copyto`` of the same arrays, MB/s."""
    import numpy as np

    count, mb = int(spec["count"]), int(spec["mb"])
    arrays = _arrays(count, mb)
    dst = np.empty_like(arrays[0])
    np.copyto(dst, arrays[0])  # fault the destination pages in first
    t0 = time.perf_counter()
    for a in arrays:
        np.copyto(dst, a)
    elapsed = time.perf_counter() - t0
    return {"identity_mbs": count * mb / elapsed, "sum_mbs": count * mb / elapsed}


def b6_imbalanced(contender: Contender, spec: dict[str, Any]) -> Result:
    """B6: makespan of skewed CPU tasks and their serial time (ratio made by run.py)."""
    return _paired(contender, spec, [int(i) for i in spec["iters"]])


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class _PeakRss:
    """Peak RSS of this process from now on, in kB.

    Prefers the kernel's own high-water mark (VmHWM, reset by writing 5 to
    /proc/self/clear_refs) because polling can miss a short spike; falls back to
    a 2 ms polling thread where clear_refs cannot be written.
    """

    def __init__(self) -> None:
        self.baseline = _status_kb("VmRSS")
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method = "VmHWM"
        except OSError:
            self.method = "polling"
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _status_kb("VmRSS"))

    def growth_mb(self) -> float:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            peak = self.peak
        else:
            peak = _status_kb("VmHWM")
        return max(0, peak - self.baseline) / 1024


def b7_imap(contender: Contender, spec: dict[str, Any]) -> Result:
    """B7: imap over a generator; read-ahead, parent peak RSS growth, time.

    B7d is the same with ``buffersize`` None: each library's default read-ahead.
    """
    n, chunksize = int(spec["n"]), int(spec["chunksize"])
    buffersize = None if spec.get("buffersize") is None else int(spec["buffersize"])
    produced = 0

    def gen() -> Iterator[int]:
        # Counts what the pool has pulled from the input, whichever thread pulls.
        nonlocal produced
        for i in range(n):
            produced += 1
            yield i

    session = _open_warm(contender, spec)
    try:
        rss = _PeakRss()
        consumed = 0
        ahead = 0
        total = 0
        t0 = time.perf_counter()
        for r in session.imap(workloads.square, gen(), chunksize, buffersize):
            consumed += 1
            total += r
            lead = produced - consumed
            if lead > ahead:
                ahead = lead
        elapsed = time.perf_counter() - t0
        growth = rss.growth_mb()
    finally:
        session.close()
    _check(consumed == n and total == sum(i * i for i in range(n)), "B7")
    return {"read_ahead": ahead, "rss_mb": growth, "time": elapsed, "rss_method": rss.method}


def b8_state(contender: Contender, spec: dict[str, Any]) -> Result:
    """B8: start a pool whose workers hold a big object, run tasks, stop; seconds."""
    obj = workloads.make_big_object(int(spec["mb"]) * 1024 * 1024)
    tasks = int(spec["tasks"])
    contender.import_check()
    expected = [workloads.use_shared(obj, i) for i in range(tasks)]
    t0 = time.perf_counter()
    out = contender.run_with_state(spec.get("method"), obj, tasks)
    elapsed = time.perf_counter() - t0
    _check(list(out) == expected, "B8")
    return {"time": elapsed, "object": type(obj).__name__}


WORKLOADS: dict[str, Callable[[Contender, dict[str, Any]], Result]] = {
    "B1": b1_tiny,
    "B2": b2_cpu,
    "B3": b3_latency,
    "B4": b4_startup,
    "B5": b5_payload,
    "B6": b6_imbalanced,
    "B7": b7_imap,
    "B7d": b7_imap,
    "B8": b8_state,
}

#: Reference measurements that are not a library: they take the spec only.
FLOORS: dict[str, Callable[[dict[str, Any]], Result]] = {
    "pipe": b3_pipe_floor,
    "copyto": b5_copyto,
}


def probe(key: str) -> Result:
    """Can this contender run here?  Returns its version or the reason it cannot."""
    if key == "numpy":
        try:
            import numpy
        except ImportError as exc:
            return {"ok": False, "reason": f"numpy not installed ({exc})"}
        return {"ok": True, "version": numpy.__version__}
    contender = CONTENDERS[key]
    try:
        contender.import_check()
        # procpool_base: prove once per run that its workers run the other tree.
        checked = contender.check_workers() if isinstance(contender, ProcpoolBase) else ""
    except Exception as exc:
        return {"ok": False, "reason": f"{type(exc).__name__}: {exc}"}
    return {"ok": True, "version": contender.version(), "checked": checked}


def main(argv: list[str]) -> int:
    """Run the measurement described by ``argv[1]`` (JSON) and print its result."""
    spec: dict[str, Any] = json.loads(argv[1])
    nice = int(spec.get("nice", os.environ.get("PROCPOOL_BENCH_NICE", "0")))
    if nice:
        # Set by run.py: on a machine shared with other work, a higher priority for
        # the measurement (inherited by every worker it starts) keeps that work
        # from being measured too.  Needs root; without it, run at normal priority.
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, nice)
        # With autogroup scheduling (Linux default) niceness only ranks processes
        # inside one session; run.py gives each measurement its own session, and
        # this ranks that session against the others.
        with contextlib.suppress(OSError), open("/proc/self/autogroup", "w") as f:
            f.write(str(nice))
    if "probe" in spec:
        result = probe(spec["probe"])
    elif "calibrate" in spec:
        # Here, not in run.py: at the priority the measurements run at.
        result = {"iters_per_s": workloads.calibrate_spin(1.0)}
    elif spec["contender"] in FLOORS:
        result = FLOORS[spec["contender"]](spec)
    else:
        result = WORKLOADS[spec["workload"]](CONTENDERS[spec["contender"]], spec)
    result["pid"] = os.getpid()
    sys.stdout.flush()
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    # The guard matters: under spawn/forkserver, workers import this module as
    # __mp_main__ and must not run a measurement of their own.
    sys.exit(main(sys.argv))

"""Where the hot paths spend: counts that do not depend on the machine's load.

``python benchmarks/hotpath.py B3`` (or B1, B7) runs one workload in a warm fork
pool of 2 workers and prints, per unit of work (a round trip for B3, a map of
200,000 items for B1, a chunk of 1,000 items for B7):

* the CPU time of every thread of the parent and of each worker
  (``/proc/.../schedstat``), and their voluntary and involuntary context switches
  (a voluntary switch is a wake-up: a thread that slept on a pipe, a lock or the
  GIL);
* with ``--lines``, the Python lines and calls executed per unit in the parent
  (every thread) and in a worker, by function: a count, not a time, so it is the
  same however busy the machine is;
* with ``--syscalls``, the system calls per unit of the parent and of the busiest
  worker (``strace -c`` attached around the measured loop only);
* with ``--callgrind``, the machine instructions per unit of the parent and of
  each worker (valgrind's callgrind, the run repeated at two sizes so that start-up
  cancels out). Slow (a minute or two), and the most load-independent figure.

``--src PATH`` measures the procpool in PATH (a ``src`` folder or a checkout)
instead of the installed one, to count before and after a change. Wall-clock
figures are printed too, but on a shared machine only the counts compare.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

#: Units of work per workload: what one "per unit" figure is of.
UNITS = {"B1": "map of 200,000 items", "B3": "round trip", "B7": "imap chunk of 1,000 items"}


def _use_src(src: str | None) -> None:
    if src:
        path = Path(src).resolve()
        if (path / "src" / "procpool").is_dir():
            path = path / "src"
        sys.path.insert(0, str(path))
    sys.path.insert(0, str(HERE))


def _schedstat(pid: int, tid: int | None = None) -> int:
    path = f"/proc/{pid}/task/{tid}/schedstat" if tid else f"/proc/{pid}/schedstat"
    with open(path) as f:
        return int(f.read().split()[0])


def _switches(pid: int, tid: int) -> tuple[int, int]:
    vol = invol = 0
    with open(f"/proc/{pid}/task/{tid}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches"):
                vol = int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches"):
                invol = int(line.split()[1])
    return vol, invol


def _threads(pid: int) -> dict[int, str]:
    names = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            names[int(tid)] = f.read().strip()
    return names


class Snapshot:
    """CPU ns and context switches of every thread of the given processes."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.cpu: dict[str, int] = {}
        self.switches: dict[str, tuple[int, int]] = {}
        # The parent's threads by their Python names (the OS names are all "python").
        names = {t.native_id: t.name for t in threading.enumerate()}
        for who, pid in pids.items():
            for tid, name in _threads(pid).items():
                key = f"{who}/{names.get(tid, name)}" if who == "parent" else who
                self.cpu[key] = self.cpu.get(key, 0) + _schedstat(pid, tid)
                vol, invol = _switches(pid, tid)
                old = self.switches.get(key, (0, 0))
                self.switches[key] = (old[0] + vol, old[1] + invol)


def _workload(name: str, pool: Any) -> tuple[Callable[[], None], int]:
    """The measured action and how many units one call of it is."""
    import workloads

    if name == "B3":

        def round_trips() -> None:
            for _ in range(1000):
                pool.submit(workloads.noop, 1).result()

        return round_trips, 1000
    if name == "B1":
        xs = list(range(200_000))

        def one_map() -> None:
            pool.map(workloads.square, xs).result()

        return one_map, 1

    def gen() -> Iterator[int]:
        yield from range(200_000)

    def imap() -> None:
        total = 0
        for r in pool.imap(workloads.square, gen(), chunksize=1000, buffersize=10_000):
            total += r

    return imap, 200


class LineCounter:
    """Python lines and calls by function, in every thread (sys.settrace)."""

    def __init__(self) -> None:
        self.lines: collections.Counter[tuple[str, str]] = collections.Counter()
        self.calls: collections.Counter[tuple[str, str]] = collections.Counter()
        self.on = False

    def _key(self, frame: Any) -> tuple[str, str]:
        code = frame.f_code
        return (Path(code.co_filename).name, code.co_name)

    def tracer(self, frame: Any, event: str, arg: Any) -> Any:
        if not self.on:
            return None
        if event == "call":
            self.calls[self._key(frame)] += 1
            return self.local
        return None

    def local(self, frame: Any, event: str, arg: Any) -> Any:
        if event == "line" and self.on:
            self.lines[self._key(frame)] += 1
        return self.local

    def report(self, title: str, units: int, top: int = 25) -> str:
        total = sum(self.lines.values()) / units
        calls = sum(self.calls.values()) / units
        out = [f"{title}: {total:.1f} Python lines and {calls:.1f} calls per unit"]
        for key, n in self.lines.most_common(top):
            out.append(
                f"  {n / units:8.1f} lines {self.calls[key] / units:6.1f} calls  {key[0]}:{key[1]}"
            )
        return "\n".join(out)


def _count_worker_lines(units: int) -> None:
    """Trace the workers' loops too (they are forked after this patch)."""
    from procpool import _workers
    from procpool._child import worker

    original = worker.worker_main

    def traced(*args: Any) -> None:
        counter = LineCounter()
        counter.on = True
        sys.settrace(counter.tracer)
        try:
            original(*args)
        finally:
            sys.settrace(None)
            if sum(counter.lines.values()) > 10 * units:  # the busy worker only
                print(counter.report(f"worker {os.getpid()}", units), flush=True)

    _workers.worker_main = traced  # type: ignore[attr-defined]


def measure(args: argparse.Namespace) -> None:
    import procpool

    counter = LineCounter() if args.lines else None
    if counter is not None:
        threading.settrace(counter.tracer)
        _count_worker_lines((args.reps + 1) * _units_of(args.workload))
    pool = procpool.Pool(2, context="fork")
    pool.submit(int, 1).result()
    action, units = _workload(args.workload, pool)
    action()  # warm: every lazily built thing exists before counting
    parent = os.getpid()
    pids = {"parent": parent}
    for i, w in enumerate(pool._dispatcher.workers.values()):
        pids[f"worker{i}"] = w.process.pid
    print(f"PIDS {' '.join(f'{k}={v}' for k, v in pids.items())}", file=sys.stderr, flush=True)
    tracers = _attach_strace(pids) if args.syscalls else []
    before = Snapshot(pids)
    if counter is not None:
        counter.on = True
        sys.settrace(counter.tracer)
    t0 = time.perf_counter()
    for _ in range(args.reps):
        action()
    wall = time.perf_counter() - t0
    if counter is not None:
        sys.settrace(None)
        counter.on = False
    after = Snapshot(pids)
    n = args.reps * units
    print(f"{args.workload}, per {UNITS[args.workload]} ({n} measured):")
    print(f"  wall {wall / n * 1e6:10.1f} µs (load-dependent)")
    for key in after.cpu:
        cpu = (after.cpu[key] - before.cpu.get(key, 0)) / n / 1000
        vol = (after.switches[key][0] - before.switches.get(key, (0, 0))[0]) / n
        invol = (after.switches[key][1] - before.switches.get(key, (0, 0))[1]) / n
        if cpu or vol:
            print(
                f"  {key:32s} cpu {cpu:10.1f} µs  switches {vol:7.2f} voluntary {invol:6.2f} forced"
            )
    _detach_strace(tracers, n)
    if counter is not None:
        print(counter.report("parent (every thread)", n))
    pool.shutdown()


def _units_of(workload: str) -> int:
    return {"B3": 1000, "B1": 1, "B7": 200}[workload]


def _attach_strace(pids: dict[str, int]) -> list[tuple[str, subprocess.Popen[bytes], str]]:
    tracers = []
    for who, pid in pids.items():
        out = f"/tmp/hotpath-strace-{pid}"
        proc = subprocess.Popen(
            ["strace", "-c", "-f", "-p", str(pid), "-o", out],
            stderr=subprocess.DEVNULL,
        )
        tracers.append((who, proc, out))
    time.sleep(1.0)  # attaching takes a moment; nothing is measured yet
    return tracers


def _detach_strace(tracers: list[tuple[str, subprocess.Popen[bytes], str]], n: int) -> None:
    for who, proc, out in tracers:
        proc.send_signal(signal.SIGINT)
        proc.wait()
        counts = []
        with open(out) as f:
            for line in f:
                m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$", line)
                if m and m.group(2) != "total" and int(m.group(1)) >= n // 2:
                    counts.append(f"{m.group(2)} {int(m.group(1)) / n:.2f}")
        os.unlink(out)
        print(f"  syscalls per unit, {who}: {', '.join(counts) or 'none'}")


def callgrind(args: argparse.Namespace) -> None:
    """Instructions per unit: the run at two sizes under callgrind, the difference."""
    totals = []
    small, large = max(1, args.reps // 3), args.reps
    for reps in (small, large):
        cmd = [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            args.workload,
            "--reps",
            str(reps),
        ] + (["--src", args.src] if args.src else [])
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        line = done.stderr.split("PIDS ", 1)[1].split("\n", 1)[0]
        pids = {pid: who for who, pid in re.findall(r"(\w+)=(\d+)", line)}
        counts = {
            pids.get(pid, pid): int(n.replace(",", ""))
            for pid, n in re.findall(r"==(\d+)== Collected : ([\d,]+)", done.stderr)
        }
        totals.append(counts)
    n = (large - small) * _units_of(args.workload)
    print(f"{args.workload}: machine instructions per {UNITS[args.workload]} (callgrind):")
    for who in totals[1]:
        if who in totals[0] and totals[1][who] - totals[0][who] > 1000 * n:
            print(f"  {who:10s} {(totals[1][who] - totals[0][who]) / n:12,.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workload", choices=sorted(UNITS))
    parser.add_argument("--reps", type=int, default=None, help="repetitions of the unit's batch")
    parser.add_argument("--lines", action="store_true", help="count Python lines per unit")
    parser.add_argument("--syscalls", action="store_true", help="count system calls (strace)")
    parser.add_argument("--callgrind", action="store_true", help="count instructions (valgrind)")
    parser.add_argument("--src", help="measure the procpool of this source tree")
    args = parser.parse_args(argv)
    if args.reps is None:
        args.reps = {"B3": 3, "B1": 6, "B7": 3}[args.workload]
        if args.callgrind:
            args.reps = {"B3": 3, "B1": 3, "B7": 2}[args.workload]
    _use_src(args.src)
    if args.callgrind:
        callgrind(args)
    else:
        measure(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

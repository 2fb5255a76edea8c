"""procpool benchmark harness (issue 4): ``python benchmarks/run.py [--quick]``.

Measures procpool side by side with serial code, ``multiprocessing.Pool``,
``concurrent.futures.ProcessPoolExecutor`` (default and tuned chunksize), loky,
pebble, mpire and joblib on workloads B1-B8 (and B7d: B7 with the default
buffersize), and writes a Markdown report that opens with a summary in plain
words (one line per workload: procpool against the standard library and the best
other library, and its target), then one table of figures and ratios with the
status of each of procpool's targets, the plot, the machine and the method.
With ``--procpool-base PATH`` it also measures the procpool found in PATH (e.g. a
worktree of the commit before a change) as one more contender, interleaved with
this tree's, and adds a table of the two against each other (``compare.py``).

Method, and why:

* Every figure is the median of ``--reps`` (default 5) runs, *interleaved*: each
  repetition visits every contender once (round-robin, starting one further on
  each time), so a slow minute of the machine hits everyone alike.
* Every single run is a fresh process (``measure.py``) with a timeout and its own
  process group, killed whole on expiry: a library that hangs cannot stall the
  run, and no library inherits another's warm state or peak memory.
* Two workers everywhere; the comparison uses the ``fork`` start method for every
  library that allows it (the issue's reference figures are fork), B4 also spawn,
  forkserver and each library's default.
* Libraries that are not installed (quick mode in the development venv) and
  workloads whose needs are missing (numpy for B5) are skipped with the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from contenders import BASE_ENV, CONTENDERS, WORKERS  # noqa: E402

COMPARISON_METHOD = "fork"
"""Start method of the comparison table (the issue's reference figures are fork)."""

FLOOR_LABELS = {"pipe": "bare Pipe", "copyto": "np.copyto"}
"""Reference measurements that are not a library (the "limit" column of B3, B5)."""

#: The limit of each workload that has one, in a user's words: what no pool can
#: do better than on this machine (issue 24), measured in the same run.
LIMITS = {
    "B1": "the same loop run serially in one process",
    "B3": "a bare `multiprocessing.Pipe` round trip between two processes",
    "B5": "copying the same arrays once with `np.copyto` in one process",
}

# Contenders of the full run, in column order (the Dask hook adds "dask").
DEFAULT_CONTENDERS = [
    "serial",
    "mp",
    "ppe",
    "ppe_tuned",
    "loky",
    "pebble",
    "mpire",
    "joblib",
    "procpool",
    "dask",
]


@dataclass(frozen=True)
class Sizes:
    """Workload sizes; ``FULL`` is issue 4's, ``QUICK`` only proves the harness works."""

    reps: int
    timeout: float  # seconds, per single measurement process
    deadline: float  # seconds for the whole run; later measurements are skipped
    b1_n: int
    b1_slow_n: int  # items for libraries that send one message per item
    b2_tasks: int
    b2_seconds: float
    b3_calls: int
    b5_count: int
    b5_mb: int
    b6_long: int  # number of long tasks
    b6_short: int  # number of short tasks
    b6_long_s: float
    b6_short_s: tuple[float, float]
    b7_n: int
    b7_chunksize: int
    b7_buffersize: int
    b8_mb: int
    b8_tasks: int


FULL = Sizes(
    reps=5,
    timeout=240,
    deadline=40 * 60,
    b1_n=200_000,
    b1_slow_n=5_000,
    b2_tasks=32,
    b2_seconds=0.050,
    b3_calls=2_000,
    b5_count=64,
    b5_mb=8,
    b6_long=6,
    b6_short=58,
    b6_long_s=0.150,
    b6_short_s=(0.005, 0.025),
    b7_n=2_000_000,
    b7_chunksize=1_000,
    b7_buffersize=10_000,
    b8_mb=200,
    b8_tasks=1_000,
)

QUICK = Sizes(
    reps=2,
    timeout=30,
    # Every library and workload takes ~1 min on 2 idle cores; twice that when
    # other work shares them, and quick mode is there to run every workload once.
    deadline=180,
    b1_n=2_000,
    b1_slow_n=500,
    b2_tasks=4,
    b2_seconds=0.005,
    b3_calls=50,
    b5_count=4,
    b5_mb=1,
    b6_long=2,
    b6_short=14,
    b6_long_s=0.010,
    b6_short_s=(0.001, 0.003),
    b7_n=20_000,
    b7_chunksize=100,
    b7_buffersize=1_000,
    b8_mb=8,
    b8_tasks=20,
)


# --------------------------------------------------------------------------- running


@dataclass
class Job:
    """One workload configuration, measured for several contenders x reps."""

    name: str  # e.g. "B4 spawn"
    workload: str  # key in measure.WORKLOADS
    contenders: list[str]
    spec: dict[str, Any]
    #: Per-contender overrides of the spec (e.g. fewer items for slow libraries).
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: results[contender] = list of result dicts, one per successful rep
    results: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: why a contender has fewer figures than asked (error, timeout, deadline)
    failures: dict[str, str] = field(default_factory=dict)
    #: stderr tail of the last failed run of each contender (kept in the raw JSON)
    details: dict[str, str] = field(default_factory=dict)


class Runner:
    """Runs measurement processes with a timeout and an overall deadline."""

    def __init__(
        self,
        sizes: Sizes,
        verbose: bool = True,
        quiet_gate: float = 0.0,
        nice: int = 0,
        base_src: Path | None = None,
    ) -> None:
        self.sizes = sizes
        self.verbose = verbose
        #: Longest wait (s) for the CPUs to be idle before a measurement; 0: never wait.
        self.quiet_gate = quiet_gate
        self.runs = 0
        self.noisy_runs = 0
        #: Total waiting allowed over the whole run, so a busy machine delays the
        #: run by minutes, not hours.
        self.quiet_budget = 15 * quiet_gate
        self.waited = 0.0
        self.deadline = time.monotonic() + sizes.deadline
        self.env = dict(os.environ)
        # Children of every start method must import workloads/contenders.
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p
        )
        # Chatter from libraries (e.g. fork-with-threads DeprecationWarnings on
        # 3.12+) would drown the progress lines; failures still show stderr.
        self.env.setdefault("PYTHONWARNINGS", "ignore")
        self.env["PROCPOOL_BENCH_NICE"] = str(nice)
        #: procpool_base's processes: the other procpool first on the path, ahead of
        #: this tree's editable install, for the measuring process and (through the
        #: environment) the workers of every start method.
        self.base_env = dict(self.env)
        if base_src is not None:
            self.base_env[BASE_ENV] = str(base_src)
            self.base_env["PYTHONPATH"] = os.pathsep.join([str(base_src), self.env["PYTHONPATH"]])

    def wait_for_quiet(self) -> None:
        """Wait (at most ``quiet_gate`` s) until other work leaves the CPUs alone.

        The machine is shared (builds and test suites of other sessions run on the
        same 2 cores): a measurement started while they run measures them too.
        Between measurements nothing of ours runs, so CPU time used in a short
        window is someone else's.  Runs started anyway are counted as noisy.
        """
        self.runs += 1
        if self.quiet_gate <= 0:
            return
        t0 = time.monotonic()
        if self.waited >= self.quiet_budget:
            self.noisy_runs += 1
            return
        give_up = t0 + min(self.quiet_gate, self.quiet_budget - self.waited)
        try:
            while True:
                busy = _cpu_busy(0.1)
                if busy is None or busy < QUIET_BUSY:
                    return
                if time.monotonic() > give_up:
                    self.noisy_runs += 1
                    return
                time.sleep(0.4)
        finally:
            self.waited += time.monotonic() - t0

    def log(self, msg: str) -> None:
        if self.verbose:
            print(msg, file=sys.stderr, flush=True)

    def measure(self, spec: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Run ``measure.py`` on ``spec``; return its result or raise MeasurementError."""
        timeout = self.sizes.timeout if timeout is None else timeout
        key = spec.get("contender", spec.get("probe"))
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "measure.py"), json.dumps(spec)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.base_env if key == "procpool_base" else self.env,
            cwd=ROOT,
            # Own process group: on timeout the pool's workers die with it.
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill_group(proc.pid)
            proc.communicate()
            raise MeasurementError(f"timeout after {timeout:.0f} s", timed_out=True) from None
        finally:
            # Whatever the library left running (reusable executors, forkserver,
            # resource tracker) must not compete with the next measurement.
            self._kill_group(proc.pid)
        for line in reversed(out.splitlines()):
            if line.startswith("RESULT "):
                return json.loads(line[len("RESULT ") :])  # type: ignore[no-any-return]
        lines = err.strip().splitlines() or ["no output"]
        raise MeasurementError(f"exit {proc.returncode}: {lines[-1][:200]}", "\n".join(lines[-30:]))

    @staticmethod
    def _kill_group(pgid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)

    def run(self, job: Job) -> None:
        """Measure every contender of ``job`` ``reps`` times, interleaved."""
        failed: dict[str, int] = {}
        gave_up: set[str] = set()
        for rep in range(self.sizes.reps):
            shift = rep % len(job.contenders)
            order = job.contenders[shift:] + job.contenders[:shift]
            for key in order:
                if key in gave_up:
                    continue
                if time.monotonic() > self.deadline:
                    job.failures[key] = "skipped: overall deadline reached"
                    gave_up.add(key)
                    continue
                spec = {**job.spec, **job.overrides.get(key, {}), "contender": key}
                self.wait_for_quiet()
                t0 = time.monotonic()
                try:
                    result = self.measure(spec)
                except MeasurementError as exc:
                    failed[key] = failed.get(key, 0) + 1
                    job.failures[key] = f"{failed[key]} run(s) failed, last: {exc}"
                    job.details[key] = exc.details
                    self.log(f"  {job.name:<14} rep {rep + 1} {key:<10} FAILED {exc}")
                    # A hang costs a whole timeout each time, and an error seen twice
                    # is not bad luck: stop paying for it.  One error may be a fluke.
                    if exc.timed_out or failed[key] >= 2:
                        gave_up.add(key)
                    continue
                result["rep"] = rep  # pairs the figures of one repetition (base comparison)
                job.results.setdefault(key, []).append(result)
                shown = {k: v for k, v in result.items() if k not in ("pid", "rep")}
                self.log(
                    f"  {job.name:<14} rep {rep + 1} {key:<10} "
                    f"{_brief(shown)} [{time.monotonic() - t0:.1f} s]"
                )


class MeasurementError(RuntimeError):
    """A measurement process failed or hung; ``details`` has its stderr tail."""

    def __init__(self, message: str, details: str = "", *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.details = details
        self.timed_out = timed_out


QUIET_BUSY = 0.25
"""Fraction of all CPUs busy (over 0.1 s) above which the machine is not quiet."""


def _cpu_stat() -> tuple[int, int] | None:
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return idle, sum(fields[:8])


def _cpu_busy(window: float) -> float | None:
    """Fraction of all CPUs busy during the next ``window`` seconds (None: unknown)."""
    a = _cpu_stat()
    time.sleep(window)
    b = _cpu_stat()
    if a is None or b is None or b[1] == a[1]:
        return None
    return 1.0 - (b[0] - a[0]) / (b[1] - a[1])


def _brief(result: dict[str, Any]) -> str:
    return " ".join(f"{k}={fmt(v) if isinstance(v, float) else v}" for k, v in result.items())


def median_of(job: Job, key: str, metric: str) -> float | None:
    """Median of ``metric`` over the successful reps of ``key`` (None if none)."""
    values = [float(r[metric]) for r in job.results.get(key, [])]
    return statistics.median(values) if values else None


# --------------------------------------------------------------------------- table model

STDLIB = ("mp", "ppe", "ppe_tuned")
"""The standard library's pools: the summary compares procpool with the best of them."""

OURS = ("procpool", "procpool_base", "dask")
"""procpool itself (this tree, another tree, the Dask backend): never a "peer"."""


@dataclass
class Cell:
    """One figure of the table, with footnote marks."""

    value: float | None
    marks: str = ""
    why: str = ""  # reason there is no value
    #: the figure of each successful repetition, by repetition number
    runs: dict[int, float] = field(default_factory=dict)


@dataclass
class Row:
    """One line of the table: a metric of a workload, across contenders."""

    label: str
    unit: str
    better: str  # "lower" or "higher"
    cells: dict[str, Cell] = field(default_factory=dict)
    #: The limit measured beside procpool in the same repetitions (issue 24): the
    #: serial time (B1), a bare Pipe echo (B3), np.copyto (B5).
    floor: Cell | None = None
    target: str = ""
    measured: str = ""
    status: str = ""  # "met", "MISSED", "n/a" or "" (no target on this row)
    #: value a target line is drawn at in the plot (absolute targets only)
    target_value: float | None = None
    #: whether the plot shows the serial bar (meaningless for latency, state, memory)
    plot_serial: bool = True
    # For the summary at the top of the report, in words a user reads:
    group: str = ""  # the job it comes from ("B1", "B4", "B7d"); one summary line each
    metric: str = ""  # what the figure is ("time", "items read ahead")
    goal: str = ""  # the target in words ("at most 0.8x multiprocessing.Pool's time")
    headline: bool = False  # the row compared with the other libraries in the summary
    ref: str = ""  # the library the target is relative to, if one
    miss: float | None = None  # how far past its target, as a fraction (MISSED only)


def fmt(v: float | None) -> str:
    """Three significant digits, no exponent (the table is read by people)."""
    if v is None:
        return "—"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    if a == 0:
        return "0"
    return f"{v:.3g}"


def _judge(row: Row, value: float | None, limit: float, *, strict: bool = False) -> None:
    """Set ``row.status`` from ``value`` against ``limit`` in the row's direction.

    ``value`` is what the target is about: the figure itself or a ratio to
    another library; ``strict``: the target is "under", not "at most".
    """
    if value is None:
        row.status = "n/a"
        return
    if row.better == "lower":
        ok = value < limit if strict else value <= limit
        miss = value / limit - 1
    else:
        ok = value >= limit
        miss = 1 - value / limit
    row.status = "met" if ok else "MISSED"
    row.miss = None if ok else miss


def _runs(job: Job, key: str) -> list[tuple[int, dict[str, Any]]]:
    """``(repetition, result)`` of each successful run (older JSON has no "rep")."""
    return [(int(r.get("rep", i)), r) for i, r in enumerate(job.results.get(key, []))]


def _cells(job: Job, metric: str, keys: list[str]) -> dict[str, Cell]:
    cells: dict[str, Cell] = {}
    for key in keys:
        if key not in job.contenders:
            continue
        runs = {rep: float(r[metric]) for rep, r in _runs(job, key)}
        value = statistics.median(runs.values()) if runs else None
        cell = Cell(value, why=job.failures.get(key, ""), runs=runs)
        if value is not None and key in job.failures:
            cell.marks = "§"  # fewer successful runs than asked
        cells[key] = cell
    return cells


def _paired_cells(
    job: Job, keys: list[str], ratio: Callable[[float, float], float]
) -> dict[str, Cell]:
    """Median over runs of ``ratio(serial, time)``, each run timed against its own
    serial run (B2, B6); the serial column is the ratio of serial to itself."""
    cells: dict[str, Cell] = {}
    for key in keys:
        if key == "serial":
            cells[key] = Cell(ratio(1.0, 1.0))  # by definition; not measured again
            continue
        if key not in job.contenders:
            continue
        runs = {
            rep: ratio(float(r["serial"]), float(r["time"]))
            for rep, r in _runs(job, key)
            if r["time"] > 0
        }
        value = statistics.median(runs.values()) if runs else None
        cell = Cell(value, why=job.failures.get(key, ""), runs=runs)
        if runs and key in job.failures:
            cell.marks = "§"
        cells[key] = cell
    return cells


def _best_of(cells: dict[str, Cell], better: str, keys: Iterable[str]) -> tuple[str, float] | None:
    """The contender of ``keys`` with the best figure, and that figure."""
    found = [(k, c.value) for k, c in cells.items() if c.value is not None and k in keys]
    if not found:
        return None
    return (min if better == "lower" else max)(found, key=lambda kv: kv[1])


def _best_peer(cells: dict[str, Cell], better: str) -> tuple[str, float] | None:
    """The best library that is not procpool (standard library included)."""
    return _best_of(cells, better, [k for k in cells if k != "serial" and k not in OURS])


def _ratio_to(cells: dict[str, Cell], ref: str) -> float | None:
    pp, other = cells.get("procpool"), cells.get(ref)
    if pp is None or other is None or pp.value is None or other.value is None:
        return None
    return pp.value / other.value if other.value else None


def _value(cells: dict[str, Cell], key: str = "procpool") -> float | None:
    return cells.get(key, Cell(None)).value


def _floor_cell(job: Job, key: str, metric: str) -> Cell:
    """The limit measured in ``job`` by reference ``key``, with its figure of each run."""
    runs = {rep: float(r[metric]) for rep, r in _runs(job, key)}
    return Cell(
        statistics.median(runs.values()) if runs else None, why=job.failures.get(key, ""), runs=runs
    )


def limit_ratio(row: Row, key: str = "procpool") -> tuple[float, float, float] | None:
    """``key``'s figure over the row's limit: (ratio of the medians, lowest, highest
    ratio within one repetition), or None. Below 1 is faster than the limit for
    times, slower for rates."""
    cell, floor = row.cells.get(key), row.floor
    if cell is None or floor is None or cell.value is None or not floor.value:
        return None
    per_rep = [
        cell.runs[k] / floor.runs[k] for k in cell.runs.keys() & floor.runs.keys() if floor.runs[k]
    ]
    ratio = cell.value / floor.value
    return (ratio, min(per_rep, default=ratio), max(per_rep, default=ratio))


def _spread(ratio: tuple[float, float, float] | None, suffix: str = "x") -> str:
    """``1.70x (1.52-1.98)``: a ratio of medians and its range over single repetitions."""
    if ratio is None:
        return "—"
    value, low, high = ratio
    return f"{fmt(value)}{suffix} ({fmt(low)}-{fmt(high)})"


def _against_limit(
    label: str,
    unit: str,
    better: str,
    cells: dict[str, Cell],
    floor: Cell,
    limit: float,
    short: str,
    *,
    also: str = "",
    **fields: Any,
) -> Row:
    """A row judged against its limit: procpool's figure at most (``better`` lower) or
    at least (higher) ``limit`` x the limit's, both from the same repetitions.

    ``short`` names the limit in the table (``serial``, ``Pipe``); ``also`` follows
    the measured ratio.
    """
    row = Row(label, unit, better, cells, floor=floor, headline=True, **fields)
    ratio = limit_ratio(row)
    sign = "≤" if better == "lower" else "≥"
    row.target = f"{sign} {limit}x {short}"
    row.measured = _spread(ratio, f"x {short}") + also if ratio else "—"
    _judge(row, ratio[0] if ratio else None, limit)
    return row


# --------------------------------------------------------------------------- workloads


def b6_durations(sizes: Sizes) -> list[float]:
    """B6 task durations in seconds: a few long, many short, shuffled (fixed seed)."""
    rng = random.Random(4)  # fixed: every contender and every run gets the same order
    lo, hi = sizes.b6_short_s
    durations = [sizes.b6_long_s] * sizes.b6_long
    durations += [rng.uniform(lo, hi) for _ in range(sizes.b6_short)]
    rng.shuffle(durations)
    return durations


def procpool_default_buffersize(chunksize: int) -> int:
    """procpool's ``imap`` read-ahead when none is given (its docstring:
    ``4 * workers * chunksize``): the B7d target."""
    return 4 * WORKERS * chunksize


def build_jobs(
    sizes: Sizes, contenders: list[str], have_numpy: bool, iters_per_s: int
) -> tuple[list[Job], list[str]]:
    """The measurement jobs of B1-B8 (and B7d) for these contenders; plus skip notes."""
    notes: list[str] = []
    # The Dask backend only runs B2 and B3 (issue 6); everything else is local pools.
    dask = ["dask"] if "dask" in contenders else []
    contenders = [k for k in contenders if k != "dask"]
    peers = [k for k in contenders if k != "serial"]
    fork = {"method": COMPARISON_METHOD}
    jobs: list[Job] = []

    slow = {
        k: {"n": sizes.b1_slow_n}
        for k in contenders
        if CONTENDERS[k].slow_default_map and sizes.b1_slow_n < sizes.b1_n
    }
    jobs.append(Job("B1", "B1", contenders, {"workload": "B1", **fork, "n": sizes.b1_n}, slow))

    b2_iters = int(iters_per_s * sizes.b2_seconds)
    # B2 and B6 time serial code inside every run (see measure._paired).
    b2 = peers + dask
    jobs.append(
        Job(
            "B2",
            "B2",
            b2,
            {"workload": "B2", **fork, "tasks": sizes.b2_tasks, "iters": b2_iters},
        )
    )
    # A joblib or Dask round trip is ~10 ms: 2,000 would cost 20 s a run, for a median.
    b3_slow = {k: {"calls": min(200, sizes.b3_calls)} for k in b2 if CONTENDERS[k].slow_round_trip}
    # B3 runs at normal priority: under a raised (autogroup) priority, thread
    # hand-offs slow down - mp.Pool's round trip went from ~60 to ~250 µs here.
    b3_spec = {"workload": "B3", **fork, "calls": sizes.b3_calls, "nice": 0}
    jobs.append(Job("B3", "B3", [*b2, "pipe"], b3_spec, b3_slow))
    for method in ("fork", "spawn", "forkserver", None):
        keys = [k for k in peers if method is None or method in CONTENDERS[k].methods]
        jobs.append(
            Job(f"B4 {method or 'default'}", "B4", keys, {"workload": "B4", "method": method})
        )
    if have_numpy:
        jobs.append(
            Job(
                "B5",
                "B5",
                [*peers, "copyto"],
                {"workload": "B5", **fork, "count": sizes.b5_count, "mb": sizes.b5_mb},
            )
        )
    else:
        notes.append("B5 skipped: numpy is not installed in this venv (make bench installs it).")
    iters = [int(d * iters_per_s) for d in b6_durations(sizes)]
    jobs.append(Job("B6", "B6", peers, {"workload": "B6", **fork, "iters": iters}))
    b7_spec = {
        "workload": "B7",
        **fork,
        "n": sizes.b7_n,
        "chunksize": sizes.b7_chunksize,
        "buffersize": sizes.b7_buffersize,
    }
    jobs.append(Job("B7", "B7", contenders, b7_spec))
    # B7d: what a caller who passes no buffersize gets.  Only a library whose imap
    # takes one behaves differently from B7; mp.Pool runs again as the reference
    # of the time target, in the same repetitions.
    b7d = [k for k in contenders if k == "mp" or CONTENDERS[k].imap_buffersize]
    if any(CONTENDERS[k].imap_buffersize for k in b7d):
        spec = {**b7_spec, "workload": "B7d", "buffersize": None}
        jobs.append(Job("B7d", "B7d", b7d, spec))
    jobs.append(
        Job(
            "B8",
            "B8",
            contenders,
            {"workload": "B8", **fork, "mb": sizes.b8_mb, "tasks": sizes.b8_tasks},
        )
    )
    return jobs, notes


def _measured(value: float | None, suffix: str = "") -> str:
    """A figure as the table's "procpool measured" column shows it ("—": none)."""
    return "—" if value is None else fmt(value) + suffix


def _against_mp(
    label: str,
    unit: str,
    cells: dict[str, Cell],
    limit: float,
    *,
    of: str = "mp.Pool",
    also: str = "",
    **fields: Any,
) -> Row:
    """A headline row, judged: procpool's figure at most ``limit`` x multiprocessing.Pool's.

    ``of`` names what the target compares with, ``also`` follows the measured ratio;
    ``fields`` are the rest of the Row.
    """
    r = _ratio_to(cells, "mp")
    row = Row(
        label,
        unit,
        "lower",
        cells,
        target=f"≤ {limit}x {of}",
        measured=_measured(r, f"x mp.Pool{also}"),
        headline=True,
        ref="mp",
        **fields,
    )
    _judge(row, r, limit)
    return row


def _against_best_peer(
    label: str, unit: str, better: str, cells: dict[str, Cell], limit: float, **fields: Any
) -> Row:
    """A row, judged: procpool's figure against ``limit`` x the best other library's."""
    best = _best_peer(cells, better)
    pp = _value(cells)
    r = pp / best[1] if pp is not None and best else None
    measured = f"{fmt(r)}x {CONTENDERS[best[0]].label}" if r and best else "—"
    row = Row(label, unit, better, cells, measured=measured, **fields)
    _judge(row, r, limit)
    return row


def _absolute(
    label: str,
    unit: str,
    better: str,
    cells: dict[str, Cell],
    limit: float,
    *,
    suffix: str = "",
    strict: bool = False,
    plot_target: bool = True,
    **fields: Any,
) -> Row:
    """A row, judged: procpool's own figure against ``limit`` (``strict``: "under").

    ``suffix`` follows the measured figure; the plot draws the limit unless
    ``plot_target`` is false.
    """
    pp = _value(cells)
    row = Row(
        label,
        unit,
        better,
        cells,
        measured=_measured(pp, suffix),
        target_value=limit if plot_target else None,
        **fields,
    )
    _judge(row, pp, limit, strict=strict)
    return row


def build_rows(jobs: dict[str, Job], sizes: Sizes, keys: list[str]) -> list[Row]:
    """Turn medians into table rows and evaluate procpool's targets."""
    rows: list[Row] = []
    cols = list(dict.fromkeys([*keys, "dask"]))
    mp_name = CONTENDERS["mp"].long_label

    if "B1" in jobs:
        job = jobs["B1"]
        cells = _cells(job, "time", cols)
        for key, over in job.overrides.items():
            cell = cells.get(key)
            if cell is not None and cell.value is not None:
                scale = sizes.b1_n / over["n"]
                cell.value *= scale
                cell.runs = {rep: v * scale for rep, v in cell.runs.items()}
                cell.marks += "†"
        serial = cells.get("serial")
        r_mp = _ratio_to(cells, "mp")
        rows.append(
            _against_limit(
                "B1 tiny tasks: map time",
                "s",
                "lower",
                cells,
                Cell(serial.value, runs=dict(serial.runs)) if serial else Cell(None),
                1.5,
                "serial",
                also=f", {fmt(r_mp)}x mp.Pool" if r_mp else "",
                ref="mp",
                group="B1",
                metric="time",
                goal="at most 1.5x the time of the same loop run serially",
            )
        )

    if "B2" in jobs:
        rows.append(
            _absolute(
                "B2 CPU-bound: speed-up over serial",
                "x",
                "higher",
                _paired_cells(jobs["B2"], cols, lambda serial, t: serial / t),
                1.9,
                target="≥ 1.9",
                group="B2",
                metric="speed-up over serial code",
                goal=f"at least 1.9x on {WORKERS} workers",
                headline=True,
            )
        )

    if "B3" in jobs:
        job = jobs["B3"]
        cells = _cells(job, "latency_us", cols)
        r_mp = _ratio_to(cells, "mp")
        rows.append(
            _against_limit(
                "B3 latency: submit→result",
                "µs",
                "lower",
                cells,
                _floor_cell(job, "pipe", "latency_us"),
                2.5,
                "Pipe",
                also=f", {fmt(r_mp)}x mp.Pool" if r_mp else "",
                ref="mp",
                plot_serial=False,
                group="B3",
                metric="round-trip time",
                goal="at most 2.5x a bare `multiprocessing.Pipe` round trip",
            )
        )

    for method in ("fork", "spawn", "forkserver", "default"):
        b4 = jobs.get(f"B4 {method}")
        if b4 is None:
            continue
        cells = _cells(b4, "time", cols)
        label = f"B4 start-up: {method}"
        if method == "fork":
            row = _against_mp(
                label,
                "s",
                cells,
                1.0,
                group="B4",
                metric="time with fork",
                goal=f"no slower than {mp_name}",
            )
        elif method == "default":
            row = _absolute(
                label,
                "s",
                "lower",
                cells,
                0.1,
                suffix=" s",
                strict=True,
                target="< 0.1 s",
                group="B4",
                metric="time with each library's default start method",
                goal="under 0.1 s",
            )
        else:
            row = Row(label, "s", "lower", cells, group="B4")
        rows.append(row)

    if "B5" in jobs:
        job = jobs["B5"]
        for metric, label, words in (
            ("identity_mbs", "identity", "throughput, arrays sent back"),
            ("sum_mbs", "sum", "throughput, only their sums sent back"),
        ):
            floor = _floor_cell(job, "copyto", metric)
            cells = _cells(job, metric, cols)
            if label == "identity":
                best = _best_peer(cells, "higher")
                pp = _value(cells)
                vs_peer = (
                    f", {fmt(pp / best[1])}x {CONTENDERS[best[0]].label}" if pp and best else ""
                )
                rows.append(
                    _against_limit(
                        f"B5 {sizes.b5_mb} MB arrays: {label}",
                        "MB/s",
                        "higher",
                        cells,
                        floor,
                        0.5,
                        "np.copyto",
                        also=vs_peer,
                        group="B5",
                        metric=words,
                        goal="at least 0.5x the rate of `np.copyto` in one process",
                    )
                )
                continue
            rows.append(
                _against_best_peer(
                    f"B5 {sizes.b5_mb} MB arrays: {label}",
                    "MB/s",
                    "higher",
                    cells,
                    2.0,
                    floor=floor,
                    target="≥ 2x best peer",
                    group="B5",
                    metric=words,
                    goal="at least 2x the best other pool's",
                )
            )

    if "B6" in jobs:
        rows.append(
            _absolute(
                "B6 imbalanced: makespan / ideal",
                "x",
                "lower",
                _paired_cells(jobs["B6"], cols, lambda serial, t: t / (serial / WORKERS)),
                1.05,
                target="≤ 1.05",
                group="B6",
                metric="time against the ideal (serial time / workers)",
                goal="at most 1.05x",
                headline=True,
            )
        )

    for name, buffersize, words in (
        ("B7", sizes.b7_buffersize, "the buffersize"),
        ("B7d", procpool_default_buffersize(sizes.b7_chunksize), "procpool's default buffersize"),
    ):
        if name in jobs:
            rows += _b7_rows(jobs[name], cols, buffersize, words)

    if "B8" in jobs:
        rows.append(
            _against_best_peer(
                f"B8 {sizes.b8_mb} MB worker state: total time",
                "s",
                "lower",
                _cells(jobs["B8"], "time", cols),
                1.0,
                plot_serial=False,
                target="≤ best peer",
                group="B8",
                metric="time",
                goal="no slower than the best other pool",
                headline=True,
            )
        )
    return rows


def _b7_rows(job: Job, cols: list[str], buffersize: int, words: str) -> list[Row]:
    """B7 or B7d: read-ahead, memory and time of ``imap`` over a generator."""
    title = "B7 imap" if job.name == "B7" else "B7d imap, default buffersize"
    return [
        _absolute(
            f"{title}: items read ahead",
            "items",
            "lower",
            _cells(job, "read_ahead", cols),
            buffersize,
            plot_target=False,
            plot_serial=False,
            target=f"≤ {'buffersize' if job.name == 'B7' else 'default'} ({buffersize:,})",
            group=job.name,
            metric="items read ahead of the consumer",
            goal=f"at most {words} ({buffersize:,})",
        ),
        _absolute(
            f"{title}: parent peak RSS growth",
            "MB",
            "lower",
            _cells(job, "rss_mb", cols),
            5,
            suffix=" MB",
            strict=True,
            plot_serial=False,
            target="< 5 MB",
            group=job.name,
            metric="growth of the parent's memory",
            goal="under 5 MB",
        ),
        _against_mp(
            f"{title}: total time",
            "s",
            _cells(job, "time", cols),
            0.85,
            of="mp.Pool.imap",
            group=job.name,
            metric="total time",
            goal=f"at most 0.85x {CONTENDERS['mp'].long_label}.imap's time",
        ),
    ]


# --------------------------------------------------------------------------- output


def _markdown_table(header: list[str], lines: list[list[str]]) -> str:
    """A Markdown table, padded so that it also reads well in a terminal."""
    widths = [max(len(h), *(len(x[i]) for x in lines)) for i, h in enumerate(header)]

    def fmt_line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)) + " |"

    out = [fmt_line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [fmt_line(x) for x in lines]
    return "\n".join(out)


def render_table(rows: list[Row], keys: list[str]) -> str:
    """The full table: every figure of every library, with procpool's targets."""
    used = [k for k in dict.fromkeys([*keys, "dask"]) if any(k in r.cells for r in rows)]
    has_floor = any(r.floor is not None for r in rows)
    header = ["workload", "unit"] + [CONTENDERS[k].label for k in used]
    header += (["limit", "procpool / limit"] if has_floor else []) + [
        "target",
        "procpool measured",
        "status",
    ]
    lines: list[list[str]] = []
    for r in rows:
        line = [r.label, r.unit]
        for k in used:
            c = r.cells.get(k)
            if c is None:
                line.append("")
            elif c.value is None:
                line.append("✗" if c.why else "—")
            else:
                line.append(fmt(c.value) + c.marks)
        if has_floor:
            line.append(fmt(r.floor.value) if r.floor is not None else "")
            line.append(_spread(limit_ratio(r)) if r.floor is not None else "")
        line += [r.target or "", r.measured or "", r.status or ""]
        lines.append(line)
    return _markdown_table(header, lines)


def _topics(sizes: Sizes) -> dict[str, str]:
    """What each workload measures, in a user's words (the summary's line titles)."""
    lo, hi = (s * 1000 for s in sizes.b6_short_s)
    return {
        "B1": f"Many tiny tasks: `map` of `x*x` over {sizes.b1_n:,} ints",
        "B2": f"CPU-bound tasks: {sizes.b2_tasks} tasks of {sizes.b2_seconds * 1000:.0f} ms",
        "B3": "Latency: one `submit(f, 1).result()` round trip to an idle pool",
        "B4": "Start-up: start a pool, run one trivial task, shut it down",
        "B5": f"Large arrays: {sizes.b5_count} numpy arrays of {sizes.b5_mb} MB through `map`",
        "B6": (
            f"Uneven tasks: {sizes.b6_long} of {sizes.b6_long_s * 1000:.0f} ms among "
            f"{sizes.b6_short} of {lo:.0f}-{hi:.0f} ms, in a shuffled order"
        ),
        "B7": (
            f"Streaming: `imap` over a generator of {sizes.b7_n:,} ints, chunks of "
            f"{sizes.b7_chunksize:,}, buffersize {sizes.b7_buffersize:,}"
        ),
        "B7d": (
            "Streaming with the default read-ahead: the same `imap` without a buffersize "
            f"(procpool's default: {procpool_default_buffersize(sizes.b7_chunksize):,} items)"
        ),
        "B8": (
            f"Worker state: start a pool whose workers each get a {sizes.b8_mb} MB object, "
            f"run {sizes.b8_tasks:,} lookups in it, stop"
        ),
    }


def _runs_text(sizes: Sizes) -> str:
    return f"{sizes.reps} run{'s' if sizes.reps != 1 else ''}"


def _quantity(v: float, unit: str) -> str:
    """A figure with its unit, times under a second in ms."""
    if unit == "s" and abs(v) < 1:
        return f"{fmt(v * 1000)} ms"
    if unit == "x":
        return f"{fmt(v)}x"
    return f"{fmt(v)} {unit}"


def _versus(row: Row, key: str, *, plain: bool = False) -> str:
    """procpool against library ``key`` on ``row``, in words.

    ``plain`` (the users' page): ratios to two digits, and "about as fast" within
    5 %, less than a figure moves from one run to the next.
    """
    pp, other = _value(row.cells), _value(row.cells, key)
    name = CONTENDERS[key].long_label
    if pp is None or other is None:
        return ""
    if row.unit == "x" or not pp or not other:  # already a ratio: just show theirs
        return f"{name} {_quantity(other, row.unit)}"
    times = other / pp if row.better == "lower" else pp / other  # > 1: procpool is better
    if plain:
        if 0.95 <= times <= 1.05:
            phrase = f"about as fast as {name}"
        elif times > 1:
            phrase = f"{times:.2g}x faster than {name}"
        else:
            phrase = f"{1 / times:.2g}x slower than {name}"
    elif fmt(times) == "1.00":
        phrase = f"as fast as {name}"
    elif times > 1:
        phrase = f"{fmt(times)}x faster than {name}"
    else:
        phrase = f"{fmt(1 / times)}x slower than {name}"
    return f"{phrase} ({_quantity(other, row.unit)})"


def _limit_sentence(row: Row, *, plain: bool = False) -> str:
    """How far procpool is from the row's limit, in words ("" if the row has none).

    ``plain`` (the users' page): two digits and no run-by-run range.
    """
    ratio = limit_ratio(row)
    what = LIMITS.get(row.group)
    if ratio is None or what is None or row.floor is None or row.floor.value is None:
        return ""
    value, low, high = ratio
    figure = f"{value:.2g}x" if plain else f"{fmt(value)}x ({fmt(low)}-{fmt(high)} run by run)"
    if row.better == "lower":
        how = f"procpool takes {figure} as long"
    else:
        how = f"procpool reaches {figure} that rate"
    return f"The limit, {what}: {_quantity(row.floor.value, row.unit)}; {how}."


def _and(names: list[str]) -> str:
    """``a, b and c``."""
    return " and ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else "".join(names)


def _verdict(row: Row) -> str:
    if row.status == "MISSED" and row.miss is not None:
        return f"missed by {max(1, round(row.miss * 100))} %"
    return "met" if row.status == "met" else "not judged"


def render_summary(rows: list[Row], sizes: Sizes, keys: list[str], quick: bool) -> str:
    """The top of the report: one line per workload, procpool against the others."""
    others = [k for k in keys if k not in (*STDLIB, *OURS, "serial")]
    stdlib = list(
        dict.fromkeys(
            "multiprocessing.Pool" if k == "mp" else "concurrent.futures.ProcessPoolExecutor"
            for k in keys
            if k in STDLIB
        )
    )
    parts = [f"{_and(stdlib)} from the standard library"] if stdlib else []
    parts += [_and([CONTENDERS[k].label for k in others])] if others else []
    intro = (
        ("How procpool compares with " + ", and with ".join(parts) if parts else "procpool alone")
        + f": every pool has {WORKERS} worker processes and uses the {COMPARISON_METHOD} "
        f"start method where the library allows it. Each figure is the median of "
        f"{_runs_text(sizes)} on the machine described below; the full table under *All "
        "figures* has every figure of every library. On this shared machine a figure moves "
        "by 5-20 % from one run to the next: a target missed by less than that is a tie."
    )
    if quick:
        intro += " **Quick mode: tiny sizes, the figures mean nothing.**"
    topics = _topics(sizes)
    lines = []
    for group in dict.fromkeys(r.group for r in rows):
        members = [r for r in rows if r.group == group and r.goal]
        if not members:
            continue
        head = next((r for r in members if r.headline), members[0])
        clauses = [f"**{topics.get(group, group)}.**"]
        if all(_value(r.cells) is None for r in members):
            members = [head]  # one "not measured" for the workload, not one per row
        for r in [head, *(m for m in members if m is not head)]:
            pp = _value(r.cells)
            metric = r.metric[:1].upper() + r.metric[1:]
            if pp is None:
                why = r.cells["procpool"].why if "procpool" in r.cells else ""
                clauses.append(f"{metric}: procpool not measured ({why or 'not in this run'}).")
                continue
            figure = f"procpool {_quantity(pp, r.unit)}"
            if r is not head:
                clauses.append(f"{metric}: {figure}, target {r.goal} — {_verdict(r)}.")
                continue
            compared = _compared(r, others)
            clauses.append(f"{metric}: {'; '.join([figure, *compared])}.")
            limit = _limit_sentence(r)
            if limit:
                clauses.append(limit)
            clauses.append(f"Target: {r.goal} — {_verdict(r)}.")
        lines.append("- " + " ".join(clauses))
    return intro + "\n\n" + "\n".join(lines)


def _compared(row: Row, others: list[str], *, plain: bool = False) -> list[str]:
    """procpool against the standard library and the best other library, in words."""
    std = row.ref if _value(row.cells, row.ref) is not None else None
    std = std or (_best_of(row.cells, row.better, STDLIB) or ("", 0.0))[0]
    best = _best_of(row.cells, row.better, others)
    compared = [_versus(row, std, plain=plain)] if std else []
    if best:
        compared.append(
            _versus(row, best[0], plain=plain)
            + ("" if plain else ", the best of the other libraries")
        )
    return compared


def _headlines(rows: list[Row]) -> list[Row]:
    """One row per workload: the figure a user compares libraries by."""
    heads = []
    for group in dict.fromkeys(r.group for r in rows if r.group):
        members = [r for r in rows if r.group == group and r.goal]
        head = next((r for r in members if r.headline), members[0] if members else None)
        if head is not None and _value(head.cells) is not None:
            heads.append(head)
    return heads


def _machine_in_brief(machine: list[str]) -> str:
    """CPU, cores, memory, OS and Python from the machine description, in one sentence."""
    wanted = ("CPU", "Cores", "Memory", "Python")
    parts = [m.split(": ", 1)[1] for m in machine if m.split(": ", 1)[0] in wanted]
    return "; ".join(parts)


def render_user_page(
    rows: list[Row],
    sizes: Sizes,
    keys: list[str],
    quick: bool,
    machine: list[str],
    full_page: str,
    png: str | None,
) -> str:
    """docs/benchmarks.md: what to expect, one line per workload; the plot; how it was measured.

    For users, on one laptop screen: no targets, no run logs, no table of every
    library (those are on ``full_page``, for contributors).
    """
    others = [k for k in keys if k not in (*STDLIB, *OURS, "serial")]
    peers = _and([CONTENDERS[k].label for k in others]) if others else ""
    topics = _topics(sizes)
    lines = []
    for r in _headlines(rows):
        title, _, what = topics.get(r.group, r.group).partition(": ")
        metric = r.metric[:1].upper() + r.metric[1:]
        compared = _compared(r, others, plain=True)
        figure = f"procpool {_quantity(_value(r.cells) or 0.0, r.unit)}"
        limit = _limit_sentence(r, plain=True)
        lines.append(
            f"- **{title}** ({what}). {metric}: {'; '.join([figure, *compared])}."
            + (f" {limit}" if limit else "")
        )
    intro = (
        "What to expect from procpool next to the standard library's pools "
        "(`multiprocessing.Pool`, `concurrent.futures.ProcessPoolExecutor`)"
        + (f" and the best of {peers} on each workload" if peers else "")
        + f", all with {WORKERS} worker processes on a {WORKERS}-core machine. Where a "
        "workload has a limit (what no pool can do better than on this machine: the same "
        "loop without a pool, a bare pipe round trip, a copy in memory), measured in the "
        "same runs, the line says how far procpool is from it."
    )
    if quick:
        intro += " **Quick mode: tiny sizes, the figures mean nothing.**"
    parts = [
        "# Benchmarks\n",
        GENERATED_NOTE + "\n",
        intro + "\n",
        "\n".join(lines) + "\n",
    ]
    if png is not None:
        parts.append(f"![procpool, the standard library and the best other pool]({png})\n")
    parts += [
        "## How it was measured\n",
        f"Each figure is the median of {_runs_text(sizes)}, each in a fresh process, the "
        "libraries taking turns so that a busy minute of the machine hits them all alike; "
        f"every pool has {WORKERS} workers and uses the {COMPARISON_METHOD} start method "
        "where it can (start-up is also measured with the others). Every result is checked "
        "against the serial answer. On this shared machine a figure moves by 5-20 % from "
        "one run to the next, so a difference smaller than that is a tie. "
        f"Machine: {_machine_in_brief(machine)}.\n",
        f"The figures of every library, procpool's targets, the run-to-run spread and "
        f"what limits procpool where it is not ahead are in [{FULL_TITLE}]({full_page}), "
        "for contributors; `make bench` measures them again.\n",
    ]
    return "\n".join(parts)


def _ratio_range(a: Cell | None, b: Cell | None) -> str:
    """``a / b`` of the medians, and in brackets its range over single repetitions."""
    if a is None or b is None or a.value is None or not b.value:
        return "—"
    text = f"{fmt(a.value / b.value)}x"
    per_rep = [a.runs[k] / b.runs[k] for k in sorted(a.runs.keys() & b.runs.keys()) if b.runs[k]]
    if len(per_rep) > 1:
        text += f" ({fmt(min(per_rep))}-{fmt(max(per_rep))})"
    return text


def render_base_comparison(rows: list[Row], base: dict[str, str]) -> str | None:
    """procpool against procpool base, row by row (``--procpool-base``), or None."""
    lines = []
    has_limit = any(r.floor is not None for r in rows)
    for r in rows:
        new, old = r.cells.get("procpool"), r.cells.get("procpool_base")
        if new is None or old is None or new.value is None or old.value is None:
            continue
        mp = r.cells.get("mp")
        line = [
            f"{r.label} ({r.unit}, {r.better} is better)",
            _ratio_range(new, mp),
            _ratio_range(old, mp),
            _ratio_range(new, old),
        ]
        if has_limit:
            line += [_spread(limit_ratio(r)), _spread(limit_ratio(r, "procpool_base"))]
        lines.append(line)
    if not lines:
        return None
    intro = (
        f"procpool is this tree (commit {base.get('this') or 'unknown'}); procpool base is "
        f"{base.get('describe', 'another tree')}. "
        "Both ran in the same run, interleaved: each repetition measures every library once, "
        "in a rotating order. Each ratio is of the medians; in brackets, the lowest and "
        "highest ratio between the two figures of one repetition. For times below 1 is "
        "better, for speed-ups and MB/s above 1. On this shared machine single figures move "
        "by 5-20 % from run to run: a ratio within that of 1 is a tie."
        + (
            " The limit of B1 is the serial loop, of B3 a bare Pipe round trip, of B5 "
            "np.copyto, each measured in the same repetitions."
            if has_limit
            else ""
        )
    )
    header = ["row", "procpool ÷ mp.Pool", "procpool base ÷ mp.Pool", "procpool ÷ procpool base"]
    if has_limit:
        header += ["procpool ÷ limit", "procpool base ÷ limit"]
    return intro + "\n\n" + _markdown_table(header, lines)


def footnotes(
    jobs: dict[str, Job],
    sizes: Sizes,
    keys: list[str],
    rss_methods: set[str],
    base: dict[str, str] | None = None,
) -> list[str]:
    """Explanations of marks, substitutions and every failure, for below the table."""
    notes = [
        f"Each figure: median of {sizes.reps} interleaved run{'s' if sizes.reps != 1 else ''}, "
        "each in a fresh process; "
        f"{WORKERS} workers; start method {COMPARISON_METHOD} except in the B4 rows "
        "and where a library cannot fork.",
        "PPE = concurrent.futures.ProcessPoolExecutor (chunksize 1, its default); "
        "PPE tuned = chunksize ⌈n / (4 x workers)⌉, multiprocessing.Pool's own rule.",
    ]
    if base and "procpool_base" in keys:
        notes.append(
            f"procpool base: procpool from {base.get('describe', '?')}, measured like "
            f"procpool in the same run; {base.get('checked') or 'workers not checked'} "
            "to run that code (and a worker at every warm-up)."
        )
    for k in keys:
        if CONTENDERS[k].fallback_note:
            notes.append(f"{CONTENDERS[k].label}: {CONTENDERS[k].fallback_note}.")
    if "B1" in jobs and jobs["B1"].overrides:
        labels = ", ".join(CONTENDERS[k].label for k in jobs["B1"].overrides)
        notes.append(
            f"† B1 for {labels} (one message per item by default): measured on "
            f"{sizes.b1_slow_n:,} items and scaled linearly to {sizes.b1_n:,}, because the "
            "full size takes minutes per run."
        )
    if "B2" in jobs or "B6" in jobs:
        notes.append(
            "B2, B6: every run first times the same tasks serially in the same process, "
            "then on the pool; the ratio is taken per run (the load of this shared machine "
            "drifts from one minute to the next), and the figure is the median ratio."
        )
    if any(name in jobs for name in LIMITS):
        notes.append(
            "Limit column: what no pool can do better than, measured in the same "
            "repetitions as procpool: B1 the serial loop (the serial column), B3 a bare "
            "multiprocessing.Pipe echo between two processes, B5 np.copyto of the same "
            "arrays in one process. procpool / limit: the ratio of the medians, in brackets "
            "its lowest and highest value within one repetition."
        )
    if "B3" in jobs:
        notes.append(
            "B3 runs at normal priority (nice 0), unlike the rest: at the raised priority "
            "thread hand-offs slowed down (mp.Pool's round trip measured 210-290 µs "
            "instead of 47-76 µs), which would misstate every library's latency."
        )
    if "B3" in jobs and jobs["B3"].overrides:
        labels = ", ".join(CONTENDERS[k].label for k in jobs["B3"].overrides)
        calls = next(iter(jobs["B3"].overrides.values()))["calls"]
        notes.append(f"B3 for {labels}: median of {calls:,} calls per run (each takes ~10 ms).")
    if "B5" in jobs:
        notes.append(
            f"B5: MB/s = input bytes ({sizes.b5_count} x {sizes.b5_mb} MB) / wall time; identity "
            "also moves them back."
        )
    if "B7" in jobs:
        notes.append(
            f"B7: imap of x*x over a generator of {sizes.b7_n:,} ints, chunksize "
            f"{sizes.b7_chunksize:,} for every library, procpool buffersize "
            f"{sizes.b7_buffersize:,}; read-ahead = items pulled from the generator minus items "
            "consumed, at its largest; RSS growth = parent's peak RSS ("
            + ", ".join(sorted(rss_methods) or ["VmHWM"])
            + ") above its RSS after pool start. Executor.map (PPE, loky) and pebble read all "
            "input up front by design."
        )
    if "B7d" in jobs:
        labels = ", ".join(CONTENDERS[k].label for k in jobs["B7d"].contenders if k != "mp")
        notes.append(
            f"B7d: the same imap with no buffersize given, as a caller who passes nothing "
            f"gets: procpool's default read-ahead is 4 x workers x chunksize = "
            f"{procpool_default_buffersize(sizes.b7_chunksize):,} items. Measured for the "
            f"libraries whose imap takes a buffersize ({labels}) and for mp.Pool, the "
            "reference of the time target; every other library would repeat its B7 figures."
        )
    if "B8" in jobs:
        notes.append(
            f"B8: pool start + {sizes.b8_tasks:,} lookups in a {sizes.b8_mb} MB object + shutdown. "
            "procpool, mp.Pool, PPE, loky, pebble: initializer storing it in a module global; "
            "mpire: shared_objects; joblib: passed as an argument (auto memory-mapped)."
        )
    notes.append("§ fewer successful runs than asked (see failures). ✗ no figure: see below.")
    for job in jobs.values():
        for k, why in job.failures.items():
            label = FLOOR_LABELS.get(k) or CONTENDERS[k].label
            notes.append(f"{job.name} / {label}: {why}")
    return notes


def commit_of(src: Path) -> str:
    """Short commit of the git tree holding ``src``, and whether ``src`` has changes."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=src, capture_output=True, text=True, check=True
        ).stdout.strip()

    commit = ""
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        commit = git("rev-parse", "--short", "HEAD")
        if commit and git("status", "--porcelain", "--", "."):
            commit += f" + uncommitted changes in {src.name}/"
    return commit


def machine_description(versions: dict[str, str]) -> list[str]:
    """CPU, cores, memory, OS, Python and library versions, for the report."""
    model = "unknown"
    mem = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    import multiprocessing as mp

    commit = commit_of(ROOT / "src")
    lines = [
        f"CPU: {model}",
        f"Cores: {os.cpu_count()} logical, {usable} usable by this process",
        f"Memory: {mem or 'unknown'}",
        f"OS: {platform.platform()}",
        f"Python: {platform.python_implementation()} {platform.python_version()}",
        f"Start method: {COMPARISON_METHOD} for the comparison; "
        f"multiprocessing default here: {mp.get_start_method()}",
        f"procpool commit: {commit or 'unknown'}",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
    ]
    return lines


#: Title of the contributors' page (docs/benchmarks-full.md).
FULL_TITLE = "Benchmarks in full"
GENERATED_NOTE = (
    "<!-- Generated by `make bench` (benchmarks/run.py). Do not edit by hand: edit "
    "benchmarks/notes.md, which is copied in at the end of the full report, and re-run "
    "(or re-render a saved run with `run.py --from-json`). -->"
)

PLOT_COLORS = {"procpool": "#d62728", "dask": "#d62728", "procpool_base": "#ff7f0e"}
PLOT_COLORS["serial"] = "#7f7f7f"


def plot(rows: list[Row], keys: list[str], path: Path) -> str | None:
    """Write the PNG (one panel per row); return why not if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display here, and none needed
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is not installed in this venv"
    rows = [r for r in rows if any(c.value is not None for c in r.cells.values())]
    if not rows:
        return "plot skipped: no figures"
    ncols = min(4, len(rows))
    nrows = math.ceil(len(rows) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.2 * nrows), squeeze=False)
    for ax in axes.flat[len(rows) :]:
        ax.set_visible(False)
    for ax, row in zip(axes.flat, rows, strict=False):
        items = [
            (k, float(c.value))
            for k, c in row.cells.items()
            if c.value is not None and (row.plot_serial or k != "serial")
        ]
        labels = [CONTENDERS[k].label + ("*" if row.cells[k].marks else "") for k, _ in items]
        values = [v for _, v in items]
        colors = [PLOT_COLORS.get(k, "#1f77b4") for k, _ in items]
        ax.barh(range(len(values)), values, color=colors)
        ax.set_yticks(range(len(values)), labels, fontsize=8)
        ax.invert_yaxis()
        for i, v in enumerate(values):
            ax.annotate(
                fmt(v), (v, i), xytext=(2, 0), textcoords="offset points", va="center", fontsize=7
            )
        positive = [v for v in values if v > 0]
        if positive and max(positive) / min(positive) > 50:
            ax.set_xscale("log")  # B1 spans 3-4 orders of magnitude
        ax.margins(x=0.18)  # room for the value labels
        if row.floor is not None and row.floor.value and values:
            name = "Pipe floor" if row.unit == "µs" else "np.copyto"
            if row.floor.value <= 3 * max(values):
                ax.axvline(row.floor.value, color="black", ls=":", lw=1, label=name)
                ax.legend(fontsize=7, loc="best")
            else:  # a line far off to the right would squash every bar
                ax.text(
                    0.98,
                    0.02,
                    f"{name}: {fmt(row.floor.value)} {row.unit} (off scale)",
                    transform=ax.transAxes,
                    ha="right",
                    va="bottom",
                    fontsize=7,
                )
        if row.target_value is not None:
            ax.axvline(row.target_value, color="#d62728", ls="--", lw=1)
        better = "lower is better" if row.better == "lower" else "higher is better"
        status = f" [{row.status}]" if row.status else ""
        ax.set_title(f"{row.label}{status}", fontsize=9)
        ax.set_xlabel(f"{row.unit} ({better})", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    base = ", orange = procpool base" if "procpool_base" in keys else ""
    fig.suptitle(
        f"procpool vs peers ({WORKERS} workers; red = procpool{base}, dashed = target)",
        fontsize=11,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return None


def plot_summary(rows: list[Row], keys: list[str], sizes: Sizes, path: Path) -> str | None:
    """Write the users' PNG: one small panel per workload, procpool against the best
    of the standard library and the best other library; return why not if it cannot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is not installed in this venv"
    heads = _headlines(rows)
    if not heads:
        return "plot skipped: no figures"
    others = [k for k in keys if k not in (*STDLIB, *OURS, "serial")]
    topics = _topics(sizes)
    ncols = min(4, len(heads))
    nrows = math.ceil(len(heads) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.9 * ncols, 1.9 * nrows), squeeze=False)
    for ax in axes.flat[len(heads) :]:
        ax.set_visible(False)
    for ax, row in zip(axes.flat, heads, strict=False):
        bars = [("procpool", _value(row.cells))]
        for group in (STDLIB, others):
            best = _best_of(row.cells, row.better, group)
            if best is not None:
                bars.append((best[0], best[1]))
        labels = [CONTENDERS[k].label for k, _ in bars]
        values = [float(v or 0.0) for _, v in bars]
        ax.barh(range(len(values)), values, color=[PLOT_COLORS.get(k, "#1f77b4") for k, _ in bars])
        ax.set_yticks(range(len(values)), labels, fontsize=9)
        ax.invert_yaxis()
        for i, v in enumerate(values):
            text = _quantity(v, row.unit)
            ax.annotate(
                text, (v, i), xytext=(2, 0), textcoords="offset points", va="center", fontsize=8
            )
        ax.margins(x=0.45)
        ax.set_xticks([])
        for side in ("top", "right", "bottom"):
            ax.spines[side].set_visible(False)
        title = topics.get(row.group, row.group).partition(": ")[0]
        better = "lower is better" if row.better == "lower" else "higher is better"
        short = row.metric.split(",")[0].split(" (")[0]  # "time against the ideal"
        ax.set_title(f"{title}\n{short}, {better}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def write_report(
    path: Path,
    summary: str,
    comparison: str | None,
    table: str,
    notes: list[str],
    machine: list[str],
    png: Path | None,
    elapsed: float,
) -> None:
    """The contributors' report: summary with targets, (base comparison), full table,
    plot, machine, analysis (docs/benchmarks-full.md, or where ``--output`` says)."""
    parts = [
        f"# {FULL_TITLE}\n",
        GENERATED_NOTE + "\n",
        "For contributors: every figure of every library, procpool's targets, and what "
        "limits procpool where it misses one. What users read is the short "
        "[benchmarks](benchmarks.md) page.\n",
        summary + "\n",
    ]
    if comparison:
        parts += ["## procpool against procpool base\n", comparison + "\n"]
    parts += [
        "## All figures\n",
        table + "\n",
        "\n".join(f"- {n}" for n in notes) + "\n",
    ]
    if png is not None:
        rel = os.path.relpath(png, path.parent)
        parts.append(f"![procpool benchmarks]({rel})\n")
    parts += [
        "## Machine\n",
        f"Measured by `make bench` (`benchmarks/run.py`) in {elapsed / 60:.1f} min on:\n",
        "\n".join(f"- {m}" for m in machine) + "\n",
    ]
    notes_md = HERE / "notes.md"
    if notes_md.exists():
        parts.append(notes_md.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts) + ray_section(path))


def ray_section(path: Path) -> str:
    """RayPool against Ray (issue 27), measured apart by ray_bench.py (make bench-ray):
    added to the docs' pages (the users' and the full one), not to quick runs."""
    ray_md = HERE / "ray.md"
    if not ray_md.exists() or path.parent != ROOT / "docs":
        return ""
    return "\n" + ray_md.read_text()


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes: proves the harness works")
    p.add_argument(
        "--contenders",
        help="comma-separated subset of: " + ", ".join(CONTENDERS) + " (default: all)",
    )
    p.add_argument(
        "--workloads",
        help="comma-separated subset of B1..B8 and B7d (B7 with the default buffersize); "
        "default: all",
    )
    p.add_argument("--reps", type=int, help="runs per figure (default 5; quick 2)")
    p.add_argument("--timeout", type=float, help="seconds per single measurement")
    p.add_argument("--deadline", type=float, help="seconds for the whole run")
    p.add_argument(
        "--output",
        type=Path,
        help="full Markdown report, for contributors (default docs/benchmarks-full.md; "
        "quick or --procpool-base: benchmarks/results/quick.md or compare.md)",
    )
    p.add_argument(
        "--user-output",
        type=Path,
        help="the users' page: one line per workload, the summary plot, the method "
        "(default docs/benchmarks.md; with --output, quick or --procpool-base: beside "
        "the full report, named *-user.md)",
    )
    p.add_argument("--plot", type=Path, help="PNG (default docs/_static/benchmarks.png)")
    p.add_argument("--json", type=Path, help="raw results (default benchmarks/results/*.json)")
    p.add_argument(
        "--procpool-base",
        type=Path,
        metavar="PATH",
        help="also measure the procpool found in PATH (a src folder, e.g. of a git worktree "
        "of an older commit) as contender procpool_base, interleaved with this tree's",
    )
    p.add_argument(
        "--quiet-gate",
        type=float,
        help="max seconds to wait for idle CPUs before each run (default 0: never)",
    )
    p.add_argument(
        "--nice",
        type=int,
        help="niceness of the measurement processes (default -10 if root; quick 0)",
    )
    p.add_argument("--from-json", type=Path, help="re-render the report of a saved run")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    return p.parse_args(argv)


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def base_source(path: Path) -> Path | None:
    """The folder holding the ``procpool`` package for ``--procpool-base``: ``path``
    itself or its ``src`` (a repository root works too); None if neither has it."""
    path = path.resolve()
    for candidate in (path, path / "src"):
        if (candidate / "procpool" / "__init__.py").is_file():
            return candidate
    return None


def collect(args: argparse.Namespace, sizes: Sizes) -> dict[str, Any] | None:
    """Probe, calibrate and measure; everything the report needs, JSON-ready."""
    # Off by default: on this machine other sessions keep the CPUs busy for hours,
    # so waiting for idle never pays; the raised priority (--nice) is what helps.
    gate = args.quiet_gate if args.quiet_gate is not None else 0
    nice = args.nice if args.nice is not None else (0 if args.quick else -10)
    if nice < 0 and os.geteuid() != 0:
        nice = 0  # only root may raise priority
    base_src = None
    if args.procpool_base is not None:
        base_src = base_source(args.procpool_base)
        if base_src is None:
            print(f"--procpool-base: no procpool package in {args.procpool_base}", file=sys.stderr)
            return None
    runner = Runner(sizes, verbose=not args.quiet, quiet_gate=gate, nice=nice, base_src=base_src)
    started = time.monotonic()
    load_before = _loadavg()

    wanted = args.contenders.split(",") if args.contenders else list(DEFAULT_CONTENDERS)
    if base_src is not None and "procpool_base" not in wanted:
        at = wanted.index("procpool") + 1 if "procpool" in wanted else len(wanted)
        wanted.insert(at, "procpool_base")
    unknown = [k for k in wanted if k not in CONTENDERS]
    if unknown:
        print(f"unknown contender(s): {', '.join(unknown)}", file=sys.stderr)
        return None
    skip_notes: list[str] = []
    versions: dict[str, str] = {}
    keys: list[str] = []
    base: dict[str, str] = {}
    for k in wanted:
        # procpool_base's probe starts pools under three start methods: more time.
        res = runner.measure({"probe": k}, timeout=60 if k != "procpool_base" else 180)
        if res["ok"]:
            keys.append(k)
            if res.get("version"):
                versions[CONTENDERS[k].label] = res["version"]
            if res.get("checked"):
                runner.log(f"{CONTENDERS[k].label}: {res['checked']}")
        else:
            skip_notes.append(f"{CONTENDERS[k].label} skipped: {res['reason']}")
        if k == "procpool_base" and base_src is not None:
            commit = commit_of(base_src)
            base = {
                "path": str(base_src),
                "commit": commit,
                "describe": f"commit {commit} ({base_src})" if commit else str(base_src),
                "this": commit_of(ROOT / "src"),
                "checked": str(res.get("checked", "")),
            }
    np_probe = runner.measure({"probe": "numpy"}, timeout=60)
    if np_probe["ok"]:
        versions["numpy"] = np_probe["version"]
    for note in skip_notes:
        runner.log(note)

    runner.wait_for_quiet()
    iters_per_s = int(runner.measure({"calibrate": 1.0})["iters_per_s"])
    runner.log(f"spin calibration: {iters_per_s:,} iterations/s")
    jobs, notes = build_jobs(sizes, keys, bool(np_probe["ok"]), iters_per_s)
    selected = set(args.workloads.split(",")) if args.workloads else None
    jobs = [j for j in jobs if selected is None or j.workload in selected]
    for job in jobs:
        job.contenders = [k for k in job.contenders if k in keys or k in FLOOR_LABELS]
        runner.log(f"{job.name}: {', '.join(job.contenders)}")
        runner.run(job)

    machine = machine_description(versions)
    if base:
        machine.append(f"procpool base commit: {base['commit'] or 'unknown'} ({base['path']})")
    machine.append(
        f"Load average (1, 5, 15 min): {load_before} before the run, {_loadavg()} after "
        "(anything above 0 is other work sharing the 2 cores)"
    )
    if gate:
        machine.append(
            f"Quiet gate: each run waited up to {gate:.0f} s for the CPUs to be under "
            f"{QUIET_BUSY:.0%} busy ({runner.waited:.0f} s waited in all, at most "
            f"{runner.quiet_budget:.0f} s); {runner.noisy_runs} of {runner.runs} runs started "
            "while other work was using the CPUs"
        )
    if nice:
        machine.append(
            f"Priority: measurement processes and their workers ran at nice {nice} "
            "(process and autogroup), so that other work on the machine disturbs them less"
        )
    machine.append(f"Spin calibration: {iters_per_s:,} loop turns per second")
    return {
        "quick": bool(args.quick),
        "sizes": asdict(sizes),
        "keys": keys,
        "skip_notes": skip_notes,
        "notes": notes,
        "machine": machine,
        "elapsed": time.monotonic() - started,
        "base": base,
        "jobs": [asdict(j) for j in jobs],
    }


def report(data: dict[str, Any], output: Path, png: Path, user_output: Path) -> None:
    """Print the summary, table and notes; write both Markdown reports and both plots.

    ``output`` is the contributors' report (every figure, the targets), ``png`` its
    plot; ``user_output`` the users' page, with a smaller plot beside ``png``.
    """
    fields: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in data["sizes"].items()
    }
    sizes = Sizes(**fields)
    jobs = [Job(**j) for j in data["jobs"]]
    keys: list[str] = data["keys"]
    base: dict[str, str] = data.get("base") or {}
    by_name = {j.name: j for j in jobs}
    rows = build_rows(by_name, sizes, keys)
    summary = render_summary(rows, sizes, keys, bool(data["quick"]))
    comparison = render_base_comparison(rows, base)
    table = render_table(rows, keys)
    rss_methods = {
        str(r.get("rss_method"))
        for j in jobs
        for rs in j.results.values()
        for r in rs
        if "rss_method" in r
    }
    notes = data["skip_notes"] + data["notes"] + footnotes(by_name, sizes, keys, rss_methods, base)
    if "§" not in table and "✗" not in table:  # explain only marks the table shows
        notes = [n for n in notes if not n.startswith("§ ")]
    why_no_plot = plot(rows, keys, png)
    if why_no_plot:
        notes.append(why_no_plot)

    for part in (summary, comparison, table):
        if part:
            print(part, end="\n\n")
    for n in notes:
        print(f"- {n}")
    summary_png = png.with_name(png.stem + "-summary" + png.suffix)
    why_no_summary_plot = plot_summary(rows, keys, sizes, summary_png)
    user_output.parent.mkdir(parents=True, exist_ok=True)
    user_output.write_text(
        render_user_page(
            rows,
            sizes,
            keys,
            bool(data["quick"]),
            data["machine"],
            os.path.relpath(output, user_output.parent),
            None if why_no_summary_plot else os.path.relpath(summary_png, user_output.parent),
        )
        + ray_section(user_output)
    )
    write_report(
        output,
        summary,
        comparison,
        table,
        notes,
        data["machine"],
        None if why_no_plot else png,
        data["elapsed"],
    )
    print(
        f"\nwrote {user_output} and {output} ({'no plot' if why_no_plot else png}) "
        f"in {data['elapsed']:.0f} s"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks, print the table, write the report; 0 even if targets miss."""
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    overrides = {
        k: v
        for k, v in (("reps", args.reps), ("timeout", args.timeout), ("deadline", args.deadline))
        if v is not None
    }
    sizes = replace(sizes, **overrides)
    saved = json.loads(args.from_json.read_text()) if args.from_json else None
    quick = bool(saved["quick"]) if saved else args.quick
    compare = bool(saved.get("base")) if saved else args.procpool_base is not None
    # Quick figures are meaningless, and a comparison with another tree is not the
    # project's figures: by default neither overwrites the docs.
    name = "quick" if quick else ("compare" if compare else "")
    output = args.output or (
        HERE / "results" / f"{name}.md" if name else ROOT / "docs" / "benchmarks-full.md"
    )
    png = args.plot or (
        output.with_suffix(".png") if name else ROOT / "docs" / "_static" / "benchmarks.png"
    )
    user_output = args.user_output or (
        ROOT / "docs" / "benchmarks.md"
        if not name and args.output is None
        else output.with_name(output.stem + "-user" + output.suffix)
    )
    if saved is not None:
        # Re-render a finished run (presentation changes need no 15-minute re-run).
        report(saved, output, png, user_output)
        return 0
    data = collect(args, sizes)
    if data is None:
        return 2
    raw = args.json or HERE / "results" / f"{name or 'full'}.json"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps(data, indent=1, default=str))
    report(data, output, png, user_output)
    return 0


if __name__ == "__main__":
    sys.exit(main())

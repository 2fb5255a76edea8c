"""procpool benchmark harness (issue 4): ``python benchmarks/run.py [--quick]``.

Measures procpool side by side with serial code, ``multiprocessing.Pool``,
``concurrent.futures.ProcessPoolExecutor`` (default and tuned chunksize), loky,
pebble, mpire and joblib on workloads B1-B8, prints one table of figures and
ratios with the status of each of procpool's targets, and writes a Markdown
report (machine, method, table, plot).

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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from contenders import CONTENDERS, WORKERS  # noqa: E402

COMPARISON_METHOD = "fork"
"""Start method of the comparison table (the issue's reference figures are fork)."""

FLOOR_LABELS = {"pipe": "bare Pipe", "copyto": "np.copyto"}
"""Reference measurements shown in the "floor / limit" column."""

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
    deadline=90,
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
        self, sizes: Sizes, verbose: bool = True, quiet_gate: float = 0.0, nice: int = 0
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
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "measure.py"), json.dumps(spec)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
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
                job.results.setdefault(key, []).append(result)
                shown = {k: v for k, v in result.items() if k != "pid"}
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


@dataclass
class Cell:
    """One figure of the table, with footnote marks."""

    value: float | None
    marks: str = ""
    why: str = ""  # reason there is no value


@dataclass
class Row:
    """One line of the table: a metric of a workload, across contenders."""

    label: str
    unit: str
    better: str  # "lower" or "higher"
    cells: dict[str, Cell] = field(default_factory=dict)
    floor: Cell | None = None
    target: str = ""
    measured: str = ""
    status: str = ""  # "met", "MISSED", "n/a" or "" (no target on this row)
    #: value a target line is drawn at in the plot (absolute targets only)
    target_value: float | None = None
    #: whether the plot shows the serial bar (meaningless for latency, state, memory)
    plot_serial: bool = True


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


def _status(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


def _cells(job: Job, metric: str, keys: list[str]) -> dict[str, Cell]:
    cells: dict[str, Cell] = {}
    for key in keys:
        if key not in job.contenders:
            continue
        value = median_of(job, key, metric)
        cell = Cell(value, why=job.failures.get(key, ""))
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
        runs = job.results.get(key, [])
        values = [ratio(float(r["serial"]), float(r["time"])) for r in runs if r["time"] > 0]
        cell = Cell(statistics.median(values) if values else None, why=job.failures.get(key, ""))
        if values and key in job.failures:
            cell.marks = "§"
        cells[key] = cell
    return cells


def _best_peer(cells: dict[str, Cell], better: str) -> tuple[str, float] | None:
    peers = [
        (k, c.value)
        for k, c in cells.items()
        if c.value is not None and k not in ("serial", "procpool", "dask")
    ]
    if not peers:
        return None
    return (min if better == "lower" else max)(peers, key=lambda kv: kv[1])


def _ratio_to(cells: dict[str, Cell], ref: str) -> float | None:
    pp, other = cells.get("procpool"), cells.get(ref)
    if pp is None or other is None or pp.value is None or other.value is None:
        return None
    return pp.value / other.value if other.value else None


# --------------------------------------------------------------------------- workloads


def b6_durations(sizes: Sizes) -> list[float]:
    """B6 task durations in seconds: a few long, many short, shuffled (fixed seed)."""
    rng = random.Random(4)  # fixed: every contender and every run gets the same order
    lo, hi = sizes.b6_short_s
    durations = [sizes.b6_long_s] * sizes.b6_long
    durations += [rng.uniform(lo, hi) for _ in range(sizes.b6_short)]
    rng.shuffle(durations)
    return durations


def build_jobs(
    sizes: Sizes, contenders: list[str], have_numpy: bool, iters_per_s: int
) -> tuple[list[Job], list[str]]:
    """The measurement jobs of B1-B8 for these contenders; plus skip notes."""
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
    jobs.append(
        Job(
            "B7",
            "B7",
            contenders,
            {
                "workload": "B7",
                **fork,
                "n": sizes.b7_n,
                "chunksize": sizes.b7_chunksize,
                "buffersize": sizes.b7_buffersize,
            },
        )
    )
    jobs.append(
        Job(
            "B8",
            "B8",
            contenders,
            {"workload": "B8", **fork, "mb": sizes.b8_mb, "tasks": sizes.b8_tasks},
        )
    )
    return jobs, notes


def build_rows(jobs: dict[str, Job], sizes: Sizes, keys: list[str]) -> list[Row]:
    """Turn medians into table rows and evaluate procpool's targets."""
    rows: list[Row] = []
    cols = list(dict.fromkeys([*keys, "dask"]))

    if "B1" in jobs:
        job = jobs["B1"]
        cells = _cells(job, "time", cols)
        for key, over in job.overrides.items():
            if key in cells and cells[key].value is not None:
                cells[key].value = cells[key].value * sizes.b1_n / over["n"]  # type: ignore[operator]
                cells[key].marks += "†"
        r = _ratio_to(cells, "mp")
        rows.append(
            Row(
                "B1 tiny tasks: map time",
                "s",
                "lower",
                cells,
                target="≤ 0.8x mp.Pool",
                measured=f"{fmt(r)}x mp.Pool" if r is not None else "—",
                status=_status(None if r is None else r <= 0.8),
            )
        )

    if "B2" in jobs:
        job = jobs["B2"]
        cells = _paired_cells(job, cols, lambda serial, t: serial / t)
        sp = cells.get("procpool", Cell(None)).value
        rows.append(
            Row(
                "B2 CPU-bound: speed-up over serial",
                "x",
                "higher",
                cells,
                target="≥ 1.9",
                measured=fmt(sp),
                status=_status(None if sp is None else sp >= 1.9),
                target_value=1.9,
            )
        )

    if "B3" in jobs:
        job = jobs["B3"]
        cells = _cells(job, "latency_us", cols)
        floor = Cell(median_of(job, "pipe", "latency_us"), why=job.failures.get("pipe", ""))
        r = _ratio_to(cells, "mp")
        pp = cells.get("procpool", Cell(None)).value
        vs_pipe = pp / floor.value if pp and floor.value else None
        rows.append(
            Row(
                "B3 latency: submit→result",
                "µs",
                "lower",
                cells,
                plot_serial=False,
                floor=floor,
                target="≤ 0.65x mp.Pool",
                measured=(f"{fmt(r)}x mp.Pool, {fmt(vs_pipe)}x Pipe" if r is not None else "—"),
                status=_status(None if r is None else r <= 0.65),
            )
        )

    for method in ("fork", "spawn", "forkserver", "default"):
        b4 = jobs.get(f"B4 {method}")
        if b4 is None:
            continue
        cells = _cells(b4, "time", cols)
        row = Row(f"B4 start-up: {method}", "s", "lower", cells)
        pp = cells.get("procpool", Cell(None)).value
        if method == "fork":
            r = _ratio_to(cells, "mp")
            row.target, row.status = "≤ 1.0x mp.Pool", _status(None if r is None else r <= 1.0)
            row.measured = f"{fmt(r)}x mp.Pool" if r is not None else "—"
        elif method == "default":
            row.target, row.status = "< 0.1 s", _status(None if pp is None else pp < 0.1)
            row.measured = f"{fmt(pp)} s" if pp is not None else "—"
            row.target_value = 0.1
        rows.append(row)

    if "B5" in jobs:
        job = jobs["B5"]
        for metric, label in (("identity_mbs", "identity"), ("sum_mbs", "sum")):
            cells = _cells(job, metric, cols)
            floor = Cell(median_of(job, "copyto", metric), why=job.failures.get("copyto", ""))
            best = _best_peer(cells, "higher")
            pp = cells.get("procpool", Cell(None)).value
            r = pp / best[1] if pp is not None and best else None
            rows.append(
                Row(
                    f"B5 {sizes.b5_mb} MB arrays: {label}",
                    "MB/s",
                    "higher",
                    cells,
                    floor=floor,
                    target="≥ 2x best peer",
                    measured=f"{fmt(r)}x {CONTENDERS[best[0]].label}" if r and best else "—",
                    status=_status(None if r is None else r >= 2.0),
                )
            )

    if "B6" in jobs:
        job = jobs["B6"]
        cells = _paired_cells(job, cols, lambda serial, t: t / (serial / WORKERS))
        pp = cells.get("procpool", Cell(None)).value
        rows.append(
            Row(
                "B6 imbalanced: makespan / ideal",
                "x",
                "lower",
                cells,
                target="≤ 1.05",
                measured=fmt(pp),
                status=_status(None if pp is None else pp <= 1.05),
                target_value=1.05,
            )
        )

    if "B7" in jobs:
        job = jobs["B7"]
        ahead = _cells(job, "read_ahead", cols)
        pp = ahead.get("procpool", Cell(None)).value
        rows.append(
            Row(
                "B7 imap: items read ahead",
                "items",
                "lower",
                ahead,
                plot_serial=False,
                target=f"≤ buffersize ({sizes.b7_buffersize:,})",
                measured=fmt(pp),
                status=_status(None if pp is None else pp <= sizes.b7_buffersize),
            )
        )
        rss = _cells(job, "rss_mb", cols)
        pp = rss.get("procpool", Cell(None)).value
        rows.append(
            Row(
                "B7 imap: parent peak RSS growth",
                "MB",
                "lower",
                rss,
                plot_serial=False,
                target="< 5 MB",
                measured=f"{fmt(pp)} MB" if pp is not None else "—",
                status=_status(None if pp is None else pp < 5),
                target_value=5,
            )
        )
        t = _cells(job, "time", cols)
        r = _ratio_to(t, "mp")
        rows.append(
            Row(
                "B7 imap: total time",
                "s",
                "lower",
                t,
                target="≤ 1.0x mp.Pool.imap",
                measured=f"{fmt(r)}x mp.Pool" if r is not None else "—",
                status=_status(None if r is None else r <= 1.0),
            )
        )

    if "B8" in jobs:
        job = jobs["B8"]
        cells = _cells(job, "time", cols)
        best = _best_peer(cells, "lower")
        pp = cells.get("procpool", Cell(None)).value
        r = pp / best[1] if pp is not None and best else None
        rows.append(
            Row(
                f"B8 {sizes.b8_mb} MB worker state: total time",
                "s",
                "lower",
                cells,
                plot_serial=False,
                target="≤ best peer",
                measured=f"{fmt(r)}x {CONTENDERS[best[0]].label}" if r and best else "—",
                status=_status(None if r is None else r <= 1.0),
            )
        )
    return rows


# --------------------------------------------------------------------------- output


def render_table(rows: list[Row], keys: list[str]) -> str:
    """The one table: a Markdown table that also reads well in a terminal."""
    used = [k for k in dict.fromkeys([*keys, "dask"]) if any(k in r.cells for r in rows)]
    has_floor = any(r.floor is not None for r in rows)
    header = ["workload", "unit"] + [CONTENDERS[k].label for k in used]
    header += (["floor / limit"] if has_floor else []) + ["target", "procpool measured", "status"]
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
        line += [r.target or "", r.measured or "", r.status or ""]
        lines.append(line)
    widths = [max(len(h), *(len(x[i]) for x in lines)) for i, h in enumerate(header)]

    def fmt_line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)) + " |"

    out = [fmt_line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [fmt_line(x) for x in lines]
    return "\n".join(out)


def footnotes(
    jobs: dict[str, Job], sizes: Sizes, keys: list[str], rss_methods: set[str]
) -> list[str]:
    """Explanations of marks, substitutions and every failure, for below the table."""
    notes = [
        f"Each figure: median of {sizes.reps} interleaved runs, each in a fresh process; "
        f"{WORKERS} workers; start method {COMPARISON_METHOD} except in the B4 rows "
        "and where a library cannot fork.",
        "PPE = concurrent.futures.ProcessPoolExecutor (chunksize 1, its default); "
        "PPE tuned = chunksize ⌈n / (4 x workers)⌉, multiprocessing.Pool's own rule.",
    ]
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
            "also moves them back. Floor column: bare multiprocessing.Pipe echo (B3), "
            "in-process np.copyto rate (B5)."
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

    commit = ""
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if dirty and commit:
            commit += " + uncommitted changes in src/"
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
        colors = [
            "#d62728" if k in ("procpool", "dask") else ("#7f7f7f" if k == "serial" else "#1f77b4")
            for k, _ in items
        ]
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
    fig.suptitle("procpool vs peers (2 workers; red = procpool, dashed = target)", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return None


def write_report(
    path: Path,
    table: str,
    notes: list[str],
    machine: list[str],
    png: Path | None,
    quick: bool,
    elapsed: float,
) -> None:
    """docs/benchmarks.md: machine, method, table, plot, and the hand-written analysis."""
    parts = [
        "# Benchmarks\n",
        "Generated by `make bench` (`benchmarks/run.py`"
        + (" --quick: tiny sizes, figures meaningless" if quick else "")
        + f") in {elapsed / 60:.1f} min. Do not edit by hand: edit `benchmarks/notes.md`, "
        "which is copied in below, and re-run.\n",
        "## Machine\n",
        "\n".join(f"- {m}" for m in machine) + "\n",
        "## Results\n",
        table + "\n",
        "\n".join(f"- {n}" for n in notes) + "\n",
    ]
    if png is not None:
        rel = os.path.relpath(png, path.parent)
        parts.append(f"![procpool benchmarks]({rel})\n")
    notes_md = HERE / "notes.md"
    if notes_md.exists():
        parts.append(notes_md.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes: proves the harness works")
    p.add_argument(
        "--contenders",
        help="comma-separated subset of: " + ", ".join(CONTENDERS) + " (default: all)",
    )
    p.add_argument("--workloads", help="comma-separated subset of B1..B8 (default: all)")
    p.add_argument("--reps", type=int, help="runs per figure (default 5; quick 2)")
    p.add_argument("--timeout", type=float, help="seconds per single measurement")
    p.add_argument("--deadline", type=float, help="seconds for the whole run")
    p.add_argument("--output", type=Path, help="Markdown report (default docs/benchmarks.md)")
    p.add_argument("--plot", type=Path, help="PNG (default docs/_static/benchmarks.png)")
    p.add_argument("--json", type=Path, help="raw results (default benchmarks/results/*.json)")
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


def collect(args: argparse.Namespace, sizes: Sizes) -> dict[str, Any] | None:
    """Probe, calibrate and measure; everything the report needs, JSON-ready."""
    # Off by default: on this machine other sessions keep the CPUs busy for hours,
    # so waiting for idle never pays; the raised priority (--nice) is what helps.
    gate = args.quiet_gate if args.quiet_gate is not None else 0
    nice = args.nice if args.nice is not None else (0 if args.quick else -10)
    if nice < 0 and os.geteuid() != 0:
        nice = 0  # only root may raise priority
    runner = Runner(sizes, verbose=not args.quiet, quiet_gate=gate, nice=nice)
    started = time.monotonic()
    load_before = _loadavg()

    wanted = args.contenders.split(",") if args.contenders else list(DEFAULT_CONTENDERS)
    unknown = [k for k in wanted if k not in CONTENDERS]
    if unknown:
        print(f"unknown contender(s): {', '.join(unknown)}", file=sys.stderr)
        return None
    skip_notes: list[str] = []
    versions: dict[str, str] = {}
    keys: list[str] = []
    for k in wanted:
        res = runner.measure({"probe": k}, timeout=60)
        if res["ok"]:
            keys.append(k)
            if res.get("version"):
                versions[CONTENDERS[k].label] = res["version"]
        else:
            skip_notes.append(f"{CONTENDERS[k].label} skipped: {res['reason']}")
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
        "jobs": [asdict(j) for j in jobs],
    }


def report(data: dict[str, Any], output: Path, png: Path) -> None:
    """Print the table and notes; write the Markdown report and the plot."""
    fields: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in data["sizes"].items()
    }
    sizes = Sizes(**fields)
    jobs = [Job(**j) for j in data["jobs"]]
    keys: list[str] = data["keys"]
    by_name = {j.name: j for j in jobs}
    rows = build_rows(by_name, sizes, keys)
    table = render_table(rows, keys)
    rss_methods = {
        str(r.get("rss_method"))
        for j in jobs
        for rs in j.results.values()
        for r in rs
        if "rss_method" in r
    }
    notes = data["skip_notes"] + data["notes"] + footnotes(by_name, sizes, keys, rss_methods)
    why_no_plot = plot(rows, keys, png)
    if why_no_plot:
        notes.append(why_no_plot)

    print(table)
    print()
    for n in notes:
        print(f"- {n}")
    write_report(
        output,
        table,
        notes,
        data["machine"],
        None if why_no_plot else png,
        data["quick"],
        data["elapsed"],
    )
    print(f"\nwrote {output} ({'no plot' if why_no_plot else png}) in {data['elapsed']:.0f} s")


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
    # Quick figures are meaningless: by default they never overwrite the docs.
    output = args.output or (
        HERE / "results" / "quick.md" if quick else ROOT / "docs" / "benchmarks.md"
    )
    png = args.plot or (
        output.with_suffix(".png") if quick else ROOT / "docs" / "_static" / "benchmarks.png"
    )
    if saved is not None:
        # Re-render a finished run (presentation changes need no 15-minute re-run).
        report(saved, output, png)
        return 0
    data = collect(args, sizes)
    if data is None:
        return 2
    raw = args.json or HERE / "results" / ("quick.json" if args.quick else "full.json")
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps(data, indent=1, default=str))
    report(data, output, png)
    return 0


if __name__ == "__main__":
    sys.exit(main())

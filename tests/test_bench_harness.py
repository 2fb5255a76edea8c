"""The benchmark harness (benchmarks/run.py) works: quick mode, tiny sizes.

These are not timed tests: no figure is asserted, only that the harness runs to
the end, prints its summary and its table with a status per target, writes the
reports where it is told to (never over docs/), a short page for users beside the
full one, says why it skips what it cannot run here (the development venv has
neither numpy nor the peer libraries), and measures a second copy of procpool
(``--procpool-base``) whose workers are checked to run that copy.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
#: The quick run every test of its output shares: the finished process, the report's path.
QuickRun = tuple[subprocess.CompletedProcess[str], Path]


def _run_harness(
    *flags: str, timeout: float, **options: object
) -> subprocess.CompletedProcess[str]:
    """``python benchmarks/run.py FLAGS --OPTION VALUE ...`` from the repository root,
    output captured; an option is named by its keyword, ``_`` spelt ``-``.

    Not tests/helpers.py's ``run_python``: that module imports procpool, and these
    tests also run (and check what the harness says) where procpool does not import.
    """
    args = [*flags]
    for name, value in options.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return subprocess.run(
        [sys.executable, str(BENCH / "run.py"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def run_module() -> Iterator[ModuleType]:
    """benchmarks/run.py imported as a module (it is not a package)."""
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("run")
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> QuickRun:
    """One quick run of serial, multiprocessing.Pool and procpool, shared by the tests."""
    out = tmp_path_factory.mktemp("bench")
    report = out / "benchmarks.md"
    proc = _run_harness(
        "--quick",
        contenders="serial,mp,procpool",
        deadline=75,
        output=report,
        plot=out / "benchmarks.png",
        json=out / "raw.json",
        timeout=110,
    )
    return proc, report


@pytest.mark.timeout(120)
def test_quick_run_prints_the_table(quick_run: QuickRun) -> None:
    proc, _ = quick_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.startswith("| workload"))
    for column in ("serial", "mp.Pool", "limit", "procpool / limit", "target", "status"):
        assert column in header
    for row in ("B1 tiny tasks", "B2 CPU-bound", "B3 latency", "B4 start-up: fork", "B6", "B7"):
        assert any(line.startswith(f"| {row}") for line in lines), row
    assert any(line.startswith("| B8") for line in lines)
    # Every target row carries a status: met, MISSED, or n/a when procpool is absent.
    b1 = next(line for line in lines if line.startswith("| B1"))
    assert any(s in b1 for s in ("| met", "| MISSED", "| n/a"))


@pytest.mark.timeout(120)
def test_quick_run_says_what_it_skipped(quick_run: QuickRun) -> None:
    proc, _ = quick_run
    try:
        import numpy  # noqa: F401
    except ImportError:
        assert "B5 skipped: numpy is not installed" in proc.stdout
    else:
        assert any(line.startswith("| B5") for line in proc.stdout.splitlines())
    if _procpool_ready():
        header = next(line for line in proc.stdout.splitlines() if line.startswith("| workload"))
        assert "procpool" in header
    else:
        assert "procpool skipped:" in proc.stdout


def _procpool_ready() -> bool:
    try:
        import procpool
    except ImportError:
        return False
    return hasattr(procpool, "Pool")


@pytest.mark.timeout(120)
def test_quick_run_measures_b7_with_the_default_buffersize(quick_run: QuickRun) -> None:
    proc, _ = quick_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    if not _procpool_ready():
        pytest.skip("procpool.Pool is not importable here")
    lines = proc.stdout.splitlines()
    for metric in ("items read ahead", "parent peak RSS growth", "total time"):
        row = next(
            line for line in lines if line.startswith(f"| B7d imap, default buffersize: {metric}")
        )
        assert any(s in row for s in ("| met", "| MISSED"))
    # procpool's default read-ahead, 4 x 2 workers x chunksize 100 in quick mode.
    assert "≤ default (800)" in proc.stdout


@pytest.mark.timeout(120)
def test_quick_report_opens_with_a_summary_in_plain_words(quick_run: QuickRun) -> None:
    proc, report = quick_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = report.read_text()
    top, _, rest = text.partition("## All figures")
    assert "| workload" in rest  # the full table is below its own heading
    assert "| workload" not in top
    assert "issue 4" not in top
    summary = [line for line in top.splitlines() if line.startswith("- **")]
    assert any("Many tiny tasks" in line for line in summary)
    if _procpool_ready():
        b1 = next(line for line in summary if "Many tiny tasks" in line)
        assert "procpool " in b1
        assert "multiprocessing.Pool" in b1
        assert "Target: at most 1.5x the time of the same loop run serially" in b1
        assert "The limit, the same loop run serially in one process:" in b1
    assert text.index("## All figures") < text.index("## Machine")


@pytest.mark.timeout(120)
def test_quick_run_writes_the_report_where_told(quick_run: QuickRun) -> None:
    proc, report = quick_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = report.read_text()
    assert "## Machine" in text
    assert "CPU:" in text
    assert "Python:" in text
    assert "| workload" in text
    assert (report.parent / "raw.json").exists()


def test_fmt_keeps_three_significant_digits(run_module: ModuleType) -> None:
    fmt = run_module.fmt
    assert fmt(None) == "—"
    assert fmt(0.05712) == "0.0571"
    assert fmt(3.6) == "3.60"
    assert fmt(155.4) == "155"
    assert fmt(10600.0) == "10,600"


def test_b6_durations_are_fixed_and_skewed(run_module: ModuleType) -> None:
    sizes = run_module.FULL
    first = run_module.b6_durations(sizes)
    assert first == run_module.b6_durations(sizes)  # fixed seed
    assert len(first) == 64
    assert max(first) >= 5 * (sum(first) / len(first))  # a few long, many short
    assert max(first) < sum(first) / 2  # two workers can still reach the ideal


@pytest.mark.timeout(150)
def test_procpool_base_runs_a_second_copy_side_by_side(tmp_path: Path) -> None:
    """--procpool-base: this tree's src/ stands in for an older commit's (no worktree)."""
    if not _procpool_ready():
        pytest.skip("procpool.Pool is not importable here")
    report = tmp_path / "compare.md"
    proc = _run_harness(
        "--quick",
        reps=1,
        procpool_base=ROOT / "src",
        contenders="mp,procpool,procpool_base",
        workloads="B1,B7d",
        output=report,
        plot=tmp_path / "compare.png",
        json=tmp_path / "compare.json",
        timeout=140,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The probe started pools under every start method and checked their workers.
    assert "workers checked under fork (2 workers), spawn" in proc.stderr
    text = report.read_text()
    assert "## procpool against procpool base" in text
    assert "procpool ÷ procpool base" in text
    header = next(line for line in text.splitlines() if line.startswith("| workload"))
    assert "| procpool " in header
    assert "| procpool base " in header
    rows = [line for line in text.splitlines() if line.startswith("| B7d imap")]
    assert len(rows) == 6  # three rows in the comparison, three in the full table
    assert "FAILED" not in proc.stderr


def test_procpool_base_must_hold_procpool(tmp_path: Path) -> None:
    proc = _run_harness("--quick", procpool_base=tmp_path, timeout=60)
    assert proc.returncode == 2
    assert "no procpool package" in proc.stderr


def test_judge_says_how_far_a_target_was_missed(run_module: ModuleType) -> None:
    row = run_module.Row("B1", "s", "lower")
    run_module._judge(row, 0.84, 0.8)
    assert (row.status, round(row.miss, 3)) == ("MISSED", 0.05)
    assert run_module._verdict(row) == "missed by 5 %"
    row = run_module.Row("B2", "x", "higher")
    run_module._judge(row, 1.95, 1.9)
    assert (row.status, row.miss) == ("met", None)
    run_module._judge(row, None, 1.9)
    assert row.status == "n/a"


@pytest.mark.timeout(120)
def test_quick_run_writes_a_short_page_for_users(quick_run: QuickRun) -> None:
    """The users' page: one line a workload in plain words, the plot, the method; no
    targets, no statuses, no table (those are in the full report it links to)."""
    proc, report = quick_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = report.with_name("benchmarks-user.md").read_text()
    assert page.startswith("# Benchmarks\n")
    lines = [line for line in page.splitlines() if line.startswith("- **")]
    assert any(line.startswith("- **Many tiny tasks** (") for line in lines), page
    assert len(lines) == len({line.split("**")[1] for line in lines})  # one line a workload
    for words in ("Target", "MISSED", "| workload", "§", "✗", "B7d", "run 5"):
        assert words not in page, words
    assert "## How it was measured" in page
    assert "[Benchmarks in full](benchmarks.md)" in page  # the full report, beside it
    if _procpool_ready():
        b1 = next(line for line in lines if "Many tiny tasks" in line)
        assert "procpool " in b1
        assert "multiprocessing.Pool" in b1
    summary_png = report.with_name("benchmarks-summary.png")
    if summary_png.exists():  # matplotlib is in .venv-bench, not always in .venv
        assert "](benchmarks-summary.png)" in page


def test_users_ratios_have_two_digits_and_ties_within_5_percent(run_module: ModuleType) -> None:
    row = run_module.Row("B1", "s", "lower")
    row.cells = {"procpool": run_module.Cell(0.0347), "mp": run_module.Cell(0.0461)}
    assert run_module._versus(row, "mp") == "1.33x faster than multiprocessing.Pool (46.1 ms)"
    assert run_module._versus(row, "mp", plain=True) == (
        "1.3x faster than multiprocessing.Pool (46.1 ms)"
    )
    row.cells["mp"] = run_module.Cell(0.0340)
    assert run_module._versus(row, "mp", plain=True).startswith(
        "about as fast as multiprocessing.Pool"
    )


def test_limit_ratio_pairs_runs_of_the_same_repetition(run_module: ModuleType) -> None:
    """procpool over its limit: the ratio of the medians, and its range within one
    repetition (issue 24); the users' page says it in plain words."""
    row = run_module.Row("B3 latency", "µs", "lower", group="B3")
    row.cells = {"procpool": run_module.Cell(40.0, runs={0: 36.0, 1: 40.0, 2: 60.0})}
    row.floor = run_module.Cell(16.0, runs={0: 18.0, 1: 16.0, 2: 15.0})
    assert run_module.limit_ratio(row) == (2.5, 2.0, 4.0)
    assert run_module._spread(run_module.limit_ratio(row)) == "2.50x (2.00-4.00)"
    assert run_module._limit_sentence(row, plain=True) == (
        "The limit, a bare `multiprocessing.Pipe` round trip between two processes: "
        "16.0 µs; procpool takes 2.5x as long."
    )
    rate = run_module.Row("B5 8 MB arrays: identity", "MB/s", "higher", group="B5")
    rate.cells = {"procpool": run_module.Cell(4000.0, runs={0: 4000.0})}
    rate.floor = run_module.Cell(8000.0, runs={0: 8000.0})
    assert "procpool reaches 0.5x that rate" in run_module._limit_sentence(rate, plain=True)
    row.floor = None
    assert run_module.limit_ratio(row) is None
    assert run_module._limit_sentence(row) == ""

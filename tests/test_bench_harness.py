"""The benchmark harness (benchmarks/run.py) works: quick mode, tiny sizes.

These are not timed tests: no figure is asserted, only that the harness runs to
the end, prints its one table with a status per target, writes the report where
it is told to (never over docs/benchmarks.md), and says why it skips what it
cannot run here (the development venv has neither numpy nor the peer libraries).
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


@pytest.fixture(scope="module")
def run_module() -> Iterator[ModuleType]:
    """benchmarks/run.py imported as a module (it is not a package)."""
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("run")
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def quick_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """One quick run of serial, multiprocessing.Pool and procpool, shared by the tests."""
    out = tmp_path_factory.mktemp("bench")
    report = out / "benchmarks.md"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH / "run.py"),
            "--quick",
            "--contenders",
            "serial,mp,procpool",
            "--deadline",
            "75",
            "--output",
            str(report),
            "--plot",
            str(out / "benchmarks.png"),
            "--json",
            str(out / "raw.json"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=110,
        check=False,
    )
    return proc, report


@pytest.mark.timeout(120)
def test_quick_run_prints_the_table(
    quick_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    proc, _ = quick_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.startswith("| workload"))
    for column in ("serial", "mp.Pool", "target", "status"):
        assert column in header
    for row in ("B1 tiny tasks", "B2 CPU-bound", "B3 latency", "B4 start-up: fork", "B6", "B7"):
        assert any(line.startswith(f"| {row}") for line in lines), row
    assert any(line.startswith("| B8") for line in lines)
    # Every target row carries a status: met, MISSED, or n/a when procpool is absent.
    b1 = next(line for line in lines if line.startswith("| B1"))
    assert any(s in b1 for s in ("| met", "| MISSED", "| n/a"))


@pytest.mark.timeout(120)
def test_quick_run_says_what_it_skipped(
    quick_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    proc, _ = quick_run
    try:
        import numpy  # noqa: F401
    except ImportError:
        assert "B5 skipped: numpy is not installed" in proc.stdout
    else:
        assert any(line.startswith("| B5") for line in proc.stdout.splitlines())
    try:
        import procpool

        ready = hasattr(procpool, "Pool")
    except ImportError:
        ready = False
    if ready:
        header = next(line for line in proc.stdout.splitlines() if line.startswith("| workload"))
        assert "procpool" in header
    else:
        assert "procpool skipped:" in proc.stdout


@pytest.mark.timeout(120)
def test_quick_run_writes_the_report_where_told(
    quick_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
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

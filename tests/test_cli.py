"""``python -m procpool``: help, version and the demo's help, as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import procpool


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m procpool ARGS`` with procpool imported as installed (no PYTHONPATH)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-m", "procpool", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_help_describes_the_commands_and_exits_0() -> None:
    proc = _run("--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: python -m procpool [-h] [--version] COMMAND ...")
    assert "typed, fault-tolerant process pools" in proc.stdout
    assert "demo      count primes serially and in a pool" in proc.stdout
    assert "--version" in proc.stdout
    assert proc.stderr == ""


def test_demo_help_says_what_the_demo_does_and_exits_0() -> None:
    proc = _run("demo", "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: python -m procpool demo [-h]")
    for words in ("Count the primes below 600,000", "WorkerLostError", "TaskTimeoutError"):
        assert words in proc.stdout
    # Only the help: the demo itself did not run.
    assert "serial:" not in proc.stdout


def test_version_prints_the_package_version() -> None:
    proc = _run("--version")
    assert (proc.returncode, proc.stdout) == (0, f"procpool {procpool.__version__}\n")


@pytest.mark.parametrize("args", [[], ["bogus"]])
def test_a_missing_or_unknown_command_is_a_usage_error(args: list[str]) -> None:
    proc = _run(*args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "usage: python -m procpool" in proc.stderr
    if args:
        assert "invalid choice: 'bogus'" in proc.stderr

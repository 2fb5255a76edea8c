"""Run every script in docs/examples/ as a user would, and check what it prints.

Each example runs in its own interpreter (``python docs/examples/NAME.py``), so the
``if __name__ == "__main__":`` guard, top-level functions and the default start
method are exercised exactly as in the docs. Every example must have an entry in
``EXPECTED``: a new example without one fails, so the docs cannot drift silently.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"
TIMEOUT = 120

# Each expected line is a regular expression that must match one printed line,
# in this order (other lines may come in between).
EXPECTED: dict[str, list[str]] = {
    "spawn_process.py": [
        r"child pid differs from ours: True",
        r"alive after join: False",
        r"exitcode: 0",
        r"result: 90",
        r"child raised: ValueError\('bad input'\)",
        r"terminated, alive: False",
        r"terminated handle fails with WorkerLostError",
    ],
    "process_task.py": [
        r"name=greeter daemon=True exitcode=0",
        r"alive after join: False",
        r"result: hello world",
        r"in a pool: hello pool",
    ],
    "apply_async.py": [
        r"apply: 9",
        r"callback: got 16",
        r"error_callback: failed: ZeroDivisionError",
        r"get: 16",
        r"ready: True, successful: True",
        r"failed one successful: False",
    ],
    "map_results.py": [
        re.escape("result: [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]"),
        re.escape("streamed: [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]"),
        r"then\(sum\): 285",
        re.escape("two iterables: [11, 22, 33]"),
        rf"big map total: {sum(x * x for x in range(200_000))}",
        re.escape("failed at the third item, after [1.0, 0.5]"),
    ],
    "pool_lifecycle.py": [
        r"with block: all done=True",
        re.escape("with block: results=[0, 1, 4, 9, 16, 25, 36, 49]"),
        r"after close: PoolClosedError, also RuntimeError=True",
        re.escape("close+join: results=[0, 1, 4, 9]"),
        r"terminate: 4 of 4 futures ended without a result",
        r"exception in block: sleeper done=True",
    ],
    "then_catch_await.py": [
        r"then: n=49",
        r"then chain: n=16",
        r"catch: -1",
        r"catch passes success: 12",
        r"flattened: 81",
        r"then skipped on failure: ValueError",
        re.escape("await: [9, 16, 25, 14]"),
    ],
    "imap_endless.py": [
        re.escape(f"first 20 squares: {[n * n for n in range(20)]}"),
        r"read ahead of the consumer: at most 8: True",
        re.escape(f"imap_unordered, sorted: {[n * n for n in range(10)]}"),
    ],
    "task_timeout.py": [
        r"slow task: TaskTimeoutError, also TimeoutError=True",
        re.escape("other tasks: [0.01, 0.01, 0.01, 0.01, 0.01]"),
        re.escape("pool-wide task_timeout: ['ok', 'timed out', 'ok']"),
        r"stats: submitted=3 completed=2 timed_out=1",
    ],
    "executor_compat.py": [
        r"is an Executor: True",
        re.escape("submit + as_completed: [0, 1, 4, 9, 16]"),
        re.escape("map: [0, 1, 4, 9, 16]"),
        r"dead worker: WorkerLostError exitcode=3",
        r"the pool goes on: 144",
        r"shut down",
    ],
    "limits.py": [
        r"8 leaky tasks ran in [2-4] workers",
        r"workers recycled for memory: [1-3]",
        re.escape("timed out, killed: False; temporary file left: False"),
        re.escape("lost: cause=signal exitcode=-9"),
    ],
    "progress_callback.py": [
        rf"map sum: {sum(x * x for x in range(50))}",
        re.escape("map progress ends at: (50, 50)"),
        rf"imap sum: {sum(x * x for x in range(20))}",
        re.escape("imap progress ends at: (20, 20)"),
        re.escape("imap of a generator ends at: (20, None)"),
    ],
    "dask_scale_out.py": [
        r"local: submit: 144",
        r"local: sum of squares: 328350",
        re.escape("local: imap: [0, 1, 4, 9, 16]"),
        r"is an Executor: True",
        r"dask: submit: 144",
        r"dask: sum of squares: 328350",
        re.escape("dask: imap: [0, 1, 4, 9, 16]"),
    ],
    "ray_scale_out.py": [
        r"local: submit: 144",
        r"local: sum of squares: 328350",
        re.escape("local: imap: [0, 1, 4, 9, 16]"),
        r"local: time limit: TaskTimeoutError, worker killed: True",
        r"is an Executor: True",
        r"ray: submit: 144",
        r"ray: sum of squares: 328350",
        re.escape("ray: imap: [0, 1, 4, 9, 16]"),
        r"ray: time limit: TaskTimeoutError, worker killed: True",
        r"Ray still running after the with-block: False",
    ],
    "cancel_running.py": [
        r"running before cancel: True",
        r"cancel\(\) of a running task: True",
        r"cancelled: True",
        r"the pool goes on: 0.01",
        r"did not wait for the 30 s task: True",
        r"stats: cancelled=1",
    ],
    "forward_logs.py": [
        re.escape("results: [0, 10, 20]"),
        re.escape("records received: ['working on 0', 'working on 1', 'working on 2']"),
        r"all from worker pids: True",
    ],
    "cloudpickle_lambdas.py": [
        r"plain pickle: SerializationError",
        re.escape("closure: [0, 3, 6, 9, 12]"),
        r"lambda: ABC",
    ],
}

# Examples that need an optional extra: skipped, with the install hint, without it.
NEEDS_MODULE = {
    "cloudpickle_lambdas.py": ("cloudpickle", "procpool[cloudpickle]"),
    "dask_scale_out.py": ("distributed", "procpool[dask]"),
    "ray_scale_out.py": ("ray", "procpool[ray]"),
}

EXAMPLE_FILES = sorted(p.name for p in EXAMPLES.glob("*.py"))


def _run_example(path: Path) -> tuple[int, str, str]:
    """Run one example in a fresh interpreter; return (exit code, stdout, stderr).

    A hang fails the test with what the example printed so far and, on POSIX, a
    faulthandler dump of every thread of the example's main process (it gets
    SIGABRT instead of a silent kill).
    """
    env = dict(os.environ)
    # The example must import procpool the way a user's script does: installed.
    env.pop("PYTHONPATH", None)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONFAULTHANDLER"] = "1"
    with subprocess.Popen(
        [sys.executable, str(path)],
        cwd=path.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            if sys.platform != "win32":
                proc.send_signal(signal.SIGABRT)
            else:
                proc.kill()
            stdout, stderr = proc.communicate(timeout=30)
            pytest.fail(
                f"{path.name} did not finish in {TIMEOUT} s (thread dump below)\n"
                f"--- stdout\n{stdout}\n--- stderr\n{stderr}"
            )
    return proc.returncode, stdout, stderr


def test_every_example_has_expected_output() -> None:
    assert EXAMPLE_FILES, f"no examples found in {EXAMPLES}"
    assert set(EXAMPLE_FILES) == set(EXPECTED), (
        f"examples without EXPECTED: {sorted(set(EXAMPLE_FILES) - set(EXPECTED))}; "
        f"EXPECTED without example: {sorted(set(EXPECTED) - set(EXAMPLE_FILES))}"
    )


def test_every_example_is_shown_in_the_docs() -> None:
    page = (ROOT / "docs" / "examples.md").read_text(encoding="utf-8")
    for name in EXAMPLE_FILES:
        assert f"examples/{name}" in page, f"docs/examples.md does not include {name}"


@pytest.mark.timeout(TIMEOUT + 30)
@pytest.mark.parametrize(
    "name",
    [
        # The Ray example is deselected with the other Ray tests where Ray has no wheel,
        # and runs in make test-all only: starting Ray takes ~5 s of make test's budget,
        # and test_contract.py and test_ray.py cover the same calls.
        pytest.param(name, marks=[pytest.mark.ray, pytest.mark.slow])
        if name.startswith("ray_")
        else name
        for name in EXAMPLE_FILES
    ],
)
def test_example_runs_and_prints_expected_output(name: str) -> None:
    if name in NEEDS_MODULE:
        module, extra = NEEDS_MODULE[name]
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"needs {module}: pip install '{extra}'")
    returncode, stdout, stderr = _run_example(EXAMPLES / name)
    output = f"--- stdout\n{stdout}\n--- stderr\n{stderr}"
    assert returncode == 0, f"{name} exited {returncode}\n{output}"
    lines = stdout.splitlines()
    position = 0
    for pattern in EXPECTED[name]:
        for index in range(position, len(lines)):
            if re.fullmatch(pattern, lines[index]):
                position = index + 1
                break
        else:
            pytest.fail(f"{name}: no line matching {pattern!r} (in order)\n{output}")
    assert "Traceback" not in stderr, output


@pytest.mark.timeout(TIMEOUT + 30)
def test_make_demo_job_runs_and_reports_the_failures_it_causes() -> None:
    # `make demo` runs `python -m procpool demo`: the README's first command.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-m", "procpool", "demo"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    expected = [
        r"  serial:   [\d,]+ primes in [\d.]+ s",
        r"  procpool: [\d,]+ primes in [\d.]+ s with \d+ workers -> speed-up [\d.]+x",
        r"  crashed task -> WorkerLostError: task procpool\._demo\.crash_worker: .*",
        r"  late task    -> TaskTimeoutError: task procpool\._demo\.hang ran longer .*",
        r"  the other 12 tasks all arrived: 11,301 primes",
        r"  pool still has \d+ workers \(2 replaced; \d+ tasks completed, 2 failed, "
        r"1 of them by its time limit\)",
    ]
    lines = proc.stdout.splitlines()
    position = 0
    for pattern in expected:
        matches = [i for i in range(position, len(lines)) if re.fullmatch(pattern, lines[i])]
        assert matches, f"no line matching {pattern!r} (in order)\n{proc.stdout}"
        position = matches[0] + 1
    # The serial and the pool count agree.
    counts = {m.group(1) for line in lines if (m := re.search(r"([\d,]+) primes in", line))}
    assert len(counts) == 1, proc.stdout
    # "N tasks completed" is what the user can count: the map's ranges plus the other
    # tasks that arrived (the demo's warm-up task is not one of them).
    ranges = re.search(r"^Counting primes below [\d,]+ in (\d+) ranges", proc.stdout, re.M)
    others = re.search(r"^  the other (\d+) tasks all arrived", proc.stdout, re.M)
    completed = re.search(r"; (\d+) tasks completed, ", proc.stdout)
    assert ranges, proc.stdout
    assert others, proc.stdout
    assert completed, proc.stdout
    assert int(completed[1]) == int(ranges[1]) + int(others[1]), proc.stdout

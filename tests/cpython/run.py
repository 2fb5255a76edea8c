"""Run CPython's own executor tests against procpool.Pool (see cpython_executor_tests.py).

Usage (Python 3.13+, whose standard library ships ``test.test_concurrent_futures``)::

    python tests/cpython/run.py                   # everything, fork + forkserver + spawn
    python tests/cpython/run.py -k Deadlock -m spawn
    python tests/cpython/run.py --all             # the not-applicable tests too
    python tests/cpython/run.py --markdown        # the not-applicable list, for the docs

Each generated test class runs in a child interpreter under unittest, with a hang
guard per test (faulthandler dumps every thread's stack and ends the child after
``--timeout`` seconds). A hung or crashed test is reported and the child is started
again for the rest of its class. Exits non-zero if any test failed, erred, hung
or crashed, if a class left a process running after its interpreter exited
(reported, then killed), or if docs/reliability.md lacks the current not-applicable list.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import unittest
from pathlib import Path
from typing import Any, TextIO

HERE = Path(__file__).resolve().parent
DOCS = HERE.parent.parent / "docs" / "reliability.md"
MODULE = "cpython_executor_tests"
DEFAULT_TIMEOUT = 120.0


# -- child: run some tests of one class, one result line per test -----------------------


class _GuardedResult(unittest.TextTestResult):
    """Re-arms the hang guard at each test's start and end; records outcomes as JSON lines."""

    record: TextIO
    timeout: float

    def startTest(self, test: unittest.TestCase) -> None:
        self._started = time.monotonic()
        self._outcome: tuple[str, str] = ("passed", "")
        self.record.write(json.dumps({"test": test.id(), "status": "started"}) + "\n")
        self.record.flush()
        faulthandler.dump_traceback_later(self.timeout, exit=True, file=sys.__stderr__)
        super().startTest(test)

    def stopTest(self, test: unittest.TestCase) -> None:
        # Still armed after the test: class and module clean-ups, and the
        # interpreter's exit (which waits for open pools), can hang too.
        faulthandler.dump_traceback_later(self.timeout, exit=True, file=sys.__stderr__)
        super().stopTest(test)
        status, detail = self._outcome
        line = {
            "test": test.id(),
            "status": status,
            "detail": detail,
            "seconds": round(time.monotonic() - self._started, 2),
        }
        self.record.write(json.dumps(line) + "\n")
        self.record.flush()

    def _note(self, status: str, detail: str) -> None:
        # The first failure of a test wins (a tearDown error comes after it).
        if self._outcome[0] == "passed":
            self._outcome = (status, detail)

    def addError(self, test: Any, err: Any) -> None:
        super().addError(test, err)
        self._note("error", self._exc_info_to_string(err, test))

    def addFailure(self, test: Any, err: Any) -> None:
        super().addFailure(test, err)
        self._note("failed", self._exc_info_to_string(err, test))

    def addSubTest(self, test: Any, subtest: Any, err: Any) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None:
            failed = issubclass(err[0], test.failureException)
            self._note("failed" if failed else "error", self._exc_info_to_string(err, subtest))

    def addSkip(self, test: Any, reason: str) -> None:
        super().addSkip(test, reason)
        self._note("skipped", reason)

    def addUnexpectedSuccess(self, test: Any) -> None:
        super().addUnexpectedSuccess(test)
        self._note("failed", "unexpected success")


def _child(record_path: str, timeout: float, test_ids: list[str]) -> int:
    sys.path.insert(0, str(HERE))
    with open(record_path, "a", encoding="utf-8") as record:
        try:
            __import__(MODULE)  # procpool and CPython's test modules with it
        except BaseException:
            detail = traceback.format_exc()
            print(detail, file=sys.stderr)
            for test_id in test_ids:
                line = {"test": test_id, "status": "error", "detail": detail, "seconds": 0}
                record.write(json.dumps(line) + "\n")
            return 0
        suite = unittest.defaultTestLoader.loadTestsFromNames(test_ids)
        _GuardedResult.record = record
        _GuardedResult.timeout = timeout
        runner = unittest.TextTestRunner(verbosity=2, resultclass=_GuardedResult)
        runner.run(suite)
    return 0


# -- parent: one child per class, summary, exit status ------------------------------------


def _classes(methods: set[str], pattern: str | None) -> dict[str, list[str]]:
    """Test ids to run, by class, in the module's order."""
    sys.path.insert(0, str(HERE))
    module = __import__(MODULE)
    by_class: dict[str, list[str]] = {}
    for name, cls in vars(module).items():
        if not (isinstance(cls, type) and issubclass(cls, unittest.TestCase)):
            continue
        if cls.__module__ != MODULE:
            continue
        ctx = getattr(cls, "ctx", None)
        if ctx is not None and ctx not in methods:
            continue
        ids = [
            f"{MODULE}.{name}.{method}"
            for method in unittest.defaultTestLoader.getTestCaseNames(cls)
            if pattern is None or pattern in f"{name}.{method}"
        ]
        if ids:
            by_class[name] = ids
    return by_class


def _leftovers(group: int) -> list[str]:
    """The processes still in a finished child's process group (its session)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == group and fields[0] != "Z":
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                found.append(f"{entry.name} {cmd.strip()[:120]}")
        except (OSError, IndexError, ValueError):
            continue
    return found


def _reap_group(group: int) -> list[str]:
    """Wait a little for a child's processes to go; kill and return any that stay."""
    deadline = time.monotonic() + 3.0
    while (left := _leftovers(group)) and time.monotonic() < deadline:
        time.sleep(0.1)
    if left:
        with contextlib.suppress(OSError):
            os.killpg(group, signal.SIGKILL)
    return left


def _run_class(name: str, ids: list[str], timeout: float) -> list[dict[str, Any]]:
    """Run the tests ``ids`` of class ``name`` in child interpreters until each has an outcome.

    Each child runs in a session of its own, so that whatever it leaves running
    (a worker, a forkserver) is found and reported, then killed.
    """
    outcomes: list[dict[str, Any]] = []
    left = list(ids)
    while left:
        with tempfile.TemporaryDirectory() as tmp:
            record_path = os.path.join(tmp, "record.jsonl")
            cmd = [sys.executable, str(Path(__file__).resolve())]
            cmd += ["--child", record_path, "--timeout", str(timeout), *left]
            started = time.monotonic()
            child = subprocess.Popen(cmd, start_new_session=True)
            try:
                # faulthandler ends a hung child; this is only a backstop.
                code = child.wait(timeout * (len(left) + 2))
            except BaseException:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                if not isinstance(sys.exc_info()[1], subprocess.TimeoutExpired):
                    raise
                code = -signal.SIGKILL
            stray = _reap_group(child.pid)
            lines = []
            if os.path.exists(record_path):
                with open(record_path, encoding="utf-8") as f:
                    lines = [json.loads(line) for line in f if line.strip()]
        seconds = round(time.monotonic() - started, 2)
        done = {line["test"]: line for line in lines if line["status"] != "started"}
        outcomes.extend(done[i] for i in left if i in done)
        running = [line["test"] for line in lines if line["status"] == "started"]
        lost = [i for i in running if i not in done]
        if stray:
            outcomes.append(
                {
                    "test": f"{MODULE}.{name} (processes left running)",
                    "status": "leaked",
                    "detail": "\n".join(stray),
                    "seconds": 0,
                }
            )
        if not lost and all(i in done for i in left):
            if code != 0:
                how = "hung (hang guard)" if code == 1 else f"ended with exit code {code}"
                outcomes.append(
                    {
                        "test": f"{MODULE}.{name} (clean-up, interpreter exit)",
                        "status": "hung" if code == 1 else "crashed",
                        "detail": f"all tests ran, then the child {how} (stacks above)",
                        "seconds": seconds,
                    }
                )
            break
        # The child died: blame the test it was running, then go on with the rest.
        culprit = lost[0] if lost else next(i for i in left if i not in done)
        hung = code == 1
        outcomes.append(
            {
                "test": culprit,
                "status": "hung" if hung else "crashed",
                "detail": "hang guard: stacks above" if hung else f"child exit code {code}",
                "seconds": seconds,
            }
        )
        left = [i for i in left if i not in done and i != culprit]
    return outcomes


def _markdown() -> str:
    sys.path.insert(0, str(HERE))
    module = __import__(MODULE)
    rows = [
        "| test | start methods | why it does not apply |",
        "| --- | --- | --- |",
    ]
    for entry in module.NOT_APPLICABLE:
        methods = "all" if entry.methods == module.START_METHODS else ", ".join(entry.methods)
        if entry.pythons:
            methods += f" (Python {entry.pythons})"
        rows.append(f"| `{entry.test}` | {methods} | {entry.reason} |")
    return "\n".join(rows) + "\n"


def _docs_are_current() -> bool:
    try:
        text = DOCS.read_text(encoding="utf-8")
    except OSError:
        return True  # an installed copy without the docs
    return _markdown() in text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--methods", default="fork,forkserver,spawn")
    parser.add_argument("-k", dest="pattern", help="only tests whose Class.method contain this")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="per test")
    parser.add_argument("--all", action="store_true", help="run the not-applicable tests too")
    parser.add_argument("--markdown", action="store_true", help="print the not-applicable list")
    parser.add_argument("--child", metavar="RECORD", help=argparse.SUPPRESS)
    parser.add_argument("tests", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.all:
        os.environ["PROCPOOL_CPYTHON_ALL"] = "1"
    if args.child:
        return _child(args.child, args.timeout, args.tests)
    if args.markdown:
        print(_markdown(), end="")
        return 0
    if sys.version_info < (3, 13):
        print("CPython's test.test_concurrent_futures package needs Python 3.13+", file=sys.stderr)
        return 2

    start = time.monotonic()
    methods = set(args.methods.split(","))
    outcomes: list[dict[str, Any]] = []
    for name, ids in _classes(methods, args.pattern).items():
        outcomes.extend(_run_class(name, ids, args.timeout))
    elapsed = time.monotonic() - start

    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome["status"]] = counts.get(outcome["status"], 0) + 1
    bad = [o for o in outcomes if o["status"] in ("failed", "error", "hung", "crashed", "leaked")]
    print("\n" + "=" * 78)
    print(f"CPython's executor tests against procpool.Pool, Python {sys.version.split()[0]}")
    for outcome in bad:
        first = outcome["detail"].strip().splitlines()[-1] if outcome["detail"] else ""
        print(f"{outcome['status'].upper():8} {outcome['test']}: {first[:200]}")
    slowest = sorted(outcomes, key=lambda o: -o["seconds"])[:5]
    print("slowest: " + ", ".join(f"{o['test'].split('.', 1)[1]} {o['seconds']}s" for o in slowest))
    module = sys.modules[MODULE]
    typos = [entry.test for entry in module.UNMATCHED if not entry.pythons]
    if typos:
        print(f"not-applicable entries that name no test: {', '.join(typos)}")
    docs_ok = args.pattern is not None or args.all or _docs_are_current()
    if not docs_ok:
        print(
            f"docs/reliability.md does not hold the current not-applicable list: "
            f"paste the output of `python {Path(__file__).name} --markdown` there"
        )
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    print(f"{summary} in {elapsed:.0f} s")
    return 1 if bad or typos or not docs_ok or not outcomes else 0


if __name__ == "__main__":
    sys.exit(main())

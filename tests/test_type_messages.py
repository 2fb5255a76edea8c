"""What mypy and pyright tell a user for the five most common mistakes.

tests/typing/check_api.py proves that each mistake *is* an error; this module pins
what the user reads: the messages name the user's own types and procpool's public
names (``"submit" of "Executor"``, ``Future[int]``), never an internal class. A
snippet is checked by both checkers, as a user's project would be (strict mode,
Python 3.10), in about two seconds; nothing is executed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent

#: A user's module: the five mistakes are on the lines marked ``# <name>``.
SNIPPET = """\
import procpool


def square(x: int) -> int:
    return x * x


def run(pool: procpool.Executor) -> None:
    pool.submit(square, "3")  # wrong-argument-type
    pool.submit(square, 1, 2)  # wrong-argument-count
    pool.map(square, ["a", "b"])  # wrong-item-type
    n: int = pool.submit(square, 3)  # forgot-result
    pool.submit(square, 3).then(len)  # callback-does-not-take-the-result
    print(n)


def main() -> None:
    with procpool.Pool() as pool:  # a Pool is a procpool.Executor
        run(pool)
    with procpool.DaskPool() as dask_pool:  # so is a DaskPool
        run(dask_pool)
"""

#: Per mistake, what each checker must say on its line (substrings of one message).
EXPECTED: dict[str, dict[str, str]] = {
    "wrong-argument-type": {
        "mypy": 'Argument 2 to "submit" of "Executor" has incompatible type "str"; expected "int"',
        "pyright": 'Argument of type "Literal[\'3\']" cannot be assigned to parameter "x" of type "int"',
    },
    "wrong-argument-count": {
        "mypy": 'Too many arguments for "submit" of "Executor"',
        "pyright": "Expected 1 positional argument",
    },
    "wrong-item-type": {
        "mypy": 'Argument 1 to "map" of "Executor" has incompatible type "Callable[[int], int]"; '
        'expected "Callable[[str], int]"',
        "pyright": 'Argument of type "list[str]" cannot be assigned to parameter "iterable"',
    },
    "forgot-result": {
        "mypy": 'Incompatible types in assignment (expression has type "Future[int]", '
        'variable has type "int")',
        "pyright": 'Type "Future[int]" is not assignable to declared type "int"',
    },
    "callback-does-not-take-the-result": {
        # mypy reports a call that matches no overload against the first overload
        # that is "similar" (any callable is similar to a callable parameter), and
        # then's first overload has to be the flattening one: in a different order
        # both checkers would type `then(returns_a_future)` as Future[Future[...]].
        "mypy": 'Argument 1 to "then" of "Future" has incompatible type "Callable[[Sized], int]"',
        # pyright reports it against the last overload: the plain callable.
        "pyright": 'cannot be assigned to parameter "fn" of type "(int) -> S@then" in function "then"',
    },
}


@pytest.fixture(scope="module")
def snippet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The user's module in a folder of its own, with each mistake's line number known."""
    path = tmp_path_factory.mktemp("user") / "user_code.py"
    path.write_text(SNIPPET)
    return path


def _line_of(mistake: str) -> int:
    return next(n for n, line in enumerate(SNIPPET.splitlines(), 1) if f"# {mistake}" in line)


def _mypy(path: Path) -> dict[int, list[str]]:
    """mypy --strict on ``path`` alone (no project config): messages by line."""
    flags = ["--strict", "--python-version", "3.10", "--no-incremental", "--config-file", ""]
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", *flags, path.name],
        capture_output=True,
        text=True,
        cwd=path.parent,
        timeout=120,
        check=False,
    )
    found: dict[int, list[str]] = {}
    for line in proc.stdout.splitlines():
        match = re.match(rf"{re.escape(path.name)}:(\d+): error: (.*)", line)
        if match:
            found.setdefault(int(match[1]), []).append(match[2])
    assert found, proc.stdout + proc.stderr
    return found


def _pyright(path: Path) -> dict[int, list[str]]:
    """pyright (strict) on ``path`` alone, with this interpreter's packages: messages by line."""
    (path.parent / "pyrightconfig.json").write_text(
        json.dumps({"typeCheckingMode": "strict", "pythonVersion": "3.10"})
    )
    proc = subprocess.run(
        [str(BIN / "pyright"), "--outputjson", "--pythonpath", sys.executable, path.name],
        capture_output=True,
        text=True,
        cwd=path.parent,
        timeout=120,
        check=False,
    )
    report = json.loads(proc.stdout)
    found: dict[int, list[str]] = {}
    for diagnostic in report["generalDiagnostics"]:
        if diagnostic["severity"] == "error":
            line = diagnostic["range"]["start"]["line"] + 1
            # pyright indents the lines under a message with no-break spaces.
            found.setdefault(line, []).append(diagnostic["message"].replace("\xa0", " "))
    return found


@pytest.fixture(scope="module")
def messages(snippet: Path) -> dict[str, dict[int, list[str]]]:
    return {"mypy": _mypy(snippet), "pyright": _pyright(snippet)}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("checker", ["mypy", "pyright"])
@pytest.mark.parametrize("mistake", list(EXPECTED))
def test_mistake_is_reported_in_the_users_words(
    messages: dict[str, dict[int, list[str]]], checker: str, mistake: str
) -> None:
    found = messages[checker].get(_line_of(mistake), [])
    expected = EXPECTED[mistake][checker]
    assert any(expected in message for message in found), (
        f"{checker} on the {mistake} line said {found!r}, not {expected!r}"
    )
    for message in found:
        assert "TypedExecutor" not in message
        assert "procpool._" not in message


@pytest.mark.timeout(240)
@pytest.mark.parametrize("checker", ["mypy", "pyright"])
def test_only_the_mistakes_are_errors(
    messages: dict[str, dict[int, list[str]]], checker: str
) -> None:
    """``run(pool)`` accepts a Pool and a DaskPool: procpool.Executor is their common type."""
    assert sorted(messages[checker]) == sorted(_line_of(m) for m in EXPECTED), messages[checker]

"""The whole test suite, slow stress tests included, on every supported Python.

Run by ``make test-all``; ``nox -s tests-3.12`` runs one interpreter, and anything
after ``--`` goes to pytest (``nox -s tests-3.13 -- -k timeout``). ``nox -s cpython``
runs CPython's own executor tests against procpool.Pool (tests/cpython/run.py;
arguments after ``--`` go to it, e.g. ``nox -s cpython -- -k Deadlock -m spawn``).

Interpreters: on the development machines they come from pyenv. Its ``python3.X``
shims fail unless that version is active, and nox would then skip the session or
try to download a Python, so the real ``versions/3.X.Y/bin`` folders are put first
on PATH below and a missing interpreter is an error, never a silent skip.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import nox

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
#: Pythons on which Ray (the ``ray`` extra, RayPool's tests) is installed and tested.
#: Ray 2.60.0 ships wheels for CPython 3.10-3.14 on Linux x86_64, macOS arm64 and
#: Windows (checked with ``pip install --dry-run --only-binary=:all: --python-version``),
#: so no supported Python is left out. A Python without a Ray wheel is listed in
#: RAY_EXCLUDED with the reason: its session then installs no Ray and deselects the
#: ``ray`` tests by marker (``-m "not ray"``), and says so, instead of skipping them.
RAY_EXCLUDED: dict[str, str] = {}
#: Pythons whose standard library ships the ``test.test_concurrent_futures`` package.
CPYTHON_SUITE_PYTHONS = ["3.13"]

nox.options.sessions = ["tests", "cpython"]
nox.options.error_on_missing_interpreters = True
nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "venv"

# Never let uv (or nox through it) fetch an interpreter: use what is installed.
os.environ["UV_PYTHON_DOWNLOADS"] = "never"


def _pyenv_root() -> Path | None:
    """Return pyenv's root folder, or None where pyenv is not installed."""
    root = os.environ.get("PYENV_ROOT")
    if root:
        return Path(root)
    try:
        out = subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        default = Path.home() / ".pyenv"
        return default if default.is_dir() else None
    return Path(out.stdout.strip())


def _put_pyenv_pythons_first_on_path() -> None:
    """Prepend the newest installed pyenv ``3.X.Y/bin`` of each supported 3.X to PATH."""
    root = _pyenv_root()
    if root is None or not (root / "versions").is_dir():
        return
    folders: list[str] = []
    for minor in PYTHONS:
        candidates = sorted(
            (
                p
                for p in (root / "versions").glob(f"{minor}.*")
                if p.name[len(minor) + 1 :].isdigit()
            ),
            key=lambda p: int(p.name.rsplit(".", 1)[1]),
        )
        if candidates:
            folders.append(str(candidates[-1] / "bin"))
    os.environ["PATH"] = os.pathsep.join([*folders, os.environ.get("PATH", "")])


_put_pyenv_pythons_first_on_path()


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Install procpool with its dev tools and run every test, ``slow`` ones included."""
    python = str(session.python)
    excluded = RAY_EXCLUDED.get(python)
    if excluded is None:
        session.install("-e", ".[dev,dask,ray]")
        # Ray must be there: a missing Ray would skip its tests without a word.
        session.run("python", "-c", "import ray")
        markers = "slow or not slow"
    else:
        # The dev extra's Ray pin carries a python_version marker that leaves it out here.
        session.log(f"Ray is not tested on Python {python}: {excluded}")
        session.install("-e", ".[dev,dask]")
        markers = "(slow or not slow) and not ray"
    session.run("pytest", "-q", "-p", "no:cacheprovider", "-m", markers, *session.posargs)


@nox.session(python=CPYTHON_SUITE_PYTHONS)
def cpython(session: nox.Session) -> None:
    """CPython's own concurrent.futures tests against procpool.Pool (fork, forkserver, spawn)."""
    session.install("-e", ".")
    session.run("python", "tests/cpython/run.py", *session.posargs)

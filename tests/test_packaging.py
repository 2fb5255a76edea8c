"""The built distributions are what a user gets from PyPI: check them as a user would.

One sdist and one wheel are built (``python -m build``) for the whole module; the
tests then check the metadata (``twine check --strict``), what the archives hold,
and that the wheel installed into a brand-new venv imports, runs, and is
type-checked by mypy --strict and pyright through its ``py.typed`` marker.

The GitHub workflow files are validated against the workflow schema here too
(``check-jsonschema``, offline, with its vendored schema).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "procpool"

pytestmark = pytest.mark.timeout(300)


def _version() -> str:
    text = (ROOT / "src" / PACKAGE / "_version.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__\s*=\s*"([^"]+)"', text, re.MULTILINE)
    assert match, "src/procpool/_version.py must set __version__"
    return match.group(1)


def _run(cmd: list[str], *, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run a command, failing the test with its whole output if it fails."""
    proc = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    return proc


def _venv_python(venv: Path) -> Path:
    if sys.platform == "win32":
        return venv / "Scripts" / "python.exe"
    return venv / "bin" / "python"


@dataclass(frozen=True)
class Dists:
    """The distributions built from this checkout."""

    sdist: Path
    wheel: Path


@dataclass(frozen=True)
class InstalledVenv:
    """A fresh venv with the built wheel (and nothing from this checkout) installed."""

    python: Path
    workdir: Path


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    """Build the sdist and the wheel once for this module."""
    pytest.importorskip("build", reason="needs `build` (in the dev extra): pip install build")
    outdir = tmp_path_factory.mktemp("dist")
    _run(
        [sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(outdir), str(ROOT)],
        cwd=ROOT,
    )
    sdists = sorted(outdir.glob(f"{PACKAGE}-*.tar.gz"))
    wheels = sorted(outdir.glob(f"{PACKAGE}-*.whl"))
    assert len(sdists) == 1, sdists
    assert len(wheels) == 1, wheels
    return Dists(sdist=sdists[0], wheel=wheels[0])


@pytest.fixture(scope="module")
def installed(dists: Dists, tmp_path_factory: pytest.TempPathFactory) -> InstalledVenv:
    """Install the wheel into a new venv, as `pip install procpool` would."""
    base = tmp_path_factory.mktemp("user")
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=base)
    python = _venv_python(venv)
    # The wheel file itself; its dependency (typing-extensions) comes from the index.
    _run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            str(dists.wheel),
        ],
        cwd=base,
    )
    workdir = base / "project"
    workdir.mkdir()
    return InstalledVenv(python=python, workdir=workdir)


def test_version_is_in_both_file_names(dists: Dists) -> None:
    version = _version()
    assert dists.sdist.name == f"{PACKAGE}-{version}.tar.gz"
    assert dists.wheel.name.startswith(f"{PACKAGE}-{version}-py3-none-any")


def test_twine_check_strict_accepts_both(dists: Dists) -> None:
    pytest.importorskip(
        "twine", reason="needs `twine>=7` (in the dev extra): pip install 'twine>=7'"
    )
    proc = _run(
        [sys.executable, "-m", "twine", "check", "--strict", str(dists.sdist), str(dists.wheel)],
        cwd=ROOT,
    )
    assert proc.stdout.count("PASSED") == 2, proc.stdout


def test_wheel_holds_the_package_and_py_typed_only(dists: Dists) -> None:
    with zipfile.ZipFile(dists.wheel) as whl:
        names = whl.namelist()
        metadata = whl.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode(
            "utf-8"
        )
    assert f"{PACKAGE}/py.typed" in names
    assert f"{PACKAGE}/__init__.py" in names
    top_level = {name.split("/", 1)[0] for name in names}
    assert top_level == {PACKAGE, f"{PACKAGE}-{_version()}.dist-info"}, top_level
    for name in names:
        assert "tests/" not in name, name
        assert "benchmarks/" not in name, name
        assert "__pycache__" not in name, name
        assert not name.endswith(".pyc"), name
    # One runtime dependency; everything else is behind an extra.
    runtime = [
        line
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    assert len(runtime) == 1, runtime
    assert "typing-extensions" in runtime[0], runtime
    for extra in ("progress", "cloudpickle", "dask", "ray"):
        assert f"Provides-Extra: {extra}" in metadata
    assert "Requires-Python: >=3.10" in metadata


def test_sdist_holds_sources_tests_and_docs_but_no_clutter(dists: Dists) -> None:
    with tarfile.open(dists.sdist) as sdist:
        names = [m.name.split("/", 1)[1] for m in sdist.getmembers() if "/" in m.name]
    for must in ("pyproject.toml", "README.md", "LICENSE", "src/procpool/py.typed"):
        assert must in names, must
    for name in names:
        first = name.split("/", 1)[0]
        assert first not in {"benchmarks", ".venv", ".github", ".ci", "dist", "build"}, name
        assert not first.startswith(".venv"), name
        assert "__pycache__" not in name, name
        assert "_build/" not in name, name


def test_installed_wheel_imports_from_the_venv(installed: InstalledVenv) -> None:
    proc = _run(
        [
            str(installed.python),
            "-c",
            "import procpool, sys; print(procpool.__version__); print(procpool.__file__)",
        ],
        cwd=installed.workdir,
    )
    version, location = proc.stdout.split()
    assert version == _version()
    # Imported from site-packages, not from this checkout's src/.
    assert str(ROOT / "src") not in location
    assert "site-packages" in location


USER_FILE = '''\
"""A small user program, type-checked against the installed procpool."""

from __future__ import annotations

from concurrent.futures import as_completed

from typing_extensions import assert_type

import procpool


def square(x: int) -> int:
    return x * x


def describe(n: int) -> str:
    return f"n={n}"


def add(a: int, b: int) -> int:
    return a + b


class Greet(procpool.ProcessTask[str]):
    def __init__(self, who: str) -> None:
        super().__init__()
        self.who = who

    def run(self) -> str:
        return f"hello {self.who}"


def main() -> None:
    with procpool.Pool(2) as pool:
        fut = pool.submit(square, 7)
        assert_type(fut, procpool.Future[int])
        text = fut.then(describe)
        assert_type(text, procpool.Future[str])
        squares = pool.map(square, [1, 2, 3])
        assert_type(squares, procpool.MapFuture[int])
        sums = pool.map(add, [1, 2], [10, 20])
        done = [f.result() for f in as_completed([fut])]
        greeting = pool.submit(Greet("pool"))
        assert_type(greeting, procpool.Future[str])
        print(text.result(), squares.result(), sums.result(), done, greeting.result())
    handle = procpool.spawn(square, 9)
    assert_type(handle, procpool.ProcessHandle[int])
    print(handle.result(timeout=60))


if __name__ == "__main__":
    main()
'''

WRONG_FILE = """\
import procpool


def square(x: int) -> int:
    return x * x


def main() -> None:
    with procpool.Pool(2) as pool:
        pool.submit(square, "seven")
"""


def test_installed_wheel_runs_a_user_program(installed: InstalledVenv) -> None:
    user = installed.workdir / "user_program.py"
    user.write_text(USER_FILE, encoding="utf-8")
    proc = _run([str(installed.python), str(user)], cwd=installed.workdir, timeout=120)
    assert proc.stdout.splitlines() == ["n=49 [1, 4, 9] [11, 22] [49] hello pool", "81"]


def _mypy(installed: InstalledVenv, source: str, name: str) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("mypy", reason="needs mypy (in the dev extra)")
    path = installed.workdir / name
    path.write_text(source, encoding="utf-8")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--cache-dir",
            os.devnull,
            "--python-executable",
            str(installed.python),
            str(path),
        ],
        cwd=installed.workdir,  # no pyproject.toml here: only the flags above apply
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_mypy_strict_accepts_a_user_file_against_the_installed_wheel(
    installed: InstalledVenv,
) -> None:
    proc = _mypy(installed, USER_FILE, "user_program.py")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success: no issues found" in proc.stdout


def test_mypy_sees_the_installed_types_and_rejects_a_wrong_argument(
    installed: InstalledVenv,
) -> None:
    # If py.typed were missing, mypy would report import-untyped instead.
    proc = _mypy(installed, WRONG_FILE, "wrong_program.py")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "[arg-type]" in proc.stdout, proc.stdout
    assert "import-untyped" not in proc.stdout
    assert "import-not-found" not in proc.stdout


def test_readme_example_type_checks_against_the_installed_wheel(installed: InstalledVenv) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    assert blocks, "README.md has no python example"
    proc = _mypy(installed, blocks[0], "readme_example.py")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_pyright_strict_accepts_a_user_file_against_the_installed_wheel(
    installed: InstalledVenv,
) -> None:
    pytest.importorskip("pyright", reason="needs pyright (in the dev extra)")
    user = installed.workdir / "user_program.py"
    user.write_text(USER_FILE, encoding="utf-8")
    config = installed.workdir / "pyrightconfig.json"
    config.write_text('{"typeCheckingMode": "strict", "pythonVersion": "3.10"}\n', encoding="utf-8")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyright",
            "--pythonpath",
            str(installed.python),
            "--project",
            str(config),
            str(user),
        ],
        cwd=installed.workdir,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 errors" in proc.stdout, proc.stdout


WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


@pytest.mark.skipif(
    importlib.util.find_spec("check_jsonschema") is None,
    reason="needs check-jsonschema (in the dev extra): pip install check-jsonschema",
)
def test_github_workflows_match_the_workflow_schema() -> None:
    assert WORKFLOWS, "no .github/workflows/*.yml found"
    exe = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "check_jsonschema"]
    _run(
        [*cmd, "--builtin-schema", "vendor.github-workflows", *map(str, WORKFLOWS)],
        cwd=ROOT,
        timeout=60,
    )


def test_release_workflow_publishes_with_trusted_publishing() -> None:
    text = (ROOT / ".github" / "workflows" / "release.yml").read_text(encoding="utf-8")
    assert "id-token: write" in text
    match = re.search(r"pypa/gh-action-pypi-publish@(\S+)", text)
    assert match, "release.yml must use pypa/gh-action-pypi-publish"
    assert match.group(1) == "release/v1" or tuple(
        int(p) for p in match.group(1).lstrip("v").split(".")
    ) >= (1, 14, 2)
    assert "password:" not in text, "trusted publishing needs no API token"
    assert re.search(r"tags:\s*\n\s*-\s*[\"']?v\*", text), "release runs on v* tags"

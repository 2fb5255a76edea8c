"""The process boundary is one package that imports nothing from outside it.

``procpool._child`` holds everything a child process runs (issue 16): checked
statically (no import in it reaches outside it or beyond the standard library),
and in real children: a pool worker, a ``spawn()`` child and a Dask chunk load
no module of the parent's side (the pool, the dispatcher, futures) and none of
asyncio, logging or concurrent.futures.process.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import procpool

CHILD = Path(procpool.__file__).parent / "_child"
SCRIPTS = Path(__file__).parent / "scripts"
#: What a child may load of procpool: the package itself (its __init__ only
#: defines names to load later), its version, and the process boundary.
ALLOWED = ("procpool", "procpool._version")


def _imports(path: Path) -> list[tuple[str, int]]:
    """(module, level) of every import in a file (level: leading dots)."""
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", node.level))
    return found


def test_the_child_package_imports_only_itself_and_the_standard_library() -> None:
    files = sorted(CHILD.glob("*.py"))
    assert len(files) >= 6
    stdlib = sys.stdlib_module_names | {"__future__", "_posixshmem"}
    for path in files:
        for module, level in _imports(path):
            where = f"{path.name} imports {'.' * level}{module}"
            if level:
                assert level == 1, f"{where}: outside procpool._child"
            elif module.startswith("procpool"):
                assert module.startswith("procpool._child"), where
            else:
                assert module.split(".")[0] in stdlib, f"{where}: not the standard library"


def _is_ours(name: str) -> bool:
    return name in ALLOWED or name.startswith("procpool._child")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["spawn", "forkserver"])  # fork children inherit it all
def test_children_load_nothing_of_the_parent_side(method: str) -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPTS / "child_imports.py"), method],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    for who in ("worker", "spawned", "dask"):
        modules, heavy = report[who]
        assert any(name.startswith("procpool._child.") for name in modules), (who, modules)
        assert [name for name in modules if not _is_ours(name)] == [], who
        if who != "dask":  # the Dask check runs in a plain interpreter of its own
            assert heavy == [], (who, heavy)


#: The parts of the dispatcher, in the order they may import each other: each may
#: import only parts before it (issue 23: no part holds the whole dispatcher).
PARTS = (
    "_queue",
    "_workers",
    "_staffing",
    "_settle",
    "_feeding",
    "_direct",
    "_assist",
    "_dispatcher",
)


def test_the_dispatchers_parts_import_only_the_parts_before_them() -> None:
    package = Path(procpool.__file__).parent
    for position, part in enumerate(PARTS):
        # Every import counts, those under `if TYPE_CHECKING:` too: a part that
        # names the dispatcher's type depends on all of it.
        imported = {module for module, level in _imports(package / f"{part}.py") if level == 1}
        later = set(PARTS[position + 1 :])
        assert not imported & later, f"{part} imports {sorted(imported & later)}"

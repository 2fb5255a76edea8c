"""Every Python block of README.md and docs/*.md runs as a test, with Sybil.

Each page is one namespace, evaluated top to bottom like a script run with
``python page.py``: ``__name__`` is ``"__main__"``, so the blocks' ``if __name__ ==
"__main__":`` parts run too, and the functions they send to workers are found by
pickle as ``__main__.name``. A block whose first line is ``# name.py`` is also
written to a file of that name on ``sys.path``, as the tutorial asks the reader
to do, so that later blocks can ``import name``.

Pools start with the ``fork`` start method here (the test's start method):
functions defined in a page live in no file that a ``spawn`` or ``forkserver``
worker could import. A block that is deliberately partial is marked in the page
with ``<!-- skip: next "why" -->``, Sybil's own marker, and reported as skipped.
Each block has the pytest-timeout of pyproject.toml.
"""

from __future__ import annotations

import multiprocessing
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import pytest
from sybil import Example, Sybil
from sybil.evaluators.python import PythonEvaluator
from sybil.parsers.myst import CodeBlockParser, SkipParser

HAS_FORK = "fork" in multiprocessing.get_all_start_methods()


class _PageMain(types.ModuleType):
    """``sys.modules["__main__"]`` while a page runs: its names are the page's names."""

    def __init__(self, namespace: dict[str, Any]) -> None:
        super().__init__("__main__")
        self._namespace = namespace

    def __getattr__(self, name: str) -> Any:
        try:
            return self._namespace[name]
        except KeyError:
            raise AttributeError(name) from None


class _Page:
    """What one page changes in this process, undone when its last block has run."""

    def __init__(self, namespace: dict[str, Any]) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="procpool-docs-"))
        self.main = sys.modules["__main__"]
        self.modules = set(sys.modules)
        self.patch = pytest.MonkeyPatch()
        namespace["__name__"] = "__main__"
        self.patch.setitem(sys.modules, "__main__", _PageMain(namespace))
        self.patch.syspath_prepend(str(self.folder))
        import procpool._context

        self.patch.setattr(procpool._context, "default_start_method", lambda: "fork")

    def close(self, namespace: dict[str, Any]) -> None:
        import procpool

        try:
            for value in namespace.values():
                if isinstance(value, procpool.Executor):  # a pool a block left open
                    value.terminate()
                    value.join(timeout=30)
        finally:
            self.patch.undo()
            for name in set(sys.modules) - self.modules:
                if getattr(sys.modules[name], "__file__", "") and str(self.folder) in str(
                    sys.modules[name].__file__
                ):
                    del sys.modules[name]
            if "distributed" in sys.modules:
                from dask_support import stop_dask_threads

                stop_dask_threads()
            for path in self.folder.iterdir():
                path.unlink()
            self.folder.rmdir()


def _setup(namespace: dict[str, Any]) -> None:
    namespace["_page"] = _Page(namespace)


def _teardown(namespace: dict[str, Any]) -> None:
    namespace.pop("_page").close(namespace)


_python = PythonEvaluator()


def _evaluate(example: Example) -> None:
    """Run a block; a ``# name.py`` block is also saved as that module's file."""
    __tracebackhide__ = True
    if not HAS_FORK:
        pytest.skip("the docs' blocks start pools with fork, which this platform lacks")
    first = str(example.parsed).lstrip().split("\n", 1)[0]
    if first.startswith("# ") and first.endswith(".py") and first[2:-3].isidentifier():
        folder: Path = example.namespace["_page"].folder
        (folder / first[2:]).write_text(str(example.parsed))
    _python(example)


pytest_collect_file = Sybil(
    parsers=[CodeBlockParser(language="python", evaluator=_evaluate), SkipParser()],
    patterns=["README.md", "docs/*.md"],
    setup=_setup,
    teardown=_teardown,
).pytest()

"""Sphinx configuration for procpool's documentation.

Built by ``make docs`` with ``sphinx-build -W --keep-going``: every warning is an
error, and the build must work offline (so no intersphinx).
"""

from __future__ import annotations

import abc
import re
import sys
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
# autodoc imports procpool from the checkout, installed or not.
sys.path.insert(0, str(ROOT / "src"))

_version_file = (ROOT / "src" / "procpool" / "_version.py").read_text(encoding="utf-8")
_match = re.search(r'^__version__\s*=\s*"([^"]+)"', _version_file, re.MULTILINE)
assert _match is not None, "src/procpool/_version.py must set __version__"

project = "procpool"
author = "procpool developers"
copyright = "2026, procpool developers"
release = _match.group(1)
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "examples", "requirements.txt", "Thumbs.db", ".DS_Store"]

# -- Markdown (MyST) ---------------------------------------------------------
myst_enable_extensions = ["colon_fence", "deflist", "fieldlist"]
myst_heading_anchors = 3

# -- API reference (autodoc + napoleon) --------------------------------------
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_member_order = "bysource"
autodoc_preserve_defaults = True
autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# -- HTML ----------------------------------------------------------------------
html_theme = "furo"
html_title = f"procpool {release}"
# The benchmark plot lives in _static/ once the benchmarks have been run; an
# html_static_path entry that does not exist would be a warning (an error with -W).
html_static_path = ["_static"] if (DOCS / "_static").is_dir() else []
html_theme_options = {
    "source_repository": "https://github.com/procpool/procpool",
    "source_branch": "main",
    "source_directory": "docs/",
}


# -- Base classes ----------------------------------------------------------------
# A base class defined in a private module is shown by its public path
# (procpool.Executor, not procpool._executor.Executor), and a base that has no
# public path by its first public ancestor: "Bases: _Something" would name a class
# readers cannot look up.


def _public_path(cls: type) -> str | None:
    """Return the dotted path ``cls`` is imported by, or None if it has no public one."""
    name = cls.__qualname__
    if name.startswith("_"):
        return None
    parts = cls.__module__.split(".")
    # The shortest public path first: concurrent.futures.Executor, not
    # concurrent.futures._base.Executor; procpool.Pool, not procpool._pool.Pool.
    for i in range(1, len(parts) + 1):
        if any(part.startswith("_") for part in parts[:i]):
            return None
        module = sys.modules.get(".".join(parts[:i]))
        if module is not None and getattr(module, name, None) is cls:
            return f"{'.'.join(parts[:i])}.{name}"
    return None


def _public_bases(app: Any, name: str, obj: object, options: object, bases: list[Any]) -> None:
    """Replace each private base class by its first public ancestor (autodoc-process-bases)."""
    shown: list[Any] = []
    for base in bases:
        if base is abc.ABC:
            continue  # how the class is built, not what it is
        if isinstance(base, type) and _public_path(base) is None:
            path = next((p for p in map(_public_path, base.__mro__[1:]) if p is not None), "object")
            base = f":py:class:`{path}`"
        elif isinstance(base, type) and base.__module__ not in ("builtins", "procpool"):
            # In full: "Bases: concurrent.futures.Executor", not a bare "Executor"
            # next to procpool's own Executor.
            base = f":py:class:`{_public_path(base)}`"
        if base not in shown:
            shown.append(base)
    bases[:] = shown


def setup(app: Any) -> None:
    """Connect the hooks above."""
    app.connect("autodoc-process-bases", _public_bases)

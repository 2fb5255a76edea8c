"""Sphinx configuration for procpool's documentation.

Built by ``make docs`` with ``sphinx-build -W --keep-going``: every warning is an
error, and the build must work offline (so no intersphinx).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

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

"""The harness that runs the docs' Python blocks (conftest.py, Sybil) can fail.

A page of three blocks is run by the repository's own conftest.py in a separate
pytest: a guarded block whose pool runs a function defined in the page passes,
a block that raises fails, and a block marked ``skip: next`` is reported skipped.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PAGE = """\
# A page

```python
import procpool


def double(x: int) -> int:
    return 2 * x


if __name__ == "__main__":
    with procpool.Pool(2) as pool:
        assert pool.map(double, range(5)).result() == [0, 2, 4, 6, 8]
        print("guarded block ran")
```

```python
print("next block sees", double(21))
raise ValueError("this block is wrong")
```

<!-- skip: next "partial: for the harness test" -->
```python
raise AssertionError("a skipped block must not run")
```
"""


@pytest.mark.timeout(120)
def test_doc_blocks_run_as_main_and_report_failures_and_skips(tmp_path: Path) -> None:
    shutil.copy(ROOT / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text(PAGE)
    (tmp_path / "pytest.ini").write_text(f"[pytest]\npythonpath = {ROOT / 'tests'}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", "-s", "docs/page.md"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    # Passed: the guarded block, and the skip marker itself (Sybil counts it).
    assert "1 failed, 2 passed, 1 skipped" in out, out
    assert "guarded block ran" in out
    assert "next block sees 42" in out  # one namespace per page
    assert "ValueError: this block is wrong" in out
    assert "SKIPPED [1]" in out
    assert "partial: for the harness test" in out

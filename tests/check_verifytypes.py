"""Fail unless pyright knows the type of 100 % of procpool's public API.

Run by ``make typecheck`` (so by ``make test``) with the project's Python:

    python tests/check_verifytypes.py

It runs ``pyright --verifytypes procpool --ignoreexternal --outputjson``, prints the
completeness score, lists every public symbol whose type is not fully known with
pyright's reason, and exits 1 unless the score is 100 %. Not a pytest module: the
name does not start with ``test_``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

PACKAGE = "procpool"


def run_pyright() -> dict[str, Any]:
    """Run pyright's type-completeness report and return its parsed JSON."""
    cmd = [
        sys.executable,
        "-m",
        "pyright",
        "--verifytypes",
        PACKAGE,
        "--ignoreexternal",
        "--outputjson",
    ]
    # --verifytypes ignores --pythonpath and finds packages through the `python` on
    # PATH (pyright 1.1.414), so put this interpreter's folder first.
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    try:
        report: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError:
        sys.stderr.write(f"pyright did not print a JSON report (exit {proc.returncode}):\n")
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(2) from None
    return report


def main() -> int:
    """Print the score and the incompletely typed symbols; return the exit code."""
    report = run_pyright()
    completeness = report.get("typeCompleteness", {})
    score = float(completeness.get("completenessScore", 0.0))
    counts = completeness.get("exportedSymbolCounts", {})
    problems = [
        symbol
        for symbol in completeness.get("symbols", [])
        if not symbol.get("isTypeKnown", True) or symbol.get("diagnostics")
    ]
    for symbol in problems:
        for diag in symbol.get("diagnostics", []) or [{"message": "type not known"}]:
            if diag.get("severity", "error") == "error":
                print(f"  {symbol.get('name')}: {diag.get('message')}")
    for diag in report.get("generalDiagnostics", []):
        print(f"  {diag.get('severity')}: {diag.get('message')}")
    print(
        f"{PACKAGE}: type completeness {score:.1%} "
        f"(known {counts.get('withKnownType', '?')}, "
        f"ambiguous {counts.get('withAmbiguousType', '?')}, "
        f"unknown {counts.get('withUnknownType', '?')})"
    )
    if score < 1.0 or counts.get("withAmbiguousType", 0) or counts.get("withUnknownType", 0):
        print(f"FAIL: pyright --verifytypes must report 100 % for {PACKAGE}'s public API")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

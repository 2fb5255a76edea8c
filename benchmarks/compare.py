"""procpool of this tree against procpool of another commit, in one interleaved run.

``python benchmarks/compare.py REV [run.py options]`` (``make bench-compare BASE=REV``
at the top level, or ``make -C benchmarks compare BASE=REV``): checks REV out into a
temporary git worktree, runs ``run.py --procpool-base <worktree>/src`` on B1, B3, B5,
B7 and B7d with the serial loop, multiprocessing.Pool, this tree's procpool and REV's
procpool (and the limits of B3 and B5: a bare Pipe echo, np.copyto), 15
repetitions, and removes the worktree again.  The report is ``benchmarks/results/compare.md``; options given after REV
are passed on to run.py and override these (argparse keeps the last value), e.g.
``--reps 5`` or ``--workloads B7d``.

Both copies are measured in the same run, each repetition visiting every
contender once in a rotating order, so a busy minute of the machine hits both
alike: a before/after comparison from two separate runs on a shared machine
mixes the change with the load.
"""

from __future__ import annotations

import compileall
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import run  # noqa: E402

DEFAULTS = [
    "--workloads",
    "B1,B3,B5,B7,B7d",
    "--contenders",
    "serial,mp,procpool,procpool_base",
    "--reps",
    "15",
    "--output",
    str(HERE / "results" / "compare.md"),
]


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def main(argv: list[str]) -> int:
    """Measure REV's procpool against this tree's; return run.py's exit status."""
    if not argv or argv[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    rev, rest = argv[0], argv[1:]
    try:
        commit = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    except subprocess.CalledProcessError as exc:
        print(f"compare.py: {rev!r} is not a commit here: {exc.stderr.strip()}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="procpool-base-") as tmp:
        tree = Path(tmp) / "base"
        git("worktree", "add", "--detach", "--quiet", str(tree), commit)
        try:
            # As make bench does for src/: with PYTHONDONTWRITEBYTECODE set, every
            # spawn or forkserver worker would otherwise compile the base again.
            compileall.compile_dir(tree / "src", quiet=1)
            print(f"procpool base: {rev} = {commit[:12]} in {tree}", file=sys.stderr)
            return run.main(["--procpool-base", str(tree / "src"), *DEFAULTS, *rest])
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(tree)],
                cwd=ROOT,
                capture_output=True,
                check=False,
            )
            subprocess.run(["git", "worktree", "prune"], cwd=ROOT, capture_output=True, check=False)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Command line: ``python -m procpool demo``."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Dispatch the sub-command; return the exit status."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["demo"]:
        from ._demo import main as demo

        demo()
        return 0
    print("usage: python -m procpool demo", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

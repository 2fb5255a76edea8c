"""Command line: ``python -m procpool demo``, ``--help`` and ``--version``."""

from __future__ import annotations

import argparse
import sys

from ._version import __version__

DESCRIPTION = """\
procpool: typed, fault-tolerant process pools for Python.

This command line only shows procpool at work; the library is used from Python
(import procpool). Documentation: https://procpool.readthedocs.io"""

DEMO_HELP = "count primes serially and in a pool; see a crash and a time-out reported"

DEMO_DESCRIPTION = """\
Count the primes below 600,000 serially, then in a procpool.Pool with one
worker per CPU, and print both times and the speed-up. Then submit one task
that kills its worker and one that passes its 1 s time limit among twelve
good ones, and show that only those two fail (WorkerLostError,
TaskTimeoutError) while the pool replaces its workers and the other results
arrive. Takes a few seconds."""


def parser() -> argparse.ArgumentParser:
    """The ``python -m procpool`` command line and its sub-commands."""
    top = argparse.ArgumentParser(
        prog="python -m procpool",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'python -m procpool demo --help' for what the demo does.",
    )
    top.add_argument("--version", action="version", version=f"procpool {__version__}")
    commands = top.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    commands.add_parser(
        "demo",
        help=DEMO_HELP,
        description=DEMO_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return top


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the sub-command; return the exit status.

    ``--help`` and ``--version`` print and exit with status 0; a wrong or a
    missing command prints to stderr and exits with status 2, as argparse does.
    """
    top = parser()
    args = top.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "demo":
        from ._demo import main as demo

        demo()
        return 0
    top.print_help(sys.stderr)  # no command given: a usage error, with the full help
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""What a child process has loaded: imported by workers, so it imports nothing itself."""

from __future__ import annotations

import sys

#: Modules a child must not load: the parent's machinery and heavy extras.
HEAVY = ("asyncio", "logging", "concurrent.futures.process", "distributed")


def loaded(_: object = None) -> tuple[list[str], list[str]]:
    """(procpool modules loaded here, heavy modules loaded here)."""
    ours = sorted(
        name for name in sys.modules if name == "procpool" or name.startswith("procpool.")
    )
    return ours, sorted(name for name in HEAVY if name in sys.modules)


def double(x: int) -> int:
    """Return 2 * x (a Dask chunk's function)."""
    return 2 * x

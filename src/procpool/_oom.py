"""Whether the system's out-of-memory killer killed a process, where Linux can tell.

A process killed by SIGKILL may have been killed by the out-of-memory killer or
by anyone with the right to. Linux counts the first kind per control group: the
``oom_kill`` line of ``memory.events`` (cgroup v2) or ``memory.oom_control``
(cgroup v1). Reading that count when a worker starts and when it dies says
whether an OOM kill happened in its cgroup meanwhile. Another process of the
same cgroup killed in that window would be blamed too; docs/reliability.md says
so. Elsewhere (no cgroup memory controller, macOS, Windows) nothing can be told.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

_CGROUP_ROOT = "/sys/fs/cgroup"


def _count_in(path: str) -> int | None:
    with contextlib.suppress(OSError, ValueError), open(path) as f:
        for line in f:
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    return None


def oom_counter(pid: int) -> Callable[[], int | None] | None:
    """A reader of the OOM-kill count of ``pid``'s cgroup, or None if there is none."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    candidates: list[str] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2: one hierarchy
            for root in (_CGROUP_ROOT, f"{_CGROUP_ROOT}/unified"):
                candidates.append(f"{root}{path}/memory.events")
        elif "memory" in controllers.split(","):  # cgroup v1: the memory hierarchy
            candidates.append(f"{_CGROUP_ROOT}/memory{path}/memory.oom_control")
    for candidate in candidates:
        if os.path.exists(candidate) and _count_in(candidate) is not None:
            return lambda: _count_in(candidate)
    return None


class OomWatch:
    """Notes a process's cgroup OOM-kill count at start, to compare at its death."""

    __slots__ = ("_at_start", "_read")

    def __init__(self, pid: int | None) -> None:
        self._read = oom_counter(pid) if pid is not None else None
        self._at_start = self._read() if self._read is not None else None

    def killed(self, exitcode: int | None) -> bool | None:
        """For a process that ended with ``exitcode``: True if the OOM killer killed it,
        False if it can tell it did not, None if it cannot tell."""
        if exitcode is None or exitcode >= 0:
            return False
        if self._read is None or self._at_start is None:
            return None
        now = self._read()
        if now is None:
            return None
        return now > self._at_start and exitcode == -9

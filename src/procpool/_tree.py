"""Killing a worker with everything it started: its process group, and its descendants.

Each worker leads a process group of its own (it calls ``setpgid(0, 0)`` first
thing, and under fork the parent does it for it at once, which closes the window
before the child runs). A program a task starts (``subprocess.Popen``, a
``multiprocessing`` child, a shell pipeline) joins that group, so one ``killpg``
reaches it. Before the kill, the descendants of the worker are also listed from
``/proc`` (Linux), which catches those that moved to a group of their own but
are still its descendants; once the worker is dead they would be reparented and
no longer be found. What escapes: a program that double-forks *and* starts its
own session or group before the kill (a daemon), and any descendant on a system
without ``/proc`` that left the group. Windows has no process groups: there only
the worker is killed.
"""

from __future__ import annotations

import contextlib
import os
import signal


def descendants(pid: int) -> list[int]:
    """The live descendants of ``pid``, from ``/proc`` (empty where there is none)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                # The command may hold spaces and parentheses: split after the last ')'.
                fields = stat.read().rpartition(b")")[2].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


#: The signal that cannot be caught (SIGTERM where there is none).
KILL = getattr(signal, "SIGKILL", signal.SIGTERM)


def kill_tree(pid: int | None, sig: int = KILL) -> list[int]:
    """Send ``sig`` to the worker ``pid``, its process group and its descendants.

    ``pid`` must not have been reaped yet (its number cannot have been reused).
    Returns the descendants found, for a second signal once the worker is gone.
    """
    if pid is None:
        return []
    if not hasattr(os, "killpg"):  # pragma: no cover - Windows
        with contextlib.suppress(OSError):
            os.kill(pid, sig)
        return []
    family = descendants(pid)
    with contextlib.suppress(OSError):
        # Only a group the worker leads: never the parent's own group.
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
    kill_all([pid, *family], sig)
    return family


def kill_all(pids: list[int], sig: int = KILL) -> None:
    """Send ``sig`` to each of ``pids`` that still exists."""
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


def lead_group(pid: int | None) -> None:
    """Make ``pid`` (a worker just forked, or this process) lead a process group of its own."""
    if hasattr(os, "setpgid"):
        # Fails for a child that has exec'd (spawn) or is not ours (forkserver):
        # then the child does it itself.
        with contextlib.suppress(OSError):
            os.setpgid(pid or 0, pid or 0)

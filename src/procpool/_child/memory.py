"""How much memory this process holds: its resident set, read cheaply.

Linux: ``/proc/self/statm`` (resident pages), read with one ``pread`` on a
descriptor opened once, about a microsecond per call. macOS and the BSDs: the
*peak* resident size (``getrusage``), as the current one needs private APIs, so
a worker that once passed the limit stays above it. Windows: the working set
(``GetProcessMemoryInfo``). Elsewhere: nothing to read, and a memory limit is
never reached (docs/reliability.md says so).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

_statm_fd: int | None = None
_page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _linux() -> int | None:
    global _statm_fd
    try:
        if _statm_fd is None:
            _statm_fd = os.open("/proc/self/statm", os.O_RDONLY)
        return int(os.pread(_statm_fd, 128, 0).split()[1]) * _page
    except (OSError, ValueError, IndexError):
        return None


def _bsd() -> int | None:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Bytes on macOS, kilobytes on the BSDs (and on Linux, not used here).
    return peak if sys.platform == "darwin" else peak * 1024


def _windows() -> int | None:  # pragma: no cover - exercised in the Windows CI job
    import ctypes
    from ctypes import wintypes

    class Counters(ctypes.Structure):
        _fields_ = [
            ("cb", wintypes.DWORD),
            ("PageFaultCount", wintypes.DWORD),
            ("PeakWorkingSetSize", ctypes.c_size_t),
            ("WorkingSetSize", ctypes.c_size_t),
            ("QuotaPeakPagedPoolUsage", ctypes.c_size_t),
            ("QuotaPagedPoolUsage", ctypes.c_size_t),
            ("QuotaPeakNonPagedPoolUsage", ctypes.c_size_t),
            ("QuotaNonPagedPoolUsage", ctypes.c_size_t),
            ("PagefileUsage", ctypes.c_size_t),
            ("PeakPagefileUsage", ctypes.c_size_t),
        ]

    counters = Counters()
    counters.cb = ctypes.sizeof(counters)
    windll = getattr(ctypes, "windll")  # noqa: B009 (Windows only)
    process = windll.kernel32.GetCurrentProcess()
    if not windll.psapi.GetProcessMemoryInfo(process, ctypes.byref(counters), counters.cb):
        return None
    return int(counters.WorkingSetSize)


def _nothing() -> int | None:
    return None


resident_bytes: Callable[[], int | None]
if sys.platform.startswith("linux"):
    resident_bytes = _linux
elif sys.platform == "win32":  # pragma: no cover
    resident_bytes = _windows
elif sys.platform == "darwin" or "bsd" in sys.platform:  # pragma: no cover
    resident_bytes = _bsd
else:  # pragma: no cover
    resident_bytes = _nothing

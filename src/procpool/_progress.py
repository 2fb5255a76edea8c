"""Progress reporting for ``map``/``imap``: a tqdm bar or a ``(done, total)`` callback."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any, TypeAlias

#: ``progress=`` accepts True (a tqdm bar), False, or a callback ``(done, total)``;
#: ``total`` is None when the length of an ``imap`` input is unknown.
Progress: TypeAlias = bool | Callable[[int, int | None], object]


class Reporter:
    """Counts finished items and tells a bar or a callback."""

    def __init__(self, progress: Progress, total: int | None, desc: str) -> None:
        self.done = 0
        self.total = total
        self._lock = threading.Lock()
        self._bar: Any = None
        self._callback: Callable[[int, int | None], object] | None = None
        if progress is True:
            try:
                tqdm: Any = importlib.import_module("tqdm.auto").tqdm
            except ImportError as exc:
                raise ImportError(
                    "progress=True needs tqdm: pip install 'procpool[progress]' "
                    "(or pass a callback progress=fn(done, total))"
                ) from exc
            self._bar = tqdm(total=total, desc=desc)
        elif callable(progress):
            self._callback = progress

    def advance(self, count: int) -> None:
        """Record ``count`` more finished items."""
        if count <= 0:
            return
        with self._lock:
            self.done += count
            done = self.done
            if self._bar is not None:
                self._bar.update(count)
        if self._callback is not None:
            self._callback(done, self.total)
        if self.total is not None and done >= self.total:
            self.close()

    def close(self) -> None:
        """Close the bar (idempotent)."""
        with self._lock:
            bar, self._bar = self._bar, None
        if bar is not None:
            bar.close()


def make_reporter(progress: Progress, total: int | None, desc: str) -> Reporter | None:
    """A reporter, or None when no progress was asked for."""
    if progress is False or progress is None:
        return None
    if not (progress is True or callable(progress)):
        raise TypeError(
            f"progress must be True, False or a callable (done, total), not {progress!r}"
        )
    return Reporter(progress, total, desc)

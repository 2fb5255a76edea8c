"""Typed per-worker state: :class:`WorkerState`, built once per process by a factory.

The most common reason to write an initializer and a module global is to load a
model or open a connection once per worker. A :class:`WorkerState` does that with
types: made in the parent from a factory, passed to tasks as an argument (it
pickles as its factory and a key, never as the state), and in each process that
asks for it, built by the factory on the first :meth:`WorkerState.get` and kept
for the life of the process. A replaced worker is a new process: it builds its
own. Type checkers see ``WorkerState[Model]`` and check that a task expecting
another state type is not given this one.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable
from typing import Any, Generic, TypeVar

S = TypeVar("S")

#: This process's states, by key.
_built: dict[str, Any] = {}
_lock = threading.Lock()


class WorkerState(Generic[S]):
    """State built once per worker process by ``factory``, handed to tasks typed.

    Pass it to tasks as an argument; call :meth:`get` inside the task::

        model = procpool.WorkerState(load_model)  # WorkerState[Model]

        def predict(state: procpool.WorkerState[Model], x: float) -> float:
            return state.get().predict(x)  # load_model() ran once in this worker

        with procpool.Pool() as pool:
            pool.map(predict, [model] * 3, [1.0, 2.0, 3.0]).result()

    ``factory`` must be importable by the workers (a module-level function), as
    a task's function is. It runs in a worker the first time a task there calls
    :meth:`get`, again in a worker that replaces a lost one, and in the parent if
    the parent calls :meth:`get` (a state is per process). The state is shared
    by the threads of its process: a Dask worker's threads share one.
    """

    __slots__ = ("_factory", "_key")

    def __init__(self, factory: Callable[[], S]) -> None:
        if not callable(factory):
            raise TypeError(f"WorkerState needs a factory function, not {factory!r}")
        self._factory = factory
        self._key = uuid.uuid4().hex

    def get(self) -> S:
        """This process's state: built by the factory on the first call here."""
        try:
            value: S = _built[self._key]
            return value
        except KeyError:
            pass
        with _lock:
            if self._key not in _built:
                _built[self._key] = self._factory()
            built: S = _built[self._key]
            return built

    def __reduce__(self) -> tuple[Any, ...]:
        # The factory and the key travel; the state never does.
        return (WorkerState, (self._factory,), (None, {"_key": self._key}))

    def __repr__(self) -> str:
        name = getattr(self._factory, "__qualname__", repr(self._factory))
        return f"<procpool.WorkerState of {name}>"


def _forget_after_fork() -> None:
    # A forked child is a new process: its states are its own (a connection the
    # parent opened must not be shared with a worker).
    _built.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)

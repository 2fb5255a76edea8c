"""The parent's side of worker placement: ``Pool(worker_env=, cpu_affinity=, threads_per_worker=)``.

Turns the pool's arguments into one :class:`~._child.placement.Placement` per
worker slot, checking them at once; the worker applies it first thing (see
:mod:`._child.placement`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, TypeAlias

from ._child.placement import Placement

#: ``worker_env=``: variables for every worker, or a function of the slot index.
WorkerEnv: TypeAlias = "Mapping[str, str] | Callable[[int], Mapping[str, str]]"
#: ``cpu_affinity=``: ``"spread"`` (one CPU each, round robin), one CPU set per
#: slot (round robin), or a function of the slot index.
CpuAffinity: TypeAlias = (
    "Literal['spread'] | Sequence[Sequence[int]] | Callable[[int], Sequence[int]]"
)
#: ``threads_per_worker=``: the default, the CPUs this process may use divided
#: among the workers (at least 1).
AUTO: Literal["auto"] = "auto"


def usable_cpus() -> list[int]:
    """The CPUs this process may run on, in order."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


class Placer:
    """Decides each slot's :class:`Placement` (see the module docstring).

    Raises:
        TypeError, ValueError: at once, naming the argument, for what is not one.
    """

    def __init__(
        self,
        workers: int,
        worker_env: WorkerEnv | None,
        cpu_affinity: CpuAffinity | None,
        threads_per_worker: int | Literal["auto"] | None,
    ) -> None:
        if worker_env is not None and not callable(worker_env):
            _check_env(worker_env)
        if cpu_affinity is not None and cpu_affinity != "spread" and not callable(cpu_affinity):
            sets: Sequence[object] = cpu_affinity
            if isinstance(cpu_affinity, str) or not all(
                isinstance(cpus, Sequence) and not isinstance(cpus, str)  # pyright: ignore[reportUnnecessaryIsInstance]
                for cpus in sets
            ):
                raise TypeError(
                    "cpu_affinity must be 'spread', a sequence of CPU sets (one per slot, "
                    f"e.g. [[0, 1], [2, 3]]), or a function of the slot, not {cpu_affinity!r}"
                )
            if not cpu_affinity:
                raise ValueError("cpu_affinity needs at least one CPU set")
        if threads_per_worker == AUTO:
            threads: int | None = max(1, len(usable_cpus()) // workers)
        elif threads_per_worker is None:
            threads = None
        elif isinstance(threads_per_worker, bool) or not isinstance(
            threads_per_worker,
            int,  # pyright: ignore[reportUnnecessaryIsInstance]
        ):
            raise TypeError(
                f"threads_per_worker must be an int, 'auto' or None, not {threads_per_worker!r}"
            )
        elif threads_per_worker < 1:
            raise ValueError(f"threads_per_worker must be at least 1, not {threads_per_worker}")
        else:
            threads = threads_per_worker
        self._env = worker_env
        self._affinity = cpu_affinity
        self._threads = threads
        self._cpus = usable_cpus()

    def placement(self, slot: int) -> Placement:
        """What the worker in ``slot`` gets."""
        env: dict[str, str] | None = None
        if self._env is not None:
            chosen = self._env(slot) if callable(self._env) else self._env
            env = _check_env(chosen)
        cpus: frozenset[int] | None = None
        affinity = self._affinity
        if isinstance(affinity, str):  # "spread"
            cpus = frozenset({self._cpus[slot % len(self._cpus)]})
        elif callable(affinity):
            cpus = frozenset(affinity(slot))
        elif affinity is not None:
            cpus = frozenset(affinity[slot % len(affinity)])
        return Placement(env, cpus, self._threads)


def _check_env(env: object) -> dict[str, str]:
    if not isinstance(env, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str)
        for k, v in env.items()  # pyright: ignore[reportUnknownVariableType]
    ):
        raise TypeError(
            f"worker_env must map str to str (or be a function of the slot that does), not {env!r}"
        )
    return dict(env)  # pyright: ignore[reportUnknownArgumentType]

"""Start methods: the default, the ``context=`` argument, and making processes."""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any, Literal, TypeAlias

StartMethod: TypeAlias = Literal["fork", "spawn", "forkserver"]


def default_start_method() -> StartMethod:
    """forkserver where it exists (Linux; the Python 3.14 default), else spawn.

    Never fork by default: forking a process that runs threads (ours, or the
    user's) can deadlock the child, which Python 3.12+ warns about.
    """
    if sys.platform.startswith("linux") and "forkserver" in multiprocessing.get_all_start_methods():
        return "forkserver"
    return "spawn"


def resolve_context(context: StartMethod | BaseContext | None) -> BaseContext:
    """Turn a ``context=`` argument into a context.

    Raises:
        ValueError: for a start method this platform does not have.
    """
    if context is None:
        return multiprocessing.get_context(default_start_method())
    if isinstance(context, BaseContext):
        return context
    methods = multiprocessing.get_all_start_methods()
    if not isinstance(context, str) or context not in methods:  # pyright: ignore[reportUnnecessaryIsInstance]
        raise ValueError(
            f"unknown start method {context!r}: use one of {', '.join(methods)}, "
            "a multiprocessing context, or None for the default"
        )
    return multiprocessing.get_context(context)


def new_process(
    ctx: BaseContext,
    target: Callable[..., object],
    args: tuple[Any, ...],
    *,
    name: str | None,
    daemon: bool | None,
) -> BaseProcess:
    """An unstarted process of ``ctx`` (typeshed does not type ``ctx.Process``)."""
    factory: Callable[..., BaseProcess] = getattr(ctx, "Process")  # noqa: B009
    return factory(target=target, args=args, name=name, daemon=daemon)

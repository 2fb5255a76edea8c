"""OpenTelemetry in the worker: run a task in a span whose parent came from the caller.

``procpool.otel.Tracing`` wraps each submitted function in a :class:`TracedCall`
that carries the W3C trace context of the caller's span (``traceparent``), so
that the task's span, and every span the task makes, belongs to the caller's
trace. The worker imports ``opentelemetry`` only when such a call arrives (not
at start-up, and never for untraced calls), and runs the task as it is where
``opentelemetry`` is not installed. Spans made here are exported by the worker's
own tracer provider: set one up in each worker (an initializer), or inherit the
parent's under fork.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from typing import Any


class TracedCall:
    """``fn``, run in a span named ``procpool.run <name>`` whose parent is ``carrier``'s."""

    __slots__ = ("carrier", "fn", "name")

    def __init__(self, fn: Callable[..., Any], carrier: Mapping[str, str], name: str) -> None:
        self.fn = fn
        self.carrier = dict(carrier)
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            # By name, not an import statement: this package imports nothing
            # outside the standard library unless a traced call asks for it.
            propagate: Any = importlib.import_module("opentelemetry.propagate")
            trace: Any = importlib.import_module("opentelemetry.trace")
        except ImportError:
            return self.fn(*args, **kwargs)
        parent = propagate.extract(self.carrier)
        tracer = trace.get_tracer("procpool")
        with tracer.start_as_current_span(
            f"procpool.run {self.name}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes={"process.pid": os.getpid(), "procpool.task": self.name},
        ):
            return self.fn(*args, **kwargs)

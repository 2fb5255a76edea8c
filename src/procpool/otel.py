"""OpenTelemetry tracing for procpool pools (the ``procpool[otel]`` extra).

Pass a :class:`Tracing` as a pool's ``on_event`` hook and every submission is
traced across processes: a ``procpool.submit <task>`` span in the caller, child
of the span current at ``submit`` (or ``map``), from the submission until its
future is done; and, in the worker, a ``procpool.run <task>`` span for each
task (each item of a map) whose parent is that submit span, carried as W3C
trace context (``traceparent``). Spans the task makes itself nest under its run
span. One trace then shows the submission, the time it waited, the run and the
result, in the caller's process and the workers'::

    from procpool.otel import Tracing

    with procpool.Pool(on_event=Tracing()) as pool:
        with tracer.start_as_current_span("nightly-job"):
            pool.map(resize, images).result()

The caller's spans go to the caller's tracer provider; the workers' run spans
to each worker's, so set one up there too (an ``initializer`` that configures
the SDK and an exporter; under fork the parent's is inherited). A worker
without ``opentelemetry`` installed runs the task untraced. ``next_hook``
receives every :data:`~procpool.PoolEvent` as well, for metrics.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from concurrent.futures import Future as _StdFuture
from typing import Any

from ._child.codec import describe_callable
from ._child.trace import TracedCall
from ._events import EventHook, PoolEvent

__all__ = ["Tracing"]


class Tracing:
    """An ``on_event`` hook that traces each submission with OpenTelemetry.

    Args:
        tracer_provider: where the caller's spans go (default: the global one).
        next_hook: another ``on_event`` hook that receives every event too.

    Raises:
        ImportError: without ``opentelemetry-api`` (``pip install "procpool[otel]"``).
    """

    def __init__(self, tracer_provider: Any = None, next_hook: EventHook | None = None) -> None:
        try:
            self._trace: Any = importlib.import_module("opentelemetry.trace")
            self._propagate: Any = importlib.import_module("opentelemetry.propagate")
        except ImportError as exc:
            raise ImportError(
                "procpool.otel.Tracing needs opentelemetry-api: pip install 'procpool[otel]'"
            ) from exc
        self._tracer = self._trace.get_tracer("procpool", tracer_provider=tracer_provider)
        self._next = next_hook

    def __call__(self, event: PoolEvent) -> None:
        """The ``on_event`` hook: hands every event on to ``next_hook``."""
        if self._next is not None:
            self._next(event)

    def trace_task(
        self, fn: Callable[..., Any], future: _StdFuture[Any], title: str
    ) -> Callable[..., Any]:
        """Called by the pool in the submitting thread: start the submit span, and
        return ``fn`` wrapped to run under it in the worker. The span ends when
        ``future`` is done, marked as an error if it failed."""
        span = self._tracer.start_span(
            f"procpool.submit {title}", kind=self._trace.SpanKind.PRODUCER
        )
        carrier: dict[str, str] = {}
        self._propagate.inject(carrier, context=self._trace.set_span_in_context(span))

        def end(done: _StdFuture[Any]) -> None:
            if done.cancelled():
                span.set_attribute("procpool.cancelled", True)
            else:
                error = done.exception()
                if error is not None:
                    span.record_exception(error)
                    span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, str(error)))
            span.end()

        # The standard library's add_done_callback: a MapFuture's own would keep
        # its list of results alive for the callback, which needs none of it.
        _StdFuture[Any].add_done_callback(future, end)
        return TracedCall(fn, carrier, describe_callable(fn))

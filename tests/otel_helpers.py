"""Workers' side of tests/test_events.py's tracing tests: spans go to a file the test reads."""

from __future__ import annotations

import json
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult


class FileExporter(SpanExporter):
    """Appends each finished span to a JSON-lines file: name, ids, parent id."""

    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with open(self.path, "a") as out:
            for span in spans:
                context = span.get_span_context()
                parent = span.parent
                out.write(
                    json.dumps(
                        {
                            "name": span.name,
                            "trace": context.trace_id if context else None,
                            "span": context.span_id if context else None,
                            "parent": parent.span_id if parent else None,
                        }
                    )
                    + "\n"
                )
        return SpanExportResult.SUCCESS


def init_tracing(path: str) -> None:
    """A worker's initializer: its spans go to ``path`` (a fork inherits the provider)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(FileExporter(path)))


def traced_double(x: int) -> int:
    """Double ``x`` inside a span of its own (it must nest under the run span)."""
    with trace.get_tracer("tests").start_as_current_span("inner work"):
        return 2 * x


def fail_traced(x: int) -> int:
    """Raise for odd ``x``."""
    if x % 2:
        raise ValueError(f"odd {x}")
    return x

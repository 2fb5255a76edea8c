"""The on_event hook, and OpenTelemetry tracing across processes (issue 25)."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import helpers
import procpool

pytestmark = pytest.mark.timeout(60)


def _collect() -> tuple[list[procpool.PoolEvent], Any]:
    events: list[procpool.PoolEvent] = []
    return events, events.append


def test_a_submit_is_queued_started_and_finished_with_its_times(start_method: str) -> None:
    events, hook = _collect()
    with procpool.Pool(1, context=start_method, on_event=hook) as pool:
        assert pool.submit(helpers.sleep_then, 0.05, 7).result() == 7
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "WorkerStarted"
    assert (
        kinds.count("TaskQueued") == kinds.count("TaskStarted") == kinds.count("TaskFinished") == 1
    )
    assert kinds.index("TaskQueued") < kinds.index("TaskStarted") < kinds.index("TaskFinished")
    assert kinds[-1] == "WorkerExited"
    started = next(e for e in events if isinstance(e, procpool.WorkerStarted))
    finished = next(e for e in events if isinstance(e, procpool.TaskFinished))
    exited = next(e for e in events if isinstance(e, procpool.WorkerExited))
    assert finished.task == "helpers.sleep_then"
    assert finished.outcome == "completed"
    assert finished.worker_pid == started.pid == exited.pid
    assert 0.04 < finished.run_seconds < 5
    assert 0 <= finished.queued_seconds < 5
    assert exited.cause == "stopped"
    assert exited.exitcode == 0
    assert all(e.pool == pool._name for e in events)  # pyright: ignore[reportPrivateUsage]


def test_outcomes_and_exit_causes() -> None:
    events, hook = _collect()
    with procpool.Pool(2, on_event=hook) as pool:
        with pytest.raises(ValueError, match="no"):
            pool.submit(helpers.raise_value_error, "no").result()
        with pytest.raises(procpool.WorkerLostError):
            pool.submit(helpers.exit_with, 3).result()
        with pytest.raises(procpool.TaskTimeoutError):
            pool.options(timeout=0.2).submit(helpers.sleep_then, 30).result()
        with pytest.raises(procpool.TaskTimeoutError):
            pool.options(timeout=0.2, grace=5).submit(helpers.sleep_then, 30).result()
        late = pool.submit(helpers.sleep_then, 30)
        time.sleep(0.3)
        late.cancel()
        fails = pool.map(helpers.fail_on, range(6), chunksize=6)
        with pytest.raises(ValueError, match="3"):
            fails.result()
    finished = [e for e in events if isinstance(e, procpool.TaskFinished)]
    outcomes = [(e.task, e.outcome) for e in finished]
    assert ("helpers.raise_value_error", "failed") in outcomes
    assert ("helpers.exit_with", "lost") in outcomes
    assert outcomes.count(("helpers.sleep_then", "timed_out")) == 2
    assert ("helpers.sleep_then", "cancelled") in outcomes
    chunk = next(e for e in finished if e.task == "map(helpers.fail_on, ...)")
    assert (chunk.items, chunk.failed, chunk.outcome) == (6, 1, "failed")
    causes = sorted(e.cause for e in events if isinstance(e, procpool.WorkerExited))
    # exit (exit_with), timeout (killed at its limit), cancel, then the two left at close.
    assert causes == ["cancel", "exit", "stopped", "stopped", "timeout"]


def test_the_hook_runs_on_the_callback_thread_and_a_raising_hook_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    threads: set[str] = set()

    def hook(event: procpool.PoolEvent) -> None:
        threads.add(threading.current_thread().name)
        raise RuntimeError("hook exploded")

    with caplog.at_level(logging.ERROR, logger="procpool"):
        with procpool.Pool(1, on_event=hook) as pool:
            assert pool.map(helpers.square, range(20)).result() == [x * x for x in range(20)]
            assert pool.submit(helpers.square, 3).result() == 9
    assert threads
    assert all(name.endswith("-callbacks") for name in threads)
    assert "hook exploded" in caplog.text


def test_an_elastic_pool_reports_idle_exits_and_restarts() -> None:
    events, hook = _collect()
    with procpool.Pool(1, idle_timeout=0.1, on_event=hook) as pool:
        pool.submit(helpers.square, 1).result()
        time.sleep(0.5)
        pool.submit(helpers.square, 2).result()
    kinds = [(type(e).__name__, getattr(e, "cause", None)) for e in events]
    assert ("WorkerExited", "idle") in kinds
    assert [k for k, _ in kinds].count("WorkerStarted") == 2


def test_on_event_must_be_callable() -> None:
    with pytest.raises(TypeError, match="on_event"):
        procpool.Pool(1, on_event="print")  # type: ignore[arg-type]


# -- OpenTelemetry ----------------------------------------------------------------


@pytest.fixture(scope="module")
def spans() -> Any:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    # Once per process: a page of the docs may have set one up already.
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def _worker_spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_a_task_runs_in_a_span_whose_parent_is_the_callers(
    method: str, spans: Any, tmp_path: Path
) -> None:
    from opentelemetry import trace

    import otel_helpers
    from procpool.otel import Tracing

    spans.clear()
    out = tmp_path / "worker-spans.jsonl"
    tracer = trace.get_tracer("tests")
    with procpool.Pool(
        1,
        context=method,  # type: ignore[arg-type]
        on_event=Tracing(),
        initializer=otel_helpers.init_tracing,
        initargs=(str(out),),
    ) as pool:
        with tracer.start_as_current_span("caller") as caller:
            assert pool.submit(otel_helpers.traced_double, 21).result() == 42
            assert pool.map(otel_helpers.traced_double, [1, 2, 3]).result() == [2, 4, 6]
    ours = {s.name: s for s in spans.get_finished_spans()}
    trace_id = caller.get_span_context().trace_id
    submit = ours["procpool.submit otel_helpers.traced_double"]
    mapped = ours["procpool.submit map(otel_helpers.traced_double, ...)"]
    for span in (submit, mapped):
        assert span.context.trace_id == trace_id
        assert span.parent is not None
        assert span.parent.span_id == caller.get_span_context().span_id
    assert helpers.wait_for(lambda: len(_worker_spans(out)) >= 8, timeout=10)
    theirs = _worker_spans(out)
    runs = [s for s in theirs if s["name"] == "procpool.run otel_helpers.traced_double"]
    assert [s["parent"] for s in runs].count(submit.context.span_id) == 1
    assert [s["parent"] for s in runs].count(mapped.context.span_id) == 3
    assert all(s["trace"] == trace_id for s in theirs)
    inner = [s for s in theirs if s["name"] == "inner work"]
    assert len(inner) == 4
    assert {s["parent"] for s in inner} == {s["span"] for s in runs}


def test_a_failed_task_marks_its_spans_as_errors(spans: Any, tmp_path: Path) -> None:
    from opentelemetry.trace import StatusCode

    import otel_helpers
    from procpool.otel import Tracing

    spans.clear()
    seen: list[procpool.PoolEvent] = []
    with procpool.Pool(1, context="fork", on_event=Tracing(next_hook=seen.append)) as pool:
        with pytest.raises(ValueError, match="odd 1"):
            pool.submit(otel_helpers.fail_traced, 1).result()
    (submit,) = [s for s in spans.get_finished_spans() if s.name.startswith("procpool.submit")]
    assert submit.status.status_code is StatusCode.ERROR
    assert any(isinstance(e, procpool.TaskFinished) for e in seen)  # events passed on


def test_tracing_on_daskpool_runs_each_task_in_a_span_of_the_callers_trace(
    spans: Any, tmp_path: Path
) -> None:
    # The caller's spans go to the in-memory exporter; each Dask worker's to a
    # file, through a tracer provider set up there with client.run().
    pytest.importorskip(
        "distributed", reason="install the dask extra: pip install 'procpool[dask]'"
    )
    from opentelemetry import trace

    import dask_support
    import otel_helpers
    from procpool.otel import Tracing

    spans.clear()
    out = tmp_path / "worker-spans.jsonl"
    tracer = trace.get_tracer("tests")
    with dask_support.client_of_a_new_cluster() as client:
        client.run(otel_helpers.init_tracing, str(out))
        with procpool.DaskPool(client, on_event=Tracing()) as pool:
            with tracer.start_as_current_span("caller") as caller:
                assert pool.submit(otel_helpers.traced_double, 21).result() == 42
                assert pool.map(otel_helpers.traced_double, [1, 2, 3]).result() == [2, 4, 6]
                with pytest.raises(ValueError, match="odd 1"):
                    pool.submit(otel_helpers.fail_traced, 1).result()
    ours = {s.name: s for s in spans.get_finished_spans()}
    trace_id = caller.get_span_context().trace_id
    submit = ours["procpool.submit otel_helpers.traced_double"]
    mapped = ours["procpool.submit map(otel_helpers.traced_double, ...)"]
    for span in (submit, mapped):
        assert span.context.trace_id == trace_id
        assert span.parent is not None
        assert span.parent.span_id == caller.get_span_context().span_id
    from opentelemetry.trace import StatusCode

    assert ours["procpool.submit otel_helpers.fail_traced"].status.status_code is StatusCode.ERROR
    assert helpers.wait_for(lambda: len(_worker_spans(out)) >= 9, timeout=10)
    theirs = _worker_spans(out)
    runs = [s for s in theirs if s["name"] == "procpool.run otel_helpers.traced_double"]
    assert [s["parent"] for s in runs].count(submit.context.span_id) == 1
    assert [s["parent"] for s in runs].count(mapped.context.span_id) == 3
    assert all(s["trace"] == trace_id for s in theirs)
    inner = [s for s in theirs if s["name"] == "inner work"]
    assert len(inner) == 4
    assert {s["parent"] for s in inner} == {s["span"] for s in runs}

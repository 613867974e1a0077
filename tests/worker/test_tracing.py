"""Traces: one trace per run, from the API request that starts it through the workflow to
each activity, whose span names its step. An in-memory exporter collects the spans of a real
API (ASGI), a real worker and the Temporal dev server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio.client import Client

from shipflow.activities.core.client import connect
from shipflow.activities.core.settings import Settings
from shipflow.activities.core.tracing import temporal_interceptors, tracing_enabled
from shipflow.api.app import create_app
from shipflow.worker.main import build_worker
from tests.helpers import finish

ROOT = Path(__file__).resolve().parents[2]
FLOW = """
apiVersion: shipflow/v1
name: traced
stage: t
steps:
  - migrate: {id: migrate, command: [sh, -c, "echo up"]}
  - parallel:
      - wait: {id: pause, duration: 100ms}
      - migrate: {id: seed, command: [sh, -c, "echo seeded"]}
"""


async def test_one_trace_per_run_with_step_ids(temporal_client: Client, settings: Settings) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    client = await connect(settings, interceptors=temporal_interceptors(tracer))
    app = create_app(settings, tracer=tracer)
    async with build_worker(client, settings), app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shipflow.test") as http:
            assert (await http.post("/flows", content=FLOW)).status_code == 201
            started = await http.post("/flows/traced/runs", json={})
            assert started.status_code == 202, started.text
            run_id = started.json()["run_id"]
        status = await finish(temporal_client.get_workflow_handle(run_id))
    assert status.state.value == "succeeded"
    spans = list(exporter.get_finished_spans())
    (request,) = [s for s in spans if s.name == "POST /flows/{name}/runs"]
    trace_id = request.context.trace_id
    run = [s for s in spans if s.context.trace_id == trace_id]
    by_id = {s.context.span_id: s for s in run}

    def parent(span: ReadableSpan) -> ReadableSpan | None:
        return by_id.get(span.parent.span_id) if span.parent else None

    def ancestors(span: ReadableSpan) -> list[str]:
        names = []
        while (span := parent(span)) is not None:  # type: ignore[assignment]
            names.append(span.name)
        return names

    (start,) = [s for s in run if s.name == "StartWorkflow:ReleaseWorkflow"]
    assert parent(start) is request
    # The workflow's span hangs off the start (Temporal's interceptor ends it at once, so
    # activities are its siblings, children of the start too).
    (workflow_span,) = [s for s in run if s.name == "RunWorkflow:ReleaseWorkflow"]
    assert parent(workflow_span) is start
    activities = [s for s in run if s.name == "RunActivity:job.run"]
    assert sorted(s.attributes["shipflow.step_id"] for s in activities) == ["migrate", "seed"]  # type: ignore[index]
    for span in activities:
        assert span.attributes["shipflow.run_id"] == run_id  # type: ignore[index]
        assert span.attributes["shipflow.flow"] == "traced"  # type: ignore[index]
        assert ancestors(span) == [
            "StartActivity:job.run",
            "StartWorkflow:ReleaseWorkflow",
            "POST /flows/{name}/runs",
        ]
    # Other requests are traces of their own; nothing of the run escaped its trace.
    assert all(s.context.trace_id != trace_id for s in spans if s.name == "POST /flows")
    assert not [s for s in spans if "ReleaseWorkflow" in s.name and s.context.trace_id != trace_id]


def test_traces_are_off_unless_otel_settings_turn_them_on() -> None:
    assert not tracing_enabled({})
    assert not tracing_enabled({"OTEL_TRACES_EXPORTER": "none"})
    assert tracing_enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing_enabled({"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing_enabled({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"})


def test_otel_settings_install_an_exporter_that_flushes_at_exit(tmp_path: Path) -> None:
    """`OTEL_TRACES_EXPORTER=console` in a fresh process: a span is exported (at exit, from
    the batch) under `OTEL_SERVICE_NAME`; without OTEL settings nothing is set up."""
    code = (
        "from shipflow.activities.core.tracing import setup_tracing\n"
        "tracer = setup_tracing('shipflow-test')\n"
        "print('tracer', tracer is not None)\n"
        "if tracer:\n"
        "    with tracer.start_as_current_span('hello'):\n"
        "        pass\n"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    on = subprocess.run(
        [sys.executable, "-c", code],
        env={**base, "OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "svc-x"},
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert on.returncode == 0, on.stderr
    assert "tracer True" in on.stdout and '"name": "hello"' in on.stdout
    assert '"service.name": "svc-x"' in on.stdout
    off = subprocess.run(
        [sys.executable, "-c", code], env=base, capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert off.returncode == 0 and "tracer False" in off.stdout, off.stderr

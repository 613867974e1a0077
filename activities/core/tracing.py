"""OpenTelemetry traces: off by default, on with the standard `OTEL_*` settings.

One trace per run: the API's request span is the parent of Temporal's `StartWorkflow`
span; `temporalio.contrib.opentelemetry.TracingInterceptor` carries the context in the
workflow's headers to the worker, where the workflow and each activity get their spans
(`RunWorkflow:ReleaseWorkflow`, `StartActivity:…`, `RunActivity:…`), and activity spans
carry the step (`shipflow.step_id`, `shipflow.flow`, `shipflow.stage`, `shipflow.run_id`).

Turned on when `OTEL_TRACES_EXPORTER` names an exporter (`otlp`, `console`) or an OTLP
endpoint is set (`OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`);
`OTEL_SDK_DISABLED=true` keeps it off. The exporter reads its own `OTEL_*` settings
(endpoint, headers, protocol); the service name is `OTEL_SERVICE_NAME` or the process's.
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from temporalio.client import Interceptor as ClientInterceptor
from temporalio.contrib.opentelemetry import TracingInterceptor

log = logging.getLogger("shipflow.tracing")

_configured = False


def tracing_enabled(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def setup_tracing(service: str) -> trace.Tracer | None:
    """Install the process's tracer provider from `OTEL_*` (once); None when tracing is off."""
    global _configured
    if not tracing_enabled():
        return None
    if not _configured:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SpanExporter,
        )

        name = os.environ.get("OTEL_SERVICE_NAME") or service
        provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
        kinds = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",")
        for kind in (k.strip() for k in kinds):
            exporter: SpanExporter
            if kind == "console":
                exporter = ConsoleSpanExporter()
            elif kind == "otlp":
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )

                exporter = OTLPSpanExporter()
            else:
                log.warning("OTEL_TRACES_EXPORTER=%s is not supported (otlp, console)", kind)
                continue
            provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        # Export what the batch still holds when the process exits (SIGTERM included: the
        # worker and the API return from their main on it).
        atexit.register(provider.shutdown)
        _configured = True
        log.info("traces exported (%s) as service %s", ",".join(kinds), name)
    return trace.get_tracer("shipflow")


def temporal_interceptors(tracer: trace.Tracer | None) -> list[ClientInterceptor]:
    """The client interceptors for `tracer` (workers built from the client inherit them)."""
    return [TracingInterceptor(tracer)] if tracer is not None else []


def annotate_span(fields: Mapping[str, Any]) -> None:
    """Put a step's context on the current span (an activity's `RunActivity` span)."""
    span = trace.get_current_span()
    if span.is_recording():
        for name, value in fields.items():
            if value is not None:
                span.set_attribute(f"shipflow.{name}", value)

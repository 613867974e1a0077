"""The worker's metrics endpoint: a Temporal SDK runtime with a Prometheus exporter.

Release metrics are recorded by the workflow (`shipflow.workflows.run_metrics`, through
`workflow.metric_meter()`, which records nothing on replay) and by activities
(`activity.metric_meter()`); both go through the SDK runtime, so one endpoint on the worker
serves them with the SDK's own metrics (task slots, poll latency, schedule-to-start:
`temporal_*`). `SHIPFLOW_WORKER_METRICS_ADDRESS=host:port` turns it on.
"""

from __future__ import annotations

from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from shipflow.activities.core.settings import Settings
from shipflow.workflows.run_metrics import BUCKETS


def metrics_runtime(bind_address: str) -> Runtime:
    """A runtime serving Prometheus metrics on `bind_address` (`host:port`)."""
    return Runtime(
        telemetry=TelemetryConfig(
            metrics=PrometheusConfig(
                bind_address=bind_address,
                durations_as_seconds=True,
                histogram_bucket_overrides=BUCKETS,
            )
        )
    )


def worker_runtime(settings: Settings) -> Runtime | None:
    """The worker's runtime when a metrics address is configured, else None (the default)."""
    if not settings.worker_metrics_address:
        return None
    return metrics_runtime(settings.worker_metrics_address)

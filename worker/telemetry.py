"""The worker's metrics endpoint: a Temporal SDK runtime with a Prometheus exporter.

Release metrics are recorded by the workflow (`shipflow.workflows.run_metrics`, through
`workflow.metric_meter()`, which records nothing on replay) and by activities
(`activity.metric_meter()`); both go through the SDK runtime, so one endpoint on the worker
serves them with the SDK's own metrics (task slots, poll latency, schedule-to-start:
`temporal_*`). `SHIPFLOW_WORKER_METRICS_ADDRESS=host:port` turns it on.

The SDK core's own log lines (Rust, e.g. a payload-size warning) are forwarded to the Python
logger `temporalio.core`, so that they too come out in the one format (JSON lines) instead of
the core's colored console text on stderr.
"""

from __future__ import annotations

import logging

from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)

from shipflow.activities.core.settings import Settings
from shipflow.workflows.run_metrics import BUCKETS

#: The SDK core's log lines, forwarded into Python logging (WARN and up, as by default).
CORE_LOGGING = LoggingConfig(
    filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
    forwarding=LogForwardingConfig(
        logger=logging.getLogger("temporalio.core"),
        append_target_to_name=False,
        append_log_fields_to_message=True,
    ),
)


def metrics_runtime(bind_address: str | None) -> Runtime:
    """A runtime with core logs forwarded and, given `bind_address` (`host:port`), serving
    Prometheus metrics there."""
    metrics = (
        PrometheusConfig(
            bind_address=bind_address,
            durations_as_seconds=True,
            histogram_bucket_overrides=BUCKETS,
        )
        if bind_address
        else None
    )
    return Runtime(telemetry=TelemetryConfig(logging=CORE_LOGGING, metrics=metrics))


def worker_runtime(settings: Settings) -> Runtime:
    """The worker's runtime: core logs in the one format; metrics when an address is set."""
    return metrics_runtime(settings.worker_metrics_address)

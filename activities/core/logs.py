"""Logging for every shipflow process (worker, API, local runtime): one format, redacted.

Why one module: an on-call engineer greps one format for a run, whichever process wrote the
line. So each record carries the run's context where it applies (`flow`, `stage`, `run_id`,
`step_id`, `attempt`), taken from our own `extra=` fields, from Temporal's workflow and
activity loggers (`temporal_workflow` / `temporal_activity` extras) and from the step an
activity is running (`step_scope`, set by `StepContextInterceptor` from the activity's
input). Lines are JSON when the stream is not a terminal (a log collector) and readable text
on one (`SHIPFLOW_LOG_FORMAT=json|text` overrides).

Secrets: httpx logs `HTTP Request: POST https://hooks.example/T0/B0/secret-token` at INFO and
botocore/urllib3 log request URLs at DEBUG, so those loggers are set to WARNING; and every
record (message, reason, traceback, context) passes `shipflow.workflows.redaction.redact`
before it is written, so a URL or DSN logged on purpose keeps its host and loses its
credentials.

Failures: a step failing as expected (an `ApplicationError`, e.g. a command's exit code) is
one line with its reason; a traceback is kept only for bugs (any other exception).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from temporalio import activity, workflow
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

from shipflow.activities.core.tracing import annotate_span
from shipflow.workflows.redaction import redact

#: Loggers that print request lines (with full URLs) at INFO or DEBUG.
CLIENT_LOGGERS = ("httpx", "httpcore", "urllib3", "botocore", "boto3", "s3transfer", "hpack")

#: The context fields a record may carry, in the order lines show them.
CONTEXT_FIELDS = ("flow", "stage", "run_id", "step_id", "attempt")

LogFormat = Literal["auto", "json", "text"]

_step: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "shipflow_step", default=None
)


def set_step(**fields: Any) -> None:
    """Records logged from here on in this context (task, thread) carry `fields`."""
    _step.set({k: v for k, v in fields.items() if v is not None})


@contextmanager
def step_scope(**fields: Any) -> Iterator[None]:
    """Records logged inside carry `fields` (flow, stage, run_id, step_id, attempt)."""
    token = _step.set({k: v for k, v in fields.items() if v is not None})
    try:
        yield
    finally:
        _step.reset(token)


def context_of(record: logging.LogRecord) -> dict[str, Any]:
    """The run context of a record: explicit `extra=` fields win over the step scope, which
    wins over what Temporal's loggers attach."""
    out: dict[str, Any] = {}
    for key in ("temporal_workflow", "temporal_activity"):
        temporal = getattr(record, key, None)
        if isinstance(temporal, Mapping) and temporal.get("workflow_id"):
            out["run_id"] = temporal["workflow_id"]
            # A workflow's `attempt` is its task's, not a step's: only an activity's counts.
            if key == "temporal_activity" and temporal.get("attempt") is not None:
                out["attempt"] = temporal["attempt"]
    scope = _step.get()
    if scope:
        out.update(scope)
    for name in CONTEXT_FIELDS:
        value = getattr(record, name, None)
        if value is not None:
            out[name] = value
    return {k: out[k] for k in CONTEXT_FIELDS if k in out}


def _expected(error: BaseException | None) -> bool:
    """A failure the flow expects (a step failing, a cancel), not a bug in shipflow."""
    return isinstance(error, ApplicationError | CancelledError)


def _reason(error: BaseException) -> str:
    if isinstance(error, ApplicationError):
        return error.message or type(error).__name__
    return str(error) or type(error).__name__


class RedactingFilter(logging.Filter):
    """Masks credentials in a record (message, reason, traceback) before it is written, and
    turns an expected failure's traceback into a one-line `reason`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_shipflow_done", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to the handler to report
            return True
        record.msg = redact(message)
        record.args = None
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and _expected(error):
            record.reason = redact(_reason(error))  # type: ignore[attr-defined]
            record.exc_info = None
            record.exc_text = None
        elif getattr(record, "reason", None) is not None:
            record.reason = redact(str(record.reason))  # type: ignore[attr-defined]
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        record._shipflow_done = True  # type: ignore[attr-defined]
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the run context, reason, traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in context_of(record).items():
            line[key] = redact(value) if isinstance(value, str) else value
        reason = getattr(record, "reason", None)
        if reason is not None:
            line["reason"] = reason
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(self.formatException(record.exc_info))
        if record.exc_text:
            line["traceback"] = record.exc_text
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`12:00:01 INFO shipflow.worker [run=… step=…] message: reason` plus a traceback for bugs."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = context_of(record)
        reason = getattr(record, "reason", None)
        first, sep, rest = text.partition("\n")
        if reason is not None:
            first += f": {reason}"
        if context:
            shown = " ".join(f"{k.replace('_id', '')}={v}" for k, v in context.items())
            first += f" [{shown}]"
        return first + sep + rest


def quiet_client_loggers(level: int = logging.WARNING) -> None:
    """Stop the HTTP/S3 client libraries from logging request lines below `level`."""
    for name in CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(level)


class _ShipflowHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler `configure_logging` installs (so a second call replaces it)."""


def configure_logging(
    level: int = logging.INFO, *, stream: TextIO | None = None, fmt: LogFormat = "auto"
) -> logging.Handler:
    """Send every record to `stream` (default stderr) in one format, redacted.

    `fmt`: `json`, `text`, or `auto` (JSON unless the stream is a terminal, or what
    `SHIPFLOW_LOG_FORMAT` says). Client libraries' request logs are turned off below WARNING,
    and Temporal's loggers stop appending their info dict to messages (it is in the fields).
    """
    stream = stream or sys.stderr
    if fmt == "auto":
        import os

        chosen = os.environ.get("SHIPFLOW_LOG_FORMAT", "auto").lower()
        fmt = chosen if chosen in ("json", "text") else "auto"  # type: ignore[assignment]
    if fmt == "auto":
        fmt = "text" if getattr(stream, "isatty", lambda: False)() else "json"
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _ShipflowHandler)]:
        root.removeHandler(old)
    handler = _ShipflowHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactingFilter())
    root.addHandler(handler)
    root.setLevel(level)
    for other in root.handlers:  # e.g. pytest's capture handlers: redacted too
        if not any(isinstance(f, RedactingFilter) for f in other.filters):
            other.addFilter(RedactingFilter())
    quiet_client_loggers()
    activity.logger.activity_info_on_message = False
    workflow.logger.workflow_info_on_message = False
    return handler


# ---------------------------------------------------------------- step context for activities


class StepContextInterceptor(Interceptor):
    """Puts the step an activity runs for (its input's `context`) into the log context, so
    every line an activity logs, a client library's warning included, names its run and step."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _StepContextInbound(next)


class _StepContextInbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        fields: dict[str, Any] = {}
        if input.args:
            # A step's input has a `context`; others (records, run events) name the run.
            for source in (input.args[0], getattr(input.args[0], "context", None)):
                for name in ("flow", "stage", "run_id", "step_id"):
                    value = getattr(source, name, None)
                    if isinstance(value, str):
                        fields[name] = value
        fields.setdefault("run_id", activity.info().workflow_id)
        fields["attempt"] = activity.info().attempt
        annotate_span(fields)  # the RunActivity span, when traces are on
        # Not reset on return: each activity runs in its own task (its own context), and the
        # SDK logs an activity's failure in that task after this returns.
        set_step(**fields)
        return await super().execute_activity(input)

"""Logging for shipflow's processes: client libraries quiet at INFO, every line redacted.

httpx logs `HTTP Request: POST https://hooks.example/T0/B0/secret-token "HTTP/1.1 200 OK"`
at INFO, and botocore/urllib3 log request URLs at DEBUG: the webhook tokens, presigned
signatures and passwords in those URLs would land in `worker.log`. So their loggers are
set to WARNING, and every handler of the root logger gets `RedactingFilter`, which puts
each record's final text through `shipflow.workflows.redaction.redact`: a URL or DSN logged on
purpose (or quoted by an exception) keeps its host and loses its credentials.
"""

from __future__ import annotations

import logging

from shipflow.workflows.redaction import redact

#: Loggers that print request lines (with full URLs) at INFO or DEBUG.
CLIENT_LOGGERS = ("httpx", "httpcore", "urllib3", "botocore", "boto3", "s3transfer", "hpack")

FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


class RedactingFilter(logging.Filter):
    """Masks credentials in a record's message (and its exception text) before it is written."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to the handler to report
            return True
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def quiet_client_loggers(level: int = logging.WARNING) -> None:
    """Stop the HTTP/S3 client libraries from logging request lines below `level`."""
    for name in CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(level)


def configure_logging(level: int = logging.INFO) -> None:
    """`basicConfig` at `level`, client request logs off, a redacting filter on every handler."""
    logging.basicConfig(level=level, format=FORMAT)
    quiet_client_loggers()
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())

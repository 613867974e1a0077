"""The one logging setup (`shipflow.activities.core.logs`): JSON lines off a terminal, text
on one; run context on each record; an expected failure is one line with its reason, a bug
keeps its traceback; secrets redacted in messages, reasons and tracebacks."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from temporalio import activity, workflow
from temporalio.exceptions import ApplicationError

from shipflow.activities.core.logs import configure_logging, step_scope


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    filters = {h: list(h.filters) for h in handlers}
    flags = (activity.logger.activity_info_on_message, workflow.logger.workflow_info_on_message)
    try:
        yield
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        for handler, kept in filters.items():
            handler.filters = kept
        root.setLevel(level)
        activity.logger.activity_info_on_message, workflow.logger.workflow_info_on_message = flags


def test_json_lines_with_context_reason_and_redaction(restore_root: None) -> None:
    out = io.StringIO()
    configure_logging(stream=out)
    log = logging.getLogger("shipflow.test")
    with step_scope(flow="web", stage="prod", run_id="web-1", step_id="migrate", attempt=2):
        log.info("connecting to %s", "postgresql://app:hunter2@db:5432/app")
        try:
            raise ApplicationError("psql exited with code 3: password=hunter2", non_retryable=True)
        except ApplicationError:
            log.warning("Completing activity as failed", exc_info=True)
    try:
        {}["missing"]
    except KeyError:
        log.error("a bug", exc_info=True)
    logging.getLogger("httpx").info("HTTP Request: POST https://hooks.example/T0/secret")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 3  # the httpx request line is off at INFO
    connect, failed, bug = lines
    assert connect["message"] == "connecting to postgresql://app:***@db:5432/app"
    assert {k: connect[k] for k in ("flow", "stage", "run_id", "step_id", "attempt")} == {
        "flow": "web", "stage": "prod", "run_id": "web-1", "step_id": "migrate", "attempt": 2
    }
    assert failed["reason"] == "psql exited with code 3: password=***"
    assert "traceback" not in failed and failed["level"] == "WARNING"
    assert "run_id" not in bug
    assert bug["traceback"].startswith("Traceback") and "KeyError" in bug["traceback"]
    assert "hunter2" not in out.getvalue()


def test_text_on_a_terminal_and_explicit_format(restore_root: None) -> None:
    tty = Tty()
    configure_logging(stream=tty)
    with step_scope(run_id="web-1", step_id="deploy"):
        logging.getLogger("shipflow.test").info("rolled out")
    line = tty.getvalue().strip()
    assert line.endswith("INFO shipflow.test rolled out [run=web-1 step=deploy]"), line
    out = io.StringIO()
    configure_logging(stream=out, fmt="text")  # replaces the first handler, no duplicates
    logging.getLogger("shipflow.test").info("once")
    assert out.getvalue().count("once") == 1 and not out.getvalue().startswith("{")
    assert "once" not in tty.getvalue()

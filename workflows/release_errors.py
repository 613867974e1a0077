"""The exceptions and error texts of `ReleaseWorkflow`: what ends a step, what ends a run
before it starts, and the one line a user reads for a Temporal failure."""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, TimeoutError

with workflow.unsafe.imports_passed_through():
    from shipflow.workflows.plan import ActionPlan


class StepFailed(Exception):
    """A step ended unsuccessfully; the run compensates."""

    def __init__(self, step_id: str, message: str):
        super().__init__(f"step {step_id} failed: {message}")
        self.step_id = step_id
        self.message = message


class Refused(Exception):
    """The stage is busy and the flow's concurrency is `forbid`."""


class Compensate:
    """A succeeded step whose undo runs if the run fails: its plan and its output."""

    def __init__(self, action: ActionPlan, output: dict[str, Any]):
        self.action = action
        self.output = output


def worker_shut_down(cause: BaseException | None) -> bool:
    """The SDK fails an activity that outlives its worker's graceful shutdown this way."""
    return isinstance(cause, ApplicationError) and cause.type == "WorkerShutdown"


def is_cancel(error: BaseException) -> bool:
    if isinstance(error, asyncio.CancelledError | CancelledError):
        return True
    return isinstance(error, ActivityError) and isinstance(error.cause, CancelledError)


def describe_error(error: BaseException) -> str:
    """The message a user needs: the innermost cause, not the Temporal wrapping."""
    while isinstance(error, ActivityError) and error.cause is not None:
        error = error.cause
    if isinstance(error, TimeoutError):
        kind = error.type.name.lower().replace("_", "-") if error.type else "unknown"
        return f"timed out ({kind})"
    if isinstance(error, ApplicationError):
        return error.message
    return str(error) or type(error).__name__

"""Input and result of the `notify` activity."""

from __future__ import annotations

from pydantic import BaseModel

from shipflow.workflows.io.common import StepContext

SEND = "notify.send"
#: Posts a run event (`notifications:` of a flow): see `RunEventInput`.
RUN_EVENT = "notify.run_event"

#: How long one webhook call may take before it counts as a failed attempt.
REQUEST_TIMEOUT_S = 10.0

#: The header (and, as `idempotency_key`, the body field) receivers deduplicate on.
IDEMPOTENCY_HEADER = "Idempotency-Key"


class NotifyInput(BaseModel):
    context: StepContext
    webhook: str
    message: str
    headers: dict[str, str] = {}
    run_state: str | None = None
    #: The step's timeout: one webhook call never takes longer (nor longer than 10 s).
    timeout_s: float | None = None


class NotifyOutput(BaseModel):
    status_code: int
    #: What the request carried as `Idempotency-Key` (`<run>/<step>/<workflow run>`).
    idempotency_key: str | None = None


class RunEventInput(BaseModel):
    """A run reached a state a flow's `notifications:` entry subscribes to."""

    run_id: str
    flow: str
    stage: str
    event: str
    state: str
    #: The approval step that waits (`waiting`), or the step that failed.
    step_id: str | None = None
    error: str | None = None
    webhook: str
    format: str = "generic"
    headers: dict[str, str] = {}
    #: Which `notifications:` entry (idempotency key: one message per entry and event).
    index: int = 0


class RunEventOutput(BaseModel):
    status_code: int
    idempotency_key: str

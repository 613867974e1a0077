"""Is a run stuck? A run whose workflow task keeps failing never moves again by itself.

Temporal retries a failing workflow task forever (a bug in workflow code, a
non-deterministic change): the run's memo still says `running`, nothing in shipflow's
own status changes, and a cancel request is recorded but never acted on, since acting on
it needs a workflow task that succeeds. Temporal knows, though: the pending workflow
task's attempt count grows, and the first failure of the streak is in the history (the
retries after it are not recorded). This module reads both, so `GET /runs/{id}` can say
that the run is stuck, and why, and the operator knows to terminate it.
"""

from __future__ import annotations

from datetime import UTC

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause
from temporalio.api.failure.v1 import Failure
from temporalio.api.workflowservice.v1 import GetWorkflowExecutionHistoryReverseRequest
from temporalio.client import Client, WorkflowExecutionDescription

from shipflow.api.schemas import Stuck
from shipflow.workflows.redaction import redact

#: A workflow task on its second attempt has failed once already (timeouts: see `stuck`).
STUCK_AT_ATTEMPT = 2
#: How far back to look for the failure; after it, only signals and requests are written.
HISTORY_PAGE = 100
REASON_CHARS = 1000


async def _failure_message(client: Client, failure: Failure) -> str:
    """The failure's message in clear: with payload encryption on, the history holds only
    "Encoded failure" and the real message sits in the encrypted attributes."""
    try:
        error = await client.data_converter.decode_failure(failure)
    except Exception:  # a key this API lacks: the raw message is all there is
        return redact(failure.message) or "no message"
    return redact(str(error)) or "no message"


async def _last_task_failure(client: Client, run_id: str) -> str | None:
    request = GetWorkflowExecutionHistoryReverseRequest(
        namespace=client.namespace,
        execution=WorkflowExecution(workflow_id=run_id),
        maximum_page_size=HISTORY_PAGE,
    )
    answer = await client.workflow_service.get_workflow_execution_history_reverse(request)
    for event in answer.history.events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            attributes = event.workflow_task_failed_event_attributes
            cause = WorkflowTaskFailedCause.Name(attributes.cause)
            cause = cause.removeprefix("WORKFLOW_TASK_FAILED_CAUSE_").lower()
            message = await _failure_message(client, attributes.failure)
            return f"workflow task failed ({cause}): {message}"[:REASON_CHARS]
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            return None  # the failures are older than the last success
    return None


async def stuck(
    client: Client, run_id: str, description: WorkflowExecutionDescription
) -> Stuck | None:
    """Why the run with `description` cannot make progress, or None while it can."""
    pending = description.raw_description.pending_workflow_task
    if not description.raw_description.HasField("pending_workflow_task"):
        return None
    if pending.attempt < STUCK_AT_ATTEMPT:
        return None
    reason = await _last_task_failure(client, run_id)
    if reason is None:
        # Only timeouts: one is a worker lost mid-task (the next worker carries on), so
        # call it stuck only when it keeps happening.
        if pending.attempt < STUCK_AT_ATTEMPT + 1:
            return None
        reason = f"the workflow task timed out {pending.attempt - 1} times; is a worker stuck?"
    since = (
        pending.original_scheduled_time.ToDatetime(tzinfo=UTC)
        if pending.HasField("original_scheduled_time")
        else None
    )
    return Stuck(reason=reason, attempts=pending.attempt, since=since)

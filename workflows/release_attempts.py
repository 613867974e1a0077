"""One activity under a step's retry policy: each attempt, its error and the back-off before
the next are step state (`StepStatus.attempts`, `attempt_log`, `next_attempt_at`).

Retries are driven here, not by Temporal's activity retry policy, so that users see them.
A lost worker (heartbeat timeout, or a worker shut down meanwhile) is not an attempt: the
step is resumed from its last heartbeat.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    TimeoutError,
    TimeoutType,
)

from shipflow.workflows.release_base import ReleaseBase
from shipflow.workflows.release_errors import StepFailed, describe_error, worker_shut_down
from shipflow.workflows.release_patches import (
    ABORT_KEPT_ON_CANCEL,
    STEP_ATTEMPT_LOG,
    WORKER_SHUTDOWN_IS_LOST,
)

with workflow.unsafe.imports_passed_through():
    from shipflow.workflows.io.deploy import (
        ABORT_KEPT,
        AbortKeptInput,
        AbortKeptOutput,
        RolloutInput,
    )
    from shipflow.workflows.plan import ActionPlan
    from shipflow.workflows.status import AttemptRecord, Compensation, StepState, StepStatus
    from shipflow.workflows.step_kinds import Local
    from shipflow.workflows.templates import literal

NO_RETRY = RetryPolicy(maximum_attempts=1)
CLEANUP_MARGIN_S = 30.0
#: The failure type of an attempt that kept its work for the next (`targets.base.StateKept`).
STATE_KEPT = "StateKept"
ABORT_KEPT_RETRY = RetryPolicy(maximum_attempts=5, maximum_interval=timedelta(seconds=10))


class StepAttempts(ReleaseBase):
    """`_attempts`: the retry loop every activity of a step (or of its undo) runs in."""

    async def _attempts(
        self,
        action: ActionPlan,
        step: StepStatus,
        activity: str,
        request: BaseModel,
        result_type: type[BaseModel],
        long_running: bool,
        *,
        undo: Compensation | None = None,
        max_attempts: int | None = None,
        local: Local | None = None,
    ) -> dict[str, Any]:
        """Execute one activity under the step's retry policy; return its output as a dict.

        Attempts and errors go to the step, or to `undo` when this is its compensation.
        With `local`, each attempt is a local activity (see `step_kinds.Local`); retries,
        their back-off and the step's state are the same either way.

        Raises:
            StepFailed: attempts exhausted or a non-retryable error.
        """
        limit = max_attempts or action.retry.max_attempts
        attempt = 0
        lost = 0
        resume: dict[str, Any] | None = None
        # Long activities enforce the step's timeout themselves, so they can clean up (kill
        # a process group, abort an upload) and say what timed out; Temporal's timeout is
        # the backstop for a worker that stops answering.
        step_timeout = action.timeout_s or 86400.0
        timeout = timedelta(seconds=step_timeout + (CLEANUP_MARGIN_S if long_running else 0))
        logged = self._patches.patched(STEP_ATTEMPT_LOG)
        record: AttemptRecord | None = None
        while True:
            attempt += 1
            if undo is not None:
                undo.attempts = attempt
            else:
                step.attempts = attempt
                step.state = StepState.RUNNING
                step.next_attempt_at = None
            activity_id: str | None = None
            if logged:
                role = "undo:" if undo is not None else ""
                resumed = f"+{lost}" if lost else ""
                activity_id = f"{action.id}:{role}{activity}:{attempt}{resumed}"
                if undo is None and (record is None or record.number != attempt):
                    record = AttemptRecord(number=attempt, started_at=workflow.now())
                    step.attempt_log = [*(step.attempt_log or []), record]
                if record is not None and undo is None:
                    record.activity_id = activity_id
            self._touch(step)
            payload = request.model_copy(update={"resume": resume}) if resume else request
            try:
                if local is not None:
                    result = await workflow.execute_local_activity(
                        activity,
                        payload,
                        result_type=result_type,
                        start_to_close_timeout=timedelta(seconds=local.timeout_s(action)),
                        retry_policy=NO_RETRY,
                        cancellation_type=(
                            workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED
                        ),
                        summary=step.summary or literal(action.summary),
                        activity_id=activity_id,
                    )
                else:
                    result = await workflow.execute_activity(
                        activity,
                        payload,
                        result_type=result_type,
                        start_to_close_timeout=timeout,
                        heartbeat_timeout=(
                            timedelta(seconds=self._plan.heartbeat_timeout_s)
                            if long_running
                            else None
                        ),
                        retry_policy=NO_RETRY,
                        cancellation_type=(
                            workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED
                        ),
                        summary=step.summary or literal(action.summary),
                        activity_id=activity_id,
                    )
                if record is not None:
                    record.ended_at, record.outcome = workflow.now(), "succeeded"
                return result.model_dump(mode="json")
            except (ActivityError, ApplicationError, TimeoutError) as error:
                # A regular activity's failure is an ActivityError around its cause; a local
                # activity's arrives unwrapped (the SDK's core reports it as is).
                cause = error.cause if isinstance(error, ActivityError) else error
                if isinstance(cause, CancelledError):
                    if record is not None:
                        record.ended_at, record.outcome = workflow.now(), "cancelled"
                    raise
                if (
                    isinstance(cause, TimeoutError)
                    and cause.type == TimeoutType.HEARTBEAT
                    and lost < self._plan.worker_lost_retries
                ):
                    lost += 1
                    attempt -= 1
                    if record is not None:
                        record.resumed += 1
                    details = list(cause.last_heartbeat_details or [])
                    if details and isinstance(details[0], dict):
                        resume = details[0]
                    workflow.logger.warning("step %s lost its worker; resuming", action.id)
                    continue
                if (
                    worker_shut_down(cause)
                    and lost < self._plan.worker_lost_retries
                    and self._patches.patched(WORKER_SHUTDOWN_IS_LOST)
                ):
                    # A worker stopped gracefully (redeployed) whose activity did not end in
                    # its grace period is a lost worker too, not a failed attempt. No
                    # heartbeat comes with it: the activity finds its work again by itself
                    # (a command's job record, a rollout's derived id).
                    lost += 1
                    attempt -= 1
                    if record is not None:
                        record.resumed += 1
                    workflow.logger.warning("step %s: its worker shut down; resuming", action.id)
                    continue
                message = describe_error(error)
                if record is not None:
                    record.ended_at, record.outcome = workflow.now(), "failed"
                    record.error = message
                if undo is not None:
                    undo.error = message
                else:
                    step.error = message
                    failure_details: tuple[Any, ...] = (
                        tuple(cause.details) if isinstance(cause, ApplicationError) else ()
                    )
                    if failure_details and isinstance(failure_details[0], dict):
                        step.output = failure_details[0]  # e.g. a failed job's exit code and output
                final = isinstance(cause, ApplicationError) and cause.non_retryable
                if final or attempt >= limit:
                    raise StepFailed(action.id, message) from None
                kept = isinstance(cause, ApplicationError) and cause.type == STATE_KEPT
                delay = action.retry.delay_after(attempt)
                if undo is None:
                    step.state = StepState.RETRYING
                    step.next_attempt_at = workflow.now() + timedelta(seconds=delay)
                    self._touch(step)
                resume = None
                try:
                    await workflow.sleep(delay, summary=f"{action.id}: retry {attempt + 1}/{limit}")
                except asyncio.CancelledError:
                    # The next attempt will not come: what the last one kept for it (a canary
                    # with its share of the traffic) must not stay behind a cancelled step.
                    if (
                        kept
                        and isinstance(request, RolloutInput)
                        and self._patches.patched(ABORT_KEPT_ON_CANCEL)
                    ):
                        await self._shielded(self._abort_kept(action, request, step))
                    raise

    async def _abort_kept(
        self, action: ActionPlan, request: RolloutInput, step: StepStatus
    ) -> None:
        """Abort the canary or green Deployment an attempt kept; a failure is the step's error."""
        payload = AbortKeptInput(
            context=request.context,
            target=request.target,
            service=request.service,
            image=request.image,
            container=request.container,
            strategy=request.strategy,
        )
        try:
            await workflow.execute_activity(
                ABORT_KEPT,
                payload,
                result_type=AbortKeptOutput,
                start_to_close_timeout=timedelta(minutes=2),
                retry_policy=ABORT_KEPT_RETRY,
                summary=f"{action.id}: abort what the last attempt kept",
                activity_id=f"{action.id}:{ABORT_KEPT}",
            )
        except ActivityError as error:
            step.error = f"{step.error}; cancelled, and the abort of what it kept failed: {describe_error(error)}"
            self._touch(step)

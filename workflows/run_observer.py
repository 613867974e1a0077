"""What `ReleaseWorkflow` tells the outside about a run: metrics, log lines, notifications.

The interpreter calls a handful of hooks (run started, state changed, step ended,
compensation done, approval waiting/decided) and this class turns each into release
metrics (`shipflow.workflows.run_metrics`), one structured log line, and, for the states a
flow's `notifications:` subscribes to, a `notify.run_event` activity. Keeping it out of
`release.py` keeps the interpreter about interpreting.

Notifications never fail the run: each is its own activity with Temporal's retry policy
(transient errors retried, a 4xx answer not), sent in the background; a failure is a
warning and a metric. Sending one adds commands to the history, so the first one a run
sends is guarded by `workflow.patched(RUN_NOTIFICATIONS)`.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

from shipflow.workflows.io import notify as notify_io
from shipflow.workflows.plan import ActionPlan, Plan
from shipflow.workflows.run_metrics import RunMetrics
from shipflow.workflows.status import RunState, RunStatus, StepStatus

#: Patch id: runs send their flow's `notifications:` (new activities in the history).
RUN_NOTIFICATIONS = "run-notifications"
#: Run states that end a run.
FINAL = frozenset(
    {
        RunState.SUCCEEDED,
        RunState.FAILED,
        RunState.CANCELLED,
        RunState.ROLLED_BACK,
        RunState.ROLLBACK_FAILED,
    }
)
NOTIFY_RETRY = RetryPolicy(
    maximum_attempts=5,
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=10),
)


def _seconds(start: datetime | None, end: datetime) -> float:
    return (end - start).total_seconds() if start is not None else 0.0


class RunObserver:
    def __init__(self, plan: Plan, status: RunStatus):
        self._plan = plan
        self._status = status
        self.metrics = RunMetrics(plan.flow, plan.stage)
        self._sends: list[asyncio.Task[None]] = []
        self._queued_at: datetime | None = None
        self._waiting_since: dict[str, datetime] = {}

    def _extra(self, step_id: str | None = None, **more: Any) -> dict[str, Any]:
        extra: dict[str, Any] = {
            "flow": self._plan.flow,
            "stage": self._plan.stage,
            "run_id": self._status.run_id,
        }
        if step_id is not None:
            extra["step_id"] = step_id
        extra.update({k: v for k, v in more.items() if v is not None})
        return extra

    # ------------------------------------------------------------ run

    def started(self, trigger: str) -> None:
        self.metrics.run_started(trigger)

    def state_changed(self, old: RunState, new: RunState) -> None:
        now = workflow.now()
        if new == RunState.QUEUED:
            self._queued_at = now
            self.metrics.queued(self._status.run_id, True)
        elif old == RunState.QUEUED:
            self.metrics.queued(self._status.run_id, False)
            self.metrics.queue_wait(_seconds(self._queued_at, now))
        if new in FINAL and old not in FINAL:
            duration = _seconds(self._status.started_at, now)
            self.metrics.run_ended(new.value, duration)
            workflow.logger.info(
                "run %s %s after %.1fs",
                self._status.run_id,
                new.value,
                duration,
                extra=self._extra(self._status.failed_step, reason=self._status.error),
            )
            self._notify(new.value, self._status.failed_step)

    # ------------------------------------------------------------ steps

    def step_ended(self, action: ActionPlan, step: StepStatus) -> None:
        now = step.ended_at or workflow.now()
        duration = _seconds(step.started_at, now)
        outcome = step.state.value
        self.metrics.step_ended(action.kind, outcome, duration, step.attempts, step.output)
        extra = self._extra(action.id, attempt=step.attempts or None)
        if outcome == "failed":
            extra["reason"] = step.error
            workflow.logger.warning("step %s failed", action.id, extra=extra)
        else:
            workflow.logger.info("step %s %s in %.2fs", action.id, outcome, duration, extra=extra)

    def compensated(self, action: ActionPlan, ok: bool, error: str | None) -> None:
        self.metrics.compensation(action.kind, ok)
        extra = self._extra(action.id, reason=error)
        if ok:
            workflow.logger.info("step %s compensated", action.id, extra=extra)
        else:
            workflow.logger.warning("step %s: compensation failed", action.id, extra=extra)

    # ------------------------------------------------------------ approvals

    def approval_waiting(self, step_id: str) -> None:
        self._waiting_since[step_id] = workflow.now()
        self.metrics.approval_waiting(self._status.run_id, step_id, True)
        workflow.logger.info("step %s waits for approval", step_id, extra=self._extra(step_id))
        self._notify("waiting", step_id)

    def approval_done(self, step_id: str, decision: str) -> None:
        """`decision`: approved, rejected, timed_out, or cancelled (the run stopped)."""
        self.metrics.approval_waiting(self._status.run_id, step_id, False)
        since = self._waiting_since.pop(step_id, None)
        if decision != "cancelled":
            self.metrics.approval_decided(decision, _seconds(since, workflow.now()))

    # ------------------------------------------------------------ notifications

    def _notify(self, event: str, step_id: str | None) -> None:
        entries = [
            (i, n) for i, n in enumerate(self._plan.notifications) if event in n.on
        ]
        if not entries or not workflow.patched(RUN_NOTIFICATIONS):
            return
        for index, entry in entries:
            request = notify_io.RunEventInput(
                run_id=self._status.run_id,
                flow=self._plan.flow,
                stage=self._plan.stage,
                event=event,
                state=self._status.state.value,
                step_id=step_id,
                error=self._status.error if event != "waiting" else None,
                webhook=entry.webhook,
                format=entry.format,
                headers=entry.headers,
                index=index,
            )
            self._sends.append(asyncio.create_task(self._send(request)))

    async def _send(self, request: notify_io.RunEventInput) -> None:
        try:
            await workflow.execute_activity(
                notify_io.RUN_EVENT,
                request,
                result_type=notify_io.RunEventOutput,
                start_to_close_timeout=timedelta(seconds=15),
                retry_policy=NOTIFY_RETRY,
                summary=f"notify: run {request.event}",
            )
        except ActivityError as error:
            cause = error.cause
            reason = cause.message if isinstance(cause, ApplicationError) else str(cause or error)
            self.metrics.notification(request.event, False)
            workflow.logger.warning(
                "could not send the %s notification",
                request.event,
                extra=self._extra(request.step_id, reason=reason),
            )
            return
        self.metrics.notification(request.event, True)

    async def drain(self) -> None:
        """Wait for the notifications sent so far (the run's end waits for its own)."""
        while self._sends:
            sends, self._sends = self._sends, []
            await asyncio.gather(*sends, return_exceptions=True)

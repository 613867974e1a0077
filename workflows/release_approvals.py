"""Approval steps: a step waits (state `waiting`) until the `approve` or `reject` update
(handled on `ReleaseWorkflow`, release.py) records a decision, or its timeout passes."""

from __future__ import annotations

import builtins
from typing import Any

from temporalio import workflow

from shipflow.workflows.release_base import ReleaseBase
from shipflow.workflows.release_errors import StepFailed

with workflow.unsafe.imports_passed_through():
    from shipflow.workflows.plan import ActionPlan
    from shipflow.workflows.status import StepState, StepStatus


class Approvals(ReleaseBase):
    """Waiting for a decision, and finding the step an update decides."""

    async def _approval(
        self, action: ActionPlan, params: dict[str, Any], step: StepStatus
    ) -> dict[str, Any]:
        step.attempts = 1
        step.state = StepState.WAITING
        self._refresh_run_state()
        self._touch(step)
        self._observer.approval_waiting(action.id)
        timeout = action.timeout_s
        outcome = "cancelled"
        try:
            try:
                await workflow.wait_condition(lambda: action.id in self._decisions, timeout=timeout)
            except builtins.TimeoutError:
                outcome = "timed_out"
                raise StepFailed(action.id, f"no approval within {timeout:g}s") from None
            outcome = self._decisions[action.id].decision
        finally:
            self._observer.approval_done(action.id, outcome)
        decision = self._decisions[action.id]
        step.approval = decision
        if decision.decision != "approved":
            by = f" by {decision.by}" if decision.by else ""
            reason = f": {decision.comment}" if decision.comment else ""
            raise StepFailed(action.id, f"rejected{by}{reason}")
        return {
            "approved_by": decision.by,
            "comment": decision.comment,
            "approved_at": decision.at.isoformat(),
        }

    def _waiting_step(self, step_id: str | None) -> StepStatus:
        if step_id is None:
            waiting = [s for s in self._status.steps if s.state == StepState.WAITING]
            if len(waiting) != 1:
                raise ValueError(
                    "name the step to decide: "
                    + (", ".join(s.id for s in waiting) if waiting else "no step is waiting")
                )
            return waiting[0]
        step = self._steps.get(step_id)
        if step is None:
            raise ValueError(f"unknown step {step_id!r}")
        if step.kind != "approve":
            raise ValueError(f"step {step_id!r} is a {step.kind} step, not an approval")
        if step.state != StepState.WAITING or step_id in self._decisions:
            raise ValueError(
                f"step {step_id!r} is not waiting for approval (it is {step.state.value})"
            )
        return step

"""Unwinding a failed or cancelled `ReleaseWorkflow` run: steps not run are skipped, running
ones cancelled, and the recorded compensations run newest first, each with its own
retries, to the end even if a cancel arrives meanwhile; then the run's final state."""

from __future__ import annotations

from typing import Any

from temporalio import workflow

from shipflow.workflows.release_attempts import StepAttempts
from shipflow.workflows.release_errors import Compensate, StepFailed, describe_error
from shipflow.workflows.release_patches import REFUSE_OPTION_OUTPUTS

with workflow.unsafe.imports_passed_through():
    from shipflow.workflows.plan import ActionPlan, UndoPlan, resolve_step_outputs
    from shipflow.workflows.status import Compensation, RunState, StepState
    from shipflow.workflows.step_kinds import UNDO_KINDS, StepRequest
    from shipflow.workflows.step_outputs import option_like_outputs


class Unwinding(StepAttempts):
    """`_unwind` and the compensations it runs (`_undo_stack`, filled by `_action`)."""

    async def _unwind(self, error: BaseException, cancelled: bool) -> None:
        if isinstance(error, StepFailed):
            self._status.failed_step = error.step_id
            self._status.error = str(error)
        elif cancelled:
            self._status.error = "cancelled"
        else:
            self._status.error = describe_error(error)
        now = workflow.now()
        for step in self._status.steps:
            if step.state in (StepState.PENDING,):
                step.state = StepState.SKIPPED
            elif step.state in (StepState.RUNNING, StepState.RETRYING, StepState.WAITING):
                step.state = StepState.CANCELLED
                step.ended_at = now
        self._touch(*self._status.steps)
        failures = await self._shielded(self._compensate())
        if failures:
            final = RunState.ROLLBACK_FAILED
        elif any(s.compensation is not None for s in self._status.steps):
            final = RunState.ROLLED_BACK
        else:
            final = RunState.CANCELLED if cancelled else RunState.FAILED
        self._set_run(final)

    async def _compensate(self) -> int:
        """Undo what succeeded, newest first; return how many compensations failed."""
        failures = 0
        while self._undo_stack:
            entry = self._undo_stack.pop()
            if not await self._undo(entry):
                failures += 1
        return failures

    async def _undo(self, entry: Compensate) -> bool:
        action, undo = entry.action, entry.action.undo
        assert undo is not None
        step = self._steps[action.id]
        record = Compensation(kind=undo.kind, started_at=workflow.now())
        step.compensation = record
        step.state = StepState.COMPENSATING
        self._touch(step)
        try:
            output = await self._run_undo(action, undo, entry.output, record)
        except StepFailed as error:
            record.error = error.message
            record.ended_at = workflow.now()
            step.state = StepState.COMPENSATION_FAILED
            self._touch(step)
            self._observer.compensated(action, False, record.error)
            return False
        record.output = output
        record.ended_at = workflow.now()
        step.state = StepState.COMPENSATED
        self._touch(step)
        self._observer.compensated(action, True, None)
        return True

    async def _run_undo(
        self, action: ActionPlan, undo: UndoPlan, output: dict[str, Any], record: Compensation
    ) -> dict[str, Any]:
        entry = UNDO_KINDS[undo.kind]
        if undo.command:
            command = resolve_step_outputs(undo.command, self._outputs, "argv")
            refused = option_like_outputs(undo.command, command, "argv", "undo.command")
            if refused and self._patches.patched(REFUSE_OPTION_OUTPUTS):
                raise StepFailed(action.id, "; ".join(refused))
        request = StepRequest(
            plan=self._plan,
            action=action,
            params=resolve_step_outputs(action.params, self._outputs),
            context=self._context(action.id),
            run_state=self._status.state.value,
            outputs=self._outputs,
            undo=undo,
            step_output=output,
        )
        if entry.nothing_to_do is not None:
            note = entry.nothing_to_do(request)
            if note is not None:
                return note
        call = entry.call
        return await self._attempts(
            action,
            self._steps[action.id],
            call.activity,
            call.build(request),
            call.result_type,
            call.long_running,
            undo=record,
            max_attempts=max(action.retry.max_attempts, 3),
        )

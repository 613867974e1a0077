"""`ReleaseWorkflow`: the interpreter of a compiled Plan.

It walks the Plan's tree (sequences in order, parallel branches at once), runs each
action as an activity with the step's own retry policy and timeout, and keeps every
step's state in memory (the `status` query) and in the memo (readable with no worker
up; at most about a second behind, exact at the end: release_memo.py). When a step fails or the run is cancelled it runs the recorded compensations in
reverse order of completion, each with its own retries, and reports the final state.

What each kind of step runs (activity, input, result type, local or regular, undo) is a
table in `shipflow.workflows.step_kinds`; this module is the interpreter around it: the
run, the tree, one action, and every Temporal handler (query, signals, updates). Its
cohesive parts are mixins beside it, all over the shared state declared in
`release_base.ReleaseBase`:

- release_attempts.py: one activity under the step's retry policy (attempts, lost workers)
- release_undo.py: unwinding a failed or cancelled run, compensations newest first
- release_approvals.py: approval steps waiting for the `approve`/`reject` updates
- release_stage.py: the run's side of the stage lock (take, queue, release)
- release_index.py: recording the run in the SQL runs index
- release_memo.py: flushing the status into the memo, debounced to about once a second
- release_errors.py: StepFailed and the error text a user reads

Those modules are imported by this one only; the worker passes this module through the
sandbox (`sandbox.py`), and the replay tests re-import it, with them, in the full sandbox.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

from shipflow.workflows.release_approvals import Approvals
from shipflow.workflows.release_errors import (
    Compensate,
    Refused,
    StepFailed,
    describe_error,
    is_cancel,
)
from shipflow.workflows.release_index import RunsIndexRecording
from shipflow.workflows.release_memo import MemoFlushing
from shipflow.workflows.release_patches import (
    INDEX_RUN_STATES,
    LOCAL_SHORT_CALLS,
    REFUSE_OPTION_OUTPUTS,
    Patches,
)
from shipflow.workflows.release_stage import StageLocking
from shipflow.workflows.release_undo import Unwinding

with workflow.unsafe.imports_passed_through():
    # Models live in their own module, imported once per worker: defining pydantic models
    # here would rebuild them for every workflow instance the sandbox creates.
    from shipflow.workflows.durations import parse_duration
    from shipflow.workflows.io.deploy import PROMOTE_PAUSE, PromoteInput, PromotePauseOutput
    from shipflow.workflows.plan import ActionPlan, GroupPlan, resolve_step_outputs
    from shipflow.workflows.promotion import promotable_step
    from shipflow.workflows.release_io import ApproveInput, RejectInput, ReleaseInput, ReleaseResult
    from shipflow.workflows.run_observer import RunObserver
    from shipflow.workflows.stage_lock import GRANTED_SIGNAL, POSITION_SIGNAL
    from shipflow.workflows.status import (
        MEMO_KEY,
        STEP_MEMO_PREFIX,
        Approval,
        RunState,
        RunStatus,
        StepState,
        StepStatus,
        initial_steps,
        memo_entries,
    )
    from shipflow.workflows.step_kinds import STEP_KINDS, StepRequest
    from shipflow.workflows.step_outputs import option_like_outputs
    from shipflow.workflows.templates import literal

__all__ = [
    "MEMO_KEY",
    "STEP_MEMO_PREFIX",
    "ApproveInput",
    "RejectInput",
    "ReleaseInput",
    "ReleaseResult",
    "ReleaseWorkflow",
    "StepFailed",
]


@workflow.defn(name="ReleaseWorkflow")
class ReleaseWorkflow(Unwinding, Approvals, StageLocking, RunsIndexRecording, MemoFlushing):
    """The release run: see the module's docstring, and the mixins it is made of."""

    @workflow.init
    def __init__(self, input: ReleaseInput) -> None:
        self._input = input
        self._plan = input.plan
        self._status = RunStatus(
            # A schedule's fires share one input; Temporal appends the fire time to the id.
            run_id=workflow.info().workflow_id,
            flow=input.plan.flow,
            stage=input.plan.stage,
            flow_version=input.plan.flow_version,
            args=input.plan.args,
            reason=input.reason,
            triggered_by=input.triggered_by,
            steps=initial_steps(input.plan),
        )
        self._steps: dict[str, StepStatus] = {s.id: s for s in self._status.steps}
        # Metrics, log lines and notifications about this run (see run_observer.py).
        self._observer = RunObserver(input.plan, self._status)
        self._outputs: dict[str, dict[str, Any]] = {}
        self._undo_stack: list[Compensate] = []
        self._decisions: dict[str, Approval] = {}
        self._dirty = True
        #: Steps changed since the last memo upsert: only their entries are dumped again.
        self._dirty_steps: set[str] = set()
        self._done = False
        # What the starter put in the memo: only what changes from here on is upserted.
        self._flushed: dict[str, Any] = memo_entries(self._status)
        self._lock_asked = False
        self._granted = False
        self._stopping = False
        # Patches, with the one marker that stands for them in new runs (release_patches.py).
        self._patches = Patches()

    # ------------------------------------------------------------------ run

    @workflow.run
    async def run(self, input: ReleaseInput) -> ReleaseResult:
        flusher = asyncio.create_task(self._flush_memo())
        self._status.started_at = workflow.now()
        self._observer.started(input.trigger)
        if input.record_start:
            await self._record_run()
        if self._patches.patched(INDEX_RUN_STATES):
            self._indexer = asyncio.create_task(self._index_states())
        try:
            await self._take_stage()
            self._set_run(RunState.RUNNING)
            await self._node(self._plan.root)
        except Refused as refused:
            await self._finish(flusher)
            raise ApplicationError(str(refused), type="StageBusy", non_retryable=True) from None
        except BaseException as error:  # cancellation included: it arrives once
            cancelled = is_cancel(error)
            await self._unwind(error, cancelled)
            await self._finish(flusher)
            if cancelled:
                raise
            raise ApplicationError(
                self._status.error or "release failed", type="ReleaseFailed", non_retryable=True
            ) from None
        self._set_run(RunState.SUCCEEDED)
        await self._finish(flusher)
        return ReleaseResult(status=self._status)

    async def _finish(self, flusher: asyncio.Task[None]) -> None:
        self._status.ended_at = workflow.now()
        self._status.queue_position = None
        self._touch()
        if self._lock_asked:
            await self._shielded(self._release_stage())
        await self._shielded(self._record_run())
        await self._shielded(self._observer.drain())
        self._done = True
        await self._shielded(flusher)

    # ------------------------------------------------------------------ stage lock

    @workflow.signal(name=GRANTED_SIGNAL)
    def _lock_granted(self) -> None:
        self._granted = True

    @workflow.signal(name=POSITION_SIGNAL)
    def _lock_position(self, position: int) -> None:
        if self._status.state == RunState.QUEUED:
            self._status.queue_position = position
            self._touch()

    # ------------------------------------------------------------------ status

    @workflow.query
    def status(self) -> RunStatus:
        return self._status

    # ------------------------------------------------------------------ tree

    async def _node(self, node: ActionPlan | GroupPlan) -> None:
        if isinstance(node, ActionPlan):
            await self._action(node)
        elif node.node == "sequence":
            for child in node.children:
                await self._node(child)
        else:
            await self._parallel(node)

    async def _parallel(self, group: GroupPlan) -> None:
        """Run branches at once; the first failure cancels the others and waits for them."""
        tasks = [asyncio.create_task(self._node(child)) for child in group.children]
        pending = list(tasks)
        try:
            while pending:
                done, _ = await workflow.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                failure: BaseException | None = None
                for task in tasks:  # plan order, so the outcome is deterministic
                    if task in done and task in pending:
                        pending.remove(task)
                        if failure is None and (task.cancelled() or task.exception() is not None):
                            failure = (
                                asyncio.CancelledError() if task.cancelled() else task.exception()
                            )
                if failure is not None:
                    self._stopping = True  # a failure always ends the run
                    await self._cancel_all(pending)
                    raise failure
        except asyncio.CancelledError:
            self._stopping = True
            await self._cancel_all(pending)
            raise

    @staticmethod
    async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ actions

    async def _action(self, action: ActionPlan) -> None:
        step = self._steps[action.id]
        if action.id in self._input.skip:
            step.state = StepState.SKIPPED
            step.output = self._input.skip[action.id]
            self._outputs[action.id] = step.output
            self._touch(step)
            return
        self._stop_if_stopping()
        params = resolve_step_outputs(action.params, self._outputs)
        refused = option_like_outputs(action.params, params)
        step.summary = literal(resolve_step_outputs(action.summary, self._outputs))
        step.started_at = workflow.now()
        step.state = StepState.RUNNING
        self._touch(step)
        try:
            # Asked only when a step output would begin a command argument with '-': runs
            # that never meet that record no marker (release_patches.py).
            if refused and self._patches.patched(REFUSE_OPTION_OUTPUTS):
                raise ApplicationError(
                    "; ".join(refused), type="OptionLikeStepOutput", non_retryable=True
                )
            output = await self._perform(action, params, step)
        except BaseException as error:
            step.ended_at = workflow.now()
            if is_cancel(error):
                step.state = StepState.CANCELLED
                self._touch(step)
                self._observer.step_ended(action, step)
                raise
            step.state = StepState.FAILED
            if step.error is None or not isinstance(error, StepFailed):
                step.error = (
                    describe_error(error) if not isinstance(error, StepFailed) else error.message
                )
            self._refresh_run_state()
            self._touch(step)
            self._observer.step_ended(action, step)
            if isinstance(error, StepFailed):
                raise
            raise StepFailed(action.id, step.error) from None
        step.output = output
        step.error = None
        step.ended_at = workflow.now()
        step.state = StepState.SUCCEEDED
        step.next_attempt_at = None
        self._observer.step_ended(action, step)
        self._outputs[action.id] = output
        if action.undo is not None:
            self._undo_stack.append(Compensate(action, output))
        self._refresh_run_state()
        self._touch(step)
        self._stop_if_stopping()

    async def _perform(
        self, action: ActionPlan, params: dict[str, Any], step: StepStatus
    ) -> dict[str, Any]:
        kind = action.kind
        if kind == "wait":
            duration = parse_duration(params["duration"]).total_seconds()
            step.attempts = 1
            await workflow.sleep(duration, summary=literal(action.summary))
            return {"duration_s": duration}
        if kind == "approve":
            return await self._approval(action, params, step)
        entry = STEP_KINDS.get(kind)
        if entry is None:
            raise ApplicationError(f"unknown step kind {kind!r}", non_retryable=True)
        earlier: dict[str, dict[str, Any]] = {}
        output: dict[str, Any] = {}
        for call in entry.calls:
            request = StepRequest(
                plan=self._plan,
                action=action,
                params=params,
                context=self._context(action.id),
                run_state=self._status.state.value,
                earlier=earlier,
            )
            local = (
                call.local
                if call.runs_local(action) and self._patches.patched(LOCAL_SHORT_CALLS)
                else None
            )
            output = await self._attempts(
                action,
                step,
                call.activity,
                call.build(request),
                call.result_type,
                call.long_running,
                local=local,
            )
            earlier[call.activity] = output
        if entry.finish is not None:
            output = entry.finish(output, request)
        return output

    # ------------------------------------------------------------------ approvals

    @workflow.update
    async def approve(self, decision: ApproveInput) -> StepStatus:
        step = self._waiting_step(decision.step)
        self._decisions[step.id] = Approval(
            decision="approved", by=decision.by, comment=decision.comment, at=workflow.now()
        )
        return step

    @approve.validator
    def _validate_approve(self, decision: ApproveInput) -> None:
        step = self._waiting_step(decision.step)
        params = self._plan.action(step.id).params
        if (
            params.get("distinct_from_trigger")
            and decision.by
            and (decision.by == self._status.triggered_by)
        ):
            raise ValueError(
                f"step {step.id!r} must be approved by someone other than {decision.by}"
            )

    @workflow.update
    async def reject(self, decision: RejectInput) -> StepStatus:
        step = self._waiting_step(decision.step)
        self._decisions[step.id] = Approval(
            decision="rejected", by=decision.by, comment=decision.comment, at=workflow.now()
        )
        return step

    @reject.validator
    def _validate_reject(self, decision: RejectInput) -> None:
        self._waiting_step(decision.step)

    @workflow.update
    async def promote(self, request: PromoteInput) -> PromotePauseOutput:
        """End the pause of the run's Kubernetes canary/blue-green (the worker annotates it)."""
        target = promotable_step(self._plan, self._status.steps, self._context(""), request.step)
        return await workflow.execute_activity(
            PROMOTE_PAUSE,
            target,
            result_type=PromotePauseOutput,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_attempts=3),
            summary=f"promote {target.service}",
        )

    @promote.validator
    def _validate_promote(self, request: PromoteInput) -> None:
        promotable_step(self._plan, self._status.steps, self._context(""), request.step)

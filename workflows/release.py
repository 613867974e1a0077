"""`ReleaseWorkflow`: the interpreter of a compiled Plan.

It walks the Plan's tree (sequences in order, parallel branches at once), runs each
action as an activity with the step's own retry policy and timeout, and keeps every
step's state in memory (the `status` query) and in the memo (readable with no worker
up). When a step fails or the run is cancelled it runs the recorded compensations in
reverse order of completion, each with its own retries, and reports the final state.

Retries are driven here, not by Temporal's activity retry policy, so that each attempt,
its error and the back-off before the next one are visible as step state. A lost worker
(heartbeat timeout) is not an attempt: the step is resumed from its last heartbeat.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any, TypeVar

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

with workflow.unsafe.imports_passed_through():
    # Models live in their own module, imported once per worker: defining pydantic models
    # here would rebuild them for every workflow instance the sandbox creates.
    from shipflow.workflows.durations import parse_duration
    from shipflow.workflows.io import backup as backup_io
    from shipflow.workflows.io import checks as check_io
    from shipflow.workflows.io import deploy as deploy_io
    from shipflow.workflows.io import jobs as job_io
    from shipflow.workflows.io import locks as lock_io
    from shipflow.workflows.io import notify as notify_io
    from shipflow.workflows.io import records as record_io
    from shipflow.workflows.io.common import StepContext
    from shipflow.workflows.plan import ActionPlan, GroupPlan, UndoPlan, resolve_step_outputs
    from shipflow.workflows.release_io import ApproveInput, RejectInput, ReleaseInput, ReleaseResult
    from shipflow.workflows.spec import CheckSpec, Probes, Strategy
    from shipflow.workflows.stage_lock import (
        GRANTED_SIGNAL,
        POSITION_SIGNAL,
        RELEASE_SIGNAL,
        lock_id,
    )
    from shipflow.workflows.status import (
        MEMO_KEY,
        STEP_MEMO_PREFIX,
        Approval,
        Compensation,
        RunState,
        RunStatus,
        StepState,
        StepStatus,
        initial_steps,
        memo_entries,
    )
    from shipflow.workflows.templates import literal

__all__ = [
    "MEMO_KEY",
    "STEP_MEMO_PREFIX",
    "ApproveInput",
    "RejectInput",
    "ReleaseInput",
    "ReleaseResult",
    "ReleaseWorkflow",
]
NO_RETRY = RetryPolicy(maximum_attempts=1)
#: Patch id: an activity failed by its worker's shutdown is resumed like a lost worker.
WORKER_SHUTDOWN_IS_LOST = "worker-shutdown-is-lost"


def _worker_shut_down(cause: BaseException | None) -> bool:
    """The SDK fails an activity that outlives its worker's graceful shutdown this way."""
    return isinstance(cause, ApplicationError) and cause.type == "WorkerShutdown"
T = TypeVar("T")
CLEANUP_MARGIN_S = 30.0


class StepFailed(Exception):
    """A step ended unsuccessfully; the run compensates."""

    def __init__(self, step_id: str, message: str):
        super().__init__(f"step {step_id} failed: {message}")
        self.step_id = step_id
        self.message = message


class _Refused(Exception):
    """The stage is busy and the flow's concurrency is `forbid`."""


class _Compensate:
    def __init__(self, action: ActionPlan, output: dict[str, Any]):
        self.action = action
        self.output = output


def _is_cancel(error: BaseException) -> bool:
    if isinstance(error, asyncio.CancelledError | CancelledError):
        return True
    return isinstance(error, ActivityError) and isinstance(error.cause, CancelledError)


def _describe(error: BaseException) -> str:
    """The message a user needs: the innermost cause, not the Temporal wrapping."""
    while isinstance(error, ActivityError) and error.cause is not None:
        error = error.cause
    if isinstance(error, TimeoutError):
        kind = error.type.name.lower().replace("_", "-") if error.type else "unknown"
        return f"timed out ({kind})"
    if isinstance(error, ApplicationError):
        return error.message
    return str(error) or type(error).__name__


@workflow.defn(name="ReleaseWorkflow")
class ReleaseWorkflow:
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
        self._outputs: dict[str, dict[str, Any]] = {}
        self._undo_stack: list[_Compensate] = []
        self._decisions: dict[str, Approval] = {}
        self._dirty = True
        self._done = False
        # What the starter put in the memo: only what changes from here on is upserted.
        self._flushed: dict[str, Any] = memo_entries(self._status)
        self._lock_asked = False
        self._granted = False
        self._stopping = False

    # ------------------------------------------------------------------ run

    @workflow.run
    async def run(self, input: ReleaseInput) -> ReleaseResult:
        flusher = asyncio.create_task(self._flush_memo())
        self._status.started_at = workflow.now()
        if input.record_start:
            await self._record_run()
        try:
            await self._take_stage()
            self._set_run(RunState.RUNNING)
            await self._node(self._plan.root)
        except _Refused as refused:
            await self._finish(flusher)
            raise ApplicationError(str(refused), type="StageBusy", non_retryable=True) from None
        except BaseException as error:  # cancellation included: it arrives once
            cancelled = _is_cancel(error)
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

    async def _unwind(self, error: BaseException, cancelled: bool) -> None:
        if isinstance(error, StepFailed):
            self._status.failed_step = error.step_id
            self._status.error = str(error)
        elif cancelled:
            self._status.error = "cancelled"
        else:
            self._status.error = _describe(error)
        now = workflow.now()
        for step in self._status.steps:
            if step.state in (StepState.PENDING,):
                step.state = StepState.SKIPPED
            elif step.state in (StepState.RUNNING, StepState.RETRYING, StepState.WAITING):
                step.state = StepState.CANCELLED
                step.ended_at = now
        self._touch()
        failures = await self._shielded(self._compensate())
        if failures:
            final = RunState.ROLLBACK_FAILED
        elif any(s.compensation is not None for s in self._status.steps):
            final = RunState.ROLLED_BACK
        else:
            final = RunState.CANCELLED if cancelled else RunState.FAILED
        self._set_run(final)

    async def _shielded(self, work: Awaitable[T]) -> T:
        """Run `work` (compensation, the run's last records) to the end even if a cancel
        request arrives meanwhile."""
        task = asyncio.ensure_future(work)
        while True:
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:
                workflow.logger.info("cancel requested while compensating; compensation goes on")

    async def _finish(self, flusher: asyncio.Task[None]) -> None:
        self._status.ended_at = workflow.now()
        self._status.queue_position = None
        self._touch()
        if self._lock_asked:
            await self._shielded(self._release_stage())
        await self._shielded(self._record_run())
        self._done = True
        await self._shielded(flusher)

    async def _record_run(self) -> None:
        """Mirror the run into the SQL runs index. Best effort: the run's truth is Temporal."""
        status = self._status
        try:
            # A local activity: recorded in the same workflow task, no extra round trip.
            await workflow.execute_local_activity(
                record_io.RECORD_RUN,
                record_io.RunRecordInput(
                    run_id=status.run_id,
                    flow=status.flow,
                    stage=status.stage,
                    state=status.state.value,
                    ended_at=status.ended_at,
                    error=status.error,
                    flow_version=status.flow_version,
                    args=status.args,
                    reason=status.reason,
                    triggered_by=status.triggered_by,
                    trigger=self._input.trigger,
                ),
                result_type=record_io.RecordOutput,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=5, maximum_interval=timedelta(seconds=5)),
                summary="record run",
            )
        except ActivityError as e:
            workflow.logger.warning("could not record run %s: %s", status.run_id, _describe(e))

    # ------------------------------------------------------------------ stage lock

    async def _take_stage(self) -> None:
        """Wait for this run's turn in its stage.

        Raises:
            _Refused: the flow's policy is `forbid` and another run holds the stage.
        """
        policy = self._plan.concurrency
        if policy == "allow":
            return
        self._lock_asked = True
        answer = await workflow.execute_activity(
            lock_io.ACQUIRE,
            lock_io.AcquireInput(stage=self._plan.stage, run_id=self._status.run_id, policy=policy),
            result_type=lock_io.AcquireOutput,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_attempts=10, maximum_interval=timedelta(seconds=5)),
            summary=f"take stage {self._plan.stage}",
        )
        if answer.refused:
            self._lock_asked = False
            self._status.blocked_by = answer.holder
            self._status.error = (
                f"stage {self._plan.stage} is busy with run {answer.holder} (concurrency: forbid)"
            )
            self._set_run(RunState.FAILED)
            raise _Refused(self._status.error)
        if not answer.granted:
            self._status.queue_position = answer.position
            self._set_run(RunState.QUEUED)
            await workflow.wait_condition(lambda: self._granted)
            self._status.queue_position = None

    async def _release_stage(self) -> None:
        try:
            await workflow.get_external_workflow_handle(
                lock_id(self._plan.stage, workflow.info().task_queue)
            ).signal(RELEASE_SIGNAL, self._status.run_id)
        except Exception as e:  # the lock's reaper releases a run that could not say so
            workflow.logger.warning("could not release stage %s: %s", self._plan.stage, e)

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

    def _touch(self) -> None:
        self._dirty = True

    def _set_run(self, state: RunState) -> None:
        self._status.state = state
        self._touch()

    async def _flush_memo(self) -> None:
        """Upsert the memo at most once per workflow task, however many steps changed."""
        while True:
            await workflow.wait_condition(lambda: self._dirty or self._done)
            if self._dirty:
                self._dirty = False
                entries = memo_entries(self._status)
                changed = {k: v for k, v in entries.items() if self._flushed.get(k) != v}
                if changed:
                    workflow.upsert_memo(changed)
                    self._flushed.update(changed)
            if self._done and not self._dirty:
                return

    def _refresh_run_state(self) -> None:
        if self._status.state in (RunState.RUNNING, RunState.WAITING):
            waiting = any(s.state == StepState.WAITING for s in self._status.steps)
            self._set_run(RunState.WAITING if waiting else RunState.RUNNING)

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
            self._touch()
            return
        self._stop_if_stopping()
        params = resolve_step_outputs(action.params, self._outputs)
        step.summary = literal(resolve_step_outputs(action.summary, self._outputs))
        step.started_at = workflow.now()
        step.state = StepState.RUNNING
        self._touch()
        try:
            output = await self._perform(action, params, step)
        except BaseException as error:
            step.ended_at = workflow.now()
            if _is_cancel(error):
                step.state = StepState.CANCELLED
                self._touch()
                raise
            step.state = StepState.FAILED
            if step.error is None or not isinstance(error, StepFailed):
                step.error = (
                    _describe(error) if not isinstance(error, StepFailed) else error.message
                )
            self._refresh_run_state()
            self._touch()
            if isinstance(error, StepFailed):
                raise
            raise StepFailed(action.id, step.error) from None
        step.output = output
        step.error = None
        step.ended_at = workflow.now()
        step.state = StepState.SUCCEEDED
        step.next_attempt_at = None
        self._outputs[action.id] = output
        if action.undo is not None:
            self._undo_stack.append(_Compensate(action, output))
        self._refresh_run_state()
        self._touch()
        self._stop_if_stopping()

    def _stop_if_stopping(self) -> None:
        """Start nothing new once the run is stopping.

        An activity that completes although its cancellation was requested returns its
        result, and the SDK then clears the cancellation of the awaiting task: without
        this check, the run (or a branch whose sibling failed) would go on to its next step.
        """
        if self._stopping or workflow.cancellation_reason() is not None:
            raise asyncio.CancelledError()

    async def _perform(
        self, action: ActionPlan, params: dict[str, Any], step: StepStatus
    ) -> dict[str, Any]:
        context = self._context(action.id)
        kind = action.kind
        if kind == "wait":
            duration = parse_duration(params["duration"]).total_seconds()
            step.attempts = 1
            await workflow.sleep(duration, summary=literal(action.summary))
            return {"duration_s": duration}
        if kind == "approve":
            return await self._approval(action, params, step)
        if kind == "migrate":
            job = job_io.JobInput(
                context=context,
                target=self._plan.target,
                command=params["command"],
                image=_plain(params.get("image")),
                env=params.get("env") or {},
                cwd=_plain(params.get("cwd")),
                service_account=_plain(params.get("service_account")),
                timeout_s=action.timeout_s,
                retries=action.retry.max_attempts - 1,
            )
            return await self._attempts(action, step, job_io.RUN_JOB, job, job_io.JobOutput, True)
        if kind == "check":
            check = check_io.CheckInput(
                context=context,
                check=CheckSpec.model_validate({**_plain_check(params), "id": action.id}),
                timeout_s=action.timeout_s,
            )
            return await self._attempts(
                action, step, check_io.PROBE, check, check_io.CheckOutput, True
            )
        if kind == "notify":
            note = notify_io.NotifyInput(
                context=context,
                webhook=params["webhook"],
                message=_plain(params["message"]),
                headers=params.get("headers") or {},
                run_state=self._status.state.value,
                timeout_s=action.timeout_s,
            )
            # Heartbeats (long_running=True): a worker lost during a slow webhook call is
            # noticed within a heartbeat timeout and is not an attempt.
            return await self._attempts(
                action, step, notify_io.SEND, note, notify_io.NotifyOutput, True
            )
        if kind == "backup":
            request = backup_io.BackupInput(
                context=context,
                database=params["database"],
                to=params["to"],  # resolved (and unescaped) on the worker
                endpoint=params.get("endpoint"),
                keep=params.get("keep"),
                sse=params.get("sse"),
                storage_class=params.get("storage_class"),
            )
            return await self._attempts(
                action, step, backup_io.CREATE, request, backup_io.BackupOutput, True
            )
        if kind in ("deploy", "promote"):
            image = _plain(params.get("image"))
            if kind == "promote":
                found = await self._attempts(
                    action,
                    step,
                    deploy_io.RESOLVE_PROMOTION,
                    deploy_io.PromotionInput(
                        from_stage=_plain(params["from"]), service=_plain(params["service"])
                    ),
                    deploy_io.PromotionOutput,
                    True,  # a quick read: a heartbeat timeout bounds a lost worker
                )
                image = found["image"]
            rollout = self._rollout_input(action, params, image, purpose=kind)
            result = await self._attempts(
                action, step, deploy_io.ROLLOUT, rollout, deploy_io.RolloutOutput, True
            )
            if kind == "promote":
                result["from_stage"] = params["from"]
            return result
        if kind == "restore":
            # Only generated plans (rollback with restore_data) have this kind.
            restore = backup_io.RestoreInput(
                context=context,
                database=params["database"],
                url=params["url"],
                endpoint=params.get("endpoint"),
                size=params.get("size"),
                sha256=params.get("sha256"),
                owners=params.get("owners", "keep"),
            )
            return await self._attempts(
                action, step, backup_io.RESTORE, restore, backup_io.RestoreOutput, True
            )
        raise ApplicationError(f"unknown step kind {kind!r}", non_retryable=True)

    def _context(self, step_id: str) -> StepContext:
        return StepContext(
            run_id=self._status.run_id,
            flow=self._plan.flow,
            stage=self._plan.stage,
            step_id=step_id,
        )

    def _rollout_input(
        self, action: ActionPlan, params: dict[str, Any], image: str | None, *, purpose: str
    ) -> deploy_io.RolloutInput:
        deadline = params.get("progress_deadline")
        return deploy_io.RolloutInput(
            context=self._context(action.id),
            target=params.get("target") or self._plan.target,
            service=_plain(params["service"]),
            image=image or "",
            container=_plain(params.get("container")),
            probes=Probes.model_validate(params["probes"]) if params.get("probes") else None,
            progress_deadline_s=parse_duration(deadline).total_seconds() if deadline else None,
            strategy=Strategy.model_validate(params["strategy"]) if params.get("strategy") else None,
            purpose=purpose,
        )

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
    ) -> dict[str, Any]:
        """Execute one activity under the step's retry policy; return its output as a dict.

        Attempts and errors go to the step, or to `undo` when this is its compensation.

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
        while True:
            attempt += 1
            if undo is not None:
                undo.attempts = attempt
            else:
                step.attempts = attempt
                step.state = StepState.RUNNING
                step.next_attempt_at = None
            self._touch()
            payload = request.model_copy(update={"resume": resume}) if resume else request
            try:
                result = await workflow.execute_activity(
                    activity,
                    payload,
                    result_type=result_type,
                    start_to_close_timeout=timeout,
                    heartbeat_timeout=(
                        timedelta(seconds=self._plan.heartbeat_timeout_s) if long_running else None
                    ),
                    retry_policy=NO_RETRY,
                    cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                    summary=step.summary or literal(action.summary),
                )
                return result.model_dump(mode="json")
            except ActivityError as error:
                cause = error.cause
                if isinstance(cause, CancelledError):
                    raise
                if (
                    isinstance(cause, TimeoutError)
                    and cause.type == TimeoutType.HEARTBEAT
                    and lost < self._plan.worker_lost_retries
                ):
                    lost += 1
                    attempt -= 1
                    details = list(cause.last_heartbeat_details or [])
                    if details and isinstance(details[0], dict):
                        resume = details[0]
                    workflow.logger.warning("step %s lost its worker; resuming", action.id)
                    continue
                if (
                    _worker_shut_down(cause)
                    and lost < self._plan.worker_lost_retries
                    and workflow.patched(WORKER_SHUTDOWN_IS_LOST)
                ):
                    # A worker stopped gracefully (redeployed) whose activity did not end in
                    # its grace period is a lost worker too, not a failed attempt. No
                    # heartbeat comes with it: the activity finds its work again by itself
                    # (a command's job record, a rollout's derived id).
                    lost += 1
                    attempt -= 1
                    workflow.logger.warning("step %s: its worker shut down; resuming", action.id)
                    continue
                message = _describe(error)
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
                delay = action.retry.delay_after(attempt)
                if undo is None:
                    step.state = StepState.RETRYING
                    step.next_attempt_at = workflow.now() + timedelta(seconds=delay)
                    self._touch()
                resume = None
                await workflow.sleep(delay, summary=f"{action.id}: retry {attempt + 1}/{limit}")

    # ------------------------------------------------------------------ approvals

    async def _approval(
        self, action: ActionPlan, params: dict[str, Any], step: StepStatus
    ) -> dict[str, Any]:
        step.attempts = 1
        step.state = StepState.WAITING
        self._refresh_run_state()
        self._touch()
        timeout = action.timeout_s
        try:
            await workflow.wait_condition(lambda: action.id in self._decisions, timeout=timeout)
        except builtins.TimeoutError:
            raise StepFailed(action.id, f"no approval within {timeout:g}s") from None
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

    # ------------------------------------------------------------------ compensation

    async def _compensate(self) -> int:
        """Undo what succeeded, newest first; return how many compensations failed."""
        failures = 0
        while self._undo_stack:
            entry = self._undo_stack.pop()
            if not await self._undo(entry):
                failures += 1
        return failures

    async def _undo(self, entry: _Compensate) -> bool:
        action, undo = entry.action, entry.action.undo
        assert undo is not None
        step = self._steps[action.id]
        record = Compensation(kind=undo.kind, started_at=workflow.now())
        step.compensation = record
        step.state = StepState.COMPENSATING
        self._touch()
        try:
            output = await self._run_undo(action, undo, entry.output, record)
        except StepFailed as error:
            record.error = error.message
            record.ended_at = workflow.now()
            step.state = StepState.COMPENSATION_FAILED
            self._touch()
            return False
        record.output = output
        record.ended_at = workflow.now()
        step.state = StepState.COMPENSATED
        self._touch()
        return True

    async def _run_undo(
        self, action: ActionPlan, undo: UndoPlan, output: dict[str, Any], record: Compensation
    ) -> dict[str, Any]:
        context = self._context(action.id)
        attempts = max(action.retry.max_attempts, 3)
        step = self._steps[action.id]

        async def run(activity: str, request: BaseModel, result: type[BaseModel]) -> dict[str, Any]:
            return await self._attempts(
                action, step, activity, request, result, True, undo=record, max_attempts=attempts
            )

        if undo.kind == "previous_image":
            previous = output.get("previous_image")
            if not previous:
                return {"note": "the service had no earlier image; left on the new one"}
            params = resolve_step_outputs(action.params, self._outputs)
            rollout = self._rollout_input(action, params, previous, purpose="undo")
            return await run(deploy_io.ROLLOUT, rollout, deploy_io.RolloutOutput)
        if undo.kind == "command":
            job = job_io.JobInput(
                context=context,
                target=self._plan.target,
                command=resolve_step_outputs(undo.command, self._outputs),
                image=_plain(undo.image or action.params.get("image")),
                env=undo.env,
                cwd=_plain(undo.cwd),
                timeout_s=action.timeout_s,
                purpose="undo",
            )
            return await run(job_io.RUN_JOB, job, job_io.JobOutput)
        assert undo.backup_step is not None
        backup = self._plan.action(undo.backup_step)
        made = self._outputs.get(undo.backup_step) or {}
        restore = backup_io.RestoreInput(
            context=context,
            database=backup.params["database"],
            url=made.get("url", ""),
            endpoint=backup.params.get("endpoint"),
            size=made.get("size"),
            sha256=made.get("sha256"),
            owners=undo.owners,
        )
        return await run(backup_io.RESTORE, restore, backup_io.RestoreOutput)


def _plain(value: Any) -> Any:
    """The plain text of a field no activity resolves `${env.X}` in (see `shipflow.workflows.templates`).

    Fields the worker does resolve (commands, env, URLs, headers, database, backup `to`) stay encoded:
    `resolve_env` undoes the escapes itself, after it has filled in the author's references.
    """
    return literal(value) if isinstance(value, str) else value


def _plain_check(params: dict[str, Any]) -> dict[str, Any]:
    """A check's params with its plain-text fields decoded (its URL and headers stay encoded)."""
    out = dict(params)
    if isinstance(out.get("http"), dict) and out["http"].get("contains") is not None:
        out["http"] = {**out["http"], "contains": literal(out["http"]["contains"])}
    if isinstance(out.get("tcp"), dict) and isinstance(out["tcp"].get("host"), str):
        out["tcp"] = {**out["tcp"], "host": literal(out["tcp"]["host"])}
    return out

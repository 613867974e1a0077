"""`ReleaseWorkflow`: the interpreter of a compiled Plan.

It walks the Plan's tree (sequences in order, parallel branches at once), runs each
action as an activity with the step's own retry policy and timeout, and keeps every
step's state in memory (the `status` query) and in the memo (readable with no worker
up). When a step fails or the run is cancelled it runs the recorded compensations in
reverse order of completion, each with its own retries, and reports the final state.

Retries are driven here, not by Temporal's activity retry policy, so that each attempt,
its error and the back-off before the next one are visible as step state. A lost worker
(heartbeat timeout) is not an attempt: the step is resumed from its last heartbeat.

What each kind of step runs (activity, input, result type, local or regular, undo) is a
table in `shipflow.workflows.step_kinds`; this module is the interpreter around it. It is
longer than our ~400-line guide because it is one workflow class whose state (steps,
outputs, undo stack, memo) its sections share: splitting the class would scatter that.
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
    from shipflow.workflows.io import locks as lock_io
    from shipflow.workflows.io import records as record_io
    from shipflow.workflows.io.common import StepContext
    from shipflow.workflows.io.deploy import PROMOTE_PAUSE, PromoteInput, PromotePauseOutput
    from shipflow.workflows.plan import ActionPlan, GroupPlan, UndoPlan, resolve_step_outputs
    from shipflow.workflows.promotion import promotable_step
    from shipflow.workflows.release_io import ApproveInput, RejectInput, ReleaseInput, ReleaseResult
    from shipflow.workflows.run_observer import RunObserver
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
        AttemptRecord,
        Compensation,
        RunState,
        RunStatus,
        StepState,
        StepStatus,
        initial_steps,
        memo_entries,
        run_memo_entry,
        step_memo_entry,
    )
    from shipflow.workflows.step_kinds import STEP_KINDS, UNDO_KINDS, Local, StepRequest
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
#: Patch id: short calls (`step_kinds.Local`) run as local activities. Runs that started
#: before it keep scheduling regular activities, as their histories say.
LOCAL_SHORT_CALLS = "local-short-calls"
#: Patch id: the run records its live state changes in the runs index (`_index_states`).
INDEX_RUN_STATES = "index-run-states"
#: Patch id: each attempt of a step is recorded (`StepStatus.attempt_log`) and its activity
#: is named `<step>:<activity>:<attempt>` so the API can find it in the history.
STEP_ATTEMPT_LOG = "step-attempt-log"


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
        # Metrics, log lines and notifications about this run (see run_observer.py).
        self._observer = RunObserver(input.plan, self._status)
        self._outputs: dict[str, dict[str, Any]] = {}
        self._undo_stack: list[_Compensate] = []
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

    # ------------------------------------------------------------------ run

    @workflow.run
    async def run(self, input: ReleaseInput) -> ReleaseResult:
        flusher = asyncio.create_task(self._flush_memo())
        self._status.started_at = workflow.now()
        self._observer.started(input.trigger)
        if input.record_start:
            await self._record_run()
        if workflow.patched(INDEX_RUN_STATES):
            self._indexer = asyncio.create_task(self._index_states())
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
        self._touch(*self._status.steps)
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
        await self._shielded(self._observer.drain())
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
        except (ActivityError, ApplicationError, TimeoutError) as e:
            # A local activity's failure arrives unwrapped: catch it too, or a database
            # outage at the end would fail a run that succeeded.
            workflow.logger.warning("could not record run %s: %s", status.run_id, _describe(e))

    async def _index_states(self) -> None:
        """Record each change of the run's live state (queued, running, waiting) in the runs
        index, so that listing runs reads the database alone; `_finish` records the final one.

        One local activity per change, one at a time: a few markers per run, whatever the
        number of steps. Changes that happen while a record is in flight are coalesced.
        """
        recorded = RunState.PENDING  # what the index has before the run records anything
        while True:
            await workflow.wait_condition(
                lambda seen=recorded: self._done or self._status.state != seen  # type: ignore[misc]
            )
            if self._done or self._status.state.is_final:
                return
            recorded = self._status.state
            await self._record_run()

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

    def _touch(self, *steps: StepStatus) -> None:
        """Mark the status changed: the run's entry always, and the memo entries of `steps`."""
        self._dirty = True
        for step in steps:
            self._dirty_steps.add(step.id)

    def _set_run(self, state: RunState) -> None:
        old = self._status.state
        self._status.state = state
        self._touch()
        if old != state:
            self._observer.state_changed(old, state)

    async def _flush_memo(self) -> None:
        """Upsert the memo at most once per workflow task, however many steps changed."""
        while True:
            await workflow.wait_condition(lambda: self._dirty or self._done)
            if self._dirty:
                self._dirty = False
                changed: dict[str, Any] = {}
                run = run_memo_entry(self._status)
                if self._flushed.get(MEMO_KEY) != run:
                    changed[MEMO_KEY] = run
                if self._dirty_steps:
                    # Plan order (not the set's), so the upsert reads as before.
                    for step in self._status.steps:
                        if step.id in self._dirty_steps:
                            key = STEP_MEMO_PREFIX + step.id
                            entry = step_memo_entry(step)
                            if self._flushed.get(key) != entry:
                                changed[key] = entry
                    self._dirty_steps.clear()
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
            self._touch(step)
            return
        self._stop_if_stopping()
        params = resolve_step_outputs(action.params, self._outputs)
        step.summary = literal(resolve_step_outputs(action.summary, self._outputs))
        step.started_at = workflow.now()
        step.state = StepState.RUNNING
        self._touch(step)
        try:
            output = await self._perform(action, params, step)
        except BaseException as error:
            step.ended_at = workflow.now()
            if _is_cancel(error):
                step.state = StepState.CANCELLED
                self._touch(step)
                self._observer.step_ended(action, step)
                raise
            step.state = StepState.FAILED
            if step.error is None or not isinstance(error, StepFailed):
                step.error = (
                    _describe(error) if not isinstance(error, StepFailed) else error.message
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
            self._undo_stack.append(_Compensate(action, output))
        self._refresh_run_state()
        self._touch(step)
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
                if call.runs_local(action) and workflow.patched(LOCAL_SHORT_CALLS)
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

    def _context(self, step_id: str) -> StepContext:
        return StepContext(
            run_id=self._status.run_id,
            flow=self._plan.flow,
            stage=self._plan.stage,
            step_id=step_id,
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
        logged = workflow.patched(STEP_ATTEMPT_LOG)
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
                    if record is not None:
                        record.resumed += 1
                    workflow.logger.warning("step %s: its worker shut down; resuming", action.id)
                    continue
                message = _describe(error)
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
                delay = action.retry.delay_after(attempt)
                if undo is None:
                    step.state = StepState.RETRYING
                    step.next_attempt_at = workflow.now() + timedelta(seconds=delay)
                    self._touch(step)
                resume = None
                await workflow.sleep(delay, summary=f"{action.id}: retry {attempt + 1}/{limit}")

    # ------------------------------------------------------------------ approvals

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

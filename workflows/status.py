"""What a run reports about itself: run and step states, as the query, memo and API show them.

One model family serves the workflow's `status` query, the memo mirror (readable while
no worker runs) and `GET /runs/{id}`, so the three can never disagree on shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any, Self

from pydantic import BaseModel, Field

from shipflow.workflows.plan import Plan
from shipflow.workflows.templates import literal


class RunState(StrEnum):
    QUEUED = "queued"
    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"

    @property
    def is_final(self) -> bool:
        return self in FINAL_RUN_STATES


FINAL_RUN_STATES = frozenset(
    {
        RunState.SUCCEEDED,
        RunState.FAILED,
        RunState.CANCELLED,
        RunState.ROLLED_BACK,
        RunState.ROLLBACK_FAILED,
    }
)


class StepState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    COMPENSATION_FAILED = "compensation_failed"


class Approval(BaseModel):
    decision: str = Field(description="approved | rejected")
    by: str | None = None
    comment: str | None = None
    at: datetime


class Compensation(BaseModel):
    kind: str
    attempts: int = 0
    error: str | None = None
    output: dict[str, Any] | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None


class AttemptRecord(BaseModel):
    """One attempt of a step: when it ran, how it ended and with which error.

    `activity_id` names the Temporal activity of the attempt's call (`<step>:<activity>:<n>`),
    so the API can find the attempt's events in the run's history (deep links to the Web
    UI). Runs started before attempts were recorded have no records (`attempt_log` None).
    """

    number: int
    started_at: datetime
    ended_at: datetime | None = None
    outcome: str = Field("running", description="running | succeeded | failed | cancelled")
    error: str | None = None
    activity_id: str | None = None
    resumed: int = Field(0, description="times the attempt was resumed after a lost worker")


class StepStatus(BaseModel):
    id: str
    kind: str
    path: str
    summary: str = ""
    parent: str | None = Field(None, description="id of the enclosing parallel/sequence group")
    state: StepState = StepState.PENDING
    attempts: int = 0
    max_attempts: int = 1
    error: str | None = None
    output: dict[str, Any] | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    next_attempt_at: datetime | None = None
    approval: Approval | None = None
    compensation: Compensation | None = None
    attempt_log: list[AttemptRecord] | None = Field(
        None, description="every attempt with its times and error, oldest first"
    )


class RunSummary(BaseModel):
    """A run's identity and outcome: the one declaration every view of a run derives from.

    The workflow's status (`RunStatus`), the runs index table (`Run`), the record activity's
    input (`RunRecordInput`) and the API's list body (`RunPublic`) all extend this model, so a
    field added here reaches each of them, and copying one into another is
    `Other(**one.summary(), ...)` rather than a field-by-field list.
    """

    run_id: str
    flow: str
    stage: str
    flow_version: int = 1
    state: RunState = RunState.PENDING
    args: dict[str, str] = {}
    reason: str | None = None
    triggered_by: str | None = None
    error: str | None = None
    ended_at: datetime | None = None

    @classmethod
    def starting(
        cls,
        plan: Plan,
        run_id: str,
        *,
        reason: str | None,
        triggered_by: str | None,
        **more: Any,
    ) -> Self:
        """A run of `plan` about to start (pending), plus the subclass's own fields."""
        return cls(
            run_id=run_id,
            flow=plan.flow,
            stage=plan.stage,
            flow_version=plan.flow_version,
            state=RunState.PENDING,
            args=dict(plan.args),
            reason=reason,
            triggered_by=triggered_by,
            **more,
        )

    def summary(self) -> dict[str, Any]:
        """The summary fields of this run, whatever model holds it (as Python values)."""
        return {name: getattr(self, name) for name in RunSummary.model_fields}


class RunStatus(RunSummary):
    """The run as the workflow reports it: the summary plus its progress and every step."""

    failed_step: str | None = None
    queue_position: int | None = Field(None, description="place in the stage's queue while queued")
    blocked_by: str | None = Field(
        None, description="the run holding the stage when this one was refused"
    )
    started_at: datetime | None = None
    steps: list[StepStatus] = []

    def step(self, step_id: str) -> StepStatus:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)


def initial_steps(plan: Plan) -> list[StepStatus]:
    """One pending StepStatus per action of the plan, in plan order."""
    out: list[StepStatus] = []

    def walk(node: Any, parent: str | None) -> None:
        if node.node == "action":
            out.append(
                StepStatus(
                    id=node.id,
                    kind=node.kind,
                    path=node.path,
                    summary=literal(node.summary),
                    parent=parent,
                    max_attempts=node.retry.max_attempts,
                )
            )
        else:
            for child in node.children:
                walk(child, node.id if node.id != "steps" else None)

    walk(plan.root, None)
    return out


# ------------------------------------------------------------------ memo layout

#: The run-level part of the status (every field but the steps, plus `step_ids` in order).
MEMO_KEY = "status"
#: Each step's status under its own key, so an update rewrites only the steps that changed
#: and the history grows with the number of changes, not with changes times steps.
STEP_MEMO_PREFIX = "step."


def memo_entries(status: RunStatus) -> dict[str, Any]:
    """The whole status as memo entries (JSON-able)."""
    out: dict[str, Any] = {MEMO_KEY: run_memo_entry(status)}
    for step in status.steps:
        out[STEP_MEMO_PREFIX + step.id] = step_memo_entry(step)
    return out


def run_memo_entry(status: RunStatus) -> dict[str, Any]:
    """The run-level memo entry: every field but the steps, plus `step_ids` in order."""
    run = status.model_dump(mode="json", exclude_none=True, exclude={"steps"})
    run["step_ids"] = [step.id for step in status.steps]
    return run


def step_memo_entry(step: StepStatus) -> dict[str, Any]:
    """One step's memo entry (under `STEP_MEMO_PREFIX + step.id`)."""
    return step.model_dump(mode="json", exclude_none=True)


def status_from_memo(memo: Mapping[str, Any]) -> RunStatus | None:
    """Reassemble a RunStatus from memo entries (also reads a status memo in one piece)."""
    run = memo.get(MEMO_KEY)
    if not isinstance(run, dict):
        return None
    steps = {step["id"]: step for step in run.get("steps", []) if isinstance(step, dict)}
    for key, value in memo.items():
        if key.startswith(STEP_MEMO_PREFIX) and isinstance(value, dict):
            steps[key[len(STEP_MEMO_PREFIX) :]] = value
    order = run.get("step_ids") or list(steps)
    fields = {k: v for k, v in run.items() if k not in ("steps", "step_ids")}
    return RunStatus.model_validate({**fields, "steps": [steps[i] for i in order if i in steps]})

"""Request and response models of the HTTP API.

Table models stay in `shipflow.activities.core.tables`; what the API shows of them is a `...Public` model,
so a column added to a table never leaks into responses by accident. Run status reuses
`shipflow.workflows.status.RunStatus`, the same shape the workflow query and memo have.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import SQLModel

from shipflow.activities.core.tables import FlowBase
from shipflow.workflows.spec import FlowSpec, step_body, step_kind
from shipflow.workflows.status import RunStatus, RunSummary


class FlowPublic(FlowBase):
    """A flow as listed: its identity and what a caller needs to start a run."""

    created_at: datetime
    updated_at: datetime
    steps: list[str] = Field(description="ids of the flow's actions, in plan order")
    triggers: list[dict[str, Any]] = []
    args: dict[str, dict[str, Any]] = Field(
        {}, description="declared arguments: {name: {default, description}}"
    )


class FlowApplied(FlowPublic):
    """The answer to `POST /flows`: the flow, and whether this apply created or changed it."""

    created: bool = Field(description="the flow did not exist before")
    changed: bool = Field(description="a new version was stored (false: same text as applied)")


class FlowDetail(FlowPublic):
    """A flow with its current source (as applied) and its normalised spec."""

    source: str
    spec: dict[str, Any]


class FlowVersionPublic(SQLModel):
    version: int
    created_at: datetime


class RunCreate(BaseModel):
    """Body of `POST /flows/{name}/runs`."""

    model_config = ConfigDict(extra="forbid")

    args: dict[str, str | int | float | bool] = {}
    reason: str | None = Field(None, max_length=2000)


class RunAccepted(BaseModel):
    """A run was started (202) or asked to stop: where to follow it."""

    run_id: str
    status_url: str
    ui_url: str


class RunPublic(RunSummary):
    """One row of the runs index (`GET /runs`): the run's summary, how it was started, and
    where to see it in the Temporal Web UI."""

    args: dict[str, Any] = {}
    trigger: str
    created_at: datetime
    ui_url: str = ""


class Stuck(BaseModel):
    """A run that cannot make progress: its workflow task keeps failing (a bug or a
    non-deterministic change in the workflow code). Only terminating it ends it."""

    reason: str = Field(description="the last workflow task failure, as the worker reported it")
    attempts: int = Field(description="how often the workflow task was tried")
    since: datetime | None = Field(None, description="when the failing task was first scheduled")


class RunDetail(RunStatus):
    """`GET /runs/{id}`: the run's status (from its memo) plus links and trigger."""

    ui_url: str
    trigger: str | None = None
    stuck: Stuck | None = Field(None, description="set while the run cannot make progress")


class TerminateRequest(BaseModel):
    """Body of `POST /runs/{id}/terminate` (optional)."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(None, max_length=2000)


class ApproveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    step: str = Field(min_length=1)
    comment: str | None = Field(None, max_length=2000)


class RejectRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    step: str | None = Field(None, description="default: the one step that waits")
    comment: str | None = Field(None, max_length=2000)


class Health(BaseModel):
    status: str
    checks: dict[str, str]


def action_ids(spec: FlowSpec) -> list[str]:
    """Ids of every action of a flow, depth first as written (groups have no id)."""
    out: list[str] = []

    def walk(steps: list[Any]) -> None:
        for step in steps:
            body = step_body(step)
            if step_kind(step) in ("parallel", "sequence"):
                walk(body)
            else:
                out.append(body.id)

    walk(spec.steps)
    return out


def flow_summary(spec: FlowSpec) -> dict[str, Any]:
    """The parts of a spec that FlowPublic shows besides the table columns."""
    return {
        "steps": action_ids(spec),
        "triggers": [t.model_dump(mode="json", by_alias=True) for t in spec.triggers],
        "args": {k: v.model_dump(mode="json") for k, v in spec.args.items()},
    }

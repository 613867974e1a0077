"""Input, result and update models of `ReleaseWorkflow` (see `shipflow.workflows.release`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from shipflow.workflows.plan import Plan
from shipflow.workflows.status import RunStatus


class ReleaseInput(BaseModel):
    run_id: str
    plan: Plan
    reason: str | None = None
    triggered_by: str | None = None
    trigger: str = "api"
    record_start: bool = Field(False, description="write the runs index at start (schedules)")
    skip: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="step id -> output of an earlier run, not run again"
    )


class ReleaseResult(BaseModel):
    status: RunStatus


class ApproveInput(BaseModel):
    step: str
    comment: str | None = None
    by: str | None = None


class RejectInput(BaseModel):
    step: str | None = Field(None, description="default: the one step that waits")
    comment: str | None = None
    by: str | None = None

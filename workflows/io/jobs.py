"""Inputs and results of the job activities: `migrate` steps and `undo: {command}`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from shipflow.workflows.io.common import StepContext

RUN_JOB = "job.run"


class JobInput(BaseModel):
    context: StepContext
    target: dict[str, Any]
    command: list[str]
    image: str | None = None
    env: dict[str, str] = {}
    cwd: str | None = None
    service_account: str | None = None
    timeout_s: float | None = None
    retries: int = 0
    purpose: str = "migrate"
    resume: dict[str, Any] | None = Field(
        None, description="progress the previous execution heartbeated before its worker was lost"
    )
    env_from: list[str] = Field([], description="groups named by the step")
    tags: list[str] = Field([], description="the step's and the flow's tags: select groups")
    env_order: list[str] = Field([], description="the flow's group precedence")


class JobOutput(BaseModel):
    exit_code: int
    output: str
    duration_s: float
    groups: dict[str, int] = Field({}, description="the group versions the command got")

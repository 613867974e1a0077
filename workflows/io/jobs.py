"""Inputs and results of the job activities: `migrate` steps and `undo: {command}`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer

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
    groups: dict[str, int] | None = Field(
        None, description="exact group versions to use (an undo command: those its step got)"
    )


class JobOutput(BaseModel):
    exit_code: int
    output: str
    duration_s: float
    groups: dict[str, int] = Field({}, description="the group versions the command got")

    @model_serializer(mode="wrap")
    def _without_empty_groups(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _drop_empty_groups(handler(self))


def _drop_empty_groups(data: dict[str, Any]) -> dict[str, Any]:
    """A step that got no groups shows no `groups` in its output (as before groups)."""
    return {k: v for k, v in data.items() if not (k.endswith("groups") and not v)}

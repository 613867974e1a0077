"""Inputs and results of the backup activities: `backup` steps and `undo: {restore}`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from shipflow.workflows.io.common import StepContext

CREATE = "backup.create"
RESTORE = "backup.restore"


class BackupInput(BaseModel):
    context: StepContext
    database: str
    to: str
    endpoint: str | None = None
    keep: int | None = None
    sse: str | None = None
    storage_class: str | None = None
    resume: dict[str, Any] | None = Field(
        None, description="progress the previous execution heartbeated before its worker was lost"
    )


class BackupOutput(BaseModel):
    key: str
    url: str
    size: int
    sha256: str
    duration_s: float


class RestoreInput(BaseModel):
    context: StepContext
    database: str
    url: str
    endpoint: str | None = None
    size: int | None = None
    sha256: str | None = None
    owners: Literal["keep", "drop"] = Field(
        "keep",
        description="PostgreSQL: restore the dump's owners and grants (keep) or give every "
        "object to the restoring user without grants (drop)",
    )
    resume: dict[str, Any] | None = Field(
        None, description="progress the previous execution heartbeated before its worker was lost"
    )


class RestoreOutput(BaseModel):
    key: str
    size: int
    duration_s: float

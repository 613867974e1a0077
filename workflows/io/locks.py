"""Inputs and results of the stage-lock activities (concurrency per stage)."""

from __future__ import annotations

from pydantic import BaseModel

ACQUIRE = "lock.acquire"
CLOSED_RUNS = "lock.closed_runs"


class AcquireInput(BaseModel):
    stage: str
    run_id: str
    policy: str


class AcquireOutput(BaseModel):
    granted: bool
    refused: bool = False
    position: int = 0
    holder: str | None = None


class ClosedRunsInput(BaseModel):
    run_ids: list[str]


class ClosedRunsOutput(BaseModel):
    closed: list[str]

"""Inputs and results of the record activities: the release records and the runs index."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

RECORD_RELEASE = "records.release"
RECORD_RUN = "records.run"


class ReleaseRecordInput(BaseModel):
    run_id: str
    flow: str
    stage: str
    service: str
    image: str
    previous_image: str | None
    step_id: str
    kind: str = "deploy"


class RunRecordInput(BaseModel):
    run_id: str
    flow: str
    stage: str
    state: str
    ended_at: datetime | None = None
    error: str | None = None
    flow_version: int = 1
    args: dict[str, str] = {}
    reason: str | None = None
    triggered_by: str | None = None
    trigger: str = "schedule"


class RecordOutput(BaseModel):
    ok: bool = True

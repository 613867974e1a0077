"""Inputs and results of the record activities: the release records and the runs index."""

from __future__ import annotations

from pydantic import BaseModel

from shipflow.workflows.status import RunSummary

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


class RunRecordInput(RunSummary):
    """What the runs index gets from a run: its summary and how it was started.

    The payload keeps the shape it always had (recorded histories hold it): the summary's
    fields plus `trigger`.
    """

    trigger: str = "schedule"

    @classmethod
    def of(cls, status: RunSummary, *, trigger: str) -> RunRecordInput:
        return cls(**status.summary(), trigger=trigger)


class RecordOutput(BaseModel):
    ok: bool = True

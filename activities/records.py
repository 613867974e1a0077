"""Record activities: the runs index and the release records, written from the worker.

Written by activities so that a record is as durable as the run that made it: a crash
between the step and its record just retries the record.
"""

from __future__ import annotations

from sqlalchemy import Engine
from sqlmodel import Session, select
from temporalio import activity

from shipflow.activities.core.tables import ReleaseRecord, Run
from shipflow.workflows.io.records import RECORD_RUN, RecordOutput, RunRecordInput


class RecordActivities:
    """Given the database engine, keeps the SQL mirror of runs up to date."""

    def __init__(self, engine: Engine):
        self._engine = engine

    @activity.defn(name=RECORD_RUN)
    def record_run(self, input: RunRecordInput) -> RecordOutput:
        with Session(self._engine) as session:
            run = session.get(Run, input.run_id)
            if run is None:
                # A run nobody recorded at start (a cron fire): record all it knows.
                run = Run(
                    run_id=input.run_id,
                    flow=input.flow,
                    stage=input.stage,
                    flow_version=input.flow_version,
                    args=input.args,
                    reason=input.reason,
                    triggered_by=input.triggered_by,
                    trigger=input.trigger,
                )
            run.state = input.state
            run.ended_at = input.ended_at
            run.error = input.error
            session.add(run)
            session.commit()
        return RecordOutput()


def last_release(engine: Engine, stage: str, service: str) -> ReleaseRecord | None:
    """The newest record of what `service` got in `stage`."""
    with Session(engine) as session:
        statement = (
            select(ReleaseRecord)
            .where(ReleaseRecord.stage == stage, ReleaseRecord.service == service)
            .order_by(ReleaseRecord.created_at.desc(), ReleaseRecord.id.desc())  # type: ignore[attr-defined, union-attr]
            .limit(1)
        )
        return session.exec(statement).first()


def write_release(engine: Engine, record: ReleaseRecord) -> None:
    with Session(engine) as session:
        session.add(record)
        session.commit()

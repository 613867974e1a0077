"""Record activities: the runs index and the release records, written from the worker.

Written by activities so that a record is as durable as the run that made it: a crash
between the step and its record just retries the record.
"""

from __future__ import annotations

from sqlalchemy import Engine
from sqlmodel import Session, select
from temporalio import activity

from shipflow.activities.core.tables import ReleaseRecord, Run, utcnow
from shipflow.workflows.io.records import RECORD_RUN, RecordOutput, RunRecordInput
from shipflow.workflows.status import RunState


class RecordActivities:
    """Given the database engine, keeps the SQL mirror of runs up to date."""

    def __init__(self, engine: Engine):
        self._engine = engine

    @activity.defn(name=RECORD_RUN)
    def record_run(self, input: RunRecordInput) -> RecordOutput:
        """Write the run's state into its row (the row itself for a run nobody recorded at
        start, such as a cron fire).

        A run records its state changes while it goes on and its final state at the end;
        two of those records can be in flight at once, so a final row never goes back to a
        live state: the final record is the last word.
        """
        with Session(self._engine) as session:
            run = session.get(Run, input.run_id)
            if run is None:
                run = Run(**input.summary(), trigger=input.trigger)
            elif RunState(run.state).is_final and not input.state.is_final:
                return RecordOutput()
            run.state = input.state
            run.ended_at = input.ended_at
            run.error = input.error
            run.recorded_at = utcnow()
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

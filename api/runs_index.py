"""Writing the SQL runs index from the API: one way for every route that starts runs.

The row is written before the workflow starts, so no run can exist in Temporal without
a record; if the start fails, the row says so. Writes are idempotent per run id, because
the same commit (webhooks) or the same fire (schedules) maps to the same run. A row left
`pending` by an API that died between the two is settled by `shipflow.api.pending_runs`.
"""

from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from shipflow.activities.core.tables import Run, utcnow
from shipflow.workflows.status import RunState

#: How a failed start begins its error, so a retried delivery can recognise and redo it.
START_FAILED = "could not start the run on Temporal"


def insert_run(engine: Engine, run: Run) -> None:
    """Add the row unless it exists.

    A row left by a start that failed is reset to pending: whoever calls again (a
    provider retrying the delivery) is about to start the run after all.
    """
    with Session(engine) as session:
        existing = session.get(Run, run.run_id)
        if existing is not None:
            if existing.state == "failed" and (existing.error or "").startswith(START_FAILED):
                existing.state, existing.error, existing.ended_at = RunState.PENDING, None, None
                session.add(existing)
                session.commit()
            return
        session.add(run)
        try:
            session.commit()
        except IntegrityError:  # the run recorded itself first
            session.rollback()


def mark_start_failed(engine: Engine, run_id: str, error: BaseException) -> str:
    """Record that the workflow could not be started; returns the message recorded."""
    message = f"{START_FAILED}: {type(error).__name__}: {error}"
    with Session(engine) as session:
        run = session.get(Run, run_id)
        if run is not None and run.state == "pending":
            run.state, run.error, run.ended_at = RunState.FAILED, message, utcnow()
            session.add(run)
            session.commit()
    return message

"""Reconcile runs left `pending` in the runs index.

A route writes the run's row (`pending`) before it starts the workflow, so no run can
exist in Temporal without a record. If the API dies between the two, the row stays
`pending` for ever. The reconciler looks at rows that have been `pending` for longer
than a grace period (a start in progress takes milliseconds): when Temporal has the
workflow, the row takes its real state; when it does not, the run was never started
and the row is marked `failed` with a reason that says so. The error starts like a
failed start's, so a redelivered webhook for the same commit starts the run after all
(see `shipflow.api.runs_index.insert_run`).

It runs once when the API starts and then every `pending_reconcile_interval_s`. Every
write is conditional on the row still being `pending`, so it never overwrites what the
workflow recorded itself, and two API instances reconciling at once do no harm.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel
from sqlalchemy import Engine, update
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from shipflow.activities.core.starter import read_status
from shipflow.activities.core.tables import Run, utcnow
from shipflow.api.runs_index import START_FAILED
from shipflow.workflows.status import RunStatus

log = logging.getLogger("shipflow.api.pending")

#: How long one Temporal lookup may take before the row is left for the next round.
LOOKUP_TIMEOUT_S = 10.0


class Reconciled(BaseModel):
    """What one pass did, by run id."""

    adopted: dict[str, str] = {}  # run id -> the state Temporal has
    failed: list[str] = []
    skipped: list[str] = []  # Temporal did not answer; tried again next time


def never_started_reason(age_s: float) -> str:
    return (
        f"{START_FAILED}: the API stopped after recording the run and before starting it "
        f"(found pending for {age_s:.0f}s with no workflow)"
    )


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def stale_pending(engine: Engine, grace_s: float, now: datetime | None = None) -> list[Run]:
    """Rows `pending` for longer than `grace_s`, oldest first."""
    cutoff = (now or utcnow()) - timedelta(seconds=grace_s)
    with Session(engine) as session:
        rows = session.exec(
            select(Run).where(Run.state == "pending").order_by(col(Run.created_at))
        ).all()
        return [row for row in rows if _aware(row.created_at) <= cutoff]


def _save_if_pending(
    engine: Engine, run_id: str, state: str, error: str | None, ended_at: datetime | None
) -> bool:
    with Session(engine) as session:
        result = session.exec(  # type: ignore[call-overload]
            update(Run)
            .where(col(Run.run_id) == run_id, col(Run.state) == "pending")
            .values(state=state, error=error, ended_at=ended_at)
        )
        session.commit()
        return bool(result.rowcount)


async def _lookup(client: Client, run_id: str) -> RunStatus | None:
    """The run's status, None when Temporal has no such workflow.

    Raises:
        RPCError, TimeoutError: Temporal did not answer (the row is left for later).
        LookupError: a workflow with that id exists but shows no shipflow status (left
            as it is: it was started, so "never started" would be wrong).
    """
    try:
        return await asyncio.wait_for(read_status(client, run_id), LOOKUP_TIMEOUT_S)
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            return None
        raise


async def reconcile_pending(engine: Engine, client: Client, grace_s: float) -> Reconciled:
    """One pass over the stale `pending` rows."""
    done = Reconciled()
    now = utcnow()
    for row in await run_in_threadpool(stale_pending, engine, grace_s, now):
        try:
            found = await _lookup(client, row.run_id)
        except (RPCError, TimeoutError, LookupError) as e:
            log.warning("pending run %s: no status from Temporal (%s); later", row.run_id, e)
            done.skipped.append(row.run_id)
            continue
        if found is None:
            age = (now - _aware(row.created_at)).total_seconds()
            reason = never_started_reason(age)
            if await run_in_threadpool(_save_if_pending, engine, row.run_id, "failed", reason, now):
                log.warning("run %s was never started: marked failed", row.run_id)
                done.failed.append(row.run_id)
            continue
        state = found.state.value
        ended = found.ended_at if found.state.is_final else None
        if await run_in_threadpool(_save_if_pending, engine, row.run_id, state, found.error, ended):
            log.info("pending run %s is %s on Temporal", row.run_id, state)
            done.adopted[row.run_id] = state
    return done


async def reconcile_forever(
    engine: Engine, client: Client, *, grace_s: float, interval_s: float
) -> None:
    """Reconcile now, then every `interval_s`, until cancelled (the API's lifespan ends)."""
    while True:
        try:
            await reconcile_pending(engine, client, grace_s)
        except asyncio.CancelledError:
            raise
        except Exception:  # a database hiccup must not end the loop
            log.exception("reconciling pending runs failed; trying again later")
        await asyncio.sleep(interval_s)

"""`GET /stages`: what runs where, the console's home page.

Per stage: every service with the image it runs now (the newest release record: deploy,
promote or an undo), since when, which run put it there and who started that run; the
flows that release into the stage (with their declared args, for the start form); the
stage's live runs (running, waiting, queued) with their progress; and its last runs.

Read from the SQL tables (release records, runs index), with one memo read per live run
for its progress, so the page stays fast with thousands of past runs.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool
from temporalio.client import Client

from shipflow.activities.core.settings import Settings
from shipflow.activities.core.starter import read_status, ui_link
from shipflow.activities.core.tables import Flow, ReleaseRecord, Run
from shipflow.api.deps import EngineDep, SettingsDep, TemporalDep, Viewer
from shipflow.api.errors import error_responses
from shipflow.api.schemas import RunPublic
from shipflow.workflows.status import RunState, StepState

router = APIRouter(
    prefix="/stages", tags=["stages"], responses=error_responses(400, 401, 403, 422)
)

_FINAL = [s.value for s in RunState if s.is_final]
_DONE_STEPS = {StepState.SUCCEEDED, StepState.SKIPPED, StepState.COMPENSATED}


class ServiceNow(BaseModel):
    service: str
    image: str
    previous_image: str | None = None
    since: datetime
    run_id: str
    flow: str
    step: str
    kind: str = Field(description="deploy | promote | undo: how the image got there")
    triggered_by: str | None = None


class FlowBrief(BaseModel):
    name: str
    version: int
    args: dict[str, dict[str, Any]] = {}


class LiveRun(RunPublic):
    steps_done: int = 0
    steps_total: int = 0
    current: list[str] = Field([], description="steps running or waiting now")
    queue_position: int | None = None


class StageView(BaseModel):
    stage: str
    services: list[ServiceNow]
    flows: list[FlowBrief]
    live: list[LiveRun]
    recent: list[RunPublic]


def _read(engine: Engine, recent: int) -> tuple[list[Flow], list[ReleaseRecord], dict[str, Run], list[Run], dict[str, list[Run]]]:
    with Session(engine) as session:
        flows = list(session.exec(select(Flow).order_by(col(Flow.name))).all())
        newest = (
            select(func.max(ReleaseRecord.id))
            .group_by(col(ReleaseRecord.stage), col(ReleaseRecord.service))
            .scalar_subquery()
        )
        records = list(
            session.exec(select(ReleaseRecord).where(col(ReleaseRecord.id).in_(newest))).all()
        )
        live = list(
            session.exec(
                select(Run)
                .where(col(Run.state).notin_(_FINAL))
                .order_by(col(Run.created_at).desc())
                .limit(100)
            ).all()
        )
        stages = sorted({f.stage for f in flows} | {r.stage for r in records} | {r.stage for r in live})
        last: dict[str, list[Run]] = {}
        for stage in stages:
            last[stage] = list(
                session.exec(
                    select(Run)
                    .where(Run.stage == stage)
                    .order_by(col(Run.created_at).desc())
                    .limit(recent)
                ).all()
            )
        ids = {r.run_id for r in records}
        runs = {
            r.run_id: r for r in session.exec(select(Run).where(col(Run.run_id).in_(ids))).all()
        } if ids else {}
    return flows, records, runs, live, last


async def _live(client: Client, row: Run, settings: Settings) -> LiveRun | None:
    out = LiveRun.model_validate(row, from_attributes=True)
    out.ui_url = ui_link(settings, row.run_id)
    try:
        found = await asyncio.wait_for(read_status(client, row.run_id), 3.0)
    except Exception:  # the index row is still worth showing
        return out
    if found.state.is_final:
        return None
    out.state = found.state
    out.steps_total = len(found.steps)
    out.steps_done = sum(1 for s in found.steps if s.state in _DONE_STEPS)
    out.current = [
        s.id for s in found.steps if s.state in (StepState.RUNNING, StepState.RETRYING, StepState.WAITING, StepState.COMPENSATING)
    ]
    out.queue_position = found.queue_position
    return out


@router.get("", response_model=list[StageView])
async def list_stages(
    _caller: Viewer,
    settings: SettingsDep,
    engine: EngineDep,
    client: TemporalDep,
    recent: Annotated[int, Query(ge=1, le=100)] = 10,
) -> list[StageView]:
    """Every stage: its services now, its flows, its live runs and its last `recent` runs."""
    flows, records, runs, live_rows, last = await run_in_threadpool(_read, engine, recent)
    live = [
        found
        for found in await asyncio.gather(*(_live(client, row, settings) for row in live_rows))
        if found is not None
    ]
    out: list[StageView] = []
    for stage, recent_rows in last.items():
        services = [
            ServiceNow(
                service=r.service,
                image=r.image,
                previous_image=r.previous_image,
                since=r.created_at,
                run_id=r.run_id,
                flow=r.flow,
                step=r.step_id,
                kind=r.kind,
                triggered_by=runs[r.run_id].triggered_by if r.run_id in runs else None,
            )
            for r in sorted(records, key=lambda r: r.service)
            if r.stage == stage
        ]
        out.append(
            StageView(
                stage=stage,
                services=services,
                flows=[
                    FlowBrief(
                        name=f.name,
                        version=f.version,
                        args=f.spec.get("args", {}) if isinstance(f.spec, dict) else {},
                    )
                    for f in flows
                    if f.stage == stage
                ],
                live=[r for r in live if r.stage == stage],
                recent=[_public(r, settings) for r in recent_rows],
            )
        )
    return out


def _public(row: Run, settings: Settings) -> RunPublic:
    public = RunPublic.model_validate(row, from_attributes=True)
    public.ui_url = ui_link(settings, row.run_id)
    return public

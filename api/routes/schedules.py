"""`/flows/{name}/schedules`: a flow's cron schedules, read from Temporal; pause, unpause, fire.

The schedules a flow should have come from its current spec (its `- cron:` triggers),
and each is then described on Temporal directly: describing is strongly consistent,
while listing schedules is not, so a schedule just created is shown at once.
A schedule is named by its full id (`shipflow-web-0`) or by its suffix (`0`, `nightly`).
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Request, status
from pydantic import BaseModel, Field
from sqlalchemy import Engine
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool
from temporalio.client import (
    Client,
    ScheduleActionExecutionStartWorkflow,
    ScheduleDescription,
    ScheduleHandle,
    ScheduleOverlapPolicy,
)
from temporalio.service import RPCError, RPCStatusCode

from shipflow.activities.core.starter import ui_link
from shipflow.activities.core.tables import Flow, Run
from shipflow.api.deps import Admin, EngineDep, SettingsDep, TemporalDep, Viewer
from shipflow.api.errors import error_responses
from shipflow.api.runs_index import insert_run
from shipflow.api.schedules import PREFIX, built_from, cron_triggers, schedule_id
from shipflow.api.temporal_errors import temporal_unavailable
from shipflow.workflows.release import MEMO_KEY
from shipflow.workflows.spec import FlowError, FlowSpec, load_flow_text, parse_flow

router = APIRouter(
    prefix="/flows",
    tags=["schedules"],
    responses=error_responses(400, 401, 403, 404, 409, 422, 503),
)

#: How long `trigger` waits for Temporal to report the run it started.
TRIGGER_WAIT_S = 10.0


class ScheduleAction(BaseModel):
    scheduled_at: datetime
    started_at: datetime
    run_id: str


class SchedulePublic(BaseModel):
    """One cron trigger's Temporal Schedule, as Temporal describes it now."""

    id: str
    trigger: int = Field(description="index of the cron trigger in the flow's `triggers`")
    cron: str
    timezone: str
    exists: bool = Field(True, description="false until the flow's schedules are synced")
    paused: bool = False
    note: str | None = None
    next_action_times: list[datetime] = []
    recent_actions: list[ScheduleAction] = []
    running: list[str] = Field([], description="run ids the schedule started that still run")


class ScheduleNote(BaseModel):
    note: str | None = Field(None, max_length=500)


class ScheduleTriggered(BaseModel):
    schedule_id: str
    run_id: str | None = Field(description="None if Temporal did not report the run in time")
    status_url: str | None = None
    ui_url: str | None = None


# ------------------------------------------------------------------ lookups


def _load_flow(engine: Engine, name: str) -> Flow | None:
    with Session(engine) as session:
        return session.get(Flow, name)


def _spec(row: Flow) -> FlowSpec:
    try:
        return parse_flow(row.spec)
    except FlowError:
        return load_flow_text(row.source)


async def _flow_spec(engine: Engine, name: str) -> FlowSpec:
    row = await run_in_threadpool(_load_flow, engine, name)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no flow named {name!r}")
    try:
        return _spec(row)
    except FlowError as e:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"flow {name!r} no longer parses: {e}"
        ) from None


def _resolve(spec: FlowSpec, name: str, given: str) -> tuple[int, str]:
    """(trigger index, full schedule id) for `shipflow-<flow>-<x>` or just `<x>`.

    Raises:
        HTTPException: 404 when the flow has no such cron trigger.
    """
    full = given if given.startswith(f"{PREFIX}{name}-") else f"{PREFIX}{name}-{given}"
    for index, trigger in cron_triggers(spec):
        if schedule_id(name, index, trigger) == full:
            return index, full
    known = ", ".join(schedule_id(name, i, t) for i, t in cron_triggers(spec)) or "none"
    raise HTTPException(
        status.HTTP_404_NOT_FOUND, f"flow {name!r} has no schedule {given!r} (has: {known})"
    )


async def _describe(client: Client, sid: str) -> ScheduleDescription | None:
    try:
        return await client.get_schedule_handle(sid).describe()
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            return None
        raise temporal_unavailable(e) from None


async def _existing(client: Client, sid: str) -> tuple[ScheduleHandle, ScheduleDescription]:
    description = await _describe(client, sid)
    if description is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"schedule {sid!r} does not exist on Temporal; apply the flow again to create it",
        )
    return client.get_schedule_handle(sid), description


async def _public(
    client: Client, sid: str, index: int, spec: FlowSpec, found: ScheduleDescription | None
) -> SchedulePublic:
    trigger = dict(cron_triggers(spec))[index]
    if found is None:
        return SchedulePublic(
            id=sid, trigger=index, cron=trigger.cron, timezone=trigger.timezone, exists=False
        )
    recorded = await built_from(client, found)
    recent = [
        ScheduleAction(
            scheduled_at=a.scheduled_at, started_at=a.started_at, run_id=a.action.workflow_id
        )
        for a in found.info.recent_actions
        if isinstance(a.action, ScheduleActionExecutionStartWorkflow)
    ]
    return SchedulePublic(
        id=sid,
        trigger=index,
        cron=str(recorded.get("cron", trigger.cron)),
        timezone=str(recorded.get("timezone", found.schedule.spec.time_zone_name or "UTC")),
        paused=found.schedule.state.paused,
        note=found.schedule.state.note,
        next_action_times=list(found.info.next_action_times),
        recent_actions=recent,
        running=[
            a.workflow_id
            for a in found.info.running_actions
            if isinstance(a, ScheduleActionExecutionStartWorkflow)
        ],
    )


def _started_ids(description: ScheduleDescription) -> set[str]:
    ids = {
        a.action.workflow_id
        for a in description.info.recent_actions
        if isinstance(a.action, ScheduleActionExecutionStartWorkflow)
    }
    ids |= {
        a.workflow_id
        for a in description.info.running_actions
        if isinstance(a, ScheduleActionExecutionStartWorkflow)
    }
    return ids


async def _initial_status(client: Client, description: ScheduleDescription) -> dict[str, Any]:
    """The RunStatus the schedule's action puts in each run's memo (stage, version, args)."""
    memo = getattr(description.schedule.action, "memo", None) or {}
    raw = memo.get(MEMO_KEY)
    if raw is None:
        return {}
    # The action's memo is raw payloads, encrypted when keys are set: decode through the codec.
    value = raw if isinstance(raw, dict) else (await client.data_converter.decode([raw]))[0]
    return value if isinstance(value, dict) else {}


# ------------------------------------------------------------------ routes


@router.get("/{name}/schedules", response_model=list[SchedulePublic])
async def list_schedules(
    name: str, _caller: Viewer, engine: EngineDep, client: TemporalDep
) -> list[SchedulePublic]:
    """The flow's cron schedules: cron, zone, paused, next fire times, recent runs."""
    spec = await _flow_spec(engine, name)
    out: list[SchedulePublic] = []
    for index, trigger in cron_triggers(spec):
        sid = schedule_id(name, index, trigger)
        out.append(await _public(client, sid, index, spec, await _describe(client, sid)))
    return out


async def _set_paused(
    name: str, sid: str, paused: bool, note: str | None, by: str, engine: Engine, client: Client
) -> SchedulePublic:
    spec = await _flow_spec(engine, name)
    index, full = _resolve(spec, name, sid)
    handle, _ = await _existing(client, full)
    text = note or f"{'paused' if paused else 'unpaused'} by {by}"
    if paused:
        await handle.pause(note=text)
    else:
        await handle.unpause(note=text)
    return await _public(client, full, index, spec, await _describe(client, full))


@router.post("/{name}/schedules/{sid}/pause", response_model=SchedulePublic)
async def pause_schedule(
    name: str,
    sid: str,
    caller: Admin,
    engine: EngineDep,
    client: TemporalDep,
    body: Annotated[ScheduleNote | None, Body()] = None,
) -> SchedulePublic:
    """Stop the schedule from firing (until unpaused; a re-apply keeps it paused)."""
    note = body.note if body else None
    return await _set_paused(name, sid, True, note, caller.name, engine, client)


@router.post("/{name}/schedules/{sid}/unpause", response_model=SchedulePublic)
async def unpause_schedule(
    name: str,
    sid: str,
    caller: Admin,
    engine: EngineDep,
    client: TemporalDep,
    body: Annotated[ScheduleNote | None, Body()] = None,
) -> SchedulePublic:
    note = body.note if body else None
    return await _set_paused(name, sid, False, note, caller.name, engine, client)


@router.post(
    "/{name}/schedules/{sid}/trigger",
    response_model=ScheduleTriggered,
    status_code=status.HTTP_202_ACCEPTED,
)
async def trigger_schedule(
    name: str,
    sid: str,
    request: Request,
    caller: Admin,
    settings: SettingsDep,
    engine: EngineDep,
    client: TemporalDep,
) -> ScheduleTriggered:
    """Fire the schedule now: a normal run of the scheduled plan, listed in `GET /runs`.

    It starts even if an earlier scheduled run still runs (overlap allowed for this one).
    """
    spec = await _flow_spec(engine, name)
    _, full = _resolve(spec, name, sid)
    handle, before = await _existing(client, full)
    seen = _started_ids(before)
    await handle.trigger(overlap=ScheduleOverlapPolicy.ALLOW_ALL)
    run_id = await _new_run(client, full, seen)
    if run_id is None:
        return ScheduleTriggered(schedule_id=full, run_id=None)
    initial = await _initial_status(client, before)
    record = Run.model_validate(
        {
            "run_id": run_id,
            "flow": name,
            "stage": str(initial.get("stage", spec.stage)),
            "flow_version": int(initial.get("flow_version", 1)),
            "reason": f"schedule {full} triggered by {caller.name}",
            "triggered_by": caller.name,
            "trigger": "schedule",
            "args": dict(initial.get("args", {})),
        }
    )
    await run_in_threadpool(insert_run, engine, record)
    return ScheduleTriggered(
        schedule_id=full,
        run_id=run_id,
        status_url=_status_url(request, run_id),
        ui_url=ui_link(settings, run_id),
    )


def _status_url(request: Request, run_id: str) -> str:
    try:
        return str(request.url_for("get_run", run_id=run_id))
    except Exception:  # the runs router is not mounted (a reduced app)
        return str(request.base_url) + f"runs/{run_id}"


async def _new_run(client: Client, sid: str, seen: set[str]) -> str | None:
    """The id of the run a trigger started: the one Temporal reports that was not there before."""
    deadline = time.monotonic() + TRIGGER_WAIT_S
    while time.monotonic() < deadline:
        found = await _describe(client, sid)
        if found is not None:
            new = sorted(_started_ids(found) - seen)
            if new:
                return new[-1]
        await asyncio.sleep(0.1)
    return None

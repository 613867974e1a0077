"""`/runs`: list, read, cancel, terminate, approve and reject release runs.

A run's truth is Temporal: `GET /runs/{id}` reads the run's memo (so it answers with no
worker up). Listing reads the SQL runs index alone, which each run keeps up to date as its
state changes (see `shipflow.api.runs_listing` for paging and the one bounded fallback).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Query, Request, Response, status
from sqlalchemy import Engine
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool
from temporalio.client import (
    Client,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from shipflow.activities.core.settings import Settings
from shipflow.activities.core.starter import read_status, ui_link
from shipflow.activities.core.tables import Run, utcnow
from shipflow.api.deps import Admin, EngineDep, Operator, SettingsDep, TemporalDep, Viewer
from shipflow.api.errors import error_responses
from shipflow.api.runs_listing import (
    BadCursor,
    LegacyRows,
    RunFilter,
    decode_cursor,
    encode_cursor,
    save_refreshed,
    select_page,
)
from shipflow.api.schemas import (
    ApproveRequest,
    RejectRequest,
    RunAccepted,
    RunDetail,
    RunPublic,
    Stuck,
    TerminateRequest,
)
from shipflow.api.stuck import stuck
from shipflow.api.temporal_errors import temporal_timeout, temporal_unavailable
from shipflow.workflows.release import ApproveInput, RejectInput, ReleaseWorkflow
from shipflow.workflows.status import RunState, RunStatus, StepStatus

log = logging.getLogger("shipflow.api")

router = APIRouter(
    prefix="/runs", tags=["runs"], responses=error_responses(400, 401, 403, 404, 409, 422, 503)
)

#: How long an approve/reject waits for a worker to take the update.
UPDATE_TIMEOUT = timedelta(seconds=30)
#: The SDK retries an unreachable server for ~10 s; a request should fail sooner.
STATUS_TIMEOUT_S = 5.0
#: Listing shows the index as it is when Temporal is slow to refresh a legacy row.
LIST_REFRESH_TIMEOUT_S = 3.0
_legacy = LegacyRows()
#: How a run terminated through the API is recorded (then `<caller>[: reason]`).
_TERMINATED_HERE = "terminated by "


def _not_found(run_id: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"no run {run_id!r}")


def _conflict(message: str) -> HTTPException:
    return HTTPException(status.HTTP_409_CONFLICT, message)


# ------------------------------------------------------------------ database


def _get_run(engine: Engine, run_id: str) -> Run | None:
    with Session(engine) as session:
        return session.get(Run, run_id)


def _record_termination(engine: Engine, run_id: str, why: str) -> None:
    """The index row of a terminated run: failed, with who terminated it and why."""
    with Session(engine) as session:
        run = session.get(Run, run_id)
        if run is None:
            return
        run.state, run.error, run.ended_at = RunState.FAILED, why, utcnow()
        session.add(run)
        session.commit()


def _differs(row: Run, found: RunStatus) -> bool:
    return row.state != found.state.value or row.error != found.error


# ------------------------------------------------------------------ temporal


async def _status(client: Client, run_id: str, *, strict: bool = True) -> RunStatus | None:
    """The run's status from its memo, or None when Temporal has no such shipflow run.

    With `strict=False` (listing) an unreachable Temporal also gives None: the index is
    shown as it is rather than not at all.
    """
    timeout = STATUS_TIMEOUT_S if strict else LIST_REFRESH_TIMEOUT_S
    try:
        return await asyncio.wait_for(read_status(client, run_id), timeout)
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND or not strict:
            return None
        raise temporal_unavailable(e) from None
    except TimeoutError:
        if not strict:
            return None
        raise temporal_timeout(timeout) from None
    except LookupError:
        return None


async def _live_status(client: Client, run_id: str) -> RunStatus:
    """The status of a run that must exist and must not be final (for cancel/approve/reject)."""
    found = await _status(client, run_id)
    if found is None:
        raise _not_found(run_id)
    if found.state.is_final:
        raise _conflict(
            f"run {run_id!r} has already ended ({found.state.value}): only a run that is "
            "still going can be cancelled, approved or rejected"
        )
    return found


async def _stuck(client: Client, run_id: str) -> Stuck | None:
    """Why a live run cannot make progress (see `shipflow.api.stuck`), or None; never raises, since
    this only adds to an answer that is right without it."""
    try:
        description = await asyncio.wait_for(
            client.get_workflow_handle(run_id).describe(), STATUS_TIMEOUT_S
        )
        return await asyncio.wait_for(stuck(client, run_id, description), STATUS_TIMEOUT_S)
    except (RPCError, TimeoutError):
        return None
    except Exception:  # e.g. a failure cause this SDK does not name: still answer the status
        log.warning("could not tell whether run %s is stuck", run_id, exc_info=True)
        return None


def _public(row: Run, settings: Settings) -> RunPublic:
    public = RunPublic.model_validate(row, from_attributes=True)
    public.ui_url = ui_link(settings, row.run_id)
    return public


# ------------------------------------------------------------------ routes


@router.get(
    "",
    response_model=list[RunPublic],
    responses={
        200: {
            "headers": {
                "X-Next-Cursor": {
                    "description": "present when more runs follow: pass it as `cursor`",
                    "schema": {"type": "string"},
                },
                "Link": {
                    "description": 'the next page\'s URL, `<...>; rel="next"`',
                    "schema": {"type": "string"},
                },
            }
        }
    },
)
async def list_runs(
    request: Request,
    response: Response,
    _caller: Viewer,
    settings: SettingsDep,
    engine: EngineDep,
    client: TemporalDep,
    flow: str | None = None,
    stage: str | None = None,
    state: Annotated[str | None, Query(alias="status")] = None,
    trigger: Annotated[str | None, Query(description="api, schedule, github, gitlab, ...")] = None,
    triggered_by: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[
        str | None, Query(description="X-Next-Cursor of the previous page, as it was sent")
    ] = None,
) -> list[RunPublic]:
    """Runs newest first, from the runs index (each run records its own state changes).

    When more runs match than `limit`, the response carries `X-Next-Cursor` (and a
    `Link: <...>; rel="next"`); pass it back as `cursor` for the next page.
    """
    if state is not None and state not in {s.value for s in RunState}:
        known = ", ".join(s.value for s in RunState)
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [{"loc": "status", "msg": f"unknown run state {state!r} (one of: {known})"}],
        )
    try:
        after = decode_cursor(cursor) if cursor is not None else None
    except BadCursor as e:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, [{"loc": "cursor", "msg": str(e)}]
        ) from None
    where = RunFilter(flow, stage, state, trigger, triggered_by)
    rows, more = await run_in_threadpool(select_page, engine, where, limit, after)
    if more:
        following = encode_cursor(rows[-1])
        response.headers["X-Next-Cursor"] = following
        response.headers["Link"] = (
            f'<{request.url.include_query_params(cursor=following)}>; rel="next"'
        )
    await _refresh_legacy(engine, client, rows)
    if state is not None:
        rows = [row for row in rows if row.state == state]
    return [_public(row, settings) for row in rows]


async def _refresh_legacy(engine: Engine, client: Client, rows: list[Run]) -> None:
    """The bounded fallback (see `shipflow.api.runs_listing`): refresh, in place and in the
    index, the few live rows of this page that no run has recorded a state into."""
    legacy = _legacy.pick(rows)
    if not legacy:
        return
    found = await asyncio.gather(*(_status(client, row.run_id, strict=False) for row in legacy))
    changed = [
        current
        for row, current in zip(legacy, found, strict=True)
        if current is not None and _differs(row, current)
    ]
    for row, current in zip(legacy, found, strict=True):
        if current is not None and _differs(row, current):
            row.state, row.error = current.state, current.error
            if current.state.is_final:
                row.ended_at = current.ended_at
    if changed:
        await run_in_threadpool(save_refreshed, engine, changed)


@router.get("/{run_id}", response_model=RunDetail)
async def get_run(
    run_id: str, _caller: Viewer, settings: SettingsDep, engine: EngineDep, client: TemporalDep
) -> RunDetail:
    """Run state and every step's state, attempts, error, output and timings."""
    return await run_detail(run_id, settings, engine, client)


async def run_detail(run_id: str, settings: Settings, engine: Engine, client: Client) -> RunDetail:
    """`GET /runs/{id}`'s answer (404 unknown run, 503 Temporal down), for whoever may read it."""
    found = await _status(client, run_id)
    row = await run_in_threadpool(_get_run, engine, run_id)
    if found is None:
        if row is None:
            raise _not_found(run_id)
        # Recorded, but never reached Temporal (its start failed): the row tells why.
        found = RunStatus(**{**row.summary(), "args": {k: str(v) for k, v in row.args.items()}})
    else:
        if (
            row is not None
            and (row.error or "").startswith(_TERMINATED_HERE)
            and found.state.is_final
        ):
            found.error = row.error  # terminated through shipflow: say by whom, not "outside"
        if row is not None and _differs(row, found):
            await run_in_threadpool(save_refreshed, engine, [found])
    blocked = None if found.state.is_final else await _stuck(client, run_id)
    return RunDetail(
        **found.model_dump(),
        ui_url=ui_link(settings, run_id),
        trigger=row.trigger if row is not None else None,
        stuck=blocked,
    )


@router.post("/{run_id}/cancel", response_model=RunAccepted, status_code=status.HTTP_202_ACCEPTED)
async def cancel_run(
    run_id: str, request: Request, _caller: Operator, settings: SettingsDep, client: TemporalDep
) -> RunAccepted:
    """Ask the run to stop; it compensates what it did, then ends `cancelled`/`rolled_back`.

    A stuck run (its workflow task keeps failing) cannot act on a cancel: 409 says so and
    points at terminate.
    """
    await _live_status(client, run_id)
    blocked = await _stuck(client, run_id)
    if blocked is not None:
        raise _conflict(
            f"run {run_id!r} is stuck ({blocked.reason}) and cannot carry out a cancel; "
            f"terminate it instead (POST /runs/{run_id}/terminate, `shipflow terminate "
            f"{run_id}`): that stops it at once, without compensation"
        )
    try:
        await client.get_workflow_handle(run_id).cancel()
    except RPCError as e:
        raise _conflict(f"run {run_id!r} cannot be cancelled: {e.message}") from None
    return RunAccepted(
        run_id=run_id,
        status_url=str(request.url_for("get_run", run_id=run_id)),
        ui_url=ui_link(settings, run_id),
    )


@router.post(
    "/{run_id}/terminate", response_model=RunAccepted, status_code=status.HTTP_202_ACCEPTED
)
async def terminate_run(
    run_id: str,
    request: Request,
    caller: Admin,
    settings: SettingsDep,
    engine: EngineDep,
    client: TemporalDep,
    body: Annotated[TerminateRequest | None, Body()] = None,
) -> RunAccepted:
    """Stop a run at once, without compensation: what it did stays as it is.

    For a stuck run (see `stuck` in `GET /runs/{id}`), which cannot carry out a cancel.
    Admin only, since nothing is undone. The run ends `failed`, naming who terminated it.
    """
    await _live_status(client, run_id)
    why = f"{_TERMINATED_HERE}{caller.name}"
    if body is not None and body.reason:
        why += f": {body.reason}"
    try:
        await client.get_workflow_handle(run_id).terminate(reason=why)
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            raise _conflict(f"run {run_id!r} is no longer running") from None
        raise _conflict(f"run {run_id!r} cannot be terminated: {e.message}") from None
    await run_in_threadpool(_record_termination, engine, run_id, why)
    return RunAccepted(
        run_id=run_id,
        status_url=str(request.url_for("get_run", run_id=run_id)),
        ui_url=ui_link(settings, run_id),
    )


async def _decide(client: Client, run_id: str, update: Any, decision: Any) -> StepStatus:
    """Send an approve/reject update; a validator's refusal becomes a 409 with its message."""
    await _live_status(client, run_id)
    handle = client.get_workflow_handle_for(ReleaseWorkflow.run, run_id)
    try:
        step: StepStatus = await asyncio.wait_for(
            handle.execute_update(update, decision), UPDATE_TIMEOUT.total_seconds()
        )
    except WorkflowUpdateFailedError as e:
        cause = e.cause
        message = cause.message if isinstance(cause, ApplicationError) else str(cause or e)
        raise _conflict(message) from None
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            raise _conflict(f"run {run_id!r} is no longer running: {e.message}") from None
        raise _conflict(e.message) from None
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
        raise HTTPException(
            status.HTTP_504_GATEWAY_TIMEOUT,
            f"no worker took the decision within {UPDATE_TIMEOUT.total_seconds():g}s; is a "
            "worker running? The decision may still apply when one picks the run up.",
        ) from None
    return step


@router.post("/{run_id}/approve", response_model=StepStatus, responses=error_responses(504))
async def approve_run(
    run_id: str, body: ApproveRequest, caller: Operator, client: TemporalDep
) -> StepStatus:
    """Approve a waiting `approve` step; returns that step's status."""
    decision = ApproveInput(step=body.step, comment=body.comment, by=caller.name)
    return await _decide(client, run_id, ReleaseWorkflow.approve, decision)


@router.post("/{run_id}/reject", response_model=StepStatus, responses=error_responses(504))
async def reject_run(
    run_id: str,
    caller: Operator,
    client: TemporalDep,
    body: Annotated[RejectRequest | None, Body()] = None,
) -> StepStatus:
    """Reject a waiting step (default: the one that waits); the run fails and compensates."""
    body = body or RejectRequest()
    decision = RejectInput(step=body.step, comment=body.comment, by=caller.name)
    return await _decide(client, run_id, ReleaseWorkflow.reject, decision)

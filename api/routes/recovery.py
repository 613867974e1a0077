"""`/runs/{id}/rollback` and `/runs/{id}/retry`: recovery runs, planned in `shipflow.api.recovery`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict
from sqlalchemy import Engine
from sqlmodel import Session, select
from starlette.concurrency import run_in_threadpool
from temporalio.client import Client

from shipflow.activities.core.settings import Settings
from shipflow.activities.core.starter import read_status, start_release, ui_link
from shipflow.activities.core.tables import Flow, ReleaseRecord, Run
from shipflow.api.deps import EngineDep, Operator, SettingsDep, TemporalDep
from shipflow.api.errors import error_responses
from shipflow.api.recovery import (
    DataRestore,
    RecoveryError,
    load_run_input,
    restores_of,
    retry_input,
    rollback_plan,
    services_to_roll_back,
)
from shipflow.api.runs_index import insert_run, mark_start_failed
from shipflow.api.temporal_errors import ask_temporal
from shipflow.workflows.plan import Plan
from shipflow.workflows.release import ReleaseInput
from shipflow.workflows.spec import load_flow_text
from shipflow.workflows.status import RunStatus

router = APIRouter(
    prefix="/runs", tags=["runs"], responses=error_responses(400, 401, 403, 404, 409, 422, 503)
)


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    restore_data: bool = False
    reason: str | None = None


class RecoveryAccepted(BaseModel):
    """A recovery run was started, or (dry run) what it would do."""

    run_id: str | None
    status_url: str | None = None
    ui_url: str | None = None
    dry_run: bool = False
    plan: list[dict[str, Any]]


async def _prior(client: Client, run_id: str) -> tuple[ReleaseInput, RunStatus]:
    async def read() -> tuple[ReleaseInput, RunStatus]:
        return await load_run_input(client, run_id), await read_status(client, run_id)

    return await ask_temporal(
        read(),
        missing=f"no run {run_id!r}",
        unknown=(LookupError, RecoveryError),
        unknown_detail=f"no shipflow run {run_id!r}",
    )


def _stage_records(
    engine: Engine, stage: str
) -> tuple[list[ReleaseRecord], dict[str, dict[str, Any]]]:
    with Session(engine) as session:
        records = list(
            session.exec(select(ReleaseRecord).where(ReleaseRecord.stage == stage)).all()
        )
        flows = list(session.exec(select(Flow)).all())
    targets = {
        f.name: load_flow_text(f.source).target.model_dump(mode="json", by_alias=True)
        for f in flows
    }
    return records, targets


def _later_runs(engine: Engine, run_id: str, stage: str) -> list[str]:
    with Session(engine) as session:
        target = session.get(Run, run_id)
        if target is None:
            return []
        rows = session.exec(
            select(Run).where(Run.stage == stage, Run.created_at > target.created_at)
        ).all()
    return [r.run_id for r in sorted(rows, key=lambda r: r.created_at)]


async def _data_after(client: Client, engine: Engine, run_id: str, stage: str) -> list[DataRestore]:
    """The data as it was right after `run_id`: the backups the next run took before migrating.

    The backups `run_id` took itself hold the data from before it, which its own images
    would not understand; the first later run's backups hold the data it left behind.
    """
    for later in await run_in_threadpool(_later_runs, engine, run_id, stage):
        try:
            found = restores_of(*await _prior(client, later))
        except HTTPException:
            continue
        if found:
            return found
    raise RecoveryError(
        f"no run took a backup of {stage} after {run_id!r}: the data is still what it left"
    )


def _describe(plan: Plan) -> list[dict[str, Any]]:
    return [
        {
            "step": a.id,
            "kind": a.kind,
            "summary": a.summary,
            **{k: a.params[k] for k in ("service", "image", "groups") if k in a.params},
        }
        for a in plan.actions()
    ]


async def _start(
    request: Request,
    settings: Settings,
    engine: Engine,
    client: Client,
    run_input: ReleaseInput,
    trigger: str,
) -> RecoveryAccepted:
    plan = run_input.plan
    await run_in_threadpool(
        insert_run,
        engine,
        Run.starting(
            plan,
            run_input.run_id,
            reason=run_input.reason,
            triggered_by=run_input.triggered_by,
            trigger=trigger,
        ),
    )
    try:
        await start_release(
            client,
            settings,
            plan,
            run_id=run_input.run_id,
            reason=run_input.reason,
            triggered_by=run_input.triggered_by,
            trigger=trigger,
            skip=run_input.skip,
        )
    except Exception as e:
        message = await run_in_threadpool(mark_start_failed, engine, run_input.run_id, e)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, message) from None
    request.app.state.metrics.runs_started.labels(flow=plan.flow, trigger=trigger).inc()
    return RecoveryAccepted(
        run_id=run_input.run_id,
        status_url=str(request.url_for("get_run", run_id=run_input.run_id)),
        ui_url=ui_link(settings, run_input.run_id),
        plan=_describe(plan),
    )


@router.post(
    "/{run_id}/rollback", response_model=RecoveryAccepted, status_code=status.HTTP_202_ACCEPTED
)
async def rollback_run(
    run_id: str,
    request: Request,
    caller: Operator,
    settings: SettingsDep,
    engine: EngineDep,
    client: TemporalDep,
    body: RollbackRequest | None = None,
    dry_run: bool = False,
) -> RecoveryAccepted:
    """A new run returning every service touched since `run_id` to its image right after it.

    Data stays as it is unless `restore_data` is true: then the data is restored to what
    it was right after that run (the backups the next run took before its migrations),
    after the images are back.
    """
    body = body or RollbackRequest()
    prior, _ = await _prior(client, run_id)
    records, targets = await run_in_threadpool(_stage_records, engine, prior.plan.stage)
    try:
        services = services_to_roll_back(records, run_id, targets)
        restores = (
            await _data_after(client, engine, run_id, prior.plan.stage) if body.restore_data else []
        )
        plan = rollback_plan(prior, services, restores)
    except RecoveryError as e:
        raise HTTPException(status.HTTP_409_CONFLICT, str(e)) from None
    if dry_run:
        return RecoveryAccepted(run_id=None, dry_run=True, plan=_describe(plan))
    new_id = f"{prior.plan.flow}-rollback-{run_id.rsplit('-', 1)[-1]}-{_suffix()}"
    run_input = ReleaseInput(
        run_id=new_id,
        plan=plan,
        reason=body.reason or f"rollback to {run_id}",
        triggered_by=caller.name,
        trigger="rollback",
    )
    return await _start(request, settings, engine, client, run_input, "rollback")


@router.post(
    "/{run_id}/retry", response_model=RecoveryAccepted, status_code=status.HTTP_202_ACCEPTED
)
async def retry_run(
    run_id: str,
    request: Request,
    caller: Operator,
    settings: SettingsDep,
    engine: EngineDep,
    client: TemporalDep,
) -> RecoveryAccepted:
    """A new run of the same plan and args that starts at the step that failed."""
    prior, prior_status = await _prior(client, run_id)
    try:
        run_input = retry_input(prior, prior_status, f"{run_id}-retry-{_suffix()}", by=caller.name)
    except RecoveryError as e:
        raise HTTPException(status.HTTP_409_CONFLICT, str(e)) from None
    return await _start(request, settings, engine, client, run_input, "retry")


def _suffix() -> str:
    import secrets

    return secrets.token_hex(3)

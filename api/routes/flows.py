"""`/flows`: apply, list and read release flows; start a run of one.

Applying a flow checks it the way a run will (shape, the compiler's cross-step rules with
the declared defaults, triggers, the target's services), all in one pass, so a broken
reference is reported when the flow is applied, with its path, line and column, rather
than at 3 a.m. when the cron trigger fires.
"""

from __future__ import annotations

from typing import Annotated, Any, NamedTuple

from fastapi import APIRouter, Body, HTTPException, Request, Response, status
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select
from starlette.concurrency import run_in_threadpool
from temporalio.client import Client
from temporalio.service import RPCError

from shipflow.activities.core.group_select import flow_problems
from shipflow.activities.core.groups import GroupStore
from shipflow.activities.core.settings import Settings
from shipflow.activities.core.starter import (
    compile_options,
    new_run_id,
    plan_for,
    start_release,
    ui_link,
)
from shipflow.activities.core.tables import Flow, FlowVersion, Run, utcnow
from shipflow.api.concurrency import wait_for_admission
from shipflow.api.deps import (
    Admin,
    EngineDep,
    Operator,
    SessionDep,
    SettingsDep,
    TemporalDep,
    Viewer,
)
from shipflow.api.errors import error_responses
from shipflow.api.runs_index import insert_run, mark_start_failed
from shipflow.api.schedules import cron_triggers, schedule_ids, sync_schedules
from shipflow.api.schemas import (
    FlowApplied,
    FlowDetail,
    FlowPublic,
    RunAccepted,
    RunCreate,
    flow_summary,
)
from shipflow.workflows.spec import (
    FlowError,
    FlowSpec,
    load_flow_text,
    redact_literal_secrets,
    walk_steps,
)
from shipflow.workflows.validation import validate_text

router = APIRouter(
    prefix="/flows",
    tags=["flows"],
    responses=error_responses(400, 401, 403, 404, 409, 413, 415, 422, 503),
)

MAX_FLOW_BYTES = 1_000_000
YAML_TYPES = {"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain"}


def _invalid(problems: list[dict[str, str]]) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, problems)


def checked_flow(content_type: str, raw: bytes, settings: Settings) -> tuple[FlowSpec, str]:
    """Decode and validate a YAML or JSON flow document; return the spec and its text.

    The one validation pass `shipflow flow validate` runs too (`shipflow.workflows.validation`):
    shape, references, triggers, the target's services, literal secrets and limits, all
    at once. Each problem in the 422 detail has `loc` and `msg`, and `line`, `column` and
    a `suggestion` ("did you mean") where known.

    Raises:
        HTTPException: 413 too large, 415 unknown media type, 422 with every problem.
    """
    if len(raw) > MAX_FLOW_BYTES:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, "a flow file is at most 1 MB")
    media = content_type.split(";", 1)[0].strip().lower()
    is_json = media == "application/json" or media.endswith("+json")
    if media and not is_json and media not in YAML_TYPES:
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            "send the flow as application/yaml, text/yaml, text/plain or application/json",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid([{"loc": "", "msg": "the flow file must be UTF-8 text"}]) from None
    report = validate_text(text, is_json=is_json, options=compile_options(settings))
    if report.spec is None:
        raise _invalid([problem.as_detail() for problem in report.problems])
    return report.spec, text


def check_flow_groups(engine: Engine, settings: Settings, spec: FlowSpec) -> None:
    """The flow's `env_from`, `tags` and `env_order` against the groups there are now.

    Raises:
        HTTPException: 422 naming each field (unknown or restricted group, conflicting keys).
    """
    if not (spec.tags or spec.env_order or _selects_groups(spec)):
        return
    problems = flow_problems(GroupStore(engine, settings).all(), spec)
    if problems:
        raise _invalid([{"loc": loc, "msg": msg} for loc, msg in problems])


def _selects_groups(spec: FlowSpec) -> bool:
    services = getattr(spec.target, "services", None) or {}
    if any(s.env_from or s.tags for s in services.values()):
        return True
    return any(
        kind == "migrate" and (body.env_from or body.tags)
        for _, kind, body in walk_steps(spec.steps, "steps")
    )


class Applied(NamedTuple):
    row: Flow
    created: bool
    previous_source: str | None  # the source this apply replaced (None: new or unchanged)


def apply_flow(engine: Engine, spec: FlowSpec, source: str) -> Applied:
    """Create the flow or, if its source changed, store a new version."""
    for attempt in range(2):
        try:
            return _apply_once(engine, spec, source)
        except IntegrityError:  # a concurrent apply of the same flow won the race
            if attempt:
                raise
    raise AssertionError("unreachable")


def _apply_once(engine: Engine, spec: FlowSpec, source: str) -> Applied:
    dumped = spec.model_dump(mode="json", by_alias=True)
    previous: str | None = None
    with Session(engine) as session:
        row = session.get(Flow, spec.name)
        created = row is None
        if row is None:
            row = Flow(name=spec.name, stage=spec.stage, version=1, source=source, spec=dumped)
        elif row.source != source:
            previous = row.source
            row.version += 1
            row.stage = spec.stage
            row.source = source
            row.spec = dumped
            row.updated_at = utcnow()
        else:
            return Applied(row, False, None)
        session.add(row)
        session.add(FlowVersion(flow=spec.name, version=row.version, source=source))
        session.commit()
        session.refresh(row)
        return Applied(row, created, previous)


async def sync_flow_schedules(
    client: Client, settings: Settings, spec: FlowSpec, version: int, previous_source: str | None
) -> None:
    """Make the flow's Temporal Schedules match its cron triggers (on every apply).

    Syncing even when the source is unchanged repairs schedules a failed earlier sync
    left behind, so "apply it again" is always the fix.

    Raises:
        HTTPException: 503 when Temporal refuses; the flow version is stored regardless.
    """
    known: list[str] = []
    if previous_source is not None:
        try:
            known = schedule_ids(load_flow_text(previous_source))
        except FlowError:
            known = []
    if not cron_triggers(spec) and not known:
        return
    try:
        await sync_schedules(client, settings, spec.name, spec, version, known_ids=known)
    except RPCError as e:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"flow {spec.name!r} v{version} is stored, but its schedules could not be synced "
            f"({e.message}); apply it again",
        ) from None


def to_public(row: Flow, *, detail: bool = False) -> FlowPublic:
    try:
        summary: dict[str, Any] = flow_summary(load_flow_text(row.source))
    except FlowError:  # applied under an older schema; still listable
        summary = {"steps": [], "triggers": [], "args": {}}
    fields = {**row.model_dump(include={"name", "stage", "version", "created_at", "updated_at"})}
    if detail:
        # A flow stored before literal secrets were refused at apply may still hold one.
        return FlowDetail(
            **fields,
            **summary,
            source=redact_literal_secrets(row.source),
            spec=redact_literal_secrets(row.spec),
        )
    return FlowPublic(**fields, **summary)


@router.post(
    "",
    response_model=FlowApplied,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"model": FlowApplied, "description": "updated (or unchanged)"}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/yaml": {"schema": {"type": "string"}}},
        }
    },
)
async def apply(
    request: Request,
    response: Response,
    _caller: Admin,
    settings: SettingsDep,
    engine: EngineDep,
    client: TemporalDep,
) -> FlowApplied:
    """Create or update a flow from YAML or JSON (201 when new, 200 otherwise).

    Its cron triggers are then synced to Temporal Schedules.
    """
    raw = await request.body()
    # Parsing and compiling a large flow takes CPU time: off the event loop, so that one
    # apply never stalls every other request.
    spec, source = await run_in_threadpool(
        checked_flow, request.headers.get("content-type", ""), raw, settings
    )
    await run_in_threadpool(check_flow_groups, engine, settings, spec)
    applied = await run_in_threadpool(apply_flow, engine, spec, source)
    await sync_flow_schedules(client, settings, spec, applied.row.version, applied.previous_source)
    if not applied.created:
        response.status_code = status.HTTP_200_OK
    changed = applied.created or applied.previous_source is not None
    public = to_public(applied.row).model_dump()
    return FlowApplied(**public, created=applied.created, changed=changed)


@router.get("", response_model=list[FlowPublic])
def list_flows(_caller: Viewer, session: SessionDep) -> list[FlowPublic]:
    rows = session.exec(select(Flow).order_by(Flow.name)).all()  # type: ignore[arg-type]
    return [to_public(row) for row in rows]


@router.get("/{name}", response_model=FlowDetail)
def get_flow(name: str, _caller: Viewer, session: SessionDep) -> FlowPublic:
    row = session.get(Flow, name)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no flow named {name!r}")
    return to_public(row, detail=True)


def _load_flow(engine: Engine, name: str) -> Flow | None:
    with Session(engine) as session:
        return session.get(Flow, name)


@router.post("/{name}/runs", response_model=RunAccepted, status_code=status.HTTP_202_ACCEPTED)
async def start_run(
    name: str,
    request: Request,
    caller: Operator,
    settings: SettingsDep,
    engine: EngineDep,
    client: TemporalDep,
    body: Annotated[RunCreate | None, Body()] = None,
) -> RunAccepted:
    """Start a run of the flow's current version.

    The runs index row is written before the workflow starts, so no run can exist in
    Temporal without a record; if the start fails, the row says so.
    """
    body = body or RunCreate()
    row = await run_in_threadpool(_load_flow, engine, name)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no flow named {name!r}")
    try:
        plan = await run_in_threadpool(
            lambda: plan_for(
                load_flow_text(row.source), settings, body.args, flow_version=row.version
            )
        )
    except FlowError as e:
        raise _invalid(e.as_detail()) from None
    run_id = new_run_id(plan.flow)
    record = Run.starting(
        plan, run_id, reason=body.reason, triggered_by=caller.name, trigger="api"
    )
    await run_in_threadpool(insert_run, engine, record)
    try:
        await start_release(
            client, settings, plan, run_id=run_id, reason=body.reason, triggered_by=caller.name
        )
    except Exception as e:
        message = await run_in_threadpool(mark_start_failed, engine, run_id, e)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, message) from None
    request.app.state.metrics.runs_started.labels(flow=plan.flow, trigger="api").inc()
    if plan.concurrency == "forbid":
        admitted = await wait_for_admission(client, run_id)
        if admitted is not None and admitted.blocked_by:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"stage {plan.stage!r} is busy with run {admitted.blocked_by!r} (concurrency: "
                f"forbid); the refused run is recorded as {run_id!r}",
            )
    return RunAccepted(
        run_id=run_id,
        status_url=str(request.url_for("get_run", run_id=run_id)),
        ui_url=ui_link(settings, run_id),
    )

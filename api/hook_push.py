"""What a verified push does: start every flow whose git trigger matches, once per delivery.

A delivery is idempotent twice over: the delivery id is recorded (a redelivery answers
with the runs of the first one; one that started nothing is looked at again) and the run
id is `<flow>-<commit>` started with USE_EXISTING, so the same commit pushed again, under
a new delivery id, joins the run that already exists.
"""

from __future__ import annotations

import logging

from fastapi import HTTPException, Request, Response, status
from pydantic import BaseModel
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool
from temporalio.client import Client

from shipflow.activities.core.settings import Settings
from shipflow.activities.core.starter import new_run_id, plan_for, start_release, ui_link
from shipflow.activities.core.tables import Flow, Run, WebhookDelivery, utcnow
from shipflow.api.git import (
    Decision,
    PushEvent,
    decide,
    resolve_args,
)
from shipflow.api.runs_index import insert_run, mark_start_failed
from shipflow.workflows.spec import FlowError, FlowSpec, load_flow_text, parse_flow

log = logging.getLogger("shipflow.hooks")


class HookRun(BaseModel):
    flow: str
    run_id: str
    status_url: str
    ui_url: str


class HookSkip(BaseModel):
    flow: str
    reason: str


class HookResult(BaseModel):
    """What a delivery did: the runs it started (or joined) and the flows it skipped."""

    runs: list[HookRun] = []
    skipped: list[HookSkip] = []
    message: str | None = None


# ------------------------------------------------------------------ OpenAPI


# ------------------------------------------------------------------ database


def _delivery(engine: Engine, delivery_id: str) -> tuple[list[str], list[Run]] | None:
    """The runs a delivery already started, or None if it is new."""
    with Session(engine) as session:
        seen = session.get(WebhookDelivery, delivery_id)
        if seen is None:
            return None
        rows = session.exec(select(Run).where(col(Run.run_id).in_(seen.runs))).all()
        return list(seen.runs), list(rows)


def _record_delivery(engine: Engine, delivery_id: str, provider: str, runs: list[str]) -> None:
    with Session(engine) as session:
        seen = session.get(WebhookDelivery, delivery_id)
        if seen is None:
            seen = WebhookDelivery(delivery_id=delivery_id, provider=provider, runs=runs)
        else:
            seen.runs, seen.received_at = runs, utcnow()
        session.add(seen)
        try:
            session.commit()
        except IntegrityError:  # the same delivery handled concurrently: first one wins
            session.rollback()


def _flows(engine: Engine) -> list[tuple[Flow, FlowSpec]]:
    """Every applied flow, parsed; one that no longer parses is left out (and logged)."""
    out: list[tuple[Flow, FlowSpec]] = []
    with Session(engine) as session:
        rows = session.exec(select(Flow).order_by(col(Flow.name))).all()
    for row in rows:
        try:
            spec = parse_flow(row.spec)
        except FlowError:
            try:
                spec = load_flow_text(row.source)
            except FlowError as e:
                log.warning("flow %s does not parse any more: %s", row.name, e)
                continue
        out.append((row, spec))
    return out


# ------------------------------------------------------------------ handling


def _link(request: Request, settings: Settings, flow: str, run_id: str) -> HookRun:
    return HookRun(
        flow=flow,
        run_id=run_id,
        status_url=str(request.url_for("get_run", run_id=run_id)),
        ui_url=ui_link(settings, run_id),
    )


async def _start(
    request: Request,
    settings: Settings,
    engine: Engine,
    client: Client,
    event: PushEvent,
    row: Flow,
    spec: FlowSpec,
    decision: Decision,
) -> HookRun | HookSkip:
    assert decision.trigger is not None
    context = event.context()
    try:
        args = resolve_args(decision.trigger.args, context)
        # Compiling a flow is CPU work (up to 500 steps, the author's arg patterns against
        # text a pusher controls): off the event loop, as apply does it.
        plan = await run_in_threadpool(
            plan_for, spec, settings, args, context={"git": context}, flow_version=row.version
        )
    except (ValueError, FlowError) as e:  # FlowError is a ValueError; both name the path
        return HookSkip(flow=row.name, reason=f"cannot compile the flow for this push: {e}")
    run_id = new_run_id(plan.flow, event.sha)
    branch = event.branch or event.ref
    reason = f"{event.provider} push {event.short_sha} to {event.repo}@{branch}"
    record = Run.starting(
        plan, run_id, reason=reason, triggered_by=event.pusher, trigger=event.provider
    )
    await run_in_threadpool(insert_run, engine, record)
    try:
        await start_release(
            client,
            settings,
            plan,
            run_id=run_id,
            reason=reason,
            triggered_by=event.pusher,
            trigger=event.provider,
            commit=event.sha,
        )
    except Exception as e:
        message = await run_in_threadpool(mark_start_failed, engine, run_id, e)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, message) from None
    return _link(request, settings, plan.flow, run_id)


async def handle_push(
    request: Request,
    response: Response,
    settings: Settings,
    engine: Engine,
    client: Client,
    event: PushEvent,
    delivery_id: str,
) -> HookResult:
    """Start every matching flow for a verified push; answer a redelivery from the record."""
    seen = await run_in_threadpool(_delivery, engine, delivery_id)
    # A delivery that started nothing is looked at again: redelivering it after applying
    # the flow it was meant for is how a new hook is tried out.
    if seen is not None and seen[0]:
        ids, rows = seen
        flows = {r.run_id: r.flow for r in rows}
        runs = [_link(request, settings, flows.get(i, ""), i) for i in ids]
        response.status_code = status.HTTP_202_ACCEPTED
        return HookResult(runs=runs, message=f"delivery {delivery_id} was already handled")
    if event.deleted:
        response.status_code = status.HTTP_200_OK
        return HookResult(message=f"{event.ref} was deleted: nothing to release")
    result = HookResult()
    for row, spec in await run_in_threadpool(_flows, engine):
        decision = decide(spec, event)
        if decision is None:
            continue
        if not decision.matched:
            result.skipped.append(HookSkip(flow=row.name, reason=decision.reason))
            continue
        outcome = await _start(request, settings, engine, client, event, row, spec, decision)
        if isinstance(outcome, HookRun):
            result.runs.append(outcome)
            metrics = getattr(request.app.state, "metrics", None)
            if metrics is not None:
                metrics.runs_started.labels(flow=outcome.flow, trigger="git").inc()
        else:
            result.skipped.append(outcome)
    await run_in_threadpool(
        _record_delivery, engine, delivery_id, event.provider, [r.run_id for r in result.runs]
    )
    if result.runs:
        response.status_code = status.HTTP_202_ACCEPTED
    else:
        response.status_code = status.HTTP_200_OK
        result.message = (
            f"no flow matched {event.repo} {event.ref}"
            if not result.skipped
            else f"no flow's git trigger fired for {event.repo} {event.ref}"
        )
    return result

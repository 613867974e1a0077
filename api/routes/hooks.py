"""`/hooks/github` and `/hooks/gitlab`: a git push starts the flows whose git trigger matches.

Webhooks carry no bearer token; they authenticate by the provider's own means (GitHub's
HMAC signature of the raw body, GitLab's shared token), compared in constant time, and
nothing is parsed or started before that check passes. A delivery is idempotent twice
over: the delivery id is recorded (a redelivery answers with the runs of the first
one; one that started nothing is looked at again) and the run id is `<flow>-<commit>` started with USE_EXISTING, so the same commit
pushed again, under a new delivery id, joins the run that already exists.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Header, HTTPException, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool
from temporalio.client import Client

from shipflow.activities.core.settings import Settings
from shipflow.activities.core.starter import new_run_id, plan_for, start_release, ui_link
from shipflow.activities.core.tables import Flow, Run, WebhookDelivery, utcnow
from shipflow.api.deps import EngineDep, SettingsDep, TemporalDep
from shipflow.api.errors import error_responses
from shipflow.api.git import (
    Decision,
    PayloadError,
    PushEvent,
    decide,
    parse_github_push,
    parse_gitlab_push,
    resolve_args,
)
from shipflow.api.runs_index import insert_run, mark_start_failed
from shipflow.workflows.spec import FlowError, FlowSpec, load_flow_text, parse_flow

log = logging.getLogger("shipflow.hooks")

router = APIRouter(
    prefix="/hooks", tags=["hooks"], responses=error_responses(400, 401, 413, 422, 503)
)

MAX_PAYLOAD_BYTES = 5_000_000  # GitHub caps payloads at 25 MB; a push is far smaller


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

_FILES = {"type": "array", "items": {"type": "string"}}
_COMMITS = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "added": _FILES,
            "modified": _FILES,
            "removed": _FILES,
        },
    },
}
#: The parts of a push the API reads (the providers send much more; all of it is allowed).
GITHUB_PUSH = {
    "type": "object",
    "required": ["ref", "after", "repository"],
    "properties": {
        "ref": {"type": "string", "example": "refs/heads/main"},
        "after": {"type": "string", "description": "the pushed commit"},
        "deleted": {"type": "boolean"},
        "repository": {
            "type": "object",
            "required": ["full_name"],
            "properties": {"full_name": {"type": "string", "example": "org/app"}},
        },
        "pusher": {"type": "object", "properties": {"name": {"type": "string"}}},
        "commits": _COMMITS,
    },
}
GITLAB_PUSH = {
    "type": "object",
    "required": ["ref", "after", "project"],
    "properties": {
        "ref": {"type": "string", "example": "refs/heads/main"},
        "after": {"type": "string"},
        "checkout_sha": {"type": ["string", "null"]},
        "user_username": {"type": "string"},
        "project": {
            "type": "object",
            "required": ["path_with_namespace"],
            "properties": {"path_with_namespace": {"type": "string", "example": "org/app"}},
        },
        "commits": _COMMITS,
    },
}


def _push_body(schema: dict[str, Any]) -> dict[str, Any]:
    """`openapi_extra` for a route that reads its raw body (it must, to check a signature)."""
    return {
        "requestBody": {
            "required": True,
            "description": f"the push event; at most {MAX_PAYLOAD_BYTES} bytes",
            "content": {"application/json": {"schema": schema}},
        }
    }


# ------------------------------------------------------------------ auth


def _secret(value: Any, what: str) -> bytes:
    if value is None or not value.get_secret_value():
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"{what} not configured")
    secret: str = value.get_secret_value()
    return secret.encode()


def verify_github(settings: Settings, body: bytes, signature: str | None) -> None:
    """Check `X-Hub-Signature-256` (`sha256=` + hex HMAC-SHA256 of the raw body).

    Raises:
        HTTPException: 503 with no secret configured, 401 for a missing or bad signature.
    """
    key = _secret(settings.github_secret, "github webhook secret")
    if not signature:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing X-Hub-Signature-256")
    expected = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), signature.strip().encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "bad X-Hub-Signature-256")


def verify_gitlab(settings: Settings, token: str | None) -> None:
    """Check `X-Gitlab-Token` against the configured token.

    Raises:
        HTTPException: 503 with no token configured, 401 for a missing or wrong token.
    """
    key = _secret(settings.gitlab_token, "gitlab webhook token")
    if not token:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing X-Gitlab-Token")
    if not hmac.compare_digest(key, token.encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "bad X-Gitlab-Token")


def _too_large() -> HTTPException:
    return HTTPException(
        status.HTTP_413_CONTENT_TOO_LARGE,
        f"webhook payload too large (at most {MAX_PAYLOAD_BYTES} bytes)",
    )


async def _read_body(request: Request) -> bytes:
    """The raw body, read against the size limit while it streams in.

    Anyone can POST here before the signature is checked, so nothing is buffered beyond
    `MAX_PAYLOAD_BYTES`: a declared `Content-Length` over the limit is refused before a
    byte is read, and a body without one (chunked) is refused as soon as it exceeds it.

    Raises:
        HTTPException: 413 too large, 400 for a `Content-Length` that is not a number.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "Content-Length is not a number")
        if int(declared) > MAX_PAYLOAD_BYTES:
            raise _too_large()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_PAYLOAD_BYTES:
            raise _too_large()
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(body: bytes, content_type: str = "") -> Any:
    """The JSON payload; GitHub's `application/x-www-form-urlencoded` hooks wrap it in `payload=`."""
    try:
        if content_type.split(";", 1)[0].strip().lower() == "application/x-www-form-urlencoded":
            form = parse_qs(body.decode(), strict_parsing=True)
            return json.loads(form["payload"][0])
        return json.loads(body)
    except (UnicodeDecodeError, ValueError, KeyError):
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, "malformed push payload: the body is not JSON"
        ) from None


def _parse(parser: Any, payload: Any) -> PushEvent:
    try:
        event: PushEvent = parser(payload)
    except PayloadError as e:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(e)) from None
    return event


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


def _ignored(response: Response, reason: str) -> HookResult:
    response.status_code = status.HTTP_202_ACCEPTED
    return HookResult(message=f"ignored: {reason}")


@router.post(
    "/github",
    response_model=HookResult,
    response_model_exclude_none=True,
    status_code=status.HTTP_202_ACCEPTED,
    responses={200: {"model": HookResult, "description": "ping, or no flow matched"}},
    openapi_extra=_push_body(GITHUB_PUSH),
)
async def github(
    request: Request,
    response: Response,
    settings: SettingsDep,
    engine: EngineDep,
    client: TemporalDep,
    x_hub_signature_256: Annotated[str | None, Header()] = None,
    x_github_event: Annotated[str | None, Header(description="push or ping")] = None,
    x_github_delivery: Annotated[str | None, Header()] = None,
) -> HookResult | JSONResponse:
    """A GitHub webhook (content type `application/json`, signed with the shared secret)."""
    body = await _read_body(request)
    verify_github(settings, body, x_hub_signature_256)
    kind = x_github_event or ""
    if kind == "ping":  # sent once when the hook is created: proves the secret matches
        return JSONResponse({"ok": True}, status_code=status.HTTP_200_OK)
    if kind != "push":
        return _ignored(response, f"event {kind or '(none)'!r} is not a push")
    event = _parse(parse_github_push, _decode(body, request.headers.get("content-type", "")))
    delivery = x_github_delivery or f"github:{event.repo}:{event.sha}"
    return await handle_push(request, response, settings, engine, client, event, delivery[:200])


@router.post(
    "/gitlab",
    response_model=HookResult,
    response_model_exclude_none=True,
    status_code=status.HTTP_202_ACCEPTED,
    responses={200: {"model": HookResult, "description": "no flow matched"}},
    openapi_extra=_push_body(GITLAB_PUSH),
)
async def gitlab(
    request: Request,
    response: Response,
    settings: SettingsDep,
    engine: EngineDep,
    client: TemporalDep,
    x_gitlab_token: Annotated[str | None, Header()] = None,
    x_gitlab_event: Annotated[str | None, Header(description="Push Hook or Tag Push Hook")] = None,
    x_gitlab_event_uuid: Annotated[str | None, Header()] = None,
) -> HookResult:
    """A GitLab project webhook (`Push Hook`), authenticated by its secret token."""
    body = await _read_body(request)
    verify_gitlab(settings, x_gitlab_token)
    kind = x_gitlab_event or ""
    if kind not in ("Push Hook", "Tag Push Hook"):
        return _ignored(response, f"event {kind or '(none)'!r} is not a push")
    event = _parse(parse_gitlab_push, _decode(body))
    delivery = x_gitlab_event_uuid or f"gitlab:{event.repo}:{event.sha}"
    return await handle_push(request, response, settings, engine, client, event, delivery[:200])

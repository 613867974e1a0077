"""`/hooks/github` and `/hooks/gitlab`: a git push starts the flows whose git trigger matches.

Webhooks carry no bearer token; they authenticate by the provider's own means (GitHub's
HMAC signature of the raw body, GitLab's shared token), compared in constant time, and
nothing is parsed or started before that check passes. A delivery is idempotent twice
over: the delivery id is recorded (a redelivery answers with the runs of the first
one; one that started nothing is looked at again) and the run id is `<flow>-<commit>`
started with USE_EXISTING, so the same commit pushed again, under a new delivery id, joins
the run that already exists.

This module is the two endpoints and their OpenAPI bodies: reading and authenticating the
request is `shipflow.api.hook_requests`, what a push starts is `shipflow.api.hook_push`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response, status
from fastapi.responses import JSONResponse

from shipflow.api.deps import EngineDep, SettingsDep, TemporalDep
from shipflow.api.errors import error_responses
from shipflow.api.git import (
    parse_github_push,
    parse_gitlab_push,
)
from shipflow.api.hook_push import HookResult, handle_push
from shipflow.api.hook_requests import (
    MAX_PAYLOAD_BYTES,
    _decode,
    _parse,
    _read_body,
    verify_github,
    verify_gitlab,
)

router = APIRouter(
    prefix="/hooks", tags=["hooks"], responses=error_responses(400, 401, 413, 422, 503)
)


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

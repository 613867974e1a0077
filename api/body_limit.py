"""A size cap on request bodies of routes that parse them as a whole, before anything reads them.

FastAPI reads a route's whole JSON body before the route (or any of its dependencies)
runs, so a cap in the route comes too late: a client could make the API buffer any
amount. This pure ASGI middleware sits outside everything else and refuses, with 413
naming the limit, a declared `Content-Length` over it before a byte is read, and a body
without one (chunked) as soon as it passes it; a body within the limit is handed on
unchanged. The webhooks have their own streamed reader (`shipflow.api.hook_requests`).

Which routes are capped, and at how much, is `LIMITS`: `PUT /groups/{name}` at 1 MiB
(a group's values are at most 32 KiB each; a megabyte is far more than any real group).
"""

from __future__ import annotations

from fastapi import status
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MiB = 1024 * 1024
#: (method, path prefix) -> (the limit in bytes, what the 413 calls the body).
LIMITS: dict[tuple[str, str], tuple[int, str]] = {
    ("PUT", "/groups/"): (MiB, "group"),
}


def limit_for(method: str, path: str) -> tuple[int, str] | None:
    for (verb, prefix), limit in LIMITS.items():
        if method == verb and path.startswith(prefix):
            return limit
    return None


def _too_large(limit: int, what: str) -> JSONResponse:
    size = f"{limit // MiB} MiB" if limit % MiB == 0 else f"{limit} bytes"
    return JSONResponse(
        {"detail": f"{what} request body too large: at most {size} ({limit} bytes)"},
        status_code=status.HTTP_413_CONTENT_TOO_LARGE,
    )


class BodyLimit:
    """Pure ASGI middleware: see the module docstring."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = (
            limit_for(scope.get("method", ""), scope["path"]) if scope["type"] == "http" else None
        )
        if found is None:
            await self.app(scope, receive, send)
            return
        limit, what = found
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await JSONResponse(
                    {"detail": "Content-Length is not a number"},
                    status_code=status.HTTP_400_BAD_REQUEST,
                )(scope, receive, send)
                return
            if int(declared) > limit:
                await _too_large(limit, what)(scope, receive, send)
                return
        # Read it here, against the limit: never more than `limit` bytes are held.
        messages: list[Message] = []
        size, more = 0, True
        while more:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > limit:
                await _too_large(limit, what)(scope, receive, send)
                return
            more = message.get("more_body", False)

        async def replay() -> Message:
            if messages:
                return messages.pop(0)
            return await receive()

        await self.app(scope, replay, send)

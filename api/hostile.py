"""Text the database cannot store is refused at the door, with the field it was in.

PostgreSQL refuses NUL characters in text and JSON, and no encoder accepts an unpaired
UTF-16 surrogate (`"\\ud800"` is valid JSON); either one reaching a query or a Temporal
payload used to be a 500. This middleware reads JSON request bodies (small, and parsed
by the route anyway), walks their strings and answers 422 naming the first bad one; it
also refuses a NUL in the URL (400) and YAML bodies that escape a surrogate. Webhook
bodies are left to their own bounded, streamed reader (`shipflow.api.routes.hooks`), which checks
the fields it uses. Anything that still gets through is turned into a 422 by
`storage_error` instead of a 500.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from fastapi import Request, status
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("shipflow.api")

#: Bodies this large are not inspected here (the routes refuse them with 413 anyway).
MAX_INSPECTED_BYTES = 2_000_000
_STREAMED_PREFIXES = ("/hooks/",)
#: YAML (flow files) and plain text bodies; YAML is checked for surrogate escapes only.
_TEXT_TYPES = {
    b"",
    b"application/yaml",
    b"application/x-yaml",
    b"text/yaml",
    b"text/x-yaml",
    b"text/plain",
}
_SURROGATE_ESCAPE = re.compile(rb"\\(?:u|U0000)[dD][89a-fA-F][0-9a-fA-F]{2}")


def bad_text(value: str) -> str | None:
    """Why `value` cannot be stored, or None."""
    if "\x00" in value:
        return "contains a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "contains an unpaired surrogate (not valid Unicode)"
    return None


def find_bad_text(value: Any, loc: str = "") -> tuple[str, str] | None:
    """The (dotted path, reason) of the first string in a JSON value that cannot be stored."""
    if isinstance(value, str):
        why = bad_text(value)
        return (loc, why) if why else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{loc}.{key}" if loc else str(key)
            why = bad_text(key)
            if why:
                return (loc or "body", f"a key {why}")
            found = find_bad_text(item, where)
            if found:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = find_bad_text(item, f"{loc}[{index}]")
            if found:
                return found
    return None


def _refuse(code: int, detail: Any) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=code)


class RefuseUnstorableText:
    """Pure ASGI middleware: see the module docstring."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string", b"")
        if b"%00" in raw_path.lower() + query.lower() or "\x00" in scope["path"]:
            await _refuse(status.HTTP_400_BAD_REQUEST, "the URL contains a NUL character")(
                scope, receive, send
            )
            return
        headers = dict(scope.get("headers") or [])
        media = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
        is_json = media == b"application/json" or media.endswith(b"+json")
        is_text = media in _TEXT_TYPES
        if not (is_json or is_text) or scope["path"].startswith(_STREAMED_PREFIXES):
            await self.app(scope, receive, send)
            return
        body, more, messages = b"", True, []
        while more:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_INSPECTED_BYTES:
                break
        if not more and body:
            found: tuple[str, str] | None = None
            if is_json:
                try:
                    found = find_bad_text(json.loads(body))
                except (ValueError, RecursionError):
                    pass  # not JSON: the route says so, in its own words
            elif _SURROGATE_ESCAPE.search(body):
                # YAML decodes `"\ud83d"` to an unpaired surrogate (it never pairs them).
                found = ("body", "contains an escaped UTF-16 surrogate (\\uD800-\\uDFFF)")
            if found is not None:
                loc, why = found
                await _refuse(
                    status.HTTP_422_UNPROCESSABLE_CONTENT, [{"loc": loc or "body", "msg": why}]
                )(scope, receive, send)
                return

        async def replay() -> Message:
            if messages:
                return messages.pop(0)
            return await receive()

        await self.app(scope, replay, send)


async def storage_error(request: Request, exc: Exception) -> JSONResponse:
    """A value the database or an encoder refused, that no check caught before: 422."""
    log.warning(
        "refused unstorable input on %s %s: %s",
        request.method,
        request.url.path,
        type(exc).__name__,
    )
    return _refuse(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        "a value in the request cannot be stored (a NUL character, invalid Unicode, or out of range)",
    )

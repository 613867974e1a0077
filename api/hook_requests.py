"""Reading and authenticating a webhook request, before anything in it is trusted.

The body is read with a size cap (`MAX_PAYLOAD_BYTES`, 413 beyond it), then checked by the
provider's own means (GitHub's HMAC signature of the raw body, GitLab's shared token,
compared in constant time), and only then decoded and parsed into a `PushEvent`; every
failure is a 4xx with a clear message. Apart from the routes so that `routes/hooks.py`
reads as the two endpoints and nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any
from urllib.parse import parse_qs

from fastapi import HTTPException, Request, status

from shipflow.activities.core.settings import Settings
from shipflow.api.git import (
    PayloadError,
    PushEvent,
)

MAX_PAYLOAD_BYTES = 5_000_000  # GitHub caps payloads at 25 MB; a push is far smaller


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

"""`/codec/decode` and `/codec/encode`: Temporal's remote codec protocol, for the Web UI and CLI.

Temporal's history holds shipflow's payloads encrypted (`activities/core/codec.py`). The Web UI
and `temporal workflow show --codec-endpoint` show them decoded by POSTing them here:
a JSON body `{"payloads": [{"metadata": {"encoding": "<base64>"}, "data": "<base64>"}]}`
(protobuf JSON, bytes as base64) and an `X-Namespace` header; the answer has the same
shape. The codec is the API's own Temporal client's, so it has exactly the API's keys.

Who may decode: viewers (`Authorization: Bearer <token>`; the temporal CLI sends one with
`--codec-auth`). The Temporal Web UI cannot send a shipflow token: it only forwards its
own OIDC login's access token (`codec.passAccessToken`) and the dev server's UI has no
login at all. So with `SHIPFLOW_CODEC_LOOPBACK_OPEN` (the embedded stack sets it) a
request from a loopback address that carries the Web UI's `Origin` is served as a viewer
without a token: on one machine, whoever can open the UI may read what it shows.

The browser calls this from the UI's origin, so every answer here (errors included)
carries the CORS headers for that origin, and the preflight is answered.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Coroutine
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from google.protobuf.json_format import MessageToDict, ParseDict, ParseError
from temporalio.api.common.v1 import Payload

from shipflow.activities.core.codec import PayloadKeyError
from shipflow.activities.core.settings import Settings
from shipflow.api.auth import Caller, Role
from shipflow.api.deps import TemporalDep, get_caller, require
from shipflow.api.errors import error_responses

ALLOWED_HEADERS = "Authorization, Content-Type, X-Namespace"
ALLOWED_METHODS = "POST, OPTIONS"
_LOOPBACK_NAMES = ("127.0.0.1", "localhost")


def ui_origins(settings: Settings) -> set[str]:
    """Origins the Web UI is served from: `SHIPFLOW_UI_URL`'s, and its other loopback
    spelling (a browser's origin is whatever host the user typed)."""
    url = urlsplit(settings.ui_url)
    if not url.scheme or not url.hostname:
        return set()
    port = f":{url.port}" if url.port else ""
    origins = {f"{url.scheme}://{url.hostname}{port}"}
    if url.hostname in _LOOPBACK_NAMES:
        origins |= {f"{url.scheme}://{name}{port}" for name in _LOOPBACK_NAMES}
    return origins


def _cors_headers(request: Request) -> dict[str, str]:
    origin = request.headers.get("origin")
    if not origin or origin not in ui_origins(request.app.state.settings):
        return {}
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Credentials": "true",
        "Vary": "Origin",
    }


class CorsRoute(APIRoute):
    """A route whose every answer, including 401/403/422 errors, carries the CORS headers
    for the UI's origin: without them the browser hides the error behind a CORS failure."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def with_cors(request: Request) -> Response:
            try:
                response = await handler(request)
            except HTTPException as e:
                response = JSONResponse(
                    {"detail": e.detail}, status_code=e.status_code, headers=e.headers
                )
            response.headers.update(_cors_headers(request))
            return response

        return with_cors


router = APIRouter(
    prefix="/codec",
    tags=["codec"],
    route_class=CorsRoute,
    responses=error_responses(401, 403, 422, 503),
)

#: The remote codec protocol's body, for the OpenAPI document (the route parses it itself so
#: that each bad payload is named by its index).
_PAYLOADS_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["payloads"],
                    "properties": {
                        "payloads": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "metadata": {
                                        "type": "object",
                                        "additionalProperties": {"type": "string"},
                                    },
                                    "data": {"type": "string"},
                                },
                            },
                        }
                    },
                }
            }
        },
    }
}

_require_viewer = require(Role.VIEWER)


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def codec_caller(request: Request) -> Caller:
    """A viewer by token, or the Web UI on loopback when `codec_loopback_open` is set."""
    settings: Settings = request.app.state.settings
    if (
        settings.codec_loopback_open
        and _is_loopback(request.client.host if request.client else None)
        and request.headers.get("origin") in ui_origins(settings)
    ):
        return Caller(name="web-ui (loopback)", role=Role.VIEWER)
    return _require_viewer(get_caller(request))


CodecViewer = Annotated[Caller, Depends(codec_caller)]


def _unprocessable(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail)


async def _payloads(request: Request) -> list[Payload]:
    """The request's payloads.

    Raises:
        HTTPException: 422 naming the bad field (`payloads[2].data: ...`).
    """
    settings: Settings = request.app.state.settings
    namespace = request.headers.get("x-namespace")
    if namespace and namespace != settings.temporal_namespace:
        raise _unprocessable(
            f"X-Namespace: this codec serves namespace {settings.temporal_namespace!r}, "
            f"not {namespace!r}"
        )
    try:
        body: Any = await request.json()
    except ValueError:
        raise _unprocessable('body: not JSON; send {"payloads": [...]}') from None
    if not isinstance(body, dict) or not isinstance(body.get("payloads"), list):
        raise _unprocessable("payloads: field required (a list of payloads)")
    payloads: list[Payload] = []
    for index, item in enumerate(body["payloads"]):
        if not isinstance(item, dict):
            raise _unprocessable(f"payloads[{index}]: not an object")
        try:
            payloads.append(ParseDict(item, Payload(), ignore_unknown_fields=True))
        except ParseError as e:
            raise _unprocessable(f"payloads[{index}]: {e}") from None
    return payloads


def _answer(payloads: list[Payload]) -> dict[str, Any]:
    return {"payloads": [MessageToDict(p) for p in payloads]}


@router.options("/{action}", include_in_schema=False)
async def preflight(action: str, request: Request) -> Response:
    """The browser's CORS preflight for the UI's POST with `Authorization`/`X-Namespace`."""
    if action not in ("decode", "encode"):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no codec action {action!r}")
    origin = request.headers.get("origin")
    if origin and origin not in ui_origins(request.app.state.settings):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"origin {origin!r} is not the Web UI's (SHIPFLOW_UI_URL)",
        )
    headers = {"Allow": ALLOWED_METHODS}
    if origin:
        headers |= {
            "Access-Control-Allow-Methods": ALLOWED_METHODS,
            "Access-Control-Allow-Headers": ALLOWED_HEADERS,
            "Access-Control-Max-Age": "600",
        }
    return Response(status_code=status.HTTP_204_NO_CONTENT, headers=headers)


@router.post("/decode", openapi_extra=_PAYLOADS_BODY)
async def decode(request: Request, client: TemporalDep, _caller: CodecViewer) -> dict[str, Any]:
    """Payloads as the worker wrote them, decrypted; unencrypted ones come back as they are.

    A payload under a key this API does not have is a 422 naming its index and key id.
    """
    payloads = await _payloads(request)
    codec = client.data_converter.payload_codec
    if codec is None:
        return _answer(payloads)
    decoded: list[Payload] = []
    for index, payload in enumerate(payloads):
        try:
            decoded += await codec.decode([payload])
        except PayloadKeyError as e:
            raise _unprocessable(f"payloads[{index}]: {e}") from None
    return _answer(decoded)


@router.post("/encode", openapi_extra=_PAYLOADS_BODY)
async def encode(request: Request, client: TemporalDep, _caller: CodecViewer) -> dict[str, Any]:
    """Payloads encrypted with the current key (what the UI sends when it starts or
    signals a workflow); unchanged when encryption is not configured."""
    payloads = await _payloads(request)
    codec = client.data_converter.payload_codec
    return _answer(await codec.encode(payloads) if codec is not None else payloads)


async def payload_key_error(_request: Request, exc: Exception) -> JSONResponse:
    """A run's data that this API cannot decrypt: a 503 naming the key id, not a traceback
    (the server's key setting is wrong, not the request)."""
    return JSONResponse(
        {"detail": f"cannot decrypt the run's data: {exc}"},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
    )

"""The runtime's HTTP face: a Starlette app on loopback, JSON in and out.

Every call but `/healthz` needs `Authorization: Bearer <key>` (see `runtime_key`:
generated at first start into `<data-dir>/runtime.key`, mode 0600, or given in
`SHIPFLOW_RUNTIME_KEY`): 401 without it. A request whose `Host` is not the runtime's own
address (`127.0.0.1:PORT`, `localhost:PORT`, the bound host) is refused with 403 before
anything else, so a web page cannot reach the port by DNS rebinding. The front ports
(the services' own traffic) are not served here and need neither.

    GET    /healthz                                   open: liveness of the runtime only
    GET    /debug/tasks                               what every task waits on
    GET    /services                                  every service, summarized
    GET    /services/{name}                           one service and its instances
    PUT    /services/{name}/rollout                   RolloutBody: start or resume
    GET    /services/{name}/rollouts/{rollout_id}     progress and result (RolloutView)
    POST   /services/{name}/rollouts/{rollout_id}/abort
    POST   /services/{name}/rollouts/{rollout_id}/promote    end a canary's current pause
    DELETE /services/{name}                           stop every instance, close the front port

Errors are `{"error": <code>, "detail": <message>}` with codes `invalid`, `not_found`,
`conflict`, `command_not_found`, `port_in_use`, `unauthorized`, `forbidden_host`,
`internal`. The bodies are the models of `shipflow.activities.targets.local.runtime_client`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from shipflow.activities.targets.local.runtime_client import RolloutBody
from shipflow.activities.targets.local.runtime_key import key_matches
from shipflow.worker.runtime.services import Runtime
from shipflow.worker.runtime.state import ApiError
from shipflow.workflows.spec import LocalService, problems_from

log = logging.getLogger("shipflow.runtime")

_LOCAL_NAMES = ("127.0.0.1", "localhost", "[::1]")


def error(status: int, code: str, detail: str) -> JSONResponse:
    challenge = {"WWW-Authenticate": 'Bearer realm="shipflow-runtime"'} if status == 401 else None
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=challenge)


def _json(model: BaseModel | list[BaseModel] | dict[str, Any]) -> JSONResponse:
    if isinstance(model, BaseModel):
        return JSONResponse(model.model_dump(mode="json"))
    if isinstance(model, list):
        return JSONResponse([m.model_dump(mode="json") for m in model])
    return JSONResponse(model)


class AccessCheck:
    """Refuse a foreign `Host` (403), then a missing or wrong key (401); never echo the key.

    The allowed hosts are the names of loopback (and the bound host) with the port the
    request came in on, taken from the connection itself, so `--port 0` works too.
    """

    def __init__(self, app: ASGIApp, runtime: Runtime, bound_host: str):
        self.app = app
        self.runtime = runtime
        self.names = {*_LOCAL_NAMES, bound_host if ":" not in bound_host else f"[{bound_host}]"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        port = (scope.get("server") or ("", 0))[1]
        allowed = {f"{name}:{port}".lower() for name in self.names}
        host = headers.get("host", "").strip().lower()
        refusal: Response | None = None
        if host not in allowed:
            refusal = error(
                403,
                "forbidden_host",
                f"Host {host[:100]!r} is not this runtime's address; use one of "
                f"{', '.join(sorted(allowed))}",
            )
        elif scope["path"] != "/healthz" and not key_matches(
            self.runtime.key, headers.get("authorization")
        ):
            refusal = error(
                401,
                "unauthorized",
                "missing or wrong runtime key: send Authorization: Bearer <key> (the key is "
                f"in {self.runtime.data_dir / 'runtime.key'} or SHIPFLOW_RUNTIME_KEY)",
            )
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)


def create_app(runtime: Runtime, *, bound_host: str = "127.0.0.1") -> Starlette:
    """The ASGI app over `runtime`; its lifespan re-adopts saved state and closes at the end."""

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True, "pid": os.getpid()})

    async def debug_tasks(request: Request) -> Response:
        # What every task of the runtime is waiting on: for diagnosing a stuck rollout.
        out = []
        for task in asyncio.all_tasks():
            frames = task.get_stack(limit=6)
            stack = [
                f"{f.f_code.co_filename.rsplit('/', 1)[-1]}:{f.f_lineno} {f.f_code.co_name}"
                for f in frames
            ]
            out.append({"task": task.get_name(), "stack": stack})
        return JSONResponse(out)

    async def list_services(request: Request) -> Response:
        return _json([runtime.service_public(s) for s in runtime.services.values()])

    async def get_service(request: Request) -> Response:
        return _json(runtime.service_public(runtime.service(request.path_params["name"])))

    async def delete_service(request: Request) -> Response:
        name = request.path_params["name"]
        await runtime.delete_service(name)
        return JSONResponse({"deleted": name})

    async def put_rollout(request: Request) -> Response:
        name = request.path_params["name"]
        body = await _rollout_body(request, name)
        return _json(await runtime.put_rollout(name, body))

    async def get_rollout(request: Request) -> Response:
        svc, ro = runtime.rollout(request.path_params["name"], request.path_params["rollout_id"])
        return _json(runtime.rollout_status(svc, ro))

    async def abort_rollout(request: Request) -> Response:
        p = request.path_params
        return _json(runtime.abort_rollout(p["name"], p["rollout_id"]))

    async def promote_rollout(request: Request) -> Response:
        p = request.path_params
        return _json(runtime.promote_rollout(p["name"], p["rollout_id"]))

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error(exc.status, exc.code, exc.detail)

    async def no_route(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = "not_found" if exc.status_code == 404 else "invalid"
        return error(exc.status_code, code, f"no route {request.method} {request.url.path}")

    async def crashed(request: Request, exc: Exception) -> Response:
        log.exception("API error", exc_info=exc)
        return error(500, "internal", repr(exc))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await runtime.recover()
        try:
            yield
        finally:
            await runtime.close()

    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET", "HEAD", "POST", "PUT", "DELETE"]),
            Route("/debug/tasks", debug_tasks, methods=["GET"]),
            Route("/services", list_services, methods=["GET"]),
            Route("/services/{name}", get_service, methods=["GET"]),
            Route("/services/{name}", delete_service, methods=["DELETE"]),
            Route("/services/{name}/rollout", put_rollout, methods=["PUT"]),
            Route("/services/{name}/rollouts/{rollout_id}", get_rollout, methods=["GET"]),
            Route("/services/{name}/rollouts/{rollout_id}/abort", abort_rollout, methods=["POST"]),
            Route(
                "/services/{name}/rollouts/{rollout_id}/promote", promote_rollout, methods=["POST"]
            ),
        ],
        exception_handlers={ApiError: api_error, HTTPException: no_route, Exception: crashed},
        lifespan=lifespan,
    )
    app.add_middleware(AccessCheck, runtime=runtime, bound_host=bound_host)
    return app


async def _rollout_body(request: Request, name: str) -> RolloutBody:
    """The PUT body, with errors that name the field (400 `invalid`)."""
    try:
        raw = json.loads(await request.body() or b"{}")
    except ValueError as e:
        raise ApiError(400, "invalid", f"bad request: {e}") from None
    if not isinstance(raw, dict):
        raise ApiError(400, "invalid", "bad request: the body must be a JSON object")
    try:
        LocalService.model_validate(raw.get("spec"))
    except ValidationError as e:
        raise ApiError(
            400, "invalid", f"invalid spec of service {name!r}: {_problems(e, 'spec.')}"
        ) from None
    image = raw.get("image")
    if not isinstance(image, str) or not image:
        raise ApiError(400, "invalid", "image is required")
    redact = raw.get("redact", [])
    if not isinstance(redact, list) or not all(isinstance(v, str) for v in redact):
        # Checked here so that the error never echoes the (secret) values back.
        raise ApiError(400, "invalid", "redact must be a list of strings")
    try:
        return RolloutBody.model_validate(raw)
    except ValidationError as e:
        raise ApiError(400, "invalid", f"bad request: {_problems(e)}") from None


def _problems(error: ValidationError, prefix: str = "") -> str:
    """`field: problem` for each error, never the value: pydantic's own text repeats the
    input, and a value in the wrong place may be a secret (a service's env holds group
    values)."""
    return "; ".join(f"{prefix}{path}: {message}" for path, message in problems_from(error))

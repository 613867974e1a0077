"""The shipflow HTTP API: `create_app(settings)` builds a FastAPI app; `main()` serves it.

Importing this module connects to nothing: the Temporal client and the database engine
are created once, by the app's lifespan, and kept on `app.state` for the dependencies
in `shipflow.api.deps`. Every error is `{"detail": ...}`; request validation errors use the same
`[{"loc": "args.image", "msg": ...}]` shape as flow errors, so clients handle one format.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from opentelemetry.trace import SpanKind, Tracer
from sqlalchemy.exc import DataError
from starlette.concurrency import run_in_threadpool

from shipflow.activities.core.client import connect
from shipflow.activities.core.codec import PayloadKeyError
from shipflow.activities.core.db import make_engine
from shipflow.activities.core.group_crypto import GroupKeyError
from shipflow.activities.core.group_crypto import check_key as check_groups_key
from shipflow.activities.core.logs import configure_logging
from shipflow.activities.core.settings import Settings, get_settings
from shipflow.activities.core.tracing import setup_tracing, temporal_interceptors
from shipflow.api.auth import Authenticator, load_tokens
from shipflow.api.body_limit import BodyLimit
from shipflow.api.hostile import RefuseUnstorableText, storage_error
from shipflow.api.pending_runs import reconcile_forever
from shipflow.api.routes import (
    backups,
    canary,
    codec,
    console,
    flow_versions,
    flows,
    groups,
    health,
    hooks,
    logs,
    plans,
    recovery,
    run_events,
    runs,
    schedules,
    stages,
    step_history,
)
from shipflow.api.run_feeds import RunFeeds

log = logging.getLogger("shipflow.api")

_FRIENDLY = {"missing": "field required", "extra_forbidden": "unknown field"}
_SOURCES = ("body", "query", "path", "header", "cookie")


def dotted(loc: tuple[Any, ...] | list[Any]) -> str:
    """`('body', 'args', 'image')` -> `args.image`; list indexes as `[i]`."""
    parts = list(loc)
    if parts and parts[0] in _SOURCES and len(parts) > 1:
        parts = parts[1:]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    detail = []
    for error in exc.errors():
        message = _FRIENDLY.get(error.get("type", ""), error.get("msg", "invalid"))
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        detail.append({"loc": dotted(error.get("loc", ())), "msg": message})
    return JSONResponse({"detail": detail}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    # The traceback goes to the log; the caller only learns that it was not their fault.
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        {"detail": "internal error; see the API log"},
        status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
    )


def _delivery_result(code: int) -> str:
    if code < 400:
        return "accepted"
    if code in (401, 403):
        return "unauthorized"
    return "invalid" if code < 500 else "error"


def create_app(settings: Settings | None = None, *, tracer: Tracer | None = None) -> FastAPI:
    """Build the API for `settings` (default: the `SHIPFLOW_*` environment).

    `tracer`: where request and run-start spans go; default: the `OTEL_*` settings (none
    unless they turn traces on).

    Raises:
        ValueError: `SHIPFLOW_TOKENS` is malformed (better at start than at first request),
            or the groups key file is configured but unreadable,
            or no tokens are configured and `open_dev_instance` does not say that an open
            API is meant (a deployment must never be open by accident).
    """
    settings = settings or get_settings()
    authenticator = Authenticator(load_tokens(settings))
    if authenticator.open and not settings.open_dev_instance:
        raise ValueError(
            "no API tokens configured (SHIPFLOW_TOKENS): refusing to serve an API that anyone "
            "may use as admin. Configure tokens, or set SHIPFLOW_OPEN_DEV_INSTANCE=true for a "
            "development instance that is open on purpose."
        )
    try:
        check_groups_key(settings)
    except GroupKeyError as e:
        raise ValueError(str(e)) from None
    metrics = health.Metrics()
    tracer = tracer or setup_tracing("shipflow-api")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.engine = await run_in_threadpool(make_engine, settings.sqlalchemy_url())
        try:
            app.state.temporal = await connect(
                settings, interceptors=temporal_interceptors(tracer)
            )
            if authenticator.open:
                log.warning("no API tokens configured: the API is open to anyone (anonymous admin)")
            reconciler = asyncio.create_task(
                reconcile_forever(
                    app.state.engine,
                    app.state.temporal,
                    grace_s=settings.pending_grace_s,
                    interval_s=settings.pending_reconcile_interval_s,
                ),
                name="reconcile pending runs",
            )
            try:
                yield
            finally:
                reconciler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reconciler
        finally:
            app.state.engine.dispose()

    app = FastAPI(
        title="shipflow",
        summary="Durable, inspectable, reversible release flows on Temporal.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.auth = authenticator
    app.state.metrics = metrics
    app.state.run_feeds = feeds = RunFeeds()
    metrics.run_streams.set_function(lambda: feeds.streams)
    metrics.runs_watched.set_function(lambda: feeds.watched)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)
    app.add_exception_handler(PayloadKeyError, codec.payload_key_error)
    app.add_exception_handler(DataError, storage_error)
    app.add_exception_handler(UnicodeEncodeError, storage_error)
    app.add_middleware(RefuseUnstorableText)
    app.add_middleware(BodyLimit)  # outside it: a capped body is refused before it is read
    app.middleware("http")(console.pages)

    @app.middleware("http")
    async def count_requests(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        code = 500
        try:
            response = await call_next(request)
            code = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            metrics.requests.labels(request.method, template, str(code)).inc()
            metrics.latency.labels(request.method, template).observe(time.perf_counter() - started)
            if template.startswith("/hooks/"):
                metrics.webhook_deliveries.labels(
                    template.removeprefix("/hooks/"), _delivery_result(code)
                ).inc()

    if tracer is not None:
        _trace_requests(app, tracer)
    app.include_router(flows.router)
    app.include_router(flow_versions.router)
    app.include_router(backups.router)
    app.include_router(schedules.router)
    app.include_router(runs.router)
    app.include_router(canary.router)
    app.include_router(run_events.router)
    app.include_router(step_history.router)
    app.include_router(recovery.router)
    app.include_router(logs.router)
    app.include_router(plans.router)
    app.include_router(stages.router)
    app.include_router(groups.router)
    app.include_router(hooks.router)
    app.include_router(health.router)
    app.include_router(console.router)
    app.mount("/console", console.static_files(), name="console")
    app.include_router(codec.router)
    return app


def _trace_requests(app: FastAPI, tracer: Tracer) -> None:
    """A server span per request, parent of the run a request starts (one trace per run)."""

    @app.middleware("http")
    async def trace_request(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        with tracer.start_as_current_span(request.method, kind=SpanKind.SERVER) as span:
            response = await call_next(request)
            route = request.scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            span.update_name(f"{request.method} {template}")
            span.set_attribute("http.route", template)
            span.set_attribute("http.response.status_code", response.status_code)
            return response


def main() -> None:
    """Serve the API on the host and port of `SHIPFLOW_API_URL` (`python -m shipflow.api.app`)."""
    import uvicorn

    settings = get_settings()
    configure_logging(logging.INFO, fmt=settings.log_format)
    url = urlsplit(settings.api_url)
    try:
        app = create_app(settings)
    except ValueError as e:
        print(f"shipflow api: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    # log_config=None: uvicorn's own loggers go through the shared (JSON, redacted) handler.
    uvicorn.run(app, host=url.hostname or "127.0.0.1", port=url.port or 8000, log_config=None)


if __name__ == "__main__":
    main()

"""The real API app with the trigger routers, driven over httpx in the test's event loop.

`create_app` may or may not include the webhook and schedule routers yet; they are
added here only when missing, so these tests run the same app either way.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from shipflow.activities.core.settings import Settings
from shipflow.api.app import create_app
from shipflow.api.routes import hooks, schedules


def app_for(settings: Settings) -> FastAPI:
    app = create_app(settings)
    paths = {getattr(route, "path", "") for route in app.routes}
    if "/hooks/github" not in paths:
        app.include_router(hooks.router)
    if "/flows/{name}/schedules" not in paths:
        app.include_router(schedules.router)
    return app


@asynccontextmanager
async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app for `settings`, lifespan entered (real Temporal client, real database)."""
    app = app_for(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shipflow.test") as http:
            http.app = app  # type: ignore[attr-defined]
            yield http


def unique(prefix: str) -> str:
    """A flow name no other test (or earlier session on the same server) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def apply(http: httpx.AsyncClient, text: str) -> httpx.Response:
    response = await http.post("/flows", content=text, headers={"content-type": "application/yaml"})
    assert response.status_code in (200, 201), response.text
    return response

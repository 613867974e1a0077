"""API test fixtures: the real app (lifespan run, real Temporal client, real database)
driven over httpx, and a tiny webhook receiver for `notify` steps.

The app is driven in the test's own event loop through `httpx.ASGITransport`, with the
lifespan entered explicitly, so every request goes through routing, dependencies,
middleware and the real clients. One test (`test_health.py`) also serves it with uvicorn
on a real port.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from shipflow.activities.core.settings import Settings
from shipflow.api.app import create_app
from shipflow.api.auth import hash_token

TOKENS = {"viewer": "tok-viewer-1", "operator": "tok-operator-1", "admin": "tok-admin-1"}


def token_settings(settings: Settings) -> Settings:
    """`settings` with one token per role configured (hashed, as in production)."""
    entries = [
        {"name": f"{role}-bot", "role": role, "sha256": hash_token(token)}
        for role, token in TOKENS.items()
    ]
    return settings.model_copy(update={"tokens": SecretStr(json.dumps(entries))})


def bearer(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


@asynccontextmanager
async def api_client(
    settings: Settings, *, headers: dict[str, str] | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """The app for `settings`, lifespan entered, behind an httpx client."""
    app: FastAPI = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://shipflow.test", headers=headers or {}
        ) as http:
            yield http


@pytest.fixture(params=["sqlite", "postgres"])
def db_settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """The test's settings on SQLite, then on a fresh PostgreSQL database."""
    if request.param == "postgres":
        pg_url: str = request.getfixturevalue("pg_url")
        return settings.model_copy(update={"database_url": SecretStr(pg_url)})
    return settings


class Hooks:
    """Webhook receiver on a free loopback port; records every JSON body posted to it."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                hooks.received.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    receiver = Hooks()
    try:
        yield receiver
    finally:
        receiver.close()

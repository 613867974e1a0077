"""`/healthz`, `/metrics` and the dashboard; the app served for real by uvicorn."""

from __future__ import annotations

import uuid

import httpx
import psycopg
import pytest
from pydantic import SecretStr

from shipflow.activities.core.settings import Settings
from shipflow.api.routes import runs as runs_routes
from tests.api.conftest import api_client
from tests.api.served import served_in_process
from tests.backup.proxy import TcpProxy
from tests.conftest import PG_ADMIN_URL
from tests.helpers import wait_until


async def test_served_by_uvicorn(settings: Settings) -> None:
    """Health, metrics and dashboard over a real socket, as `shipflow api` serves them."""
    async with served_in_process(settings) as http:
        health = await http.get("/healthz")
        assert health.status_code == 200
        assert health.json() == {"status": "ok", "checks": {"database": "ok", "temporal": "ok"}}

        page = await http.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "<title>shipflow</title>" in page.text
        assert 'src="/console/app.js"' in page.text
        # Offline: every script and style sheet is served by the API itself.
        for asset in ("app.js", "api.js", "run.js", "graph.js", "stages.js", "style.css"):
            served = await http.get(f"/console/{asset}")
            assert served.status_code == 200, asset
            for remote in ('src="http', "src='http", 'href="http', "@import", "from \"http", "//cdn"):
                assert remote not in served.text, (asset, remote)
        for remote in ('src="http', "src='http", 'href="http', "@import"):
            assert remote not in page.text
        # A browser opening a run's address (as the CLI prints it) gets the console;
        # API clients get JSON.
        browser = await http.get("/runs/nope", headers={"Accept": "text/html,*/*"})
        assert browser.status_code == 200 and "<title>shipflow</title>" in browser.text
        listing = await http.get("/runs", headers={"Accept": "text/html"})
        assert listing.headers["content-type"].startswith("text/html")

        assert (await http.get("/flows")).status_code == 200
        assert (await http.get("/runs/nope")).status_code == 404
        assert (await http.get("/no/such/route")).json() == {"detail": "Not Found"}
        metrics = await http.get("/metrics")
        assert metrics.status_code == 200
        text = metrics.text
        assert (
            'shipflow_http_requests_total{method="GET",route="/healthz",status="200"} 1.0'
            in text
        )
        assert (
            'shipflow_http_requests_total{method="GET",route="/runs/{run_id}",status="404"} 1.0'
            in text
        )
        assert 'route="unmatched",status="404"' in text
        assert (
            'shipflow_http_request_duration_seconds_count{method="GET",route="/flows"} 1.0'
            in text
        )


async def test_metrics_count_runs_started(settings: Settings) -> None:
    """Each app has its own registry: a second app starts from zero."""
    name = f"counted-{uuid.uuid4().hex[:6]}"
    text = f"apiVersion: shipflow/v1\nname: {name}\nstage: dev\nsteps: [{{wait: {{id: w, duration: 1h}}}}]\n"
    async with api_client(settings) as http:
        assert (await http.post("/flows", content=text)).status_code == 201
        for _ in range(2):
            run = await http.post(f"/flows/{name}/runs", json={})
            assert run.status_code == 202
            assert (await http.post(f"/runs/{run.json()['run_id']}/cancel")).status_code == 202
        metrics = (await http.get("/metrics")).text
        assert f'shipflow_runs_started_total{{flow="{name}",trigger="api"}} 2.0' in metrics
    async with api_client(settings) as http:
        assert name not in (await http.get("/metrics")).text


async def test_healthz_names_the_database_when_it_is_gone(settings: Settings, pg_url: str) -> None:
    async with api_client(settings.model_copy(update={"database_url": SecretStr(pg_url)})) as http:
        assert (await http.get("/healthz")).status_code == 200
        database = pg_url.rsplit("/", 1)[1]
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
        response = await http.get("/healthz")
        assert response.status_code == 503
        body = response.json()
        assert body["detail"] == "unhealthy: database"
        assert body["checks"]["temporal"] == "ok"
        assert body["checks"]["database"].startswith("unreachable")
        assert database not in response.text


async def test_healthz_names_temporal_when_it_is_gone(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Shorter waits than in production, so the unreachable paths are quick to test.
    monkeypatch.setattr(runs_routes, "STATUS_TIMEOUT_S", 1.0)
    monkeypatch.setattr(runs_routes, "LIST_REFRESH_TIMEOUT_S", 1.0)
    port = int(settings.temporal_address.rsplit(":", 1)[1])
    proxy = TcpProxy(port).start()
    try:
        through = settings.model_copy(update={"temporal_address": f"127.0.0.1:{proxy.port}"})
        name = f"cut-{uuid.uuid4().hex[:6]}"
        text = f"apiVersion: shipflow/v1\nname: {name}\nstage: dev\nsteps: [{{wait: {{id: w, duration: 1h}}}}]\n"
        async with api_client(through) as http:
            assert (await http.get("/healthz")).status_code == 200
            assert (await http.post("/flows", content=text)).status_code == 201
            run_id = (await http.post(f"/flows/{name}/runs", json={})).json()["run_id"]
            proxy.stop()

            async def unhealthy() -> httpx.Response | None:
                response = await http.get("/healthz")
                return response if response.status_code == 503 else None

            response = await wait_until(unhealthy, timeout=20, interval=0.2)
            assert response.json()["detail"] == "unhealthy: temporal"
            assert response.json()["checks"]["database"] == "ok"

            # The runs index is still listed as it is; a run's own status needs Temporal.
            listed = await http.get("/runs", params={"flow": name})
            assert listed.status_code == 200
            assert [(r["run_id"], r["state"]) for r in listed.json()] == [(run_id, "pending")]
            one = await http.get(f"/runs/{run_id}")
            assert one.status_code == 503
            assert one.json()["detail"] == "Temporal did not answer within 1s"
    finally:
        proxy.stop()

"""`/healthz` and `/metrics`: for probes and Prometheus (`/metrics` can need a role).

Metrics live in a registry owned by each app (not prometheus_client's global one), so a
process (a test session) can build several apps without "duplicated timeseries" errors.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import timedelta

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from sqlalchemy import Engine, text
from starlette.concurrency import run_in_threadpool

from shipflow.api.deps import EngineDep, MetricsAccess, TemporalDep
from shipflow.api.errors import error_responses
from shipflow.api.schemas import Health

router = APIRouter(tags=["health"])

HEALTH_TIMEOUT_S = 3.0


class Metrics:
    """The API's Prometheus metrics, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.runs_started = Counter(
            "shipflow_runs_started",
            "Release runs the API started, by trigger (api, git, rollback, retry).",
            ["flow", "trigger"],
            registry=self.registry,
        )
        self.webhook_deliveries = Counter(
            "shipflow_webhook_deliveries",
            "Git webhook deliveries received, by provider and result "
            "(accepted, unauthorized, invalid, error).",
            ["provider", "result"],
            registry=self.registry,
        )
        self.requests = Counter(
            "shipflow_http_requests",
            "HTTP requests handled, by route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.run_stream_reads = Counter(
            "shipflow_run_stream_reads",
            "Reads of a run's memo for the run pages' event streams: one poller per watched "
            "run, whatever the number of its open pages.",
            registry=self.registry,
        )
        self.run_streams = Gauge(
            "shipflow_run_streams_open",
            "Run event streams (run pages) open on this API process.",
            registry=self.registry,
        )
        self.runs_watched = Gauge(
            "shipflow_runs_watched",
            "Runs with an open event stream on this API process (one poller each).",
            registry=self.registry,
        )
        self.latency = Histogram(
            "shipflow_http_request_duration_seconds",
            "HTTP request handling time, by route template.",
            ["method", "route"],
            registry=self.registry,
        )


def _check_database(engine: Engine) -> None:
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


async def _probe(name: str, work: Awaitable[object]) -> tuple[str, str]:
    try:
        answer = await asyncio.wait_for(work, HEALTH_TIMEOUT_S)
    except TimeoutError:
        return name, f"no answer within {HEALTH_TIMEOUT_S:g}s"
    except Exception as e:  # a health check reports every failure, it never raises
        # The exception type only: driver messages can echo connection URLs.
        return name, f"unreachable ({type(e).__name__})"
    return name, "not serving" if answer is False else "ok"


@router.get("/healthz", response_model=Health, responses={503: {"model": Health}})
async def healthz(engine: EngineDep, client: TemporalDep) -> Response:
    """200 when the database and Temporal both answer; 503 naming the part that does not."""
    results = dict(
        await asyncio.gather(
            _probe("database", run_in_threadpool(_check_database, engine)),
            _probe(
                "temporal",
                client.service_client.check_health(timeout=timedelta(seconds=HEALTH_TIMEOUT_S)),
            ),
        )
    )
    failed = [name for name, state in results.items() if state != "ok"]
    if failed:
        return JSONResponse(
            {"detail": f"unhealthy: {', '.join(failed)}", "status": "unhealthy", "checks": results},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        )
    return JSONResponse(Health(status="ok", checks=results).model_dump())


@router.get("/metrics", response_class=Response, responses=error_responses(401, 403))
def metrics(request: Request, _access: MetricsAccess) -> Response:
    """Prometheus metrics; open, or for `SHIPFLOW_METRICS_ROLE` and above when it is set."""
    registry: CollectorRegistry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

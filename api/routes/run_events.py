"""`GET /runs/{id}/events`: a run's status as a live stream (server-sent events).

The run page keeps one of these open instead of polling `GET /runs/{id}` once a second
per open page. The run is read once for all the streams of it that this API process
serves (`shipflow.api.run_feeds`: one poller per watched run, started by its first stream
and stopped with its last): the poller reads the run's memo (one `describe` call) every
`POLL_S` and publishes the whole run, as `GET /runs/{id}` answers it, only when it changed;
a paused canary of the run (on the local target) is read from the runtime while a deploy
or promote step runs and published as a `canary` event, since its weight changes no step
state. Each stream sends the run at once, then what its feed publishes; it ends with `end`
once the run is final. A client that loses the stream reconnects (the first `status` event
brings it up to date, so nothing is missed); the console falls back to polling only when
reconnecting keeps failing.

Like the log stream, it is read with `fetch`, so the token stays in the header.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import StreamingResponse
from prometheus_client import Counter
from pydantic import BaseModel, Field
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from temporalio.client import Client
from temporalio.service import RPCError

from shipflow.activities.core.settings import Settings
from shipflow.activities.core.starter import read_status
from shipflow.activities.targets.base import TargetError
from shipflow.activities.targets.local.runtime_client import RuntimeClient
from shipflow.api.deps import EngineDep, SettingsDep, TemporalDep, Viewer
from shipflow.api.errors import error_responses
from shipflow.api.routes.runs import get_run, run_detail
from shipflow.api.run_feeds import Poller, RunFeed, RunFeeds
from shipflow.api.schemas import RunDetail
from shipflow.workflows.status import RunStatus, StepState

log = logging.getLogger("shipflow.api")

router = APIRouter(
    prefix="/runs", tags=["runs"], responses=error_responses(400, 401, 403, 404, 422, 503)
)

#: How often the stream reads the run's memo (a change shows within this).
POLL_S = 0.5
#: How often the full answer (with `stuck`) is rebuilt even when the memo did not change.
REFRESH_S = 5.0
#: How often a running deploy's canary is read from the local runtime.
CANARY_S = 1.0
#: A comment line this often keeps proxies from closing an idle stream.
KEEPALIVE_S = 15.0
#: How long a stream waits for its run's feed before it checks that its client is still there.
WAKE_S = 1.0
_ROLLOUT_KINDS = {"deploy", "promote"}


class CanaryView(BaseModel):
    """A canary (or blue/green) rollout of the run in progress on the local runtime."""

    step: str
    service: str
    rollout_id: str
    strategy: str
    weight: int | None = Field(None, description="percent of new requests to the new version")
    paused: bool = Field(description="waits in an indefinite pause for `POST /runs/{id}/promote`")
    canary_step: int = Field(description="the canary step that runs next")


def run_canaries(settings: Settings, run_id: str) -> list[CanaryView]:
    """The run's canary and blue/green rollouts in progress on the local runtime (blocking)."""
    client = RuntimeClient(settings.runtime_url, settings)
    out: list[CanaryView] = []
    for service in client.services():
        if service.rollout is None:
            continue
        view = client.rollout(service.name, service.rollout)
        if view.run_id != run_id or view.strategy not in ("canary", "blue_green"):
            continue
        out.append(
            CanaryView(
                step=str(view.step_id),
                service=service.name,
                rollout_id=view.rollout_id,
                strategy=view.strategy,
                weight=view.weight,
                paused=view.paused,
                canary_step=view.step_index,
            )
        )
    return sorted(out, key=lambda c: (c.step, c.service))


def _rolling_out(found: RunStatus) -> bool:
    return any(
        s.kind in _ROLLOUT_KINDS and s.state in (StepState.RUNNING, StepState.RETRYING)
        for s in found.steps
    )


def _event(name: str, data: Any) -> str:
    return f"event: {name}\ndata: {json.dumps(data, default=str)}\n\n"


def _poller(
    run_id: str,
    first: RunDetail,
    settings: Settings,
    engine: Engine,
    client: Client,
    reads: Counter,
) -> Poller:
    """What a run's feed runs (`shipflow.api.run_feeds`): read the memo every `POLL_S`,
    publish the whole run when it changed (rebuilt at least every `REFRESH_S`, for `stuck`),
    the canaries while a deploy step runs one, and the end."""

    async def poll(feed: RunFeed) -> None:
        detail = first.model_dump(mode="json")
        feed.publish("status", detail)
        sent = json.dumps(detail, sort_keys=True, default=str)
        memo = RunStatus.model_validate(detail).model_dump_json()
        canaries: str | None = None
        built = checked_canary = time.monotonic()
        while True:
            await asyncio.sleep(POLL_S)
            now = time.monotonic()
            reads.inc()
            try:
                found = await asyncio.wait_for(read_status(client, run_id), 5.0)
            except (RPCError, LookupError, TimeoutError):
                continue  # say nothing new; the next read tries again
            current = found.model_dump_json()
            if current != memo or now - built >= REFRESH_S:
                memo, built = current, now
                try:
                    fresh = (await run_detail(run_id, settings, engine, client)).model_dump(
                        mode="json"
                    )
                except HTTPException:
                    continue
                text = json.dumps(fresh, sort_keys=True, default=str)
                if text != sent:
                    sent = text
                    feed.publish("status", fresh)
            if (_rolling_out(found) or canaries not in (None, "[]")) and (
                now - checked_canary >= CANARY_S
            ):
                checked_canary = now
                try:
                    views = await run_in_threadpool(run_canaries, settings, run_id)
                except (TargetError, OSError):
                    views = []  # no local runtime (kubernetes target): nothing to show
                text = json.dumps([v.model_dump(mode="json") for v in views])
                if text != canaries:
                    canaries = text
                    feed.publish("canary", json.loads(text))
            if found.state.is_final:
                if canaries not in (None, "[]"):
                    feed.publish("canary", [])
                feed.publish("end", {"state": found.state.value})
                return

    return poll


@router.get(
    "/{run_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "server-sent events"}},
)
async def run_events(
    run_id: str,
    request: Request,
    caller: Viewer,
    settings: SettingsDep,
    engine: EngineDep,
    client: TemporalDep,
) -> StreamingResponse:
    """Server-sent events: `status` (data: the run as `GET /runs/{id}` gives it) at once and
    whenever it changes, `canary` (data: a list of CanaryView) while a deploy step of the run
    runs a canary and it changes, and `end` when the run is final."""
    first = await get_run(run_id, caller, settings, engine, client)  # 404/503 before streaming
    feeds: RunFeeds = request.app.state.run_feeds

    async def events() -> AsyncIterator[str]:
        detail = first.model_dump(mode="json")
        yield "retry: 1000\n\n"
        if first.state.is_final:
            yield _event("status", detail)
            yield _event("end", {"state": first.state.value})
            return
        alive = time.monotonic()
        reads = request.app.state.metrics.run_stream_reads
        poller = _poller(run_id, first, settings, engine, client, reads)
        async with feeds.follow(run_id, poller) as feed:
            # A page joining a watched run opens with what the run's feed last published
            # (at most `POLL_S` old, canaries included), not with its own read: that read
            # may be older or newer, and a page must never step back to an older state.
            # Only a feed just started has nothing yet: its poller starts from this read.
            sent: dict[str, str] = {}
            if "status" not in feed.latest:
                sent["status"] = json.dumps(detail, sort_keys=True, default=str)
                yield _event("status", detail)
            seen = -1  # what the feed holds is news to this page
            while True:
                if await request.is_disconnected():
                    return
                if await feed.wait_newer(seen, WAKE_S):
                    seen = feed.version
                    for name in ("status", "canary", "end"):
                        if name not in feed.latest:
                            continue
                        data = feed.latest[name]
                        text = json.dumps(data, sort_keys=True, default=str)
                        if sent.get(name) == text or (
                            name == "canary" and not data and name not in sent
                        ):
                            continue  # unchanged, or no canary to clear on this page
                        sent[name] = text
                        yield _event(name, data)
                    if feed.ended:
                        return  # after `end`; or the feed failed and the page reconnects
                if time.monotonic() - alive >= KEEPALIVE_S:
                    alive = time.monotonic()
                    yield ": keepalive\n\n"

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )

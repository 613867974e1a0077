"""`/runs/{id}/steps/{step}/logs`: a step's log lines, as a page or as a live stream (SSE).

The lines are written by the activities into the shipflow database
(`shipflow.activities.core.steplogs`, redacted and bounded there); this route only reads.
The stream polls the database every `POLL_S` (a new line reaches a reader in well under
500 ms) and ends once the step can print no more: the run is over, or the step ended.
Browsers read it with `fetch` (not `EventSource`), so the token stays in the
`Authorization` header and out of URLs and access logs.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Request, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from temporalio.client import Client
from temporalio.service import RPCError

from shipflow.activities.core.starter import read_status
from shipflow.activities.core.steplogs import MAX_BYTES, MAX_LINES, read_lines
from shipflow.api.deps import EngineDep, TemporalDep, Viewer
from shipflow.api.errors import error_responses
from shipflow.api.temporal_errors import ask_temporal
from shipflow.workflows.status import RunStatus, StepState

router = APIRouter(
    prefix="/runs", tags=["logs"], responses=error_responses(400, 401, 403, 404, 422, 503)
)

#: How often the stream looks for new lines.
POLL_S = 0.1
#: How often the stream reads the run's state to know whether the step can still print.
STATE_EVERY_S = 1.0
#: A comment line this often keeps proxies from closing an idle stream.
KEEPALIVE_S = 15.0
#: Step states after which a step prints nothing more (until a compensation, which a new
#: stream shows).
_STEP_DONE = {
    StepState.SUCCEEDED,
    StepState.FAILED,
    StepState.CANCELLED,
    StepState.SKIPPED,
    StepState.COMPENSATED,
    StepState.COMPENSATION_FAILED,
}


class LogLine(BaseModel):
    seq: int = Field(description="the line's number in the step's log, from 1")
    at: datetime
    text: str


class LogPage(BaseModel):
    run_id: str
    step: str
    lines: list[LogLine]
    next: int = Field(description="pass as `after` to read on")
    written: int = Field(description="lines the step has printed so far")
    dropped: int = Field(description="oldest lines no longer kept (the log was cut)")
    note: str | None = Field(None, description="says so when the log was cut")


def cut_note(dropped: int) -> str | None:
    if not dropped:
        return None
    return (
        f"the first {dropped} line(s) of this step were dropped: a step keeps its last "
        f"{MAX_LINES} lines and at most {MAX_BYTES // (1024 * 1024)} MB"
    )


async def _run_status(client: Client, run_id: str) -> RunStatus:
    return await ask_temporal(
        read_status(client, run_id), missing=f"no run {run_id!r}", within_s=5.0
    )


def _check_step(found: RunStatus, step: str) -> None:
    if not any(s.id == step for s in found.steps):
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"run {found.run_id!r} has no step {step!r}"
        )


def _step_over(found: RunStatus, step: str) -> bool:
    if found.state.is_final:
        return True
    return any(s.id == step and s.state in _STEP_DONE for s in found.steps)


@router.get("/{run_id}/steps/{step}/logs", response_model=LogPage)
async def step_logs(
    run_id: str,
    step: str,
    _caller: Viewer,
    engine: EngineDep,
    client: TemporalDep,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> LogPage:
    """The step's log lines after line `after`, oldest first (at most `limit`)."""
    _check_step(await _run_status(client, run_id), step)
    page = await run_in_threadpool(read_lines, engine, run_id, step, after=after, limit=limit)
    return LogPage(run_id=run_id, step=step, note=cut_note(page["dropped"]), **page)


@router.get(
    "/{run_id}/steps/{step}/logs/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "server-sent events"}},
)
async def stream_step_logs(
    run_id: str,
    step: str,
    request: Request,
    _caller: Viewer,
    engine: EngineDep,
    client: TemporalDep,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """Server-sent events: `line` (data: {seq, at, text}, id: seq) for every line after
    `after` (or the `Last-Event-ID` a reconnecting client sends), `cut` once when older
    lines were dropped, and `end` when the step can print no more."""
    found = await _run_status(client, run_id)
    _check_step(found, step)
    if last_event_id and last_event_id.isdigit():
        after = max(after, int(last_event_id))

    async def events() -> AsyncIterator[str]:
        position = after
        told_cut = False
        checked = time.monotonic()
        alive = time.monotonic()
        over = _step_over(found, step)
        yield "retry: 1000\n\n"
        while True:
            page = await run_in_threadpool(
                read_lines, engine, run_id, step, after=position, limit=500
            )
            if page["dropped"] > position and not told_cut:
                told_cut = True
                yield _event("cut", {"dropped": page["dropped"], "note": cut_note(page["dropped"])})
            for line in page["lines"]:
                data = {"seq": line["seq"], "at": line["at"].isoformat(), "text": line["text"]}
                yield _event("line", data, event_id=line["seq"])
            position = page["next"]
            if len(page["lines"]) == 500:
                continue
            if over:  # the step was over before this read: everything it printed is out
                yield _event("end", {"next": position})
                return
            now = time.monotonic()
            if now - checked >= STATE_EVERY_S:
                checked = now
                try:
                    over = _step_over(await read_status(client, run_id), step)
                except (RPCError, LookupError):
                    pass  # say nothing new; the next check tries again
            if now - alive >= KEEPALIVE_S:
                alive = now
                yield ": keepalive\n\n"
            if await request.is_disconnected():
                return
            await asyncio.sleep(POLL_S)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _event(name: str, data: object, *, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: {json.dumps(data)}\n\n"

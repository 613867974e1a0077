"""`GET /runs/{id}/steps/{step}/history`: where each attempt of a step is in the run's history.

The workflow names every activity it runs `<step>:<activity>:<attempt>` (compensations
`<step>:undo:<activity>:<attempt>`; `+n` when an attempt was resumed after a lost worker),
see `STEP_ATTEMPT_LOG` in `shipflow.workflows.release`. This route reads the run's history
once and returns, per activity of the step, the event that started it (an
`ActivityTaskScheduled`, or the `MarkerRecorded` of a local activity) with a deep link to
that event in the Temporal Web UI. The console links each attempt there.

Runs started before activities were named this way have no such events: the answer is
empty and the console links the run's history instead.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, Field
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from shipflow.activities.core.settings import Settings
from shipflow.activities.core.starter import read_status
from shipflow.api.deps import SettingsDep, TemporalDep, Viewer
from shipflow.api.errors import error_responses
from shipflow.api.temporal_errors import ask_temporal

router = APIRouter(
    prefix="/runs", tags=["runs"], responses=error_responses(400, 401, 403, 404, 422, 503)
)

#: The whole history is read at most this long (a run of thousands of events reads in well
#: under a second on a local server).
HISTORY_TIMEOUT_S = 10.0
#: The marker the SDK's core records for a local activity.
_LOCAL_MARKER = "core_local_activity"


class StepEvent(BaseModel):
    activity_id: str = Field(description="`<step>:[undo:]<activity>:<attempt>[+resumed]`")
    activity: str
    attempt: int
    undo: bool = Field(description="part of the step's compensation")
    local: bool = Field(description="ran as a local activity (a marker in the history)")
    event_id: int
    ui_url: str = Field(description="the event in the Temporal Web UI")


class StepHistory(BaseModel):
    run_id: str
    step: str
    run_ui_url: str = Field(description="the run's history in the Temporal Web UI")
    events: list[StepEvent]


def event_link(settings: Settings, workflow_id: str, temporal_run_id: str, event_id: int) -> str:
    """Deep link into the Temporal Web UI to one event of one run's history."""
    base = settings.ui_url.rstrip("/")
    return (
        f"{base}/namespaces/{settings.temporal_namespace}/workflows/{workflow_id}/"
        f"{temporal_run_id}/history/events/{event_id}"
    )


async def _marker_activity_id(client: Client, payloads: list[Payload]) -> str | None:
    """The activity id in a local activity marker's `data` (JSON from the SDK's core)."""
    if not payloads:
        return None
    payload = payloads[0]
    if payload.metadata.get("encoding") != b"json/plain":
        codec = client.data_converter.payload_codec
        if codec is None:
            return None
        (payload,) = await codec.decode([payload])
    try:
        data: Any = json.loads(payload.data)
    except ValueError:
        return None
    found = data.get("activity_id") if isinstance(data, dict) else None
    return found if isinstance(found, str) else None


def _parse(activity_id: str, step: str) -> tuple[str, int, bool] | None:
    """(activity, attempt, undo) of an activity id of `step`, or None for another step's."""
    if not activity_id.startswith(step + ":"):
        return None
    rest = activity_id[len(step) + 1 :]
    undo = rest.startswith("undo:")
    if undo:
        rest = rest[len("undo:") :]
    activity, _, attempt = rest.rpartition(":")
    number = attempt.split("+", 1)[0]
    if not activity or not number.isdigit():
        return None
    return activity, int(number), undo


async def step_events(
    client: Client, settings: Settings, run_id: str, step: str
) -> tuple[str, list[StepEvent]]:
    """The Temporal run id and the step's activity events, in history order."""
    handle = client.get_workflow_handle(run_id)
    description = await handle.describe()
    temporal_run = description.run_id
    events: list[StepEvent] = []
    async for event in client.get_workflow_handle(
        run_id, run_id=temporal_run
    ).fetch_history_events():
        local = False
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            activity_id: str | None = event.activity_task_scheduled_event_attributes.activity_id
        elif event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
            attrs = event.marker_recorded_event_attributes
            if attrs.marker_name != _LOCAL_MARKER or "data" not in attrs.details:
                continue
            local = True
            activity_id = await _marker_activity_id(client, list(attrs.details["data"].payloads))
        else:
            continue
        parsed = _parse(activity_id or "", step)
        if activity_id is None or parsed is None:
            continue
        activity, attempt, undo = parsed
        events.append(
            StepEvent(
                activity_id=activity_id,
                activity=activity,
                attempt=attempt,
                undo=undo,
                local=local,
                event_id=event.event_id,
                ui_url=event_link(settings, run_id, temporal_run, event.event_id),
            )
        )
    return temporal_run, events


@router.get("/{run_id}/steps/{step}/history", response_model=StepHistory)
async def step_history(
    run_id: str, step: str, _caller: Viewer, settings: SettingsDep, client: TemporalDep
) -> StepHistory:
    """Where each attempt (and compensation attempt) of the step is in the run's history,
    with a deep link to that event in the Temporal Web UI."""
    found = await ask_temporal(
        read_status(client, run_id), missing=f"no run {run_id!r}", within_s=HISTORY_TIMEOUT_S
    )
    if not any(s.id == step for s in found.steps):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"run {run_id!r} has no step {step!r}")
    temporal_run, events = await ask_temporal(
        step_events(client, settings, run_id, step),
        missing=f"no run {run_id!r}",
        within_s=HISTORY_TIMEOUT_S,
    )
    base = settings.ui_url.rstrip("/")
    return StepHistory(
        run_id=run_id,
        step=step,
        run_ui_url=f"{base}/namespaces/{settings.temporal_namespace}/workflows/{run_id}/{temporal_run}/history",
        events=events,
    )

"""`POST /runs/{run_id}/promote`: end the pause of a run's canary on the local target.

A canary's `pause: {}` waits for an operator. The rollout runs in the local runtime, not
in the workflow, so promotion goes there: the API asks the runtime (at `SHIPFLOW_RUNTIME_URL`,
with its key) for the running canary rollouts of this run (each rollout carries the run and
step that started it) and promotes the one that waits, or the step named. The next attempt
of a step that was resumed after a lost worker follows the same rollout, so the promotion
holds whatever happens to the worker.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from shipflow.activities.core.settings import Settings
from shipflow.activities.targets.base import Conflict, Invalid, NotFound, TargetError
from shipflow.activities.targets.local.runtime_client import RolloutView, RuntimeClient
from shipflow.api.deps import Operator, SettingsDep
from shipflow.api.errors import error_responses

router = APIRouter(prefix="/runs", tags=["runs"], responses=error_responses(401, 403, 409, 422, 503))


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    step: str | None = Field(None, min_length=1, description="default: the one canary that waits")


class Promoted(BaseModel):
    run_id: str
    step: str
    service: str
    rollout_id: str
    weight: int | None
    canary_step: int = Field(description="the canary step that runs next")


def _promote(settings: Settings, run_id: str, step: str | None) -> Promoted:
    client = RuntimeClient(settings.runtime_url, settings)
    running: list[tuple[str, RolloutView]] = []
    for service in client.services():
        if service.rollout is None:
            continue
        view = client.rollout(service.name, service.rollout)
        if view.run_id == run_id and view.strategy == "canary" and (step is None or view.step_id == step):
            running.append((service.name, view))
    waiting = [(name, view) for name, view in running if view.paused]
    if not waiting:
        which = f"step {step!r} of run {run_id!r}" if step else f"run {run_id!r}"
        raise HTTPException(status.HTTP_409_CONFLICT, f"{which} has no canary waiting in a pause")
    if len(waiting) > 1:
        steps = ", ".join(sorted(str(view.step_id) for _, view in waiting))
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"run {run_id!r} has several canaries waiting ({steps}): name the step"
        )
    name, view = waiting[0]
    after = client.promote(name, view.rollout_id)
    return Promoted(
        run_id=run_id, step=str(view.step_id), service=name, rollout_id=view.rollout_id,
        weight=after.weight, canary_step=after.step_index,
    )


@router.post("/{run_id}/promote", response_model=Promoted)
async def promote_canary(
    run_id: str,
    _caller: Operator,
    settings: SettingsDep,
    body: Annotated[PromoteRequest | None, Body()] = None,
) -> Promoted:
    """Promote the run's canary that waits in a pause (or the canary of `step`)."""
    try:
        return await run_in_threadpool(_promote, settings, run_id, (body or PromoteRequest()).step)
    except (Conflict, Invalid, NotFound) as e:  # it ended or moved on meanwhile
        raise HTTPException(status.HTTP_409_CONFLICT, f"local runtime: {e}") from None
    except TargetError as e:  # unreachable, or it refused the key
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"local runtime: {e}") from None

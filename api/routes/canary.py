"""`POST /runs/{run_id}/promote`: end the pause of a run's canary or blue-green.

A canary's `pause: {}` waits for an operator. The rollout runs in the local runtime, not
in the workflow, so promotion goes there: the API asks the runtime (at `SHIPFLOW_RUNTIME_URL`,
with its key) for the running canary rollouts of this run (each rollout carries the run and
step that started it) and promotes the one that waits, or the step named. The next attempt
of a step that was resumed after a lost worker follows the same rollout, so the promotion
holds whatever happens to the worker.

When the runtime has nothing waiting for the run, the run itself is asked (a `promote`
update): a Kubernetes canary or blue-green waits for an annotation that only the worker,
which holds the cluster's credentials, can set.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from shipflow.activities.core.settings import Settings
from shipflow.activities.core.starter import read_status
from shipflow.activities.targets.base import Conflict, Invalid, NotFound, TargetError
from shipflow.activities.targets.local.runtime_client import RolloutView, RuntimeClient
from shipflow.api.auth import Caller
from shipflow.api.deps import Operator, SettingsDep, TemporalDep
from shipflow.api.errors import error_responses
from shipflow.api.temporal_errors import ask_temporal, temporal_unavailable
from shipflow.workflows.io.deploy import PromoteInput, PromotePauseOutput

router = APIRouter(
    prefix="/runs", tags=["runs"], responses=error_responses(400, 401, 403, 404, 409, 422, 503)
)

#: The SDK retries an unreachable server for ~10 s; a request should fail sooner.
STATUS_TIMEOUT_S = 5.0
#: A promotion through the run: the workflow runs one short activity.
UPDATE_TIMEOUT_S = 30.0


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


def _promote(settings: Settings, run_id: str, step: str | None) -> Promoted | None:
    """Promote the run's waiting canary; None when the runtime has none for it."""
    client = RuntimeClient(settings.runtime_url, settings)
    running: list[tuple[str, RolloutView]] = []
    for service in client.services():
        if service.rollout is None:
            continue
        view = client.rollout(service.name, service.rollout)
        promotable = view.strategy in ("canary", "blue_green")
        if view.run_id == run_id and promotable and (step is None or view.step_id == step):
            running.append((service.name, view))
    waiting = [(name, view) for name, view in running if view.paused]
    if not waiting:
        return None
    if len(waiting) > 1:
        steps = ", ".join(sorted(str(view.step_id) for _, view in waiting))
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"run {run_id!r} has several canaries waiting ({steps}): name the step",
        )
    name, view = waiting[0]
    after = client.promote(name, view.rollout_id)
    return Promoted(
        run_id=run_id,
        step=str(view.step_id),
        service=name,
        rollout_id=view.rollout_id,
        weight=after.weight,
        canary_step=after.step_index,
    )


async def _run_exists(client: Client, run_id: str) -> bool:
    try:
        await ask_temporal(read_status(client, run_id), missing="", within_s=STATUS_TIMEOUT_S)
    except HTTPException as e:
        if e.status_code == status.HTTP_404_NOT_FOUND:
            return False
        raise
    return True


@router.post("/{run_id}/promote", response_model=Promoted)
async def promote_canary(
    run_id: str,
    _caller: Operator,
    settings: SettingsDep,
    temporal: TemporalDep,
    body: Annotated[PromoteRequest | None, Body()] = None,
) -> Promoted:
    """Promote the run's canary that waits in a pause (or the canary of `step`).

    404 for an unknown run, 409 when none of its canaries waits, 503 when the local
    runtime cannot be asked.
    """
    step = (body or PromoteRequest()).step
    unreachable: str | None = None
    try:
        done = await run_in_threadpool(_promote, settings, run_id, step)
    except (Conflict, Invalid, NotFound) as e:  # it ended or moved on meanwhile
        raise HTTPException(status.HTTP_409_CONFLICT, f"local runtime: {e}") from None
    except TargetError as e:  # unreachable, or it refused the key
        done, unreachable = None, str(e)
    if done is not None:
        return done
    if not await _run_exists(temporal, run_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no run {run_id!r}")
    on_kubernetes = await _promote_on_kubernetes(temporal, run_id, step, _caller)
    if on_kubernetes is not None:
        return on_kubernetes
    if unreachable is not None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"local runtime: {unreachable}")
    which = f"step {step!r} of run {run_id!r}" if step else f"run {run_id!r}"
    raise HTTPException(status.HTTP_409_CONFLICT, f"{which} has no canary waiting in a pause")


async def _promote_on_kubernetes(
    client: Client, run_id: str, step: str | None, caller: Caller
) -> Promoted | None:
    """Ask the run to promote its Kubernetes canary/blue-green (the worker holds the
    cluster's credentials, the API none); None when the run has no such step running."""
    handle = client.get_workflow_handle(run_id)
    try:
        done = await asyncio.wait_for(
            handle.execute_update(
                "promote",
                PromoteInput(step=step, by=caller.name),
                result_type=PromotePauseOutput,
            ),
            UPDATE_TIMEOUT_S,
        )
    except WorkflowUpdateFailedError as e:
        cause = e.cause.message if isinstance(e.cause, ApplicationError) else str(e.cause or e)
        if (
            "no kubernetes canary or blue-green step" in cause
            or "is not a running kubernetes" in cause
        ):
            return None  # not a kubernetes promotion: the caller answers as for the runtime
        raise HTTPException(status.HTTP_409_CONFLICT, cause) from None
    except RPCError as e:
        if e.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION):
            return None  # the run has ended (or never took updates)
        raise temporal_unavailable(e) from None
    except TimeoutError:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "the run did not answer in time"
        ) from None
    return Promoted(
        run_id=run_id,
        step=done.step,
        service=done.service,
        rollout_id=done.deployment,
        weight=None,
        canary_step=int(done.pause) + 1 if done.pause.isdigit() else 0,
    )

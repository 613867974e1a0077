"""Inputs and results of the deploy activities: `deploy`, `promote` and their undo."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer

from shipflow.workflows.io.common import StepContext
from shipflow.workflows.spec import Probes, Strategy

ROLLOUT = "deploy.rollout"
RESOLVE_PROMOTION = "deploy.resolve_promotion"


class RolloutInput(BaseModel):
    context: StepContext
    target: dict[str, Any]
    service: str
    image: str
    container: str | None = None
    probes: Probes | None = None
    progress_deadline_s: float | None = None
    strategy: Strategy | None = Field(None, description="the step's, else the service's, else rolling 1/0")
    purpose: str = Field("deploy", description="deploy | promote | undo | rollback")
    resume: dict[str, Any] | None = Field(
        None, description="progress the previous execution heartbeated before its worker was lost"
    )
    flow_tags: list[str] = Field([], description="the flow's tags: select groups")
    env_order: list[str] = Field([], description="the flow's group precedence")
    groups: dict[str, int] | None = Field(
        None, description="exact group versions to use ({name: version}, in order; a rollback "
        "or an undo); None: select the groups as the flow says, newest versions"
    )
    max_attempts: int | None = Field(
        None, description="the step's attempts in all (retries + 1): a canary or blue-green keeps "
        "its state across a retryable error when another attempt follows; None: unknown (abort)"
    )


class RolloutOutput(BaseModel):
    service: str
    image: str
    previous_image: str | None
    instances: list[dict[str, Any]] = []
    duration_s: float
    strategy: str | None = Field(None, description="rolling | recreate | canary | blue_green, as the target ran it")
    rounds: int | None = Field(None, description="batches of new instances started (rolling)")
    downtime_s: float | None = Field(
        None, description="recreate: seconds with no instance serving, from the last old one "
        "leaving the front port to the first new one ready"
    )
    groups: dict[str, int] = Field({}, description="the group versions the service got")
    previous_groups: dict[str, int] | None = Field(
        None, description="the group versions it had before (None: not recorded)"
    )

    @model_serializer(mode="wrap")
    def _without_empty_groups(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A service that got no groups shows none in its output (as before groups);
        # `previous_groups` is kept when known, even empty: the undo restores exactly it.
        data: dict[str, Any] = handler(self)
        if not data.get("groups"):
            data.pop("groups", None)
        if data.get("previous_groups") is None:
            data.pop("previous_groups", None)
        return data


class PromotionInput(BaseModel):
    from_stage: str
    service: str


class PromotionOutput(BaseModel):
    image: str
    from_run: str | None


PROMOTE_PAUSE = "deploy.promote_pause"
ABORT_KEPT = "deploy.abort_kept"


class AbortKeptInput(BaseModel):
    """Abort the Kubernetes canary or green Deployment an attempt of the step kept for its
    next attempt (`StateKept`), when the run is cancelled before that attempt starts."""

    context: StepContext
    target: dict[str, Any]
    service: str
    image: str
    container: str | None = None
    strategy: Strategy | None = None


class AbortKeptOutput(BaseModel):
    service: str
    aborted: str | None = Field(None, description="the Deployment aborted; None: nothing was kept")


class PromoteInput(BaseModel):
    """The `promote` update of a run: end the pause of its Kubernetes canary or blue-green."""

    step: str | None = Field(None, description="default: the one such step that runs")
    by: str | None = None


class PromotePauseInput(BaseModel):
    context: StepContext
    target: dict[str, Any]
    service: str


class PromotePauseOutput(BaseModel):
    step: str
    service: str
    deployment: str = Field(description="the canary or green Deployment that was promoted")
    pause: str = Field(description="the pause it ended: a canary step's index, or `switch`")

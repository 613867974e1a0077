"""Which running step a run's `promote` update is for (pure: the workflow calls it).

On Kubernetes a canary's `pause: {}` (and a blue-green waiting for its switch) waits for
an annotation on the canary/green Deployment. Only the worker holds the cluster's
credentials, so an operator's promotion goes through the run: the API sends the workflow
a `promote` update, the workflow picks the step here and runs the `deploy.promote_pause`
activity, which sets the annotation. Local canaries are promoted in the local runtime
directly (the API asks it first).
"""

from __future__ import annotations

from typing import Any

from shipflow.workflows.io.common import StepContext
from shipflow.workflows.io.deploy import PromotePauseInput
from shipflow.workflows.plan import Plan
from shipflow.workflows.status import StepState, StepStatus
from shipflow.workflows.step_kinds import plain


def _progressive_on_kubernetes(plan: Plan, step_id: str) -> dict[str, Any] | None:
    params = plan.action(step_id).params
    target = params.get("target") or plan.target
    strategy = params.get("strategy") or {}
    if target.get("kind") == "kubernetes" and ("canary" in strategy or "blue_green" in strategy):
        return dict(params)
    return None


def promotable_step(
    plan: Plan, steps: list[StepStatus], context: StepContext, step_id: str | None
) -> PromotePauseInput:
    """The promotion of the run's running Kubernetes canary/blue-green step (or `step_id`).

    Raises:
        ValueError: none runs, several run and none is named, or the named one is not one.
    """
    running = [
        s for s in steps
        if s.state == StepState.RUNNING and s.kind in ("deploy", "promote")
        and _progressive_on_kubernetes(plan, s.id) is not None
    ]
    if step_id is None:
        if len(running) != 1:
            raise ValueError(
                "name the step to promote: " + ", ".join(s.id for s in running)
                if running
                else "no kubernetes canary or blue-green step of this run is running"
            )
        chosen = running[0]
    else:
        found = [s for s in running if s.id == step_id]
        if not found:
            raise ValueError(f"step {step_id!r} is not a running kubernetes canary or blue-green step")
        chosen = found[0]
    params = _progressive_on_kubernetes(plan, chosen.id) or {}
    return PromotePauseInput(
        context=context.model_copy(update={"step_id": chosen.id}),
        target=params.get("target") or plan.target,
        service=plain(params["service"]),
    )

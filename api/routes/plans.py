"""`GET /runs/{id}/plan`: the shape of a run's flow and each step's inputs, for the console.

The run's Plan is its workflow input (read from the first event of its history, through
the payload codec). The console draws the graph from `tree` (sequences, parallel lanes,
nested groups) and shows a step's `inputs`. Every string goes through
`shipflow.workflows.redaction`; `${env.X}` references are still references in the Plan
(their values only exist on the worker), so no secret value is in it to begin with.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from shipflow.api.deps import TemporalDep, Viewer
from shipflow.api.errors import error_responses
from shipflow.api.recovery import RecoveryError, load_run_input
from shipflow.api.temporal_errors import ask_temporal
from shipflow.workflows.redaction import redact

router = APIRouter(
    prefix="/runs", tags=["runs"], responses=error_responses(400, 401, 403, 404, 422, 503)
)


class PlanView(BaseModel):
    run_id: str
    flow: str
    stage: str
    tree: dict[str, Any] = Field(
        description="{node: sequence|parallel, id, children: [...]} or {node: action, id, kind}"
    )
    steps: dict[str, dict[str, Any]] = Field(
        description="per step id: kind, summary, inputs, max_attempts, timeout_s, undo"
    )


def masked(value: Any) -> Any:
    """`value` with every string redacted, recursively."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v) for v in value]
    return value


def _walk(node: Any, steps: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if node.node == "action":
        steps[node.id] = {
            "kind": node.kind,
            "summary": redact(node.summary),
            "inputs": masked({k: v for k, v in node.params.items() if v not in (None, {}, [])}),
            "max_attempts": node.retry.max_attempts,
            "timeout_s": node.timeout_s,
            "undo": masked(node.undo.model_dump(exclude_defaults=True)) if node.undo else None,
        }
        return {"node": "action", "id": node.id, "kind": node.kind}
    return {
        "node": node.node,
        "id": node.id,
        "children": [_walk(child, steps) for child in node.children],
    }


@router.get("/{run_id}/plan", response_model=PlanView)
async def run_plan(run_id: str, _caller: Viewer, client: TemporalDep) -> PlanView:
    """The run's flow as a tree of groups and steps, with each step's (redacted) inputs."""
    started = await ask_temporal(
        load_run_input(client, run_id),
        missing=f"no run {run_id!r}",
        within_s=10.0,
        unknown=(LookupError, RecoveryError, ValueError),
        unknown_detail=f"no shipflow run {run_id!r}",
    )
    plan = started.plan
    steps: dict[str, dict[str, Any]] = {}
    tree = _walk(plan.root, steps)
    return PlanView(run_id=run_id, flow=plan.flow, stage=plan.stage, tree=tree, steps=steps)

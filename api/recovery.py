"""Recovery runs: roll a stage back to a past run, or retry a failed run from its failed step.

Both build a new ordinary run (same engine, same rollout care, same compensation), so a
recovery is as durable and inspectable as the release it repairs. Pure planning here;
the routes in `api/routes/recovery.py` start the runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from temporalio.client import Client

from shipflow.activities.core.tables import ReleaseRecord
from shipflow.workflows.plan import ActionPlan, GroupPlan, Plan, RetryPlan, UndoPlan
from shipflow.workflows.release import ReleaseInput
from shipflow.workflows.status import RunStatus, StepState


class RecoveryError(ValueError):
    """The recovery cannot be planned; the message says why (HTTP 409)."""


class ServiceRollback(BaseModel):
    service: str
    image: str
    current_image: str | None
    from_run: str | None
    target: dict[str, Any]
    #: The group versions the service had right after that run ({name: version}, in the
    #: order they applied); None: that record predates groups (select them as the flow says).
    groups: dict[str, int] | None = None
    current_groups: dict[str, int] | None = None


class DataRestore(BaseModel):
    step_id: str
    database: str
    url: str
    size: int | None = None
    sha256: str | None = None
    endpoint: str | None = None


async def load_run_input(client: Client, run_id: str) -> ReleaseInput:
    """The ReleaseInput a run was started with, from the first event of its history."""
    handle = client.get_workflow_handle(run_id)
    async for event in handle.fetch_history_events():
        attributes = event.workflow_execution_started_event_attributes
        payloads = list(attributes.input.payloads)
        if not payloads:
            break
        # Through the client's whole converter: the input is encrypted when keys are set.
        (value,) = await client.data_converter.decode(payloads, [ReleaseInput])
        assert isinstance(value, ReleaseInput)
        return value
    raise RecoveryError(f"run {run_id!r} has no recorded input")


# ------------------------------------------------------------------ retry


def retry_input(
    prior: ReleaseInput, status: RunStatus, new_run_id: str, *, by: str | None
) -> ReleaseInput:
    """Same Plan and args; steps that succeeded (and were not undone) are skipped.

    Raises:
        RecoveryError: the run is still going, or it succeeded.
    """
    if not status.state.is_final:
        raise RecoveryError(f"run {status.run_id!r} is still {status.state.value}")
    if status.state == "succeeded":
        raise RecoveryError(f"run {status.run_id!r} succeeded; there is nothing to retry")
    skip = {
        step.id: step.output or {} for step in status.steps if step.state == StepState.SUCCEEDED
    }
    return ReleaseInput(
        run_id=new_run_id,
        plan=prior.plan,
        reason=f"retry of {status.run_id} from {status.failed_step or 'its first unfinished step'}",
        triggered_by=by,
        trigger="retry",
        skip=skip,
    )


# ------------------------------------------------------------------ rollback


def services_to_roll_back(
    records: Sequence[ReleaseRecord], run_id: str, targets: dict[str, dict[str, Any]]
) -> list[ServiceRollback]:
    """Every service the stage's runs touched since `run_id`, with the image it had right after it.

    Args:
        records: every release record of the run's stage, any order.
        run_id: the run to return to.
        targets: flow name -> its `target:` (to roll each service out where it runs).

    Raises:
        RecoveryError: the run released nothing into the stage, or nothing changed since.
    """
    ordered = sorted(records, key=lambda r: (r.created_at, r.id or 0))
    own = [r for r in ordered if r.run_id == run_id]
    if not own:
        raise RecoveryError(
            f"run {run_id!r} released no service into this stage; nothing to return to"
        )
    cut: datetime = own[-1].created_at
    cut_id = own[-1].id or 0
    after_cut = [r for r in ordered if (r.created_at, r.id or 0) > (cut, cut_id)]
    before_or_at = [r for r in ordered if (r.created_at, r.id or 0) <= (cut, cut_id)]
    plan: list[ServiceRollback] = []
    for service in sorted({r.service for r in after_cut}):
        then = [r for r in before_or_at if r.service == service]
        now = [r for r in ordered if r.service == service][-1]
        if not then:
            continue  # first deployed after that run: there is no earlier image to return to
        wanted = then[-1]
        if wanted.image == now.image and (wanted.groups or {}) == (now.groups or {}):
            continue
        target = targets.get(now.flow) or targets.get(wanted.flow)
        if target is None:
            raise RecoveryError(
                f"flow {now.flow!r} that last deployed {service!r} is no longer applied"
            )
        plan.append(
            ServiceRollback(
                service=service,
                image=wanted.image,
                current_image=now.image,
                from_run=wanted.run_id,
                target=target,
                groups=wanted.groups,
                current_groups=now.groups,
            )
        )
    return plan


def restores_of(prior: ReleaseInput, status: RunStatus) -> list[DataRestore]:
    """The backups a run took before its migrations, as restores (newest first)."""
    out: list[DataRestore] = []
    for action in prior.plan.actions():
        if action.kind != "backup":
            continue
        made = status.step(action.id)
        if made.state not in (StepState.SUCCEEDED, StepState.COMPENSATED) or not made.output:
            continue
        out.append(
            DataRestore(
                step_id=action.id,
                database=action.params["database"],
                url=made.output["url"],
                size=made.output.get("size"),
                sha256=made.output.get("sha256"),
                endpoint=action.params.get("endpoint"),
            )
        )
    return list(reversed(out))


def _groups_text(groups: dict[str, int] | None) -> str:
    if not groups:
        return ""
    return " with groups " + ", ".join(f"{name} v{version}" for name, version in groups.items())


def rollback_plan(
    prior: ReleaseInput,
    services: list[ServiceRollback],
    restores: list[DataRestore],
) -> Plan:
    """A plan that rolls every service back in parallel, then restores data if asked.

    Images first: the older code usually copes with the newer schema, not the reverse.
    A failed rollback compensates by rolling forward again (deploy's default undo).
    """
    if not services and not restores:
        raise RecoveryError(
            "the stage already runs what it ran right after that run; nothing to do"
        )
    deploys: list[ActionPlan | GroupPlan] = [
        ActionPlan(
            id=f"rollback-{svc.service}",
            kind="deploy",
            path=f"rollback.parallel[{i}].deploy",
            summary=f"roll {svc.service} back to {svc.image}" + _groups_text(svc.groups),
            params={
                "service": svc.service,
                "image": svc.image,
                "target": svc.target,
                **({"groups": svc.groups} if svc.groups is not None else {}),
            },
            retry=RetryPlan(max_attempts=2),
            timeout_s=900.0,
            undo=UndoPlan(kind="previous_image"),
        )
        for i, svc in enumerate(services)
    ]
    data: list[ActionPlan | GroupPlan] = [
        ActionPlan(
            id=f"restore-{r.step_id}",
            kind="restore",
            path=f"rollback.sequence[{i}].restore",
            summary=f"restore the backup of {r.step_id}",
            params=r.model_dump(exclude={"step_id"}),
            retry=RetryPlan(max_attempts=2),
            timeout_s=3600.0,
        )
        for i, r in enumerate(restores)
    ]
    children: list[ActionPlan | GroupPlan] = []
    if deploys:
        children.append(
            GroupPlan(
                node="parallel", id="rollback.parallel", path="rollback.parallel", children=deploys
            )
        )
    if data:
        children.append(
            GroupPlan(
                node="sequence", id="rollback.sequence", path="rollback.sequence", children=data
            )
        )
    return prior.plan.model_copy(
        update={
            "root": GroupPlan(node="sequence", id="steps", path="steps", children=children),
            "env_refs": prior.plan.env_refs,
        }
    )

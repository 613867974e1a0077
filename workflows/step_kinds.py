"""The step-kind dispatch table: which activity each kind of step (and of undo) runs.

`ReleaseWorkflow` interprets the plan's tree; what a single action does is data, here:
for each step kind, the activity calls it makes (activity name, a builder of its input
from the step's resolved params, the result type, whether it is long running), and for
each undo kind, the one call its compensation makes. Adding a kind means adding a row,
not a branch in the interpreter.

Builders are pure functions of a `StepRequest`: no workflow API, no I/O, so they are
deterministic in the sandbox and testable alone. The activity names and input shapes are
exactly those recorded histories expect (`tests/workflows/test_replay.py`).

`wait` and `approve` run no activity (a timer, an update): `WORKFLOW_KINDS` names them and
the interpreter handles them itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from shipflow.workflows.durations import parse_duration
from shipflow.workflows.io import backup as backup_io
from shipflow.workflows.io import checks as check_io
from shipflow.workflows.io import deploy as deploy_io
from shipflow.workflows.io import jobs as job_io
from shipflow.workflows.io import notify as notify_io
from shipflow.workflows.io.common import StepContext
from shipflow.workflows.plan import ActionPlan, Plan, UndoPlan, resolve_step_outputs
from shipflow.workflows.spec import CheckSpec, Probes
from shipflow.workflows.templates import literal

#: Kinds the workflow runs itself (a durable timer, an approval update): no activity.
WORKFLOW_KINDS = frozenset({"wait", "approve"})


@dataclass(frozen=True)
class StepRequest:
    """What a builder may read: the action, its params resolved, and the run around it."""

    plan: Plan
    action: ActionPlan
    #: The action's params with `${steps.X.Y}` resolved from earlier outputs.
    params: dict[str, Any]
    context: StepContext
    run_state: str
    #: Outputs of this step's earlier calls, by activity name (promote: the promotion).
    earlier: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    #: Outputs of every finished step so far (undo reads the backup it restores).
    outputs: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    #: The undo being run, for undo builders.
    undo: UndoPlan | None = None
    #: The output of the step being undone, for undo builders.
    step_output: Mapping[str, Any] = field(default_factory=dict)


Builder = Callable[[StepRequest], BaseModel]


@dataclass(frozen=True)
class ActivityCall:
    """One activity a step runs under the step's retry policy and timeout."""

    activity: str
    build: Builder
    result_type: type[BaseModel]
    #: Long activities heartbeat (a lost worker is noticed within the plan's heartbeat
    #: timeout and resumed, not counted as an attempt) and get a cleanup margin on top of
    #: the step's timeout, which they enforce themselves.
    long_running: bool = True


@dataclass(frozen=True)
class StepKind:
    """What one kind of action does: its calls in order, then how its output is shaped."""

    calls: tuple[ActivityCall, ...]
    #: (the last call's output, the request) -> the step's output.
    finish: Callable[[dict[str, Any], StepRequest], dict[str, Any]] | None = None


@dataclass(frozen=True)
class UndoKind:
    """What one kind of compensation does."""

    call: ActivityCall
    #: When it returns an output, there is nothing to undo and no activity runs.
    nothing_to_do: Callable[[StepRequest], dict[str, Any] | None] | None = None


# ---------------------------------------------------------------------- builders


def plain(value: Any) -> Any:
    """The plain text of a field no activity resolves `${env.X}` in (see `shipflow.workflows.templates`).

    Fields the worker does resolve (commands, env, URLs, headers, database, backup `to`) stay encoded:
    `resolve_env` undoes the escapes itself, after it has filled in the author's references.
    """
    return literal(value) if isinstance(value, str) else value


def plain_check(params: dict[str, Any]) -> dict[str, Any]:
    """A check's params with its plain-text fields decoded (its URL and headers stay encoded)."""
    out = dict(params)
    if isinstance(out.get("http"), dict) and out["http"].get("contains") is not None:
        out["http"] = {**out["http"], "contains": literal(out["http"]["contains"])}
    if isinstance(out.get("tcp"), dict) and isinstance(out["tcp"].get("host"), str):
        out["tcp"] = {**out["tcp"], "host": literal(out["tcp"]["host"])}
    return out


def rollout_input(
    req: StepRequest, params: Mapping[str, Any], image: str | None, *, purpose: str
) -> deploy_io.RolloutInput:
    deadline = params.get("progress_deadline")
    return deploy_io.RolloutInput(
        context=req.context,
        target=params.get("target") or req.plan.target,
        service=plain(params["service"]),
        image=image or "",
        container=plain(params.get("container")),
        probes=Probes.model_validate(params["probes"]) if params.get("probes") else None,
        progress_deadline_s=parse_duration(deadline).total_seconds() if deadline else None,
        purpose=purpose,
    )


def _migrate(req: StepRequest) -> BaseModel:
    p = req.params
    return job_io.JobInput(
        context=req.context,
        target=req.plan.target,
        command=p["command"],
        image=plain(p.get("image")),
        env=p.get("env") or {},
        cwd=plain(p.get("cwd")),
        service_account=plain(p.get("service_account")),
        timeout_s=req.action.timeout_s,
        retries=req.action.retry.max_attempts - 1,
    )


def _check(req: StepRequest) -> BaseModel:
    return check_io.CheckInput(
        context=req.context,
        check=CheckSpec.model_validate({**plain_check(req.params), "id": req.action.id}),
        timeout_s=req.action.timeout_s,
    )


def _notify(req: StepRequest) -> BaseModel:
    p = req.params
    return notify_io.NotifyInput(
        context=req.context,
        webhook=p["webhook"],
        message=plain(p["message"]),
        headers=p.get("headers") or {},
        run_state=req.run_state,
        timeout_s=req.action.timeout_s,
    )


def _backup(req: StepRequest) -> BaseModel:
    p = req.params
    return backup_io.BackupInput(
        context=req.context,
        database=p["database"],
        to=p["to"],  # resolved (and unescaped) on the worker
        endpoint=p.get("endpoint"),
        keep=p.get("keep"),
        sse=p.get("sse"),
        storage_class=p.get("storage_class"),
    )


def _promotion(req: StepRequest) -> BaseModel:
    return deploy_io.PromotionInput(
        from_stage=plain(req.params["from"]), service=plain(req.params["service"])
    )


def _deploy(req: StepRequest) -> BaseModel:
    return rollout_input(req, req.params, plain(req.params.get("image")), purpose="deploy")


def _promote(req: StepRequest) -> BaseModel:
    image = req.earlier[deploy_io.RESOLVE_PROMOTION]["image"]
    return rollout_input(req, req.params, image, purpose="promote")


def _promoted(output: dict[str, Any], req: StepRequest) -> dict[str, Any]:
    output["from_stage"] = req.params["from"]
    return output


def _restore(req: StepRequest) -> BaseModel:
    # Only generated plans (rollback with restore_data) have this kind.
    p = req.params
    return backup_io.RestoreInput(
        context=req.context,
        database=p["database"],
        url=p["url"],
        endpoint=p.get("endpoint"),
        size=p.get("size"),
        sha256=p.get("sha256"),
        owners=p.get("owners", "keep"),
    )


ROLLOUT = ActivityCall(deploy_io.ROLLOUT, _deploy, deploy_io.RolloutOutput)

#: Step kind -> the activities it runs. Every kind is long running (heartbeats) today:
#: notify too, so a worker lost during a slow webhook call is noticed within a heartbeat
#: timeout and is not an attempt; the promotion lookup is a quick read that a heartbeat
#: timeout bounds when its worker is lost.
STEP_KINDS: dict[str, StepKind] = {
    "migrate": StepKind((ActivityCall(job_io.RUN_JOB, _migrate, job_io.JobOutput),)),
    "check": StepKind((ActivityCall(check_io.PROBE, _check, check_io.CheckOutput),)),
    "notify": StepKind((ActivityCall(notify_io.SEND, _notify, notify_io.NotifyOutput),)),
    "backup": StepKind((ActivityCall(backup_io.CREATE, _backup, backup_io.BackupOutput),)),
    "deploy": StepKind((ROLLOUT,)),
    "promote": StepKind(
        (
            ActivityCall(deploy_io.RESOLVE_PROMOTION, _promotion, deploy_io.PromotionOutput),
            ActivityCall(deploy_io.ROLLOUT, _promote, deploy_io.RolloutOutput),
        ),
        finish=_promoted,
    ),
    "restore": StepKind((ActivityCall(backup_io.RESTORE, _restore, backup_io.RestoreOutput),)),
}


# ---------------------------------------------------------------------- undo


def _no_previous_image(req: StepRequest) -> dict[str, Any] | None:
    if req.step_output.get("previous_image"):
        return None
    return {"note": "the service had no earlier image; left on the new one"}


def _undo_rollout(req: StepRequest) -> BaseModel:
    previous = req.step_output.get("previous_image")
    return rollout_input(req, req.params, previous, purpose="undo")


def _undo_command(req: StepRequest) -> BaseModel:
    undo = req.undo
    assert undo is not None
    return job_io.JobInput(
        context=req.context,
        target=req.plan.target,
        command=resolve_step_outputs(undo.command, dict(req.outputs)),
        image=plain(undo.image or req.action.params.get("image")),
        env=undo.env,
        cwd=plain(undo.cwd),
        timeout_s=req.action.timeout_s,
        purpose="undo",
    )


def _undo_restore(req: StepRequest) -> BaseModel:
    undo = req.undo
    assert undo is not None and undo.backup_step is not None
    backup = req.plan.action(undo.backup_step)
    made = req.outputs.get(undo.backup_step) or {}
    return backup_io.RestoreInput(
        context=req.context,
        database=backup.params["database"],
        url=made.get("url", ""),
        endpoint=backup.params.get("endpoint"),
        size=made.get("size"),
        sha256=made.get("sha256"),
        owners=undo.owners,
    )


#: Undo kind -> the one activity its compensation runs (always long running).
UNDO_KINDS: dict[str, UndoKind] = {
    "previous_image": UndoKind(
        ActivityCall(deploy_io.ROLLOUT, _undo_rollout, deploy_io.RolloutOutput),
        nothing_to_do=_no_previous_image,
    ),
    "command": UndoKind(ActivityCall(job_io.RUN_JOB, _undo_command, job_io.JobOutput)),
    "restore": UndoKind(ActivityCall(backup_io.RESTORE, _undo_restore, backup_io.RestoreOutput)),
}
